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

from plumbing.domain_errors import DomainError

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
        # Laiwang's own message types (share, music and app cards) notify like messages.
        _rule(".cn.laiwang.rule.card", [_match("type", "cn.laiwang.*_card")], ["notify"]),
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


def matching_actions(rules: dict[str, list[JSON]], event: JSON, user_id: str, room: RoomContext) -> list[Any]:
    """The actions of the first enabled rule that matches (empty: nothing to do)."""
    if event.get("sender") == user_id:
        return []  # never for the user's own events
    for kind in KINDS:
        for rule in rules.get(kind, []):
            if rule.get("enabled", True) and _rule_matches(kind, rule, event, room):
                actions = rule.get("actions")
                return actions if isinstance(actions, list) else []
    return []


def outcome_of(actions: list[Any]) -> Outcome:
    return _outcome(actions)


def evaluate(rules: dict[str, list[JSON]], event: JSON, user_id: str, room: RoomContext) -> Outcome:
    """The actions of the first enabled rule that matches, as (notify, highlight)."""
    return _outcome(matching_actions(rules, event, user_id, room))


# -- changes (PUT / DELETE / enabled / actions) ---------------------------------------------------

MAX_USER_RULES = 500
MAX_RULE_ID_BYTES = 255
MAX_PATTERN_CHARS = 1024
MAX_CONDITIONS = 20
MAX_ACTIONS = 20
_HISTORICAL_ACTIONS = ("dont_notify", "coalesce")


def _fail(errcode: str, message: str) -> DomainError:
    return DomainError(errcode, message)


def checked_actions(actions: Any) -> list[Any]:
    """Validated actions, with the historical no-ops stripped (the spec says to ignore them)."""
    if not isinstance(actions, list) or len(actions) > MAX_ACTIONS:
        raise _fail("M_BAD_JSON", f"actions must be a list of at most {MAX_ACTIONS} actions")
    kept: list[Any] = []
    for action in actions:
        if action == "notify":
            kept.append(action)
        elif action in _HISTORICAL_ACTIONS:
            continue
        elif isinstance(action, dict) and isinstance(action.get("set_tweak"), str) and len(action) <= 2:
            if len(action) == 2 and "value" not in action:
                raise _fail("M_BAD_JSON", "a set_tweak action has only set_tweak and value")
            kept.append(action)
        else:
            raise _fail("M_BAD_JSON", f"unrecognised action {str(action)[:100]!r}")
    return kept


def _checked_conditions(conditions: Any) -> list[JSON]:
    # Unknown condition kinds are kept (a newer client may know them) and simply never match.
    if not isinstance(conditions, list) or len(conditions) > MAX_CONDITIONS:
        raise _fail("M_BAD_JSON", f"conditions must be a list of at most {MAX_CONDITIONS} objects")
    for condition in conditions:
        if not isinstance(condition, dict) or not isinstance(condition.get("kind"), str):
            raise _fail("M_BAD_JSON", "each condition is an object with a string 'kind'")
    return conditions


def _check_rule_id(kind: str, rule_id: str) -> None:
    if kind not in KINDS:
        raise _fail("M_INVALID_PARAM", f"unknown push rule kind {kind[:50]!r}")
    if not rule_id or len(rule_id.encode()) > MAX_RULE_ID_BYTES:
        raise _fail("M_INVALID_PARAM", f"rule_id must be 1 to {MAX_RULE_ID_BYTES} bytes")


def _find(rules: list[JSON], rule_id: str) -> int:
    return next((i for i, rule in enumerate(rules) if rule["rule_id"] == rule_id), -1)


