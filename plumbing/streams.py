"""The JetStream streams of the system, declared in code.

Stream names and subjects are part of the contract between services (like `protos/`): the
producer owns its stream, and a consumer may declare the same stream so that start-up order does
not matter. Payloads are the messages of `laiwang.events.v1`.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

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


def wake_subject(user_id: str) -> str:
    """Core-NATS subject (not a stream) on which a user's waiting /sync requests are woken.

    Hashed because user ids contain characters NATS subjects cannot; a collision only costs a
    spurious wake-up. The gateway subscribes only while it holds a /sync of that user.
    """
    return "laiwang.wake." + hashlib.sha256(user_id.encode()).hexdigest()[:32]


# Core-NATS subject (not a stream) on which gateways say that a device is syncing (DeviceSyncing).
SYNCING_SUBJECT = "laiwang.presence.syncing"
