"""Push rules (Matrix C-S v1.11 "Push Notifications"): the server-default rule set, a user's
changes to it, and evaluation of the rules against an event. Pure: no I/O.

A user's stored state is small: the rules they added (per kind, in priority order) and, for the
server-default rules, only what they changed (`enabled`, `actions`). The full rule set a client
sees is the defaults with those changes applied, user rules of a kind before that kind's defaults
(except `.m.rule.master`, which is always first), as Synapse orders them.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

JSON = dict[str, Any]

KINDS = ("override", "content", "room", "sender", "underride")
_SOUND = {"set_tweak": "sound", "value": "default"}
_HIGHLIGHT = {"set_tweak": "highlight"}


def _rule(rule_id: str, conditions: list[JSON], actions: list[Any], enabled: bool = True) -> JSON:
    return {"rule_id": rule_id, "default": True, "enabled": enabled, "conditions": conditions, "actions": actions}


def _match(key: str, pattern: str) -> JSON:
    return {"kind": "event_match", "key": key, "pattern": pattern}


def default_rules(user_id: str) -> dict[str, list[JSON]]:
    """The spec's server-default rules for `user_id`, by kind, in priority order."""
    localpart = user_id[1:].split(":", 1)[0]
    override = [
        _rule(".m.rule.master", [], [], enabled=False),
        _rule(".m.rule.suppress_notices", [_match("content.msgtype", "m.notice")], []),
        _rule(
            ".m.rule.invite_for_me",
            [_match("type", "m.room.member"), _match("content.membership", "invite"), _match("state_key", user_id)],
            ["notify", _SOUND],
        ),
        _rule(".m.rule.member_event", [_match("type", "m.room.member")], []),
        _rule(
            ".m.rule.is_user_mention",
            [{"kind": "event_property_contains", "key": "content.m\\.mentions.user_ids", "value": user_id}],
            ["notify", _SOUND, _HIGHLIGHT],
        ),
        _rule(".m.rule.contains_display_name", [{"kind": "contains_display_name"}], ["notify", _SOUND, _HIGHLIGHT]),
        _rule(
            ".m.rule.is_room_mention",
            [
                {"kind": "event_property_is", "key": "content.m\\.mentions.room", "value": True},
                {"kind": "sender_notification_permission", "key": "room"},
            ],
            ["notify", _HIGHLIGHT],
        ),
        _rule(
            ".m.rule.roomnotif",
            [_match("content.body", "@room"), {"kind": "sender_notification_permission", "key": "room"}],
            ["notify", _HIGHLIGHT],
        ),
        _rule(
            ".m.rule.tombstone", [_match("type", "m.room.tombstone"), _match("state_key", "")], ["notify", _HIGHLIGHT]
        ),
        _rule(".m.rule.reaction", [_match("type", "m.reaction")], []),
        _rule(".m.rule.room.server_acl", [_match("type", "m.room.server_acl"), _match("state_key", "")], []),
        _rule(
            ".m.rule.suppress_edits",
            [{"kind": "event_property_is", "key": "content.m\\.relates_to.rel_type", "value": "m.replace"}],
            [],
        ),
    ]
    content = [
        {
            "rule_id": ".m.rule.contains_user_name",
            "default": True,
            "enabled": True,
            "pattern": localpart,
            "actions": ["notify", _SOUND, _HIGHLIGHT],
        }
    ]
    underride = [
        _rule(".m.rule.call", [_match("type", "m.call.invite")], ["notify", {"set_tweak": "sound", "value": "ring"}]),
        _rule(
            ".m.rule.encrypted_room_one_to_one",
            [{"kind": "room_member_count", "is": "2"}, _match("type", "m.room.encrypted")],
            ["notify", _SOUND],
        ),
        _rule(
            ".m.rule.room_one_to_one",
            [{"kind": "room_member_count", "is": "2"}, _match("type", "m.room.message")],
            ["notify", _SOUND],
        ),
        _rule(".m.rule.message", [_match("type", "m.room.message")], ["notify"]),
        _rule(".m.rule.encrypted", [_match("type", "m.room.encrypted")], ["notify"]),
    ]
    return {"override": override, "content": content, "room": [], "sender": [], "underride": underride}


def ruleset(user_id: str, stored: JSON | None = None) -> dict[str, list[JSON]]:
    """The user's whole rule set: defaults with their changes, and their own rules.

    `stored` is the user's push-rule document: {"rules": {kind: [rule, ...]}, "defaults":
    {"kind/rule_id": {"enabled": bool, "actions": [...]}}}.
    """
    stored = stored or {}
    changes: JSON = stored.get("defaults", {})
    own: JSON = stored.get("rules", {})
    result: dict[str, list[JSON]] = {}
    for kind, defaults in default_rules(user_id).items():
        merged = []
        for rule in defaults:
            change = changes.get(f"{kind}/{rule['rule_id']}")
            merged.append({**rule, **change} if change else rule)
        user_rules = [{**rule, "default": False} for rule in own.get(kind, [])]
        # .m.rule.master stays first; otherwise a user's rules come before the kind's defaults.
        result[kind] = merged[:1] + user_rules + merged[1:] if kind == "override" else user_rules + merged
    return result