def change_rule(
    user_id: str,
    stored: JSON | None,
    change: str,
    kind: str,
    rule_id: str,
    body: JSON,
    before: str = "",
    after: str = "",
) -> JSON:
    """The user's push-rule document after one change (`put`, `delete`, `enabled` or `actions`)."""
    _check_rule_id(kind, rule_id)
    doc: JSON = {"rules": {k: list(v) for k, v in (stored or {}).get("rules", {}).items()}}
    doc["defaults"] = dict((stored or {}).get("defaults", {}))
    own: list[JSON] = doc["rules"].setdefault(kind, [])
    is_default = rule_id.startswith(".")
    default_ids = {r["rule_id"] for r in default_rules(user_id)[kind]}
    if change in ("enabled", "actions"):
        if is_default:
            if rule_id not in default_ids:
                raise _fail("M_NOT_FOUND", "no such push rule")
            key = f"{kind}/{rule_id}"
            updated = dict(doc["defaults"].get(key, {}))
            if change == "enabled":
                updated["enabled"] = _enabled(body)
            else:
                updated["actions"] = checked_actions(body.get("actions"))
            doc["defaults"][key] = updated
            return doc
        index = _find(own, rule_id)
        if index < 0:
            raise _fail("M_NOT_FOUND", "no such push rule")
        rule = dict(own[index])
        if change == "enabled":
            rule["enabled"] = _enabled(body)
        else:
            rule["actions"] = checked_actions(body.get("actions"))
        own[index] = rule
        return doc
    if is_default:
        raise _fail("M_INVALID_PARAM", "rule ids starting with '.' are server-default rules and cannot be changed")
    if change == "delete":
        index = _find(own, rule_id)
        if index < 0:
            raise _fail("M_NOT_FOUND", "no such push rule")
        del own[index]
        return doc
    if change != "put":
        raise _fail("M_INVALID_PARAM", "unknown change")
    rule = _new_rule(kind, rule_id, body)
    index = _find(own, rule_id)
    if index >= 0:
        rule["enabled"] = own[index].get("enabled", True)  # replacing keeps the enabled flag
        del own[index]
    elif sum(len(v) for v in doc["rules"].values()) >= MAX_USER_RULES:
        raise _fail("M_LIMIT_EXCEEDED", f"at most {MAX_USER_RULES} push rules per user")
    anchor = before or after
    if anchor:
        if anchor.startswith("."):
            raise _fail("M_INVALID_PARAM", "before/after cannot name a server-default rule")
        position = _find(own, anchor)
        if position < 0:
            raise _fail("M_NOT_FOUND", f"no push rule {anchor[:100]!r} to place this rule next to")
        own.insert(position if before else position + 1, rule)
    else:
        own.insert(0, rule)  # a new rule takes the highest priority of its kind
    return doc


def check_change(change: str, kind: str, rule_id: str, body: JSON) -> None:
    """Everything about a change that does not depend on the user's stored rules."""
    _check_rule_id(kind, rule_id)
    if change == "enabled":
        _enabled(body)
    elif change == "actions":
        checked_actions(body.get("actions"))
    elif rule_id.startswith("."):
        raise _fail("M_INVALID_PARAM", "rule ids starting with '.' are server-default rules and cannot be changed")
    elif change == "put":
        _new_rule(kind, rule_id, body)


def _enabled(body: JSON) -> bool:
    value = body.get("enabled")
    if not isinstance(value, bool):
        raise _fail("M_BAD_JSON", "'enabled' must be a boolean")
    return value


def _new_rule(kind: str, rule_id: str, body: JSON) -> JSON:
    rule: JSON = {"rule_id": rule_id, "enabled": True, "actions": checked_actions(body.get("actions"))}
    if kind in ("override", "underride"):
        rule["conditions"] = _checked_conditions(body.get("conditions", []))
    elif kind == "content":
        pattern = body.get("pattern")
        if not isinstance(pattern, str) or not pattern or len(pattern) > MAX_PATTERN_CHARS:
            raise _fail("M_BAD_JSON", f"a content rule needs a 'pattern' of 1 to {MAX_PATTERN_CHARS} characters")
        rule["pattern"] = pattern
    elif kind == "room" and not (rule_id.startswith("!") and ":" in rule_id):
        raise _fail("M_INVALID_PARAM", "a room rule's id is the room id")
    elif kind == "sender" and not (rule_id.startswith("@") and ":" in rule_id):
        raise _fail("M_INVALID_PARAM", "a sender rule's id is the sender's user id")
    return rule
