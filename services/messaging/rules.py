"""Messaging's rules as pure functions (no I/O): canonical JSON and content validation, power
levels, pruning, tokens and ids, and the Matrix errors they raise."""

from __future__ import annotations

import base64
import hashlib
import os
import re
import time
from typing import Any

import orjson

from plumbing.domain_errors import DomainError, bad_json, forbidden, invalid

JSON = dict[str, Any]

MAX_EVENT_BYTES = 65536
CANONICAL_INT_MIN = -(2**53) + 1
CANONICAL_INT_MAX = 2**53 - 1
MAX_TIMELINE_LIMIT = 200
DEFAULT_TIMELINE_LIMIT = 10
SEP = "\x1f"

MEMBER = "m.room.member"
CREATE = "m.room.create"
POWER_LEVELS = "m.room.power_levels"
JOIN_RULES = "m.room.join_rules"
HISTORY_VISIBILITY = "m.room.history_visibility"
NAME = "m.room.name"
TOPIC = "m.room.topic"
AVATAR = "m.room.avatar"
REDACTION = "m.room.redaction"
MESSAGE = "m.room.message"
SHARE_CARD = "cn.laiwang.share_card"
MUSIC_CARD = "cn.laiwang.music_card"
APP_CARD = "cn.laiwang.app_card"
ENCRYPTION = "m.room.encryption"
MEMBERSHIPS = ("invite", "join", "leave", "ban")
RECEIPT_TYPES = ("m.read", "m.read.private")
PRESETS = ("private_chat", "trusted_private_chat", "public_chat")
INVITE_POLICIES = ("friends", "anyone")


# ---------------------------------------------------------------------------------------------
# Canonical JSON and content validation
# ---------------------------------------------------------------------------------------------


MAX_DEPTH = 64  # objects/arrays inside content; the stored documents add a few levels above it
MAX_ID_BYTES = 255  # event types, state keys, transaction ids, user ids (as Synapse)
ROOM_VERSIONS = ("10",)  # what this server creates; m.room.create says "10"
_USER_ID = re.compile(r"@[!-9;-~]+:(\[[0-9A-Fa-f:.]{2,45}\]|[A-Za-z0-9.-]{1,255})(:[0-9]{1,5})?")


def check_canonical(value: Any, path: str = "content", depth: int = 0) -> None:
    """Matrix canonical JSON: objects, arrays, strings, booleans, null and integers in ±(2^53-1).

    Also everything the serialiser and the store would refuse later, inside a group commit where a
    failure would hurt other requests: nesting deeper than MAX_DEPTH, non-string keys and keys with
    a NUL byte (BSON cannot store them), and lone surrogates (not UTF-8).
    """
    if isinstance(value, bool) or value is None:
        return
    if isinstance(value, str):
        _check_text(value, path)
        return
    if isinstance(value, int):
        if not CANONICAL_INT_MIN <= value <= CANONICAL_INT_MAX:
            raise bad_json(f"{path}: integer out of the canonical JSON range")
        return
    if isinstance(value, float):
        raise bad_json(f"{path}: floats are not allowed in canonical JSON")
    if isinstance(value, (dict, list)) and depth >= MAX_DEPTH:
        raise bad_json(f"{path}: nested deeper than {MAX_DEPTH} levels")
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise bad_json(f"{path}: object keys must be strings")
            _check_text(key, f"{path} key")
            if "\x00" in key:
                raise bad_json(f"{path}: object keys must not contain NUL")
            check_canonical(item, f"{path}.{key[:64]}", depth + 1)
        return
    if isinstance(value, list):
        for index, item in enumerate(value):
            check_canonical(item, f"{path}[{index}]", depth + 1)
        return
    raise bad_json(f"{path}: unsupported JSON value")


def _check_text(value: str, path: str) -> None:
    try:
        value.encode()
    except UnicodeEncodeError:
        raise bad_json(f"{path}: strings must be valid Unicode (no lone surrogates)") from None


def valid_user_id(user_id: str) -> bool:
    """A Matrix user id: historical localpart characters, a server name, at most 255 bytes."""
    return (
        isinstance(user_id, str)
        and len(user_id.encode(errors="replace")) <= MAX_ID_BYTES
        and _USER_ID.fullmatch(user_id) is not None
    )