# -- evaluation -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RoomContext:
    """What conditions need to know about the room and the user at the time of the event."""

    member_count: int
    display_name: str  # the user's display name in the room ("" when none)
    sender_power: int
    notification_power: Callable[[str], int]  # required level for a notification key such as "room"


@dataclass(frozen=True)
class Outcome:
    notify: bool
    highlight: bool


NOTHING = Outcome(False, False)


def _split_key(key: str) -> list[str]:
    r"""A dot-separated property path, where `\.` is a literal dot and `\\` a backslash."""
    parts, current, escaped = [], [], False
    for char in key:
        if escaped:
            current.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char == ".":
            parts.append("".join(current))
            current = []
        else:
            current.append(char)
    parts.append("".join(current))
    return parts


_MISSING = object()


def _lookup(event: JSON, key: str) -> Any:
    value: Any = event
    for part in _split_key(key):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


@lru_cache(maxsize=1024)
def _glob(pattern: str, word_boundary: bool, literal: bool = False) -> re.Pattern[str]:
    if literal:
        body = re.escape(pattern)
    else:
        body = "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern)
    if word_boundary:
        return re.compile(rf"(?:^|[^A-Za-z0-9_])(?:{body})(?:[^A-Za-z0-9_]|$)", re.IGNORECASE | re.DOTALL)
    return re.compile(rf"(?:{body})\Z", re.IGNORECASE | re.DOTALL)


def _event_match(event: JSON, key: str, pattern: str) -> bool:
    value = _lookup(event, key)
    if not isinstance(value, str):
        return False
    if key == "content.body":
        return _glob(pattern, True).search(value) is not None
    return _glob(pattern, False).match(value) is not None


def _scalar(value: Any) -> bool:
    return value is None or isinstance(value, (str, bool, int))


def _same(a: Any, b: Any) -> bool:
    # JSON true is not 1: compare types as well as values.
    return type(a) is type(b) and a == b


_MEMBER_COUNT = re.compile(r"(==|<=|>=|<|>)?([0-9]{1,9})")


def _member_count(expression: Any, count: int) -> bool:
    if not isinstance(expression, str):
        return False
    found = _MEMBER_COUNT.fullmatch(expression)
    if found is None:
        return False
    op, number = found.group(1) or "==", int(found.group(2))
    return {
        "==": count == number,
        "<": count < number,
        ">": count > number,
        "<=": count <= number,
        ">=": count >= number,
    }[op]


def condition_holds(condition: Any, event: JSON, room: RoomContext) -> bool:
    """One condition; unknown or malformed conditions never hold (the spec's MUST)."""
    if not isinstance(condition, dict):
        return False
    kind = condition.get("kind")
    if kind == "event_match":
        key, pattern = condition.get("key"), condition.get("pattern")
        return isinstance(key, str) and isinstance(pattern, str) and _event_match(event, key, pattern)
    if kind == "event_property_is":
        key, value = condition.get("key"), condition.get("value", _MISSING)
        if not isinstance(key, str) or value is _MISSING or not _scalar(value):
            return False
        found = _lookup(event, key)
        return found is not _MISSING and _scalar(found) and _same(found, value)
    if kind == "event_property_contains":
        key, value = condition.get("key"), condition.get("value", _MISSING)
        if not isinstance(key, str) or value is _MISSING or not _scalar(value):
            return False
        found = _lookup(event, key)
        return isinstance(found, list) and any(_scalar(item) and _same(item, value) for item in found)
    if kind == "contains_display_name":
        body = _lookup(event, "content.body")
        name = room.display_name
        # The display name is matched literally: "*" and "?" in it are not wildcards.
        return bool(name) and isinstance(body, str) and _glob(name, True, literal=True).search(body) is not None
    if kind == "room_member_count":
        return _member_count(condition.get("is"), room.member_count)
    if kind == "sender_notification_permission":
        key = condition.get("key")
        return isinstance(key, str) and room.sender_power >= room.notification_power(key)
    return False


def _rule_matches(kind: str, rule: JSON, event: JSON, room: RoomContext) -> bool:
    if kind in ("override", "underride"):
        conditions = rule.get("conditions", [])
        return isinstance(conditions, list) and all(condition_holds(c, event, room) for c in conditions)
    if kind == "content":
        pattern = rule.get("pattern")
        return isinstance(pattern, str) and _event_match(event, "content.body", pattern)
    if kind == "room":
        return event.get("room_id") == rule.get("rule_id")
    if kind == "sender":
        return event.get("sender") == rule.get("rule_id")
    return False


def _outcome(actions: Any) -> Outcome:
    if not isinstance(actions, list):
        return NOTHING
    notify = "notify" in actions
    highlight = False
    for action in actions:
        if isinstance(action, dict) and action.get("set_tweak") == "highlight":
            value = action.get("value", True)
            highlight = value is True
    return Outcome(notify, notify and highlight)


def evaluate(rules: dict[str, list[JSON]], event: JSON, user_id: str, room: RoomContext) -> Outcome:
    """The actions of the first enabled rule that matches, as (notify, highlight)."""
    if event.get("sender") == user_id:
        return NOTHING  # never for the user's own events
    for kind in KINDS:
        for rule in rules.get(kind, []):
            if rule.get("enabled", True) and _rule_matches(kind, rule, event, room):
                return _outcome(rule.get("actions"))
    return NOTHING
