"""Single events, context, relations and edit aggregation; profile propagation (fakes, no I/O)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from plumbing.domain_errors import DomainError
from services.messaging.core import Messaging, Settings
from tests.unit.messaging_fakes import FakeStore, RecordingNotifier

pytestmark = pytest.mark.unit

A, B, C = "@alice:t", "@bob:t", "@carol:t"


@pytest.fixture
async def world() -> AsyncIterator[tuple[Messaging, FakeStore]]:
    store = FakeStore()
    messaging = Messaging(store, RecordingNotifier(), Settings(server_name="t", invite_policy="anyone"))
    await messaging.start()
    yield messaging, store
    await messaging.stop()


def text(body: str, **extra: object) -> bytes:
    return orjson.dumps({"msgtype": "m.text", "body": body, **extra})


async def errcode(awaitable) -> str:
    with pytest.raises(DomainError) as caught:
        await awaitable
    return caught.value.errcode


async def _room(core: Messaging) -> str:
    room = await core.create_room(A, {"invite": [B]})
    await core.change_membership(B, room, "join")
    return room


async def test_get_event_with_its_edit_and_authz(world) -> None:
    core, _ = world
    room = await _room(core)
    original = await core.send_event(A, "d", room, "m.room.message", "t1", text("helo"))
    edit = await core.send_event(
        A,
        "d",
        room,
        "m.room.message",
        "t2",
        text(
            "* hello",
            **{"m.new_content": {"msgtype": "m.text", "body": "hello"}},
            **{"m.relates_to": {"rel_type": "m.replace", "event_id": original}},
        ),
    )
    event = await core.get_event(B, "d", room, original)
    assert event["content"]["body"] == "helo"
    assert event["unsigned"]["m.relations"]["m.replace"]["event_id"] == edit
    # Outsiders cannot tell a hidden event from a missing one.
    assert await errcode(core.get_event(C, "d", room, original)) == "M_NOT_FOUND"
    assert await errcode(core.get_event(B, "d", room, "$nope")) == "M_NOT_FOUND"
    assert await errcode(core.get_event(B, "d", "!other:t", original)) == "M_NOT_FOUND"


async def test_former_members_see_events_only_up_to_their_leave(world) -> None:
    core, _ = world
    room = await _room(core)
    before = await core.send_event(A, "d", room, "m.room.message", "t1", text("before"))
    await core.change_membership(B, room, "leave")
    after = await core.send_event(A, "d", room, "m.room.message", "t2", text("after"))
    assert (await core.get_event(B, "d", room, before))["content"]["body"] == "before"
    assert await errcode(core.get_event(B, "d", room, after)) == "M_NOT_FOUND"


async def test_context_around_an_event_with_lazy_loaded_members(world) -> None:
    core, _ = world
    room = await core.create_room(A, {"invite": [B, C]})
    await core.change_membership(B, room, "join")
    await core.change_membership(C, room, "join")
    ids = [await core.send_event(A, "d", room, "m.room.message", f"t{i}", text(f"m{i}")) for i in range(6)]
    body = await core.event_context(B, "d", room, ids[3], 4, False)
    assert body["event"]["event_id"] == ids[3]
    assert [e["event_id"] for e in body["events_before"]] == [ids[2], ids[1]]
    assert [e["event_id"] for e in body["events_after"]] == [ids[4], ids[5]]
    assert {e["state_key"] for e in body["state"] if e["type"] == "m.room.member"} == {A, B, C}
    lazy = await core.event_context(B, "d", room, ids[3], 4, True)
    assert {e["state_key"] for e in lazy["state"] if e["type"] == "m.room.member"} == {A, B}
    older = await core.messages(B, "d", room, lazy["start"], "", "b", 1)
    assert [e["event_id"] for e in older["chunk"]] == [ids[0]]
    assert await errcode(core.event_context(C + "x", "d", room, ids[3], 4, False)) == "M_NOT_FOUND"


async def test_relations_by_type_and_paging(world) -> None:
    core, _ = world
    room = await _room(core)
    parent = await core.send_event(A, "d", room, "m.room.message", "p", text("parent"))
    for i in range(3):
        content = orjson.dumps({"m.relates_to": {"rel_type": "m.annotation", "event_id": parent, "key": f"k{i}"}})
        await core.send_event(B, "d", room, "m.reaction", f"r{i}", content)
    thread = text("in thread", **{"m.relates_to": {"rel_type": "m.thread", "event_id": parent}})
    await core.send_event(B, "d", room, "m.room.message", "th", thread)
    everything = await core.event_relations(B, "d", room, parent)
    assert len(everything["chunk"]) == 4
    page = await core.event_relations(B, "d", room, parent, "m.annotation", "m.reaction", limit=2)
    assert [e["content"]["m.relates_to"]["key"] for e in page["chunk"]] == ["k2", "k1"]
    rest = await core.event_relations(B, "d", room, parent, "m.annotation", from_token=page["next_batch"], limit=2)
    assert [e["content"]["m.relates_to"]["key"] for e in rest["chunk"]] == ["k0"]
    assert "next_batch" not in rest
    assert (await core.event_relations(B, "d", room, parent, "m.thread"))["chunk"][0]["content"]["body"] == "in thread"
    assert await errcode(core.event_relations(C, "d", room, parent)) == "M_NOT_FOUND"
    assert await errcode(core.event_relations(B, "d", room, parent, from_token="junk")) == "M_INVALID_PARAM"


async def test_profile_changes_reach_every_joined_room_once(world) -> None:
    core, store = world
    first = await _room(core)
    second = await core.create_room(B, {})
    assert await core.profile_changed(B, "Bob B", "mxc://t/abc") == 2
    for room in (first, second):
        members = (await core.get_members(A if room == first else B, room))["chunk"]
        bob = next(e for e in members if e["state_key"] == B)
        assert bob["content"] == {"membership": "join", "displayname": "Bob B", "avatar_url": "mxc://t/abc"}
    assert await core.profile_changed(B, "Bob B", "mxc://t/abc") == 0  # a redelivery writes nothing
    # Later joins carry the profile too.
    third = await core.create_room(A, {"invite": [B]})
    await core.change_membership(B, third, "join")
    bob = next(e for e in (await core.get_members(A, third))["chunk"] if e["state_key"] == B)
    assert bob["content"]["displayname"] == "Bob B"
    assert store.profiles[B]["displayname"] == "Bob B"