def check_id_field(value: str, what: str) -> None:
    """Event types, state keys and txn ids: at most 255 bytes of valid UTF-8."""
    _check_text(value, what)
    if len(value.encode()) > MAX_ID_BYTES:
        raise invalid(f"{what} is longer than {MAX_ID_BYTES} bytes")


def parse_content(raw: bytes) -> JSON:
    if len(raw) > MAX_EVENT_BYTES:
        raise DomainError("M_TOO_LARGE", f"event content is larger than {MAX_EVENT_BYTES} bytes")
    if not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise DomainError("M_NOT_JSON", "content is not valid JSON") from None
    if not isinstance(value, dict):
        raise bad_json("content must be a JSON object")
    check_canonical(value)
    return value


def canonical_bytes(value: Any) -> bytes:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS)


def _require_str(content: JSON, key: str, *, max_len: int = 65536, optional: bool = False) -> None:
    value = content.get(key)
    if value is None and optional:
        return
    if not isinstance(value, str) or (not optional and value == ""):
        raise bad_json(f"content.{key} must be a non-empty string")
    if len(value) > max_len:
        raise bad_json(f"content.{key} is longer than {max_len} characters")


def _require_url(content: JSON, key: str, schemes: tuple[str, ...], *, optional: bool = False) -> None:
    _require_str(content, key, max_len=4096, optional=optional)
    value = content.get(key)
    if value is not None and not value.startswith(schemes):
        raise bad_json(f"content.{key} must start with {' or '.join(schemes)}")


MEDIA_MSGTYPES = ("m.image", "m.file", "m.audio", "m.video")
CONTENT_SCHEMES = ("mxc://", "https://", "http://")
WEB_SCHEMES = ("https://", "http://")


def validate_message_content(event_type: str, content: JSON) -> None:
    """Rules for the message types we know; other (custom) types only need canonical JSON."""
    if event_type == MESSAGE:
        if "m.new_content" in content and not isinstance(content["m.new_content"], dict):
            raise bad_json("content.m.new_content must be an object")
        msgtype = content.get("msgtype")
        if not isinstance(msgtype, str) or not msgtype:
            raise bad_json("content.msgtype must be a non-empty string")
        _require_str(content, "body")
        if msgtype in MEDIA_MSGTYPES and "file" not in content:
            _require_url(content, "url", ("mxc://",))  # resolved by this server's content repository
        if msgtype == "m.location":
            _require_str(content, "geo_uri", max_len=512)
    elif event_type == SHARE_CARD:
        _require_url(content, "url", WEB_SCHEMES)
        _require_str(content, "title", max_len=256)
        _require_str(content, "description", max_len=2048, optional=True)
        _require_url(content, "image_url", CONTENT_SCHEMES, optional=True)
        _require_str(content, "body", optional=True)
    elif event_type == MUSIC_CARD:
        _require_str(content, "title", max_len=256)
        _require_str(content, "artist", max_len=256, optional=True)
        _require_url(content, "url", CONTENT_SCHEMES)
        _require_url(content, "cover_url", CONTENT_SCHEMES, optional=True)
        duration = content.get("duration_ms")
        if duration is not None and (isinstance(duration, bool) or not isinstance(duration, int) or duration < 0):
            raise bad_json("content.duration_ms must be a non-negative integer")
        _require_str(content, "body", optional=True)
    elif event_type == APP_CARD:
        _require_str(content, "app_id", max_len=128)
        if not isinstance(content.get("card"), dict):
            raise bad_json("content.card must be an object")
        _require_str(content, "body", optional=True)
    relates = content.get("m.relates_to")
    if relates is not None:
        if not isinstance(relates, dict):
            raise bad_json("content.m.relates_to must be an object")
        if relates.get("rel_type") == "m.replace":
            if not isinstance(relates.get("event_id"), str):
                raise bad_json("an m.replace relation needs an event_id")
            if event_type == MESSAGE and not isinstance(content.get("m.new_content"), dict):
                raise bad_json("an edit needs content.m.new_content")


