"""Push rules: the server-default set, a user's changes merged in, and evaluation (pure domain)."""

from __future__ import annotations

import pytest

from services.messaging.push_rules import RoomContext, condition_holds, default_rules, evaluate, ruleset

pytestmark = pytest.mark.unit

ME = "@bob:localhost"
ROOM = "!r:localhost"


def _room(members: int = 3, name: str = "Bob", sender_power: int = 0, room_power: int = 50) -> RoomContext:
    return RoomContext(members, name, sender_power, lambda key: room_power if key == "room" else 50)


def _message(body: str, sender: str = "@alice:localhost", **content: object) -> dict:
    return {
        "type": "m.room.message",
        "sender": sender,
        "room_id": ROOM,
        "event_id": "$e",
        "content": {"msgtype": "m.text", "body": body, **content},
    }


def test_default_rules_follow_the_spec_order_and_name_the_user() -> None:
    rules = default_rules(ME)
    assert rules["override"][0] == {
        "rule_id": ".m.rule.master",
        "default": True,
        "enabled": False,
        "conditions": [],
        "actions": [],
    }
    invite = next(r for r in rules["override"] if r["rule_id"] == ".m.rule.invite_for_me")
    assert {"kind": "event_match", "key": "state_key", "pattern": ME} in invite["conditions"]
    assert rules["content"][0]["pattern"] == "bob"
    assert [r["rule_id"] for r in rules["underride"]][-1] == ".m.rule.encrypted"


def test_plain_message_notifies_without_highlight_and_own_messages_never_count() -> None:
    rules = ruleset(ME)
    assert evaluate(rules, _message("hello there"), ME, _room()).notify
    assert not evaluate(rules, _message("hello there"), ME, _room()).highlight
    assert not evaluate(rules, _message("hello", sender=ME), ME, _room()).notify


def test_mentions_highlight() -> None:
    rules = ruleset(ME)
    by_display_name = evaluate(rules, _message("ping Bob, lunch?"), ME, _room())
    by_mxid = evaluate(rules, _message("x", **{"m.mentions": {"user_ids": [ME]}}), ME, _room(name=""))
    by_localpart = evaluate(rules, _message("is bob here"), ME, _room(name=""))
    assert by_display_name.highlight and by_mxid.highlight and by_localpart.highlight
    # Word boundaries: "bobcat" is not "bob".
    assert not evaluate(rules, _message("a bobcat"), ME, _room(name="")).highlight


def test_room_mention_needs_the_senders_power() -> None:
    rules = ruleset(ME)
    content = {"m.mentions": {"room": True}}
    assert not evaluate(rules, _message("all", **content), ME, _room(sender_power=0)).highlight
    assert evaluate(rules, _message("all", **content), ME, _room(sender_power=50)).highlight


def test_notices_edits_and_reactions_are_silent() -> None:
    rules = ruleset(ME)
    notice = _message("bot says", msgtype="m.notice")
    edit = _message("* fixed", **{"m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}})
    reaction = {"type": "m.reaction", "sender": "@alice:localhost", "room_id": ROOM, "content": {}}
    for event in (notice, edit, reaction):
        assert not evaluate(rules, event, ME, _room()).notify


def test_user_changes_and_own_rules_are_merged_in_priority_order() -> None:
    stored = {
        "defaults": {"override/.m.rule.master": {"enabled": True}},
        "rules": {"room": [{"rule_id": ROOM, "enabled": True, "actions": []}]},
    }
    rules = ruleset(ME, stored)
    assert rules["override"][0]["enabled"] is True
    assert rules["room"][0] == {"rule_id": ROOM, "enabled": True, "actions": [], "default": False}
    assert not evaluate(rules, _message("hi"), ME, _room()).notify  # the master rule mutes everything


def test_unknown_or_malformed_conditions_never_match() -> None:
    event = _message("hi")
    for condition in (
        {"kind": "org.example.future"},
        {"kind": "event_match", "key": "content.body"},
        {"kind": "room_member_count", "is": "≥2"},
        {"kind": "event_property_is", "key": "content.body", "value": {"a": 1}},
        "not an object",
    ):
        assert not condition_holds(condition, event, _room())
    rules = ruleset(
        ME,
        {
            "rules": {
                "override": [
                    {
                        "rule_id": "x",
                        "enabled": True,
                        "conditions": [{"kind": "?"}],
                        "actions": ["notify", {"set_tweak": "highlight"}],
                    }
                ]
            }
        },
    )
    assert not evaluate(rules, event, ME, _room()).highlight


def test_member_count_and_property_matches() -> None:
    event = _message("hi", flag=True, count=1)
    assert condition_holds({"kind": "room_member_count", "is": "<=2"}, event, _room(members=2))
    assert not condition_holds({"kind": "room_member_count", "is": ">2"}, event, _room(members=2))
    assert condition_holds({"kind": "event_property_is", "key": "content.flag", "value": True}, event, _room())
    # true is not 1
    assert not condition_holds({"kind": "event_property_is", "key": "content.count", "value": True}, event, _room())
    assert condition_holds({"kind": "event_match", "key": "content.msgtype", "pattern": "M.T*"}, event, _room())
    assert not condition_holds({"kind": "event_match", "key": "content.msgtype", "pattern": "m.t"}, event, _room())
