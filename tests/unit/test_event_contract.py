"""The one event contract: every producer publishes the message plumbing.streams.EVENT_TYPES names
for its subject, and EventRouter decodes once, routes by type and ignores what is not its own."""

from __future__ import annotations

import pytest
from google.protobuf.message import Message
from nats.aio.msg import Msg

from laiwang.events.v1 import auth_events_pb2, contacts_events_pb2, messaging_events_pb2, zhadui_events_pb2
from plumbing import streams
from plumbing.jetstream import EventRouter, UndecodableEvent, decode_event
from services.auth import events as auth_events
from services.auth import model as auth_model
from services.contacts import events as contacts_events
from services.contacts.core import Pair, PairEvent, PairEventKind
from services.messaging import events as messaging_events
from services.open_platform import events as open_platform_events
from services.zhadui import store as zhadui_store

pytestmark = pytest.mark.unit


def _msg(subject: str, data: bytes) -> Msg:
    return Msg(_client=None, subject=subject, data=data)  # routing never touches the client


def test_every_registered_subject_is_in_a_declared_stream() -> None:
    for subject in streams.EVENT_TYPES:
        owners = [s.name for s in streams.ALL if any(subject.startswith(p.removesuffix(">")) for p in s.subjects)]
        assert len(owners) == 1, subject


@pytest.mark.parametrize(
    "event",
    [
        auth_model.UserRegisteredEvent("@a:t", "A", 1.0),
        auth_model.PhoneVerifiedEvent("@a:t", "+8613800000000", 1.0),
        auth_model.PhoneUnboundEvent("@a:t", "+8613800000000", 1.0),
        auth_model.ProfileChangedEvent("@a:t", "A", ""),
        auth_model.TokenRevokedEvent("@a:t", "DEV", ("t1",), False, "logout"),
        auth_model.AccountDeactivatedEvent("@a:t", 1.0),
    ],
)
def test_auth_publishes_the_registered_type(event: auth_model.DomainEvent) -> None:
    subject, message = auth_events.to_message(event)
    assert streams.EVENT_TYPES[subject] is type(message)


@pytest.mark.parametrize("kind", list(PairEventKind))
def test_contacts_publishes_the_registered_type(kind: PairEventKind) -> None:
    subject, message = contacts_events.encode(PairEvent(kind, "@a:t", "@b:t", 3, 1, Pair("@a:t", "@b:t")))
    assert streams.EVENT_TYPES[subject] is type(message)


def test_messaging_and_zhadui_subjects_carry_their_types() -> None:
    assert streams.EVENT_TYPES[messaging_events.ROOM_EVENT_SUBJECT] is messaging_events_pb2.RoomEventPersisted
    expected = {
        zhadui_store.SUBJECT_CREATED: zhadui_events_pb2.ZhaduiCreated,
        zhadui_store.SUBJECT_JOINED: zhadui_events_pb2.ZhaduiJoined,
        zhadui_store.SUBJECT_LEFT: zhadui_events_pb2.ZhaduiLeft,
        zhadui_store.SUBJECT_CLOSED: zhadui_events_pb2.ZhaduiClosed,
        zhadui_store.SUBJECT_ARCHIVED: zhadui_events_pb2.ZhaduiArchived,
        zhadui_store.SUBJECT_ACTIVE: zhadui_events_pb2.ZhaduiActive,
    }
    assert {s: streams.EVENT_TYPES[s] for s in expected} == expected


@pytest.mark.parametrize(
    "published",
    [
        open_platform_events.app_changed("client", "@a:t", "registered", 1),
        open_platform_events.authorization_revoked("client", "@a:t", ["g1"], "user", 1),
        open_platform_events.subscription_changed("client", "@a:t", "!r:t", True, 1),
        open_platform_events.webhook_event("msg_1", "client", "@a:t", "message.received", {}, 1),
    ],
)
def test_open_platform_publishes_the_registered_type(published: tuple[str, Message]) -> None:
    subject, message = published
    assert streams.EVENT_TYPES[subject] is type(message)


def test_decode_event_names_the_type_and_refuses_a_foreign_payload() -> None:
    data = auth_events_pb2.ProfileChanged(user_id="@a:t", display_name="A").SerializeToString()
    decoded = decode_event("laiwang.auth.profile_changed", data)
    assert isinstance(decoded, auth_events_pb2.ProfileChanged)
    assert decoded.display_name == "A"
    assert decode_event("laiwang.auth.something_newer", data) is None
    with pytest.raises(UndecodableEvent):
        decode_event("laiwang.auth.profile_changed", b"\xff\xff\xff")


async def test_router_routes_by_type_and_ignores_the_rest() -> None:
    seen: list[tuple[str, Message]] = []

    async def on_created(event: contacts_events_pb2.FriendshipCreated, msg: Msg) -> None:
        seen.append((msg.subject, event))

    router = EventRouter("test").on(contacts_events_pb2.FriendshipCreated, on_created)
    created = contacts_events_pb2.FriendshipCreated(user_a="@a:t", user_b="@b:t", version=2)
    await router(_msg("laiwang.contacts.friendship_created", created.SerializeToString()))
    removed = contacts_events_pb2.FriendshipRemoved(user_a="@a:t", user_b="@b:t", version=3)
    await router(_msg("laiwang.contacts.friendship_removed", removed.SerializeToString()))  # no route: ignored
    await router(_msg("laiwang.contacts.not_yet_invented", b"\x08\x01"))  # not in the contract: ignored
    await router(_msg("laiwang.contacts.friendship_created", b"\xff\xff\xff"))  # undecodable: skipped
    assert seen == [("laiwang.contacts.friendship_created", created)]


async def test_a_failing_route_raises_so_the_consumer_retries() -> None:
    async def broken(event: auth_events_pb2.UserRegistered, msg: Msg) -> None:
        raise RuntimeError("store away")

    router = EventRouter("test").on(auth_events_pb2.UserRegistered, broken)
    with pytest.raises(RuntimeError, match="store away"):
        await router(
            _msg("laiwang.auth.user_registered", auth_events_pb2.UserRegistered(user_id="@a:t").SerializeToString())
        )


def test_router_refuses_a_type_outside_the_registry() -> None:
    async def route(event: contacts_events_pb2.PairState, msg: Msg) -> None: ...

    with pytest.raises(ValueError, match="PairState"):
        EventRouter("test").on(contacts_events_pb2.PairState, route)
