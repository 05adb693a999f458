"""Events the contacts service produces and consumes (NATS JetStream).

Consumes auth's events (stream AUTH) into its own phone index and profiles; every handler is
idempotent, because delivery is at-least-once. Produces the friend-graph events (stream
CONTACTS) through the transactional outbox.
"""

from __future__ import annotations

import logging

from google.protobuf.message import DecodeError, Message
from nats.aio.msg import Msg
from pymongo.asynchronous.client_session import AsyncClientSession

from laiwang.events.v1 import auth_events_pb2, contacts_events_pb2
from plumbing import streams
from plumbing.jetstream import ConsumerSpec, Handler
from plumbing.outbox import Outbox
from services.contacts.core import Pair, PairEvent, PairEventKind
from services.contacts.logic import ContactsLogic

log = logging.getLogger(__name__)

AUTH_CONSUMER = ConsumerSpec(stream=streams.AUTH, durable="contacts-auth-events", filter_subject="laiwang.auth.>")
SUBJECT_PREFIX = "laiwang.contacts."


def auth_handler(logic: ContactsLogic) -> Handler:
    async def handle(message: Msg) -> None:
        name = message.subject.rsplit(".", 1)[-1]
        try:
            if name == "user_registered":
                e = auth_events_pb2.UserRegistered.FromString(message.data)
                await logic.user_registered(e.user_id, e.display_name)
            elif name == "phone_verified":
                v = auth_events_pb2.PhoneVerified.FromString(message.data)
                await logic.phone_verified(v.user_id, v.msisdn, v.verified_at_ms or _stream_ms(message))
            elif name == "phone_unbound":
                u = auth_events_pb2.PhoneUnbound.FromString(message.data)
                await logic.phone_unbound(u.user_id, u.msisdn, u.unbound_at_ms or _stream_ms(message))
            elif name == "profile_changed":
                p = auth_events_pb2.ProfileChanged.FromString(message.data)
                await logic.profile_changed(p.user_id, p.display_name)
            elif name == "account_deactivated":
                d = auth_events_pb2.AccountDeactivated.FromString(message.data)
                await logic.account_deactivated(d.user_id, d.deactivated_at_ms or _stream_ms(message))
            # token_revoked and anything newer are not ours to act on.
        except DecodeError:
            # Retrying cannot fix a malformed payload; log it and let the ack drop it.
            log.error("undecodable auth event on %s; skipped", message.subject)

    return handle


def _stream_ms(message: Msg) -> int:
    """Fallback ordering when an event lacks its own time: the stream's timestamp."""
    if message.metadata and message.metadata.timestamp:
        return int(message.metadata.timestamp.timestamp() * 1000)
    return 0


def _state(pair: Pair) -> contacts_events_pb2.PairState:
    return contacts_events_pb2.PairState(
        user_a=pair.a, user_b=pair.b, friends=pair.friends, a_blocks_b=pair.a_blocks_b, b_blocks_a=pair.b_blocks_a
    )


def encode(event: PairEvent) -> tuple[str, Message]:
    """The subject and protobuf message of a friend-graph event."""
    state = _state(event.state)
    message: Message
    if event.kind is PairEventKind.FRIENDSHIP_CREATED:
        message = contacts_events_pb2.FriendshipCreated(
            user_a=event.first, user_b=event.second, version=event.version, created_at_ms=event.at_ms, state=state
        )
    elif event.kind is PairEventKind.FRIENDSHIP_REMOVED:
        message = contacts_events_pb2.FriendshipRemoved(
            user_a=event.first, user_b=event.second, version=event.version, removed_at_ms=event.at_ms, state=state
        )
    elif event.kind is PairEventKind.USER_BLOCKED:
        message = contacts_events_pb2.UserBlocked(
            blocker=event.first, blocked=event.second, version=event.version, blocked_at_ms=event.at_ms, state=state
        )
    else:
        message = contacts_events_pb2.UserUnblocked(
            blocker=event.first,
            blocked=event.second,
            version=event.version,
            unblocked_at_ms=event.at_ms,
            state=state,
        )
    return SUBJECT_PREFIX + event.kind.value, message


class PairEventProducer:
    """Stages friend-graph events in the outbox inside the caller's transaction."""

    def __init__(self, outbox: Outbox) -> None:
        self._outbox = outbox

    async def stage(self, session: AsyncClientSession, event: PairEvent) -> None:
        subject, message = encode(event)
        await self._outbox.add(session, subject, message)

    def kick(self) -> None:
        self._outbox.kick()
