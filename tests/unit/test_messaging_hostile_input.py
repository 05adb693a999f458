"""Hostile input and faults in the messaging core (issue 9): one bad request never fails another's, and
a former member reads nothing after their leave."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import AsyncIterator

import orjson
import pytest

from plumbing.domain_errors import DomainError
from services.messaging.core import Messaging, Settings
from services.messaging.rules import (
    JSON,
    MAX_DEPTH,
    check_canonical,
    valid_user_id,
)
from tests.unit.messaging_fakes import FakeStore, FakeTx

pytestmark = pytest.mark.unit

A, C, D = "@a:t", "@c:t", "@d:t"


def text(body: str) -> bytes:
    return orjson.dumps({"msgtype": "m.text", "body": body})


def deep_bytes(levels: int) -> bytes:
    """A JSON object nested `levels` deep, as bytes (orjson reads more levels than it writes)."""
    return b'{"x":' * (levels - 1) + b"{}" + b"}" * (levels - 1)


def nested(levels: int) -> JSON:
    value: JSON = {}
    for _ in range(levels - 1):
        value = {"x": value}
    return value


async def errcode(awaitable) -> str:
    with pytest.raises(DomainError) as caught:
        await awaitable
    return caught.value.errcode


class PoisonStore(FakeStore):
    """A store that fails, the way BSON or a serialiser would, on an entry no rule foresaw."""

    async def append_entries(self, entries: list[JSON]) -> None:
        if any("poison" in e.get("event", {}).get("content", {}) for e in entries):
            raise ValueError("the store refused a document")
        await super().append_entries(entries)

    def reader(self) -> FakeTx:
        return _FaultyReads(self)


class _FaultyReads(FakeTx):
    async def entry(self, event_id: str) -> JSON | None:
        if event_id == "$boom":
            raise RuntimeError("a fault in one request")
        return await super().entry(event_id)


@pytest.fixture
async def core() -> AsyncIterator[Messaging]:
    messaging = Messaging(PoisonStore(), settings=Settings(server_name="t", invite_policy="anyone"))
    await messaging.start()
    yield messaging
    await messaging.stop()


# -- the validation rules ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [
        nested(MAX_DEPTH + 1),
        [[[[]]]] * 2 + [nested(MAX_DEPTH)],  # too deep (as object, inside an array)
        {"a\x00b": 1},
        {1: "x"},
        {"k": "\ud800"},
        {"\udfff": 1},  # NUL in a key, non-str key, lone surrogates
        {"n": 2**53},
        {"n": -(2**53)},
        {"f": 1.5},
        {"s": {1, 2}},  # out of range, float, not JSON
    ],
)
def test_check_canonical_refuses_what_serialisation_or_storage_would(value) -> None:
    with pytest.raises(DomainError) as caught:
        check_canonical(value)
    assert caught.value.errcode == "M_BAD_JSON"


def test_check_canonical_accepts_the_limits() -> None:
    check_canonical({"deep": nested(MAX_DEPTH - 1), "n": 2**53 - 1, "m": -(2**53) + 1, "$k": "a.b", "k.v": None})


@pytest.mark.parametrize(
    "user_id, ok",
    [
        ("@a:t", True),
        ("@Alice_1=x/y:example.org:8448", True),
        ("@a:[::1]:8008", True),
        ("@用:localhost", False),
        ("@a:b/../c", False),
        ("@a\x00:t", False),
        ("a:t", False),
        ("@:t", False),
        ("@a:t\n", False),
        ("@a b:t", False),
        ("@" + "a" * 260 + ":t", False),
    ],
)
def test_valid_user_id(user_id: str, ok: bool) -> None:
    assert valid_user_id(user_id) is ok


# -- each path that puts client JSON into the writer ----------------------------------------------------


async def test_bad_content_gets_400_on_every_write_path(core: Messaging) -> None:
    room = await core.create_room(A, {})
    deep = b'{"msgtype":"m.text","body":"x","d":' + deep_bytes(300) + b"}"
    assert await errcode(core.send_event(A, "d", room, "m.room.message", "1", deep)) == "M_BAD_JSON"
    nul = b'{"msgtype":"m.text","body":"x","a\\u0000b":1}'
    assert await errcode(core.send_event(A, "d", room, "m.room.message", "2", nul)) == "M_BAD_JSON"
    assert await errcode(core.set_state(A, room, "m.x", "", deep_bytes(300))) == "M_BAD_JSON"
    assert await errcode(core.set_state(A, room, "m.x", "", nul)) == "M_BAD_JSON"
    bad_state = [{"type": "m.x", "state_key": "", "content": orjson.loads(deep_bytes(300))}]
    assert await errcode(core.create_room(A, {"initial_state": bad_state})) == "M_BAD_JSON"
    assert (
        await errcode(core.create_room(A, {"initial_state": [{"type": "m.x", "content": {"\x00": 1}}]})) == "M_BAD_JSON"
    )
    assert (
        await errcode(core.create_room(A, {"power_level_content_override": {"users": {"@x\x00:t": 1}}})) == "M_BAD_JSON"
    )
    assert await errcode(core.create_room(A, {"invite": ["@x\x00:t"]})) == "M_INVALID_PARAM"


async def test_create_room_field_types_and_room_versions(core: Messaging) -> None:
    assert await errcode(core.create_room(A, {"room_version": 5})) == "M_BAD_JSON"
    assert await errcode(core.create_room(A, {"room_version": "99"})) == "M_UNSUPPORTED_ROOM_VERSION"
    await core.create_room(A, {"room_version": "10"})
    for body in (
        {"name": 1},
        {"topic": ["x"]},
        {"is_direct": "yes"},
        {"visibility": 3},
        {"name": "n" * 256},
        {"initial_state": [{"type": "m.x", "state_key": 7, "content": {}}]},
    ):
        assert await errcode(core.create_room(A, body)) == "M_BAD_JSON", body
    assert await errcode(core.create_room(A, {"preset": ["public_chat"]})) == "M_INVALID_PARAM"
    assert await errcode(core.create_room(A, {"invite": ["@用:localhost"]})) == "M_INVALID_PARAM"
    long_key = [{"type": "m.x", "state_key": "k" * 256, "content": {}}]
    assert await errcode(core.create_room(A, {"initial_state": long_key})) == "M_INVALID_PARAM"


async def test_state_keys_and_ids_are_at_most_255_bytes(core: Messaging) -> None:
    room = await core.create_room(A, {})
    await core.set_state(A, room, "m.x", "k" * 255, b"{}")
    assert await errcode(core.set_state(A, room, "m.x", "k" * 7000, b"{}")) == "M_INVALID_PARAM"
    assert await errcode(core.set_state(A, room, "m.x", "é" * 128, b"{}")) == "M_INVALID_PARAM"  # 256 bytes
    assert await errcode(core.send_event(A, "d", room, "t" * 256, "1", text("x"))) == "M_INVALID_PARAM"
    assert await errcode(core.send_event(A, "d", room, "m.room.message", "x" * 256, text("x"))) == "M_INVALID_PARAM"


# -- the writer isolates a failing request from its batch ---------------------------------------------------


async def test_a_write_fault_fails_only_its_own_request(core: Messaging) -> None:
    room = await core.create_room(A, {})
    poison = orjson.dumps({"msgtype": "m.text", "body": "x", "poison": 1})
    sends = [core.send_event(A, "d", room, "m.room.message", f"ok{i}", text(f"m{i}")) for i in range(20)]
    sends.insert(7, core.send_event(A, "d", room, "m.room.message", "bad", poison))  # same group commit
    results = await asyncio.gather(*sends, return_exceptions=True)
    bad = results.pop(7)
    assert isinstance(bad, ValueError)
    assert all(isinstance(r, str) for r in results), results
    frames = {frame.name for frame in traceback.extract_tb(bad.__traceback__)}
    assert {"perform_send", "_run_appends"} <= frames  # the request's own path, then the writer's
    history = await core.messages(A, "d", room, "", "", "b", 100)
    assert sum(1 for e in history["chunk"] if e["type"] == "m.room.message") == 20


async def test_a_fault_while_validating_fails_only_its_own_request(core: Messaging) -> None:
    room = await core.create_room(A, {})
    edit = orjson.dumps(
        {
            "msgtype": "m.text",
            "body": "*x",
            "m.new_content": {"msgtype": "m.text", "body": "x"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$boom"},
        }
    )
    sends = [core.send_event(A, "d", room, "m.room.message", f"ok{i}", text(f"m{i}")) for i in range(10)]
    sends.insert(3, core.send_event(A, "d", room, "m.room.message", "edit", edit))
    results = await asyncio.gather(*sends, return_exceptions=True)
    assert isinstance(results.pop(3), RuntimeError)
    assert all(isinstance(r, str) for r in results), results


async def test_an_outage_fails_the_batch_at_once() -> None:
    class DownStore(FakeStore):
        async def append_entries(self, entries: list[JSON]) -> None:
            self.transactions += 1
            raise ConnectionError("store unreachable")

    store = DownStore()
    messaging = Messaging(store, settings=Settings(server_name="t", invite_policy="anyone"))
    await messaging.start()
    try:
        room = await messaging.create_room(A, {})
        before = store.transactions
        sends = [messaging.send_event(A, "d", room, "m.room.message", f"t{i}", text("x")) for i in range(10)]
        results = await asyncio.gather(*sends, return_exceptions=True)
        assert all(isinstance(r, ConnectionError) for r in results)
        assert store.transactions - before < 10  # not retried one by one
    finally:
        await messaging.stop()


# -- a former member reads nothing after their leave ---------------------------------------------------


async def test_kicked_member_sees_the_room_only_as_of_the_kick(core: Messaging) -> None:
    room = await core.create_room(A, {"preset": "public_chat"})
    await core.change_membership(C, room, "join")
    await core.send_event(A, "d", room, "m.room.message", "1", text("before"))
    await core.change_membership(A, room, "kick", C, reason="bye")
    first = await core.sync(C, "d", "")
    await core.change_membership(D, room, "join")
    await core.send_event(A, "d", room, "m.room.message", "2", text("after"))
    await core.change_membership(A, room, "ban", C, reason="secret reason")
    await core.set_state(A, room, "m.room.topic", "", b'{"topic":"later"}')

    members = {e["state_key"]: e["content"]["membership"] for e in (await core.get_members(C, room))["chunk"]}
    assert members == {A: "join", C: "leave"}  # not D's join, not the ban
    assert await errcode(core.get_state(C, room)) == "M_FORBIDDEN"
    assert await errcode(core.get_state(C, room, "m.room.topic", "", single=True)) == "M_FORBIDDEN"
    bodies = [e["content"].get("body") for e in (await core.messages(C, "d", room, "", "", "b", 100))["chunk"]]
    assert "before" in bodies and "after" not in bodies
    forward = await core.messages(C, "d", room, "t0", "", "f", 100)
    assert all(e["sender"] != D and e["content"].get("body") != "after" for e in forward["chunk"])
    later = await core.sync(C, "d", first.next_batch)
    events = later.body["rooms"]["leave"].get(room, {}).get("timeline", {}).get("events", [])
    assert [(e["type"], e["content"].get("membership")) for e in events] == [("m.room.member", "ban")]
    assert all(e["sender"] != D for e in events)
