"""Events the contacts service produces and consumes (NATS JetStream).

Consumes auth's events (stream AUTH) into its own phone index and profiles; every handler is
idempotent, because delivery is at-least-once. Produces the friend-graph events (stream
CONTACTS) through the transactional outbox.
"""

from __future__ import annotations

from google.protobuf.message import Message
from nats.aio.msg import Msg
from pymongo.asynchronous.client_session import AsyncClientSession

from laiwang.events.v1 import auth_events_pb2 as ev
from laiwang.events.v1 import contacts_events_pb2
from plumbing import streams
from plumbing.jetstream import ConsumerSpec, EventRouter, Handler
from plumbing.outbox import Outbox
from services.contacts.core import Pair, PairEvent, PairEventKind
from services.contacts.logic import ContactsLogic

AUTH_CONSUMER = ConsumerSpec(stream=streams.AUTH, durable="contacts-auth-events", filter_subject="laiwang.auth.>")
SUBJECT_PREFIX = "laiwang.contacts."


def auth_handler(logic: ContactsLogic) -> Handler:
    """auth's events into the phone index and profiles; token_revoked and anything newer are not ours."""

    async def registered(e: ev.UserRegistered, _: Msg) -> None:
        await logic.user_registered(e.user_id, e.display_name)

    async def verified(e: ev.PhoneVerified, message: Msg) -> None:
        await logic.phone_verified(e.user_id, e.msisdn, e.verified_at_ms or _stream_ms(message))

    async def unbound(e: ev.PhoneUnbound, message: Msg) -> None:
        await logic.phone_unbound(e.user_id, e.msisdn, e.unbound_at_ms or _stream_ms(message))

    async def profile(e: ev.ProfileChanged, _: Msg) -> None:
        await logic.profile_changed(e.user_id, e.display_name)

    async def deactivated(e: ev.AccountDeactivated, message: Msg) -> None:
        await logic.account_deactivated(e.user_id, e.deactivated_at_ms or _stream_ms(message))

    return (
        EventRouter("contacts-auth-events")
        .on(ev.UserRegistered, registered)
        .on(ev.PhoneVerified, verified)
        .on(ev.PhoneUnbound, unbound)
        .on(ev.ProfileChanged, profile)
        .on(ev.AccountDeactivated, deactivated)
    )


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
