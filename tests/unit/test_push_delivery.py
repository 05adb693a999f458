"""Push delivery's pure parts: the spec's push-rule examples on an Element-style rule set, the
event-id-only notification, priority, backoff, and the SSRF guard on pusher URLs."""

from __future__ import annotations

import ipaddress

import pytest

from plumbing.url_guard import UnsafeUrl, address_allowed, check_url, parse_networks
from services.messaging import push
from services.messaging.push_rules import Outcome, RoomContext, change_rule, matching_actions, ruleset

pytestmark = pytest.mark.unit

ME = "@bob:matrix.org"
MUTED = "!dj234r78wl45Gh4D:matrix.org"
OTHER = "!other:matrix.org"


def _room(members: int) -> RoomContext:
    return RoomContext(members, "Bob", 0, lambda key: 50)


def _message(body: str, room: str = OTHER, sender: str = "@alice:matrix.org") -> dict:
    return {
        "type": "m.room.message",
        "sender": sender,
        "room_id": room,
        "event_id": "$e",
        "content": {"msgtype": "m.text", "body": body},
    }


def _spec_examples() -> dict:
    """The examples of the spec's push rules API section, applied in order as a client would."""
    doc = None
    changes = [
        # Suppress notifications for a room (Element's "mute").
        ("room", MUTED, {"actions": []}, ""),
        # Suppress notifications from a user.
        ("sender", "@spambot:matrix.org", {"actions": []}, ""),
        # Always notify for messages with the word "cake", with a sound.
        (
            "content",
            "SSByZWFsbHkgbGlrZSBjYWtl",
            {"pattern": "cake", "actions": ["notify", {"set_tweak": "sound", "value": "cakealarm.wav"}]},
            "",
        ),
        # Suppress messages starting with "cake" and ending with "lie", ahead of the previous rule.
        ("content", "U3BvbmdlIGNha2UgaXMgYmVzdA", {"pattern": "cake*lie", "actions": []}, "SSByZWFsbHkgbGlrZSBjYWtl"),
        # A sound for "beer" in rooms of 10 members or fewer, above room, sender and content rules.
        (
            "override",
            "U2VlIHlvdSBpbiBUaGUgRHVrZQ",
            {
                "conditions": [
                    {"kind": "event_match", "key": "content.body", "pattern": "beer"},
                    {"kind": "room_member_count", "is": "<=10"},
                ],
                "actions": ["notify", {"set_tweak": "sound", "value": "beeroclock.wav"}],
            },
            "",
        ),
    ]
    for kind, rule_id, body, before in changes:
        doc = change_rule(ME, doc, "put", kind, rule_id, body, before=before)
    return ruleset(ME, doc)


@pytest.mark.parametrize(
    ("event", "members", "expected"),
    [
        (_message("hello there", OTHER), 5, ["notify"]),  # .m.rule.message
        (_message("hello there", MUTED), 5, []),  # the muted room
        (_message("buy pills", sender="@spambot:matrix.org"), 5, []),  # the suppressed sender
        # content rules outrank room and sender rules: "cake" still notifies, with its sound
        (_message("I want cake", MUTED), 5, ["notify", {"set_tweak": "sound", "value": "cakealarm.wav"}]),
        (
            _message("cake?", sender="@spambot:matrix.org"),
            5,
            ["notify", {"set_tweak": "sound", "value": "cakealarm.wav"}],
        ),
        (_message("the cake is a lie"), 5, []),  # cake*lie, placed before "cake"
        (_message("cakes are nice"), 5, ["notify"]),  # content.body matches whole words only
        # override outranks everything: beer in a small room, even a muted one
        (_message("beer o'clock", MUTED), 10, ["notify", {"set_tweak": "sound", "value": "beeroclock.wav"}]),
        (_message("beer o'clock", MUTED), 11, []),  # too many members: the room rule again
        (_message("x") | {"content": {"msgtype": "m.notice", "body": "status"}}, 3, []),  # .m.rule.suppress_notices
        # ...but a user's override rule outranks the default ones (all but .m.rule.master)
        (
            _message("x") | {"content": {"msgtype": "m.notice", "body": "beer"}},
            3,
            ["notify", {"set_tweak": "sound", "value": "beeroclock.wav"}],
        ),
    ],
)
def test_the_spec_examples_evaluate_as_the_spec_says(event: dict, members: int, expected: list) -> None:
    assert matching_actions(_spec_examples(), event, ME, _room(members)) == expected


