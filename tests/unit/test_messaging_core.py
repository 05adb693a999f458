"""The messaging rules against in-memory fakes: policy, membership, power levels, validation, order, sync."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest

from plumbing.domain_errors import DomainError
from services.messaging.core import Messaging, Settings
from services.messaging.rules import (
    check_canonical,
    pair_id,
    parse_page_token,
    parse_sync_token,
    sync_token,
    validate_message_content,
)
from tests.unit.messaging_fakes import FakeStore, RecordingNotifier

pytestmark = pytest.mark.unit

A, B, C = "@a:t", "@b:t", "@c:t"


def text(body: str) -> bytes:
    return orjson.dumps({"msgtype": "m.text", "body": body})


def befriend(store: FakeStore, x: str, y: str, *, friends: bool = True, blocks: tuple[bool, bool] = (False, False)):
    a, b = sorted((x, y))
    store.relations[pair_id(x, y)] = {
        "user_a": a,
        "user_b": b,
        "friends": friends,
        "a_blocks_b": blocks[0],
        "b_blocks_a": blocks[1],
        "version": 1,
    }


@pytest.fixture
async def world() -> AsyncIterator[tuple[Messaging, FakeStore, RecordingNotifier]]:
    store = FakeStore()
    notifier = RecordingNotifier()
    # No relation caching here, so a test's change to the projection counts at once.
    core = Messaging(store, notifier, Settings(server_name="t", invite_policy="friends", relations_cache_seconds=0))
    await core.start()
    yield core, store, notifier
    await core.stop()


async def errcode(awaitable) -> str:
    with pytest.raises(DomainError) as caught:
        await awaitable
    return caught.value.errcode


# -- invite policy -------------------------------------------------------------------------------


async def test_friends_policy_refuses_strangers_and_allows_friends(world) -> None:
    core, store, _ = world
    assert await errcode(core.create_room(A, {"is_direct": True, "invite": [B]})) == "M_FORBIDDEN"
    assert not store.rooms  # nothing half-written
    befriend(store, A, B)
    room = await core.create_room(A, {"is_direct": True, "invite": [B]})
    assert store.rooms[room]["direct_pair"] == [A, B]
    group = await core.create_room(A, {"name": "g"})
    assert await errcode(core.change_membership(A, group, "invite", C)) == "M_FORBIDDEN"
    await core.change_membership(A, group, "invite", B)


async def test_a_block_either_way_refuses_invites_and_messages_both_ways(world) -> None:
    core, store, _ = world
    befriend(store, A, B)
    room = await core.create_room(A, {"is_direct": True, "invite": [B]})
    await core.change_membership(B, room, "join")
    await core.send_event(B, "d", room, "m.room.message", "1", text("hi"))
    a_is_first = A < B
    befriend(store, A, B, blocks=(False, True) if a_is_first else (True, False))  # B blocks A
    assert await errcode(core.send_event(A, "d", room, "m.room.message", "2", text("hello?"))) == "M_FORBIDDEN"
    assert await errcode(core.send_event(B, "d", room, "m.room.message", "3", text("no"))) == "M_FORBIDDEN"
    assert await errcode(core.create_room(A, {"is_direct": True, "invite": [B]})) == "M_FORBIDDEN"


async def test_anyone_policy_still_honours_blocks() -> None:
    store = FakeStore()
    core = Messaging(store, settings=Settings(server_name="t", invite_policy="anyone", relations_cache_seconds=0))
    await core.start()
    try:
        await core.create_room(A, {"is_direct": True, "invite": [C]})
        befriend(store, A, B, friends=False, blocks=(True, False))
        assert await errcode(core.create_room(A, {"is_direct": True, "invite": [B]})) == "M_FORBIDDEN"
    finally:
        await core.stop()


async def test_service_rpcs_bypass_the_friend_policy(world) -> None:
    core, _, _ = world
    room = await core.create_room(A, {"name": "zhadui", "invite": [B]}, bypass_policy=True, service="zhadui")
    await core.service_set_membership("zhadui", room, C, "join")
    await core.change_membership(B, room, "join")
    members = (await core.get_members(C, room))["chunk"]
    assert {e["state_key"]: e["content"]["membership"] for e in members} == {A: "join", B: "join", C: "join"}
    assert await errcode(core.service_set_membership("", room, C, "leave")) == "M_INVALID_PARAM"


# -- membership and power levels ---------------------------------------------------------------------


async def test_membership_rules(world) -> None:
    core, store, _ = world
    befriend(store, A, B)
    befriend(store, A, C)
    room = await core.create_room(A, {"name": "g", "invite": [B]})
    assert await errcode(core.change_membership(C, room, "join")) == "M_FORBIDDEN"  # not invited
    await core.change_membership(B, room, "join")
    assert await errcode(core.change_membership(B, room, "kick", A)) == "M_FORBIDDEN"  # power levels
    assert await errcode(core.change_membership(B, room, "invite", C)) == "M_FORBIDDEN"  # not B's friend
    await core.change_membership(A, room, "ban", B)
    assert await errcode(core.change_membership(B, room, "join")) == "M_FORBIDDEN"
    assert await errcode(core.send_event(B, "d", room, "m.room.message", "x", text("x"))) == "M_FORBIDDEN"
    await core.change_membership(A, room, "unban", B)
    await core.change_membership(A, room, "invite", B)
    await core.change_membership(B, room, "join")
    await core.change_membership(B, room, "leave")
    assert await core.joined_rooms(B) == []
    assert await core.joined_rooms(A) == [room]
    assert await errcode(core.change_membership(A, "!nope:t", "invite", B)) == "M_NOT_FOUND"


async def test_state_needs_power_and_is_readable(world) -> None:
    core, store, _ = world
    befriend(store, A, B)
    room = await core.create_room(A, {"name": "g", "invite": [B], "topic": "t1"})
    await core.change_membership(B, room, "join")
    assert await errcode(core.set_state(B, room, "m.room.name", "", b'{"name":"mine"}')) == "M_FORBIDDEN"
    await core.set_state(A, room, "m.room.avatar", "", b'{"url":"mxc://t/abc"}')
    assert await core.get_state(B, room, "m.room.avatar", "", single=True) == {"url": "mxc://t/abc"}
    assert await core.get_state(B, room, "m.room.topic", "", single=True) == {"topic": "t1"}
    assert await errcode(core.get_state(B, room, "m.room.nothing", "", single=True)) == "M_NOT_FOUND"
    assert await errcode(core.set_state(A, room, "m.room.member", A, b'{"membership":"join"}')) == "M_FORBIDDEN"
    pl = await core.get_state(A, room, "m.room.power_levels", "", single=True)
    assert (
        await errcode(
            core.set_state(B, room, "m.room.power_levels", "", orjson.dumps({**pl, "users": {**pl["users"], B: 100}}))
        )
        == "M_FORBIDDEN"
    )


# -- events -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event_type", "content", "ok"),
    [
        ("m.room.message", {"msgtype": "m.text", "body": "hi"}, True),
        ("m.room.message", {"msgtype": "m.notice", "body": "n"}, True),
        ("m.room.message", {"msgtype": "m.emote", "body": "waves"}, True),
        ("m.room.message", {"msgtype": "m.image", "body": "cat.png", "url": "mxc://t/cat"}, True),
        ("m.room.message", {"msgtype": "m.file", "body": "a.pdf"}, False),
        ("m.room.message", {"body": "no msgtype"}, False),
        ("m.room.message", {"msgtype": "m.text"}, False),
        ("cn.laiwang.share_card", {"url": "https://shop.example/1", "title": "Tea set"}, True),
        ("cn.laiwang.share_card", {"url": "javascript:alert(1)", "title": "x"}, False),
        ("cn.laiwang.music_card", {"title": "Song", "url": "https://music.example/1", "duration_ms": 1000}, True),
        ("cn.laiwang.music_card", {"title": "Song", "url": "https://music.example/1", "duration_ms": -1}, False),
        ("cn.laiwang.app_card", {"app_id": "aa", "card": {"amount_fen": 1200}}, True),
        ("cn.laiwang.app_card", {"app_id": "aa"}, False),
        ("com.example.custom", {"anything": [1, "two", None]}, True),
    ],
)
def test_content_rules(event_type: str, content: dict, ok: bool) -> None:
    if ok:
        validate_message_content(event_type, content)
    else:
        with pytest.raises(DomainError):
            validate_message_content(event_type, content)


@pytest.mark.parametrize("value", [1.5, {"a": [0.0]}, 2**53, -(2**53)])
def test_canonical_json_refuses_floats_and_big_integers(value) -> None:
    with pytest.raises(DomainError) as caught:
        check_canonical(value)
    assert caught.value.errcode == "M_BAD_JSON"


async def test_send_refusals_leave_nothing_behind(world) -> None:
    core, store, _ = world
    room = await core.create_room(A, {"name": "g"})
    before = (store.counter, len(store.entries))
    assert (
        await errcode(core.send_event(A, "d", room, "m.room.message", "1", b'{"msgtype":"m.text","body":"x","f":0.5}'))
        == "M_BAD_JSON"
    )
    big = orjson.dumps({"msgtype": "m.text", "body": "x" * 65_500})
    assert await errcode(core.send_event(A, "d", room, "m.room.message", "2", big)) == "M_TOO_LARGE"
    assert await errcode(core.send_event(A, "d", room, "m.room.message", "3", b"[1]")) == "M_BAD_JSON"
    assert await errcode(core.send_event(A, "d", room, "m.room.message", "4", b"{nope")) == "M_NOT_JSON"
    assert await errcode(core.send_event(B, "d", room, "m.room.message", "5", text("x"))) == "M_FORBIDDEN"
    assert (store.counter, len(store.entries)) == before


async def test_txn_ids_are_per_device_and_idempotent(world) -> None:
    core, store, _ = world
    room = await core.create_room(A, {"name": "g"})
    first = await core.send_event(A, "phone", room, "m.room.message", "t1", text("one"))
    assert await core.send_event(A, "phone", room, "m.room.message", "t1", text("one")) == first
    core._recent_txns.clear()  # as after a restart: found through the store instead
    assert await core.send_event(A, "phone", room, "m.room.message", "t1", text("one")) == first
    other = await core.send_event(A, "laptop", room, "m.room.message", "t1", text("one"))
    assert other != first
    messages = [e for e in store.entries.values() if e["kind"] == "event" and e["event"]["type"] == "m.room.message"]
    assert len(messages) == 2


async def test_concurrent_sends_share_transactions_and_keep_one_order(world) -> None:
    core, store, _ = world
    room = await core.create_room(A, {"name": "g"})
    before = store.transactions
    ids = await asyncio.gather(
        *(core.send_event(A, "d", room, "m.room.message", f"t{i}", text(str(i))) for i in range(40))
    )
    assert len(set(ids)) == 40
    assert store.transactions - before < 40  # group commit
    positions = sorted(e["pos"] for e in store.entries.values())
    assert positions == list(range(1, len(positions) + 1))  # contiguous, no gaps


async def test_edits_and_redactions(world) -> None:
    core, store, _ = world
    befriend(store, A, B)
    room = await core.create_room(A, {"name": "g", "invite": [B]})
    await core.change_membership(B, room, "join")
    original = await core.send_event(A, "d", room, "m.room.message", "1", text("helo"))
    edit = {
        "msgtype": "m.text",
        "body": "* hello",
        "m.new_content": {"msgtype": "m.text", "body": "hello"},
        "m.relates_to": {"rel_type": "m.replace", "event_id": original},
    }
    await core.send_event(A, "d", room, "m.room.message", "2", orjson.dumps(edit))
    assert await errcode(core.send_event(B, "d", room, "m.room.message", "3", orjson.dumps(edit))) == "M_FORBIDDEN"
    assert await errcode(core.redact(B, "d", room, original, "r1")) == "M_FORBIDDEN"
    await core.redact(A, "d", room, original, "r2", reason="typo")
    assert store.entries[original]["event"]["content"] == {}
    history = await core.messages(B, "d", room, "", "", "b", 10)
    redacted = next(e for e in history["chunk"] if e["event_id"] == original)
    assert redacted["content"] == {} and "redacted_because" in redacted["unsigned"]
    assert await errcode(core.send_event(A, "d", room, "m.room.message", "4", orjson.dumps(edit))) == "M_FORBIDDEN"


# -- sync ---------------------------------------------------------------------------------------------


async def test_sync_initial_incremental_limited_and_the_sending_device_sees_its_txn_id(world) -> None:
    core, store, notifier = world
    befriend(store, A, B)
    room = await core.create_room(A, {"is_direct": True, "invite": [B]})
    invited = await core.sync(B, "b1", "")
    assert room in invited.body["rooms"]["invite"]
    await core.change_membership(B, room, "join")
    assert B in notifier.woken_users()
    first = await core.sync(B, "b1", "")
    assert first.has_changes and room in first.body["rooms"]["join"]
    state_types = {e["type"] for e in first.body["rooms"]["join"][room]["state"]["events"]}
    timeline_types = {e["type"] for e in first.body["rooms"]["join"][room]["timeline"]["events"]}
    assert "m.room.create" in state_types | timeline_types

    empty = await core.sync(B, "b1", first.next_batch)
    assert not empty.has_changes and empty.next_batch == first.next_batch

    for i in range(15):
        await core.send_event(A, "a-phone", room, "m.room.message", f"t{i}", text(f"m{i}"))
    later = await core.sync(B, "b1", first.next_batch, timeline_limit=5)
    timeline = later.body["rooms"]["join"][room]["timeline"]
    assert timeline["limited"] is True
    assert [e["content"]["body"] for e in timeline["events"]] == [f"m{i}" for i in range(10, 15)]
    gap = await core.messages(B, "b1", room, timeline["prev_batch"], "", "b", 100)
    assert [e["content"]["body"] for e in gap["chunk"] if e["type"] == "m.room.message"][:3] == ["m9", "m8", "m7"]
    assert later.next_batch != first.next_batch

    mine = await core.sync(A, "a-phone", first.next_batch, timeline_limit=50)
    echoes = [e for e in mine.body["rooms"]["join"][room]["timeline"]["events"] if e["type"] == "m.room.message"]
    assert echoes[0]["unsigned"]["transaction_id"] == "t0"
    other_device = await core.sync(A, "a-laptop", first.next_batch, timeline_limit=50)
    assert all(
        "transaction_id" not in e.get("unsigned", {})
        for e in other_device.body["rooms"]["join"][room]["timeline"]["events"]
    )


async def test_kicked_user_gets_leave_and_nothing_after(world) -> None:
    core, store, _ = world
    befriend(store, A, B)
    room = await core.create_room(A, {"name": "g", "invite": [B]})
    await core.change_membership(B, room, "join")
    since = (await core.sync(B, "d", "")).next_batch
    await core.send_event(A, "d", room, "m.room.message", "1", text("before"))
    await core.change_membership(A, room, "kick", B, reason="spam")
    await core.send_event(A, "d", room, "m.room.message", "2", text("after"))
    result = await core.sync(B, "d", since)
    assert room not in result.body["rooms"]["join"]
    bodies = [e["content"].get("body") for e in result.body["rooms"]["leave"][room]["timeline"]["events"]]
    assert "before" in bodies and "after" not in bodies
    assert await errcode(core.messages(C, "d", room, "", "", "b", 10)) == "M_FORBIDDEN"
    history = await core.messages(B, "d", room, "", "", "b", 10)
    assert "after" not in [e["content"].get("body") for e in history["chunk"]]


async def test_receipts_unread_and_typing(world) -> None:
    core, store, _ = world
    befriend(store, A, B)
    room = await core.create_room(A, {"is_direct": True, "invite": [B]})
    await core.change_membership(B, room, "join")
    ids = [await core.send_event(A, "d", room, "m.room.message", f"t{i}", text(str(i))) for i in range(4)]
    first = await core.sync(B, "d", "")
    assert first.body["rooms"]["join"][room]["unread_notifications"]["notification_count"] == 4
    await core.send_receipt(B, room, "m.read", ids[2])
    await core.send_receipt(B, room, "m.read", ids[0])  # receipts never move backwards
    after = await core.sync(B, "d", first.next_batch)
    joined = after.body["rooms"]["join"][room]
    assert joined["unread_notifications"]["notification_count"] == 1
    receipt = next(e for e in joined["ephemeral"]["events"] if e["type"] == "m.receipt")
    assert B in receipt["content"][ids[2]]["m.read"]

    await core.set_typing(B, room, True, 5000)
    typing = await core.sync(A, "d", after.next_batch)
    assert typing.has_changes
    event = next(e for e in typing.body["rooms"]["join"][room]["ephemeral"]["events"] if e["type"] == "m.typing")
    assert event["content"]["user_ids"] == [B]
    core.typing.rooms[room][B] = 0  # as if the timeout passed
    await core.expire_typing()
    stopped = await core.sync(A, "d", typing.next_batch)
    event = next(e for e in stopped.body["rooms"]["join"][room]["ephemeral"]["events"] if e["type"] == "m.typing")
    assert event["content"]["user_ids"] == []
    assert await errcode(core.set_typing(C, room, True, 1000)) == "M_FORBIDDEN"


async def test_a_second_replica_catches_up_from_the_store(world) -> None:
    core, store, _ = world
    befriend(store, A, B)
    room = await core.create_room(A, {"is_direct": True, "invite": [B]})
    await core.change_membership(B, room, "join")
    replica = Messaging(store, settings=Settings(server_name="t"))
    await replica.start()
    try:
        since = (await replica.sync(B, "d", "")).next_batch
        await core.send_event(A, "d", room, "m.room.message", "1", text("via the other replica"))
        stale = await replica.sync(B, "d", since)  # no broadcast reached it: it has not seen the event
        assert not stale.has_changes
        fresh = await replica.sync(B, "d", since, min_position=store.counter)  # a wake-up names the position
        assert [e["content"]["body"] for e in fresh.body["rooms"]["join"][room]["timeline"]["events"]] == [
            "via the other replica"
        ]
    finally:
        await replica.stop()


def test_tokens_round_trip_and_refuse_garbage() -> None:
    assert parse_sync_token(sync_token(12, 34)) == (12, 34)
    assert parse_page_token("t7") == 7
    assert parse_page_token("s9_1") == 9
    with pytest.raises(DomainError):
        parse_sync_token("nonsense")
    with pytest.raises(DomainError):
        parse_page_token("x1")


async def test_cached_relations_are_forgotten_when_the_projection_changes() -> None:
    store = FakeStore()
    core = Messaging(store, settings=Settings(server_name="t", relations_cache_seconds=60))
    await core.start()
    try:
        assert await errcode(core.create_room(A, {"is_direct": True, "invite": [B]})) == "M_FORBIDDEN"
        befriend(store, A, B)
        core.relations.forget(pair_id(A, B))  # what the replication broadcast does on every replica
        await core.create_room(A, {"is_direct": True, "invite": [B]})
    finally:
        await core.stop()


async def test_a_stale_replica_retries_its_writes_after_catching_up(world) -> None:
    core, store, _ = world
    befriend(store, A, B)
    room = await core.create_room(A, {"name": "g", "invite": [B]})
    replica = Messaging(store, settings=Settings(server_name="t", relations_cache_seconds=0))
    await replica.start()  # sees the stream as it is now...
    try:
        await core.change_membership(B, room, "join")  # ...then the first replica writes more
        await core.send_event(A, "d", room, "m.room.message", "1", text("one"))
        stale_head = replica.cache.head
        # B's send through the stale replica claims taken positions, catches up and succeeds;
        # its membership check saw B's join only after catching up.
        await replica.send_event(B, "d", room, "m.room.message", "2", text("two"))
        assert replica.cache.head > stale_head
        await replica.change_membership(A, room, "kick", B)
        assert await errcode(core.send_event(B, "d", room, "m.room.message", "3", text("x"))) == "M_FORBIDDEN"
        positions = sorted(e["pos"] for e in store.entries.values())
        assert positions == list(range(1, len(positions) + 1))
    finally:
        await replica.stop()


async def test_encryption_state_is_checked_and_app_cards_stay_out_of_encrypted_rooms(world) -> None:
    core, store, _ = world
    befriend(store, A, B)
    room = await core.create_room(A, {"invite": [B]})
    card = orjson.dumps({"app_id": "aa", "card": {"amount_fen": 1200}, "body": "AA: 12.00"})
    await core.send_event(A, "d", room, "cn.laiwang.app_card", "t1", card)  # a plain room takes cards
    assert await errcode(core.set_state(A, room, "m.room.encryption", "", b'{"algorithm": 5}')) == "M_BAD_JSON"
    await core.set_state(A, room, "m.room.encryption", "", b'{"algorithm": "m.megolm.v1.aes-sha2"}')
    assert await errcode(core.send_event(A, "d", room, "cn.laiwang.app_card", "t2", card)) == "M_FORBIDDEN"
    await core.send_event(A, "d", room, "m.room.encrypted", "t3", b'{"algorithm": "m.megolm.v1.aes-sha2"}')
