"""Account data, m.fully_read, push rules and pushers in the messaging core (fakes, no I/O)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest

from plumbing.domain_errors import DomainError
from services.messaging.core import Messaging, Settings
from tests.unit.messaging_fakes import FakeStore, RecordingNotifier

pytestmark = pytest.mark.unit

A = "@alice:t"
B = "@bob:t"


@pytest.fixture
async def core() -> AsyncIterator[Messaging]:
    messaging = Messaging(FakeStore(), RecordingNotifier(), Settings(server_name="t", invite_policy="anyone"))
    await messaging.start()
    yield messaging
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


def _data(body: dict, room_id: str = "") -> dict:
    events = body["rooms"]["join"][room_id]["account_data"]["events"] if room_id else body["account_data"]["events"]
    return {e["type"]: e["content"] for e in events}


async def test_global_and_room_account_data_reach_sync_once(core: Messaging) -> None:
    room = await _room(core)
    first = await core.sync(B, "d", "")
    assert "m.push_rules" in _data(first.body)  # the defaults, on every initial sync
    await core.set_account_data(B, "", "m.direct", {A: [room]})
    await core.set_account_data(B, room, "org.example.pref", {"muted": True})
    second = await core.sync(B, "d", first.next_batch)
    assert second.has_changes
    assert _data(second.body) == {"m.direct": {A: [room]}}
    assert _data(second.body, room) == {"org.example.pref": {"muted": True}}
    assert await core.get_account_data(B, room, "org.example.pref") == {"muted": True}
    third = await core.sync(B, "d", second.next_batch)
    assert not third.has_changes
    # Private: Alice sees none of it.
    alice = await core.sync(A, "d", "")
    assert "m.direct" not in _data(alice.body)
    assert await errcode(core.get_account_data(A, "", "m.direct")) == "M_NOT_FOUND"


async def test_account_data_refusals(core: Messaging) -> None:
    room = await _room(core)
    assert await errcode(core.set_account_data(B, "", "m.push_rules", {})) == "M_BAD_JSON"
    assert await errcode(core.set_account_data(B, room, "m.fully_read", {"event_id": "$x"})) == "M_BAD_JSON"
    assert await errcode(core.set_account_data(B, "", "x" * 256, {})) == "M_INVALID_PARAM"
    assert await errcode(core.set_account_data(B, "", "t", [1])) == "M_BAD_JSON"
    assert await errcode(core.set_account_data(B, "", "t", {"f": 1.5})) == "M_BAD_JSON"
    assert await errcode(core.set_account_data(B, "", "t", {"big": "x" * 70_000})) == "M_TOO_LARGE"
    assert await errcode(core.set_account_data("@carol:t", room, "t", {})) == "M_FORBIDDEN"
    assert await errcode(core.set_account_data(B, "!nowhere:t", "t", {})) == "M_NOT_FOUND"


async def test_unread_counts_follow_push_rules_receipts_and_fully_read(core: Messaging) -> None:
    room = await _room(core)
    ids = [await core.send_event(A, "d", room, "m.room.message", f"t{i}", text(f"m{i}")) for i in range(3)]
    await core.send_event(A, "d", room, "m.room.message", "n", text("bot", msgtype="m.notice"))
    await core.send_event(A, "d", room, "m.room.message", "h", text("x", **{"m.mentions": {"user_ids": [B]}}))
    counts = (await core.sync(B, "d", "")).body["rooms"]["join"][room]["unread_notifications"]
    assert counts == {"notification_count": 4, "highlight_count": 1}  # the notice is silent
    await core.send_receipt(B, room, "m.read", ids[1])
    after_receipt = (await core.sync(B, "d", "")).body["rooms"]["join"][room]["unread_notifications"]
    assert after_receipt == {"notification_count": 2, "highlight_count": 1}
    last = await core.send_event(A, "d", room, "m.room.message", "t9", text("later"))
    await core.set_fully_read(B, room, last)
    synced = await core.sync(B, "d", "")
    assert synced.body["rooms"]["join"][room]["unread_notifications"] == {"notification_count": 0, "highlight_count": 0}
    assert _data(synced.body, room) == {"m.fully_read": {"event_id": last}}
    assert await errcode(core.set_fully_read(B, room, "$missing")) == "M_NOT_FOUND"


async def test_a_changed_push_rule_changes_counts_and_reaches_sync(core: Messaging) -> None:
    room = await _room(core)
    first = await core.sync(B, "d", "")
    await core.change_push_rule(B, "put", "global", "room", room, {"actions": []}, "", "")
    second = await core.sync(B, "d", first.next_batch)
    pushed = _data(second.body)["m.push_rules"]["global"]
    assert pushed["room"] == [{"rule_id": room, "enabled": True, "actions": [], "default": False}]
    await core.send_event(A, "d", room, "m.room.message", "t", text("muted"))
    counts = (await core.sync(B, "d", "")).body["rooms"]["join"][room]["unread_notifications"]
    assert counts["notification_count"] == 0
    await core.change_push_rule(B, "enabled", "global", "room", room, {"enabled": False}, "", "")
    counts = (await core.sync(B, "d", "")).body["rooms"]["join"][room]["unread_notifications"]
    assert counts["notification_count"] == 1
    await core.change_push_rule(B, "delete", "global", "room", room, {}, "", "")
    assert (await core.push_rules(B))["global"]["room"] == []


async def test_push_rule_changes_to_defaults_and_ordering(core: Messaging) -> None:
    await core.change_push_rule(B, "enabled", "global", "override", ".m.rule.master", {"enabled": True}, "", "")
    await core.change_push_rule(B, "actions", "global", "underride", ".m.rule.message", {"actions": []}, "", "")
    for rule_id in ("one", "two"):
        body = {"pattern": rule_id, "actions": ["notify", "dont_notify"]}
        await core.change_push_rule(B, "put", "global", "content", rule_id, body, "", "")
    body = {"pattern": "three", "actions": ["notify"]}
    await core.change_push_rule(B, "put", "global", "content", "three", body, "", "one")
    rules = (await core.push_rules(B))["global"]
    assert rules["override"][0]["enabled"] is True
    assert next(r for r in rules["underride"] if r["rule_id"] == ".m.rule.message")["actions"] == []
    assert [r["rule_id"] for r in rules["content"]] == ["two", "one", "three", ".m.rule.contains_user_name"]
    assert rules["content"][0]["actions"] == ["notify"]  # historical actions are stripped
    # A rule with a condition nobody knows is kept, and never matches.
    unknown = {"conditions": [{"kind": "org.example.new"}], "actions": ["notify"]}
    await core.change_push_rule(B, "put", "global", "override", "future", unknown, "", "")
    assert (await core.push_rules(B))["global"]["override"][1]["conditions"] == [{"kind": "org.example.new"}]


@pytest.mark.parametrize(
    ("change", "kind", "rule_id", "body", "expected"),
    [
        ("put", "override", "x", {"actions": "notify"}, "M_BAD_JSON"),
        ("put", "override", "x", {"actions": ["explode"]}, "M_BAD_JSON"),
        ("put", "override", "x", {"actions": [], "conditions": [{"no": "kind"}]}, "M_BAD_JSON"),
        ("put", "content", "x", {"actions": []}, "M_BAD_JSON"),
        ("put", "room", "not-a-room", {"actions": []}, "M_INVALID_PARAM"),
        ("put", "override", ".m.rule.mine", {"actions": []}, "M_INVALID_PARAM"),
        ("put", "nonsense", "x", {"actions": []}, "M_INVALID_PARAM"),
        ("delete", "override", ".m.rule.master", {}, "M_INVALID_PARAM"),
        ("delete", "override", "absent", {}, "M_NOT_FOUND"),
        ("enabled", "override", ".m.rule.nope", {"enabled": True}, "M_NOT_FOUND"),
        ("enabled", "override", ".m.rule.master", {"enabled": "yes"}, "M_BAD_JSON"),
        ("actions", "override", "absent", {"actions": []}, "M_NOT_FOUND"),
    ],
)
async def test_push_rule_refusals(
    core: Messaging, change: str, kind: str, rule_id: str, body: dict, expected: str
) -> None:
    assert await errcode(core.change_push_rule(B, change, "global", kind, rule_id, body, "", "")) == expected
    assert (await core.push_rules(B))["global"]["override"][1]["rule_id"] == ".m.rule.suppress_notices"


async def test_before_must_name_an_existing_rule(core: Messaging) -> None:
    body = {"actions": []}
    assert (
        await errcode(core.change_push_rule(B, "put", "global", "override", "x", body, "absent", "")) == "M_NOT_FOUND"
    )
    assert (
        await errcode(core.change_push_rule(B, "put", "global", "override", "x", body, "", "global")) == "M_NOT_FOUND"
    )
    assert await errcode(core.change_push_rule(B, "put", "scope", "override", "x", body, "", "")) == "M_INVALID_PARAM"


async def test_pushers_are_stored_validated_and_removed(core: Messaging) -> None:
    pusher = {
        "pushkey": "key1",
        "kind": "http",
        "app_id": "cn.laiwang.ios",
        "app_display_name": "Laiwang",
        "device_display_name": "phone",
        "lang": "zh-CN",
        "data": {"url": "https://push.example/_matrix/push/v1/notify", "format": "event_id_only"},
    }
    await core.set_pusher(B, pusher)
    assert (await core.pushers(B))["pushers"] == [pusher]
    for bad, code in [
        ({**pusher, "data": {"url": "ftp://x/y"}}, "M_INVALID_PARAM"),
        ({**pusher, "data": {"url": "javascript:alert(1)"}}, "M_INVALID_PARAM"),
        ({**pusher, "pushkey": "k" * 513}, "M_INVALID_PARAM"),
        ({**pusher, "data": {"url": "https://x/y", "pad": "x" * 3000}}, "M_INVALID_PARAM"),
        ({**pusher, "data": {"url": "https://push.example/other/path"}}, "M_INVALID_PARAM"),
        ({**pusher, "data": {"url": "http://127.0.0.1/_matrix/push/v1/notify"}}, "M_INVALID_PARAM"),
        ({**pusher, "data": {"url": "http://localhost:8009/_matrix/push/v1/notify"}}, "M_INVALID_PARAM"),
        ({**pusher, "kind": "email"}, "M_INVALID_PARAM"),
        ({k: v for k, v in pusher.items() if k != "app_id"}, "M_MISSING_PARAM"),
    ]:
        assert await errcode(core.set_pusher(B, bad)) == code
    # The same app and key for another user moves it there (no append).
    await core.set_pusher(A, pusher)
    assert (await core.pushers(B))["pushers"] == []
    await core.set_pusher(A, {**pusher, "kind": None})
    assert (await core.pushers(A))["pushers"] == []