def test_a_two_person_room_and_a_mention_push_at_high_priority() -> None:
    rules = _spec_examples()
    dm = matching_actions(rules, _message("hi"), ME, _room(2))
    assert dm == ["notify", {"set_tweak": "sound", "value": "default"}]  # .m.rule.room_one_to_one
    assert push.priority(Outcome(True, False), is_direct=False, member_count=2) == push.HIGH
    assert push.priority(Outcome(True, True), is_direct=False, member_count=30) == push.HIGH
    assert push.priority(Outcome(True, False), is_direct=True, member_count=3) == push.HIGH
    assert push.priority(Outcome(True, False), is_direct=False, member_count=30) == push.LOW
    assert matching_actions(rules, _message("mine", sender=ME), ME, _room(2)) == []  # own events never


def test_the_notification_is_event_id_only() -> None:
    poke = {"want_event": "$ev", "room_id": OTHER, "high": True}
    pusher = {
        "app_id": "cn.laiwang.ios",
        "pushkey": "tok",
        "created_ms": 1_700_000_000_123,
        "data": {"url": "https://push.example/_matrix/push/v1/notify", "format": "event_id_only", "x": 1},
    }
    assert push.notification(poke, pusher, 7) == {
        "notification": {
            "event_id": "$ev",
            "room_id": OTHER,
            "prio": "high",
            "counts": {"unread": 7},
            "devices": [
                {
                    "app_id": "cn.laiwang.ios",
                    "pushkey": "tok",
                    "pushkey_ts": 1_700_000_000,
                    "data": {"format": "event_id_only", "x": 1},
                }
            ],
        }
    }


def test_rejections_failures_and_backoff() -> None:
    assert push.rejected({"rejected": ["tok"]}, "tok")
    assert not push.rejected({"rejected": ["other"]}, "tok")
    assert not push.rejected({"rejected": "tok"}, "tok") and not push.rejected(None, "tok")
    assert [push.permanent_failure(s) for s in (400, 404, 408, 429, 500, 503)] == [
        True,
        True,
        False,
        False,
        False,
        False,
    ]
    assert [push.backoff_ms(n, 300) for n in (1, 2, 3, 9, 10, 30)] == [1000, 2000, 4000, 256_000, 300_000, 300_000]


def test_only_the_device_that_synced_past_the_event_is_spared() -> None:
    seen = {("@bob:x", "PHONE"): (10, 1000)}
    poke = {"user": "@bob:x", "device_id": "PHONE", "want_pos": 10}
    assert push.device_has_it(seen, poke, 2000)
    assert not push.device_has_it(seen, {**poke, "want_pos": 11}, 2000)
    assert not push.device_has_it(seen, {**poke, "device_id": ""}, 2000)
    settings = push.PushSettings(sync_active_ms=60_000)
    assert push.syncing_recently(seen, "@bob:x", "PHONE", 61_000, settings)
    assert not push.syncing_recently(seen, "@bob:x", "PHONE", 61_001, settings)


@pytest.mark.parametrize(
    "url",
    [
        "ftp://push.example/_matrix/push/v1/notify",
        "javascript:alert(1)",
        "//push.example/x",
        "http://127.0.0.1/_matrix/push/v1/notify",
        "http://localhost:8009/x",
        "http://app.localhost/x",
        "http://[::1]/x",
        "http://10.0.0.7/x",
        "http://172.16.3.4/x",
        "http://192.168.1.1/x",
        "http://169.254.169.254/latest/meta-data",
        "http://[::ffff:127.0.0.1]/x",
        "http://[fd00::1]/x",
        "http://0.0.0.0/x",
        "http://224.0.0.1/x",
        "https://user:secret@push.example/x",
        "http://push.example:99999/x",
        "https://" + "a" * 3000 + ".example/x",
        42,
    ],
)
def test_unsafe_urls_are_refused(url: object) -> None:
    with pytest.raises(UnsafeUrl):
        check_url(url)


def test_public_urls_pass_and_loopback_only_when_allowed() -> None:
    assert check_url("https://push.example/_matrix/push/v1/notify")
    assert check_url("http://93.184.215.14:5000/_matrix/push/v1/notify")
    dev = parse_networks("127.0.0.0/8, ::1/128")
    assert check_url("http://127.0.0.1:8009/_matrix/push/v1/notify", dev)
    assert check_url("http://localhost:8009/_matrix/push/v1/notify", dev)
    with pytest.raises(UnsafeUrl):
        check_url("http://10.0.0.7/x", dev)  # loopback allowed does not mean private networks are
    assert address_allowed(ipaddress.ip_address("10.96.0.10"), parse_networks("10.96.0.0/12"))
    with pytest.raises(ValueError, match="not a network"):
        parse_networks("127.0.0.0/8,nonsense")
