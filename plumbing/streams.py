"""The JetStream streams of the system, declared in code.

Stream names and subjects are part of the contract between services (like `protos/`): the
producer owns its stream, and a consumer may declare the same stream so that start-up order does
not matter. Payloads are the messages of `laiwang.events.v1`; `EVENT_TYPES` is the one registry
of which message each subject carries (producers publish it, consumers decode with it through
`plumbing.jetstream.EventRouter` or `decode_event`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.message import Message

from laiwang.events.v1 import (
    auth_events_pb2,
    contacts_events_pb2,
    messaging_events_pb2,
    open_platform_events_pb2,
    zhadui_events_pb2,
)

STORAGE_TYPES = ("file", "memory")


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    max_age_seconds: int = 7 * 24 * 3600
    duplicate_window_seconds: int = 120


@dataclass(frozen=True)
class StreamSettings:
    """What differs between one machine and a cluster (STREAM_REPLICAS, STREAM_STORAGE,
    STREAM_MAX_AGE_SECONDS; read by plumbing.config). The defaults are the one-node setup; a
    3-node NATS cluster runs R3 streams, and durable consumers inherit the stream's replicas.
    `max_age_seconds` None keeps each stream's own max age (7 days)."""

    replicas: int = 1
    storage: str = "file"
    max_age_seconds: int | None = None


AUTH = StreamSpec("AUTH", ("laiwang.auth.>",))
CONTACTS = StreamSpec("CONTACTS", ("laiwang.contacts.>",))
MESSAGING = StreamSpec("MESSAGING", ("laiwang.messaging.>",))
ZHADUI = StreamSpec("ZHADUI", ("laiwang.zhadui.>",))
OPEN_PLATFORM = StreamSpec("OPEN_PLATFORM", ("laiwang.open_platform.>",))

ALL = (AUTH, CONTACTS, MESSAGING, ZHADUI, OPEN_PLATFORM)

# Every event subject and the protobuf message it carries. A subject missing here is not an event
# of the contract: consumers ignore it.
EVENT_TYPES: Mapping[str, type[Message]] = {
    "laiwang.auth.user_registered": auth_events_pb2.UserRegistered,
    "laiwang.auth.phone_verified": auth_events_pb2.PhoneVerified,
    "laiwang.auth.phone_unbound": auth_events_pb2.PhoneUnbound,
    "laiwang.auth.profile_changed": auth_events_pb2.ProfileChanged,
    "laiwang.auth.token_revoked": auth_events_pb2.TokenRevoked,
    "laiwang.auth.account_deactivated": auth_events_pb2.AccountDeactivated,
    "laiwang.contacts.friendship_created": contacts_events_pb2.FriendshipCreated,
    "laiwang.contacts.friendship_removed": contacts_events_pb2.FriendshipRemoved,
    "laiwang.contacts.user_blocked": contacts_events_pb2.UserBlocked,
    "laiwang.contacts.user_unblocked": contacts_events_pb2.UserUnblocked,
    "laiwang.messaging.room_event": messaging_events_pb2.RoomEventPersisted,
    "laiwang.zhadui.created": zhadui_events_pb2.ZhaduiCreated,
    "laiwang.zhadui.joined": zhadui_events_pb2.ZhaduiJoined,
    "laiwang.zhadui.left": zhadui_events_pb2.ZhaduiLeft,
    "laiwang.zhadui.closed": zhadui_events_pb2.ZhaduiClosed,
    "laiwang.zhadui.archived": zhadui_events_pb2.ZhaduiArchived,
    "laiwang.zhadui.active": zhadui_events_pb2.ZhaduiActive,
    "laiwang.open_platform.app_changed": open_platform_events_pb2.AppChanged,
    "laiwang.open_platform.authorization_revoked": open_platform_events_pb2.AuthorizationRevoked,
    "laiwang.open_platform.subscription_changed": open_platform_events_pb2.SubscriptionChanged,
    "laiwang.open_platform.webhook": open_platform_events_pb2.WebhookEvent,
}
# The friend-graph events: each carries the pair's whole state and a version (newest wins), so
# the projections of it (messaging's relations, zhadui's pairs) treat all four alike.
PairStateEvent = (
    contacts_events_pb2.FriendshipCreated
    | contacts_events_pb2.FriendshipRemoved
    | contacts_events_pb2.UserBlocked
    | contacts_events_pb2.UserUnblocked
)
PAIR_STATE_EVENTS: tuple[type[PairStateEvent], ...] = (
    contacts_events_pb2.FriendshipCreated,
    contacts_events_pb2.FriendshipRemoved,
    contacts_events_pb2.UserBlocked,
    contacts_events_pb2.UserUnblocked,
)
# Looked up by the subject's last two tokens (`contacts.friendship_created`), as the consumers
# always have, so that a stream whose subjects carry another root (the tests') decodes the same.
_BY_NAME: Mapping[str, type[Message]] = {subject.split(".", 1)[1]: t for subject, t in EVENT_TYPES.items()}


def event_type(subject: str) -> type[Message] | None:
    """The message `subject` carries, or None if it is not an event of the contract."""
    return _BY_NAME.get(".".join(subject.rsplit(".", 2)[-2:]))


def wake_subject(user_id: str) -> str:
    """Core-NATS subject (not a stream) on which a user's waiting /sync requests are woken.

    Hashed because user ids contain characters NATS subjects cannot; a collision only costs a
    spurious wake-up. The gateway subscribes only while it holds a /sync of that user.
    """
    return "laiwang.wake." + hashlib.sha256(user_id.encode()).hexdigest()[:32]


# Core-NATS subject (not a stream) on which gateways say that a device is syncing (DeviceSyncing).
SYNCING_SUBJECT = "laiwang.presence.syncing"