def validate_state_content(event_type: str, content: JSON) -> None:
    if event_type in (MEMBER, CREATE):
        raise forbidden(f"{event_type} cannot be set through the state endpoint")
    if event_type == NAME:
        _require_str(content, "name", max_len=255, optional=True)
    elif event_type == TOPIC:
        _require_str(content, "topic", max_len=4096, optional=True)
    elif event_type == AVATAR:
        _require_url(content, "url", CONTENT_SCHEMES, optional=True)
    elif event_type == ENCRYPTION:
        # Clients encrypt from here on; the server only stores the ciphertext (docs/e2ee.md).
        _require_str(content, "algorithm", max_len=255)
    elif event_type == JOIN_RULES:
        if content.get("join_rule") not in ("public", "invite"):
            raise bad_json("content.join_rule must be 'public' or 'invite'")
    elif event_type == POWER_LEVELS:
        for key in ("ban", "kick", "redact", "invite", "events_default", "state_default", "users_default"):
            if key in content and (isinstance(content[key], bool) or not isinstance(content[key], int)):
                raise bad_json(f"content.{key} must be an integer")
        for key in ("users", "events"):
            value = content.get(key, {})
            if not isinstance(value, dict) or any(
                isinstance(v, bool) or not isinstance(v, int) for v in value.values()
            ):
                raise bad_json(f"content.{key} must map to integers")


# ---------------------------------------------------------------------------------------------
# Power levels and redaction
# ---------------------------------------------------------------------------------------------

DEFAULT_POWER_LEVELS: JSON = {
    "ban": 50,
    "kick": 50,
    "redact": 50,
    "invite": 0,
    "events_default": 0,
    "state_default": 50,
    "users_default": 0,
    "events": {
        NAME: 50,
        POWER_LEVELS: 100,
        HISTORY_VISIBILITY: 100,
        "m.room.canonical_alias": 50,
        AVATAR: 50,
        "m.room.tombstone": 100,
        "m.room.server_acl": 100,
        "m.room.encryption": 100,
        TOPIC: 50,
    },
    "notifications": {"room": 50},
}


def user_level(pl: JSON, user_id: str) -> int:
    return int(pl.get("users", {}).get(user_id, pl.get("users_default", 0)))


def event_level(pl: JSON, event_type: str, is_state: bool) -> int:
    default = pl.get("state_default", 50) if is_state else pl.get("events_default", 0)
    return int(pl.get("events", {}).get(event_type, default))


def action_level(pl: JSON, action: str) -> int:
    return int(pl.get(action, 0 if action == "invite" else 50))


_KEEP_CONTENT = {
    MEMBER: ("membership", "join_authorised_via_users_server"),
    CREATE: None,  # everything (room version 11)
    JOIN_RULES: ("join_rule", "allow"),
    POWER_LEVELS: (
        "ban",
        "events",
        "events_default",
        "invite",
        "kick",
        "redact",
        "state_default",
        "users",
        "users_default",
    ),
    HISTORY_VISIBILITY: ("history_visibility",),
    REDACTION: ("redacts",),
}


def pruned(event: JSON, redaction: JSON) -> JSON:
    """The event as left after a redaction: envelope kept, content reduced to what the spec keeps."""
    keep: JSON = {
        k: event[k]
        for k in ("event_id", "type", "room_id", "sender", "state_key", "origin_server_ts", "redacts")
        if k in event
    }
    allowed = _KEEP_CONTENT.get(event["type"], ())
    content = event.get("content", {})
    keep["content"] = dict(content) if allowed is None else {k: content[k] for k in allowed if k in content}
    keep["unsigned"] = {"redacted_because": redaction}
    return keep


# ---------------------------------------------------------------------------------------------
# Tokens and ids
# ---------------------------------------------------------------------------------------------

# s{room stream pos}_{typing serial}[_{e2e sequence}] (the third part: e2e.py)
_SYNC_TOKEN = re.compile(r"^s(\d{1,18})_(\d{1,18})(?:_(\d{1,18}))?$")
_PAGE_TOKEN = re.compile(r"^t(\d{1,18})$")


def sync_token(pos: int, typing_serial: int) -> str:
    return f"s{pos}_{typing_serial}"


def parse_sync_token(token: str) -> tuple[int, int]:
    if not token:
        return 0, 0
    match = _SYNC_TOKEN.match(token)
    if match is None:
        raise invalid("unknown sync token")
    return int(match.group(1)), int(match.group(2))


def sync_token_e2e(token: str) -> int:
    """The e2e sequence of a sync token (0 for none, or a token from before it had one)."""
    match = _SYNC_TOKEN.match(token) if token else None
    return int(match.group(3) or 0) if match else 0


def page_token(pos: int) -> str:
    return f"t{max(0, pos)}"


def parse_page_token(token: str) -> int | None:
    """A /messages token; sync tokens (next_batch) are accepted too, as clients pass those."""
    if not token:
        return None
    match = _PAGE_TOKEN.match(token) or _SYNC_TOKEN.match(token)
    if match is None:
        raise invalid("unknown pagination token")
    return int(match.group(1))


def new_id(nbytes: int) -> str:
    return base64.urlsafe_b64encode(os.urandom(nbytes)).decode().rstrip("=")


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def state_key_id(room_id: str, event_type: str, state_key: str) -> str:
    return f"{room_id}{SEP}{event_type}{SEP}{state_key}"


def pair_id(a: str, b: str) -> str:
    return f"{a}{SEP}{b}" if a < b else f"{b}{SEP}{a}"


def txn_key(user_id: str, device_id: str, room_id: str, kind: str, txn_id: str) -> str:
    """Transaction ids are scoped like Synapse's: per device, per request path (room and type)."""
    return SEP.join((user_id, device_id, room_id, kind, txn_id))


def txn_event_id(key: str) -> str:
    """The event id of a client transaction is derived from it, so every replica (and every retry
    after a crash) names the same event, and the unique `_id` of the stream stops a duplicate."""
    return "$" + base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()).decode().rstrip("=")


def receipt_key(room_id: str, user_id: str, receipt_type: str) -> str:
    return f"{room_id}{SEP}{user_id}{SEP}{receipt_type}"


FULLY_READ = "m.fully_read"
PUSH_RULES = "m.push_rules"


def pusher_key(user_id: str, app_id: str, pushkey: str) -> str:
    return f"{user_id}{SEP}{app_id}{SEP}{pushkey}"


def account_data_key(user_id: str, room_id: str, data_type: str) -> str:
    """Global account data has room_id ""."""
    return f"{user_id}{SEP}{room_id}{SEP}{data_type}"


def create_options(creator: str, body: JSON) -> tuple[str, bool, list[str]]:
    """createRoom's scalar fields, type-checked: (preset, is_direct, invitees without the creator)."""
    version = body.get("room_version")
    if version is not None and not isinstance(version, str):
        raise bad_json("room_version must be a string")
    if version is not None and version not in ROOM_VERSIONS:
        raise DomainError("M_UNSUPPORTED_ROOM_VERSION", f"room version {version[:32]!r} is not supported")
    is_direct = body.get("is_direct", False)
    if not isinstance(is_direct, bool):
        raise bad_json("is_direct must be a boolean")
    visibility = body.get("visibility", "private")
    if visibility not in ("public", "private"):
        raise bad_json("visibility must be 'public' or 'private'")
    preset = body.get("preset")
    if preset is None:
        preset = "trusted_private_chat" if is_direct else ("public_chat" if visibility == "public" else "private_chat")
    if preset not in PRESETS:
        raise invalid(f"unknown preset {str(preset)[:64]!r}")
    for key, limit in (("name", 255), ("topic", 4096)):
        if key in body and not isinstance(body[key], str):
            raise bad_json(f"{key} must be a string")
        if len(body.get(key, "")) > limit:
            raise bad_json(f"{key} is longer than {limit} characters")
    invites = body.get("invite", [])
    if not isinstance(invites, list) or not all(isinstance(u, str) and valid_user_id(u) for u in invites):
        raise invalid("invite must be a list of user ids")
    invites = [u for u in dict.fromkeys(invites) if u != creator]
    if is_direct and len(invites) != 1:
        raise invalid("a direct chat invites exactly one other user")
    return preset, is_direct, invites


def checked_initial_state(body: JSON) -> list[JSON]:
    """createRoom's initial_state, checked like PUT /state: [{type, state_key, content}]."""
    items = body.get("initial_state", [])
    if not isinstance(items, list):
        raise bad_json("initial_state must be a list")
    checked = []
    for item in items:
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("type"), str)
            or not item["type"]
            or not isinstance(item.get("content"), dict)
        ):
            raise bad_json("initial_state entries need type and content")
        state_key = item.get("state_key", "")
        if not isinstance(state_key, str):
            raise bad_json("initial_state state_key must be a string")
        check_id_field(item["type"], "initial_state type")
        check_id_field(state_key, "initial_state state_key")
        validate_state_content(item["type"], item["content"])
        checked.append({"type": item["type"], "state_key": state_key, "content": item["content"]})
    return checked
