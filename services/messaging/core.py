"""Domain rules of the messaging service. No gRPC, Mongo or NATS imports here.

Shape of the data:

- Every change to a room (message, state, membership, redaction) and every read receipt is an
  *entry* in one stream, numbered by `pos`. A writer claims the positions after the last one it
  has seen, under a unique index: if another writer (replica) took them, it catches up and
  retries. So a writer can only store k+1 after it has seen k stored: positions are contiguous
  and become visible in order, and a reader that has every entry up to W never misses one below W.
- Writes are group-committed: concurrent requests queue up and one write carries all of them
  (validation per request against the cache, proved current by the position claim; plain sends
  are one ordered insert, anything touching state one transaction). The stream entries double as
  the outbox that the relay in events.py publishes to JetStream from.
- Each replica keeps a `LogCache`: loaded rooms (state, members, receipts, recent timeline) and
  users (their memberships), advanced strictly in `pos` order from its own commits, from other
  replicas' broadcasts, or by catching up from the database. /sync and history are served from
  it, falling back to the database for what it does not hold.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import os
import re
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import orjson

from plumbing.domain_errors import DomainError, ErrorKind

log = logging.getLogger(__name__)

JSON = dict[str, Any]
T = TypeVar("T")

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
# Event types that count towards unread notifications.
COUNTED_TYPES = frozenset({MESSAGE, "m.room.encrypted", "m.sticker", SHARE_CARD, MUSIC_CARD, APP_CARD})
MEMBERSHIPS = ("invite", "join", "leave", "ban")
RECEIPT_TYPES = ("m.read", "m.read.private")
PRESETS = ("private_chat", "trusted_private_chat", "public_chat")
INVITE_POLICIES = ("friends", "anyone")


_KIND_OF_ERRCODE = {
    "M_FORBIDDEN": ErrorKind.FORBIDDEN,
    "M_NOT_FOUND": ErrorKind.NOT_FOUND,
    "M_LIMIT_EXCEEDED": ErrorKind.RATE_LIMITED,
}


class MessagingError(DomainError):
    """A refusal with its Matrix error code. Everything but the codes above is a 400, M_TOO_LARGE
    included (oversized events are bad requests in the Matrix C-S API)."""

    def __init__(self, errcode: str, message: str) -> None:
        super().__init__(_KIND_OF_ERRCODE.get(errcode, ErrorKind.INVALID), errcode, message)


def forbidden(message: str) -> MessagingError:
    return MessagingError("M_FORBIDDEN", message)


def not_found(message: str) -> MessagingError:
    return MessagingError("M_NOT_FOUND", message)


def bad_json(message: str) -> MessagingError:
    return MessagingError("M_BAD_JSON", message)


def invalid(message: str) -> MessagingError:
    return MessagingError("M_INVALID_PARAM", message)


class DuplicateWrite(Exception):
    """The store hit a unique key another writer committed first (e.g. the same txn id)."""


class StaleCache(Exception):
    """Another writer took the positions a batch claimed (its view of the stream was not current)."""


class PartialAppend(Exception):
    """A non-transactional append stored only the first `inserted` entries; the rest were refused
    because their position was taken (`stale`) or their event id already exists (a retried txn)."""

    def __init__(self, inserted: int, stale: bool) -> None:
        super().__init__(f"appended {inserted} entries; {'stale' if stale else 'duplicate event id'}")
        self.inserted = inserted
        self.stale = stale


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
    return isinstance(user_id, str) and len(user_id.encode(errors="replace")) <= MAX_ID_BYTES \
        and _USER_ID.fullmatch(user_id) is not None


def check_id_field(value: str, what: str) -> None:
    """Event types, state keys and txn ids: at most 255 bytes of valid UTF-8."""
    _check_text(value, what)
    if len(value.encode()) > MAX_ID_BYTES:
        raise invalid(f"{what} is longer than {MAX_ID_BYTES} bytes")


def parse_content(raw: bytes) -> JSON:
    if len(raw) > MAX_EVENT_BYTES:
        raise MessagingError("M_TOO_LARGE", f"event content is larger than {MAX_EVENT_BYTES} bytes")
    if not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MessagingError("M_NOT_JSON", "content is not valid JSON") from None
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
TEXT_MSGTYPES = ("m.text", "m.notice", "m.emote")
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
            _require_url(content, "url", CONTENT_SCHEMES)
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
    POWER_LEVELS: ("ban", "events", "events_default", "invite", "kick", "redact", "state_default", "users",
                   "users_default"),
    HISTORY_VISIBILITY: ("history_visibility",),
    REDACTION: ("redacts",),
}


def pruned(event: JSON, redaction: JSON) -> JSON:
    """The event as left after a redaction: envelope kept, content reduced to what the spec keeps."""
    keep = {k: event[k] for k in ("event_id", "type", "room_id", "sender", "state_key", "origin_server_ts",
                                   "redacts") if k in event}
    allowed = _KEEP_CONTENT.get(event["type"], ())
    content = event.get("content", {})
    keep["content"] = dict(content) if allowed is None else {k: content[k] for k in allowed if k in content}
    keep["unsigned"] = {"redacted_because": redaction}
    return keep


# ---------------------------------------------------------------------------------------------
# Tokens and ids
# ---------------------------------------------------------------------------------------------

_SYNC_TOKEN = re.compile(r"^s(\d{1,18})_(\d{1,18})$")
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


def _random_id(nbytes: int) -> str:
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


# ---------------------------------------------------------------------------------------------
# Ports: what core needs from the outside world (implemented in store.py / events.py, faked in tests)
# ---------------------------------------------------------------------------------------------


@dataclass
class Writes:
    """Everything one transaction writes, in bulk; positions are assigned before `Tx.write`."""

    entries: list[JSON] = field(default_factory=list)
    state: dict[str, JSON] = field(default_factory=dict)
    rooms: list[JSON] = field(default_factory=list)
    txn_ids: list[tuple[str, str]] = field(default_factory=list)  # remembered after commit, not stored
    new_state: set[str] = field(default_factory=set)  # keys of `state` known not to be stored yet (insert)
    receipts: dict[str, JSON] = field(default_factory=dict)
    redactions: dict[str, JSON] = field(default_factory=dict)  # event_id -> pruned event


class Tx(Protocol):
    """Reads and writes inside one transaction (or plain reads, for the append-only fast path)."""

    async def rooms(self, room_ids: list[str]) -> dict[str, JSON]: ...
    async def state_docs(self, keys: list[str]) -> dict[str, JSON]: ...
    async def newer_than(self, pos: int) -> bool: ...
    async def relations(self, pair_ids: list[str]) -> dict[str, JSON]: ...
    async def entry(self, event_id: str) -> JSON | None: ...
    async def receipt(self, key: str) -> JSON | None: ...
    async def write(self, writes: Writes) -> None: ...


class Store(Protocol):
    async def transaction(self, work: Callable[[Tx], Awaitable[T]]) -> T: ...
    def reader(self) -> Tx: ...
    async def append_entries(self, entries: list[JSON]) -> None: ...
    async def known_position(self) -> int: ...
    async def entries_after(self, pos: int, limit: int) -> list[JSON]: ...
    async def room_entries(self, room_id: str, lo: int, hi: int, limit: int, descending: bool) -> list[JSON]: ...
    async def count_unread(self, room_id: str, lo: int, hi: int, user_id: str) -> int: ...
    async def load_room(self, room_id: str) -> tuple[JSON | None, list[JSON], list[JSON]]: ...
    async def load_users(self, user_ids: list[str]) -> list[JSON]: ...
    async def entry(self, event_id: str) -> JSON | None: ...
    async def state_events_upto(self, room_id: str, pos: int) -> list[JSON]: ...
    def is_outage(self, exc: BaseException) -> bool: ...


class Notifier(Protocol):
    """Wake-ups for waiting /sync requests, and what other replicas of this service must hear."""

    async def wake(self, users: dict[str, int]) -> None: ...
    async def broadcast_entries(self, entries: list[JSON]) -> None: ...
    async def broadcast_typing(self, room_id: str, user_id: str, expires_at_ms: int, serial: int) -> None: ...


class NullNotifier:
    async def wake(self, users: dict[str, int]) -> None:
        pass

    async def broadcast_entries(self, entries: list[JSON]) -> None:
        pass

    async def broadcast_typing(self, room_id: str, user_id: str, expires_at_ms: int, serial: int) -> None:
        pass


# ---------------------------------------------------------------------------------------------
# The in-memory view of the stream
# ---------------------------------------------------------------------------------------------


@dataclass
class MemberInfo:
    membership: str
    pos: int
    ever_joined: bool


class RoomView:
    """One room as of the cache head: current state, members, receipts and recent timeline.

    `timeline` holds every event of the room with floor < pos <= head (older ones are in the
    database); `unread` holds per-user unread counts kept up to date as events arrive.
    """

    __slots__ = ("doc", "floor", "last_pos", "members", "receipts", "room_id", "state", "timeline", "unread")

    def __init__(self, doc: JSON, floor: int) -> None:
        self.room_id: str = doc["_id"]
        self.doc = doc
        self.state: dict[tuple[str, str], JSON] = {}  # (type, state_key) -> entry
        self.members: dict[str, MemberInfo] = {}
        self.receipts: dict[tuple[str, str], JSON] = {}  # (user, type) -> receipt doc
        self.timeline: deque[JSON] = deque()
        self.floor = floor
        self.last_pos = 0
        self.unread: dict[str, int] = {}

    def joined(self) -> list[str]:
        return [u for u, m in self.members.items() if m.membership == "join"]

    def read_up_to(self, user_id: str) -> int:
        best = 0
        for receipt_type in RECEIPT_TYPES:
            receipt = self.receipts.get((user_id, receipt_type))
            if receipt is not None:
                best = max(best, int(receipt["event_pos"]))
        return best

    def power_levels(self) -> JSON:
        entry = self.state.get((POWER_LEVELS, ""))
        return entry["event"]["content"] if entry else DEFAULT_POWER_LEVELS


class UserView:
    __slots__ = ("rooms", "user_id")

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.rooms: dict[str, MemberInfo] = {}


def _counts(entry: JSON, user_id: str) -> bool:
    event = entry["event"]
    return event["type"] in COUNTED_TYPES and event["sender"] != user_id and "state_key" not in event


class LogCache:
    """This replica's view of the stream, advanced strictly in position order (see module doc)."""

    def __init__(self, store: Store, *, timeline_cap: int = 256, max_rooms: int = 20_000,
                 max_users: int = 50_000) -> None:
        self._store = store
        self._timeline_cap = timeline_cap
        self._max_rooms = max_rooms
        self._max_users = max_users
        self.head = 0
        self.rooms: OrderedDict[str, RoomView] = OrderedDict()
        self.users: OrderedDict[str, UserView] = OrderedDict()
        self._lock = asyncio.Lock()
        self._user_waiters: dict[str, asyncio.Future[UserView]] = {}
        self._user_loader: asyncio.Task[None] | None = None
        # Sees every entry once, in position order (the stream relay keeps recent ones from it).
        self.on_applied: Callable[[JSON], None] | None = None

    async def start(self) -> None:
        # Start from a position known to be stored, then read forward to the end of the stream.
        self.head = await self._store.known_position()
        await self.catch_up()

    # -- advancing ------------------------------------------------------------------------------

    async def catch_up(self, target: int | None = None) -> None:
        """Read entries past the head from the database (all of them, or until `target`)."""
        if target is not None and self.head >= target:
            return
        async with self._lock:
            await self._catch_up_locked(target)

    async def _catch_up_locked(self, target: int | None = None) -> None:
        while target is None or self.head < target:
            entries = await self._store.entries_after(self.head, 500)
            before = self.head
            self._apply_all(entries)
            if len(entries) < 500 or self.head == before:
                return

    async def apply_committed(self, entries: list[JSON]) -> None:
        """Entries just committed (here or by another replica): apply, filling any gap from the database."""
        if not entries or entries[-1]["pos"] <= self.head:
            return
        async with self._lock:
            if entries[0]["pos"] > self.head + 1:
                await self._catch_up_locked(entries[-1]["pos"])
            self._apply_all(entries)

    def _apply_all(self, entries: Iterable[JSON]) -> None:
        for entry in entries:
            pos = entry["pos"]
            if pos <= self.head:
                continue
            if pos != self.head + 1:
                log.warning("gap in the stream at %d (head %d); will catch up", pos, self.head)
                break
            self._apply(entry)
            self.head = pos
            if self.on_applied is not None:
                self.on_applied(entry)

    def _apply(self, entry: JSON) -> None:
        pos = entry["pos"]
        room_id = entry["room_id"]
        view = self.rooms.get(room_id)
        if entry["kind"] == "receipt":
            if view is not None:
                self._apply_receipt(view, entry)
            return
        event = entry["event"]
        if view is not None:
            view.last_pos = pos
            self._apply_event(view, entry)
        if event["type"] == MEMBER:
            user_view = self.users.get(event["state_key"])
            if user_view is not None:
                current = user_view.rooms.get(room_id)
                if current is None or current.pos < pos:
                    user_view.rooms[room_id] = MemberInfo(
                        event["content"]["membership"], pos, bool(entry.get("ever_joined"))
                    )

    def _apply_event(self, view: RoomView, entry: JSON) -> None:
        event = entry["event"]
        pos = entry["pos"]
        view.timeline.append(entry)
        if len(view.timeline) > self._timeline_cap:
            view.floor = view.timeline.popleft()["pos"]
        if "state_key" in event:
            key = (event["type"], event["state_key"])
            current = view.state.get(key)
            if current is None or current["pos"] < pos:
                view.state[key] = entry
                if event["type"] == MEMBER:
                    view.members[event["state_key"]] = MemberInfo(
                        event["content"]["membership"], pos, bool(entry.get("ever_joined"))
                    )
        if event["type"] == REDACTION:
            self._apply_redaction(view, event)
        elif event["type"] in COUNTED_TYPES and "state_key" not in event:
            for user_id in view.unread:
                if user_id != event["sender"]:
                    view.unread[user_id] += 1

    def _apply_redaction(self, view: RoomView, redaction: JSON) -> None:
        target = redaction.get("redacts")
        for cached in view.timeline:
            if cached["event"]["event_id"] == target:
                cached["event"] = pruned(cached["event"], redaction)
                break

    def _apply_receipt(self, view: RoomView, entry: JSON) -> None:
        receipt = entry["receipt"]
        key = (receipt["user"], receipt["type"])
        current = view.receipts.get(key)
        if current is not None and current["pos"] >= entry["pos"]:
            return
        view.receipts[key] = {**receipt, "pos": entry["pos"]}
        view.last_pos = entry["pos"]
        user_id = receipt["user"]
        if user_id in view.unread:
            read_pos = view.read_up_to(user_id)
            if read_pos >= view.floor:
                view.unread[user_id] = sum(
                    1 for e in view.timeline if e["pos"] > read_pos and _counts(e, user_id)
                )
            else:
                del view.unread[user_id]  # recounted from the database when next needed

    # -- loading --------------------------------------------------------------------------------

    async def room(self, room_id: str) -> RoomView | None:
        """The loaded view of a room (loading it if needed), or None if the room does not exist."""
        view = self.rooms.get(room_id)
        if view is not None:
            self.rooms.move_to_end(room_id)
            return view
        async with self._lock:
            view = self.rooms.get(room_id)
            if view is not None:
                return view
            doc, state_docs, receipt_docs = await self._store.load_room(room_id)
            if doc is None:
                return None
            view = RoomView(doc, self.head)
            newest = 0
            for state in state_docs:
                entry = state["entry"]
                view.state[(state["type"], state["state_key"])] = entry
                if state["type"] == MEMBER:
                    view.members[state["state_key"]] = MemberInfo(
                        state["membership"], entry["pos"], bool(state.get("ever_joined"))
                    )
                newest = max(newest, entry["pos"])
            for receipt in receipt_docs:
                view.receipts[(receipt["user"], receipt["type"])] = receipt
                newest = max(newest, receipt["pos"])
            view.last_pos = newest
            self.rooms[room_id] = view
            if len(self.rooms) > self._max_rooms:
                self.rooms.popitem(last=False)
            if newest > self.head:
                # The database is ahead of this replica: bring everything else level first.
                await self._catch_up_locked(newest)
            return view

    async def user(self, user_id: str) -> UserView:
        view = self.users.get(user_id)
        if view is not None:
            self.users.move_to_end(user_id)
            return view
        # Loads are batched: many users syncing at once (clients reconnecting after a restart)
        # cost one query per batch instead of one each, all under the lock (see `room`).
        waiter = self._user_waiters.get(user_id)
        if waiter is None:
            waiter = self._user_waiters[user_id] = asyncio.get_running_loop().create_future()
            if self._user_loader is None or self._user_loader.done():
                self._user_loader = asyncio.create_task(self._load_users(), name="load-users")
        return await asyncio.shield(waiter)

    async def _load_users(self) -> None:
        while self._user_waiters:
            batch = dict(list(self._user_waiters.items())[:500])
            for user_id in batch:
                del self._user_waiters[user_id]
            try:
                async with self._lock:
                    wanted = [u for u in batch if u not in self.users]
                    views = {u: UserView(u) for u in wanted}
                    newest = 0
                    for state in await self._store.load_users(wanted) if wanted else []:
                        pos = state["entry"]["pos"]
                        views[state["member_user"]].rooms[state["room_id"]] = MemberInfo(
                            state["membership"], pos, bool(state.get("ever_joined")))
                        newest = max(newest, pos)
                    for user_id, view in views.items():
                        self.users[user_id] = view
                    found = {u: views.get(u) or self.users.get(u) for u in batch}  # before any eviction
                    while len(self.users) > self._max_users:
                        self.users.popitem(last=False)
                    if newest > self.head:
                        await self._catch_up_locked(newest)
            except Exception as exc:
                for waiter in batch.values():
                    if not waiter.done():
                        waiter.set_exception(exc)
                continue
            for user_id, waiter in batch.items():
                if not waiter.done():
                    waiter.set_result(found[user_id] or UserView(user_id))

    async def unread(self, view: RoomView, user_id: str) -> int:
        count = view.unread.get(user_id)
        if count is not None:
            return count
        async with self._lock:
            read_pos = view.read_up_to(user_id)
            if read_pos >= view.floor:
                count = sum(1 for e in view.timeline if e["pos"] > read_pos and _counts(e, user_id))
            else:
                # Under the lock, so no event is applied between the count and registering it.
                count = await self._store.count_unread(view.room_id, read_pos, self.head, user_id)
            view.unread[user_id] = count
            return count

    async def room_range(self, view: RoomView, lo: int, hi: int, limit: int, descending: bool) -> list[JSON]:
        """Up to `limit` timeline entries of a room with lo < pos <= hi, newest first if descending."""
        if hi <= lo or limit <= 0:
            return []
        floor = view.floor
        newest_first: list[JSON] = []  # a snapshot, newest first: the deque may change while we await
        for entry in reversed(view.timeline):
            pos = entry["pos"]
            if pos <= lo or (descending and len(newest_first) >= limit):
                break
            if pos <= hi:
                newest_first.append(entry)
        cached = newest_first[::-1]
        if descending:
            result = newest_first[:limit]
            if len(result) < limit and floor > lo:
                result += await self._store.room_entries(
                    view.room_id, lo, min(hi, floor), limit - len(result), True
                )
            return result
        result = []
        if floor > lo:
            result = await self._store.room_entries(view.room_id, lo, min(hi, floor), limit, False)
        if len(result) < limit:
            result += cached[: limit - len(result)]
        return result

    async def find_entry(self, room_id: str, event_id: str) -> JSON | None:
        view = self.rooms.get(room_id)
        if view is not None:
            for cached in reversed(view.timeline):
                if cached["event"]["event_id"] == event_id:
                    return cached
        return await self._store.entry(event_id)


# ---------------------------------------------------------------------------------------------
# Typing (ephemeral, in memory, shared between replicas by broadcast)
# ---------------------------------------------------------------------------------------------


class Typing:
    def __init__(self) -> None:
        self.rooms: dict[str, dict[str, int]] = {}  # room -> user -> expires_at_ms
        self.room_serial: dict[str, int] = {}
        self.serial = 0

    def _bump(self, room_id: str, serial: int | None = None) -> int:
        # Serials follow the wall clock so tokens from different replicas compare sensibly.
        self.serial = max(self.serial + 1, now_ms(), serial or 0)
        self.room_serial[room_id] = self.serial
        return self.serial

    def set(self, room_id: str, user_id: str, expires_at_ms: int, serial: int | None = None) -> int | None:
        """Record typing (expires_at_ms > 0) or stopped (0); returns the new serial if anything changed."""
        users = self.rooms.setdefault(room_id, {})
        if expires_at_ms > 0:
            was = user_id in users
            users[user_id] = expires_at_ms
            return None if was and serial is None else self._bump(room_id, serial)
        if users.pop(user_id, None) is None:
            return None
        return self._bump(room_id, serial)

    def expire(self, at_ms: int) -> list[str]:
        changed = []
        for room_id, users in self.rooms.items():
            gone = [u for u, expires in users.items() if expires <= at_ms]
            for user_id in gone:
                del users[user_id]
            if gone:
                self._bump(room_id)
                changed.append(room_id)
        return changed

    def typers(self, room_id: str) -> list[str]:
        return sorted(self.rooms.get(room_id, {}))


# ---------------------------------------------------------------------------------------------
# One transaction's worth of work
# ---------------------------------------------------------------------------------------------


class Batch:
    """One write's worth of requests.

    Reads go through an overlay of the batch's own writes. In *cache mode* (the normal case) rules
    are checked against this replica's cache as of `base_head`, and the entries claim positions
    base_head+1, base_head+2, ... under a unique index: if another writer already took them, the
    view was stale and the batch is re-run after catching up; if the claim succeeds, nobody wrote
    in between, so the checks held. Without cache mode (the fallback after repeated conflicts),
    reads go to the database inside the transaction. Writes are buffered and flushed in bulk.
    """

    def __init__(self, core: Messaging, tx: Tx, check_txns: bool, cache_mode: bool) -> None:
        self.core = core
        self.tx = tx
        self.check_txns = check_txns
        self.cache_mode = cache_mode
        self.base_head = core.cache.head
        self.refused = False
        self.writes = Writes()
        self.state: dict[str, JSON | None] = {}
        self.room_docs: dict[str, JSON | None] = {}
        self.txn_map: dict[str, str] = {}
        self._created_rooms: set[str] = set()
        self._journal: list[tuple[str, str, Any]] = []
        self.ts = now_ms()

    # -- savepoints (a refused request leaves nothing behind) -----------------------------------

    def savepoint(self) -> tuple[int, ...]:
        w = self.writes
        return (len(w.entries), len(w.rooms), len(w.txn_ids), len(self._journal))

    def rollback(self, mark: tuple[int, ...]) -> None:
        entries, rooms, txns, journal = mark
        w = self.writes
        del w.entries[entries:]
        del w.rooms[rooms:]
        del w.txn_ids[txns:]
        while len(self._journal) > journal:
            kind, key, previous = self._journal.pop()
            target: dict[str, Any] = {
                "state": self.state, "writes.state": w.state, "receipts": w.receipts,
                "redactions": w.redactions, "txn_map": self.txn_map, "room_docs": self.room_docs,
            }[kind]
            if previous is _MISSING:
                target.pop(key, None)
            else:
                target[key] = previous

    def _set(self, kind: str, target: dict[str, Any], key: str, value: Any) -> None:
        self._journal.append((kind, key, target.get(key, _MISSING)))
        target[key] = value

    # -- reads ----------------------------------------------------------------------------------

    async def prefetch(self, room_ids: set[str], state_keys: set[str]) -> None:
        if self.cache_mode:
            for room_id in room_ids:
                await self.core.cache.room(room_id)
            self.base_head = self.core.cache.head  # after loading: loads may catch up
        else:
            missing_rooms = [r for r in room_ids if r not in self.room_docs and r not in self.core.room_docs]
            if missing_rooms:
                found = await self.tx.rooms(missing_rooms)
                for room_id in missing_rooms:
                    self.room_docs[room_id] = found.get(room_id)
            missing = [k for k in state_keys if k not in self.state]
            if missing:
                found = await self.tx.state_docs(missing)
                for key in missing:
                    self.state[key] = found.get(key)
        pairs: set[str] = set()
        for room_id in room_ids:
            doc = await self.room(room_id)
            if doc is not None and doc.get("direct_pair"):
                a, b = doc["direct_pair"]
                pairs.add(pair_id(a, b))
        await self.core.relations.prefetch(self.tx, pairs)

    async def room(self, room_id: str) -> JSON | None:
        cached = self.core.room_docs.get(room_id)
        if cached is not None:
            return cached
        if room_id in self.room_docs:
            return self.room_docs[room_id]
        if self.cache_mode:
            view = self.core.cache.rooms.get(room_id) or await self.core.cache.room(room_id)
            doc = view.doc if view is not None else None
        else:
            doc = (await self.tx.rooms([room_id])).get(room_id)
        self.room_docs[room_id] = doc
        return doc

    async def existing_room(self, room_id: str) -> JSON:
        doc = await self.room(room_id)
        if doc is None:
            raise not_found("room not found")
        return doc

    async def _state_doc(self, room_id: str, event_type: str, state_key: str) -> JSON | None:
        key = state_key_id(room_id, event_type, state_key)
        if key in self.state:
            return self.state[key]
        doc: JSON | None = None
        if self.cache_mode:
            view = self.core.cache.rooms.get(room_id)
            if view is None and room_id not in self.room_docs:
                view = await self.core.cache.room(room_id)
            entry = view.state.get((event_type, state_key)) if view is not None else None
            if entry is not None:
                doc = {"entry": entry}
                if event_type == MEMBER:
                    info = view.members[state_key] if view is not None else None
                    doc.update(membership=info.membership if info else entry["event"]["content"]["membership"],
                               ever_joined=bool(info and info.ever_joined))
        else:
            doc = (await self.tx.state_docs([key])).get(key)
        self.state[key] = doc
        return doc

    async def state_entry(self, room_id: str, event_type: str, state_key: str) -> JSON | None:
        doc = await self._state_doc(room_id, event_type, state_key)
        return doc["entry"] if doc is not None else None

    async def membership(self, room_id: str, user_id: str) -> tuple[str, bool]:
        """(membership or "", ever_joined)."""
        doc = await self._state_doc(room_id, MEMBER, user_id)
        if doc is None:
            return "", False
        return doc["membership"], bool(doc.get("ever_joined"))

    async def power_levels(self, room_id: str) -> JSON:
        entry = await self.state_entry(room_id, POWER_LEVELS, "")
        return entry["event"]["content"] if entry else DEFAULT_POWER_LEVELS

    async def relation(self, a: str, b: str) -> JSON | None:
        return await self.core.relations.get(self.tx, pair_id(a, b))

    async def blocked(self, a: str, b: str) -> bool:
        rel = await self.relation(a, b)
        return bool(rel and (rel.get("a_blocks_b") or rel.get("b_blocks_a")))

    async def known_txn(self, key: str) -> str | None:
        if key in self.txn_map:
            return self.txn_map[key]
        if self.check_txns:
            event_id = txn_event_id(key)
            if await self.tx.entry(event_id) is not None:
                return event_id
        return None

    # -- writes ---------------------------------------------------------------------------------

    def append_event(self, room_id: str, sender: str, event_type: str, content: JSON, *,
                     state_key: str | None = None, redacts: str | None = None, event_id: str = "",
                     device_id: str = "", txn_id: str = "", ever_joined: bool = False) -> JSON:
        event: JSON = {
            "event_id": event_id or "$" + _random_id(24),
            "room_id": room_id,
            "sender": sender,
            "type": event_type,
            "content": content,
            "origin_server_ts": self.ts,
        }
        if state_key is not None:
            event["state_key"] = state_key
        if redacts is not None:
            event["redacts"] = redacts
        if len(canonical_bytes(event)) > MAX_EVENT_BYTES:
            raise MessagingError("M_TOO_LARGE", f"event is larger than {MAX_EVENT_BYTES} bytes")
        entry: JSON = {"_id": event["event_id"], "kind": "event", "room_id": room_id, "event": event, "pos": 0}
        if device_id:
            entry["device"] = device_id
        if txn_id:
            entry["txn"] = txn_id
        if state_key is not None:
            key = state_key_id(room_id, event_type, state_key)
            doc: JSON = {"_id": key, "room_id": room_id, "type": event_type, "state_key": state_key,
                         "entry": entry}
            if event_type == MEMBER:
                membership = content["membership"]
                ever = ever_joined or membership == "join"
                entry["ever_joined"] = ever
                doc.update(membership=membership, member_user=state_key, ever_joined=ever)
            previous = self.state.get(key, _MISSING)
            if previous is None or (previous is _MISSING and self.room_docs.get(room_id) is not None
                                    and room_id in self._created_rooms):
                self.writes.new_state.add(key)  # a plain insert is much cheaper than an upsert
            self._set("state", self.state, key, doc)
            self._set("writes.state", self.writes.state, key, doc)
        self.writes.entries.append(entry)
        return entry

    def append_member(self, room_id: str, sender: str, target: str, membership: str, *, ever_joined: bool,
                      reason: str = "", extra: JSON | None = None) -> JSON:
        content: JSON = {"membership": membership, **(extra or {})}
        if reason:
            content["reason"] = reason
        return self.append_event(room_id, sender, MEMBER, content, state_key=target, ever_joined=ever_joined)

    def add_room(self, doc: JSON) -> None:
        self._created_rooms.add(doc["_id"])
        self.writes.rooms.append(doc)
        self._set("room_docs", self.room_docs, doc["_id"], doc)

    def record_txn(self, key: str, event_id: str) -> None:
        self.writes.txn_ids.append((key, event_id))
        self._set("txn_map", self.txn_map, key, event_id)

    def add_receipt(self, room_id: str, user_id: str, receipt_type: str, event_id: str, event_pos: int) -> None:
        receipt = {"user": user_id, "type": receipt_type, "event_id": event_id, "event_pos": event_pos,
                   "ts": self.ts}
        entry: JSON = {"kind": "receipt", "room_id": room_id, "receipt": receipt, "pos": 0}
        self.writes.entries.append(entry)
        key = receipt_key(room_id, user_id, receipt_type)
        doc = {"_id": key, "room_id": room_id, **receipt, "entry": entry}
        self._set("receipts", self.writes.receipts, key, doc)

    def add_redaction(self, target: JSON, redaction: JSON) -> None:
        self._set("redactions", self.writes.redactions, target["event_id"], pruned(target, redaction))

    def claim_positions(self) -> None:
        for offset, entry in enumerate(self.writes.entries, start=1):
            entry["pos"] = self.base_head + offset
            if entry["kind"] == "receipt":
                entry["_id"] = f"~r{entry['pos']}"
        for doc in self.writes.receipts.values():
            doc["pos"] = doc["entry"]["pos"]

    async def check_refusals(self) -> None:
        """A refusal must not rest on a stale view either: with nothing written, compare heads."""
        if self.cache_mode and self.refused and not self.writes.entries and await self.tx.newer_than(self.base_head):
            raise StaleCache()

    async def flush(self) -> None:
        await self.check_refusals()
        if not self.writes.entries and not self.writes.rooms:
            return
        self.claim_positions()
        await self.tx.write(self.writes)

    def is_append_only(self) -> bool:
        w = self.writes
        return not (w.state or w.rooms or w.receipts or w.redactions) and all(e["kind"] == "event" for e in w.entries)


class Relations:
    """The friend-graph projection as seen by this replica: read from the store, kept briefly.

    Contacts events reach the projection asynchronously anyway, so a few seconds of caching adds
    no weaker guarantee; a change applied by any replica evicts the pair everywhere at once
    (`forget`, called from the replication broadcast).
    """

    def __init__(self, ttl_seconds: float = 5.0) -> None:
        self._ttl = ttl_seconds
        self._docs: OrderedDict[str, tuple[float, JSON | None]] = OrderedDict()

    def _fresh(self, pair: str) -> tuple[bool, JSON | None]:
        found = self._docs.get(pair)
        if found is None or found[0] < time.monotonic():
            return False, None
        return True, found[1]

    async def prefetch(self, tx: Tx, pairs: set[str]) -> None:
        missing = [p for p in pairs if not self._fresh(p)[0]]
        if missing:
            found = await tx.relations(missing)
            for pair in missing:
                self._put(pair, found.get(pair))

    async def get(self, tx: Tx, pair: str) -> JSON | None:
        fresh, doc = self._fresh(pair)
        if not fresh:
            doc = (await tx.relations([pair])).get(pair)
            self._put(pair, doc)
        return doc

    def _put(self, pair: str, doc: JSON | None) -> None:
        self._docs[pair] = (time.monotonic() + self._ttl, doc)
        self._docs.move_to_end(pair)
        if len(self._docs) > 100_000:
            self._docs.popitem(last=False)

    def forget(self, pair: str) -> None:
        self._docs.pop(pair, None)


_MISSING = object()


# ---------------------------------------------------------------------------------------------
# The service
# ---------------------------------------------------------------------------------------------

Op = Callable[[Batch], Awaitable[Any]]


@dataclass
class _Pending:
    op: Op
    rooms: set[str]
    state_keys: set[str]
    future: asyncio.Future[Any]
    append_only: bool = False  # only ever appends a non-state event (a plain send)


def _fail_all(batch: list[_Pending], exc: BaseException) -> None:
    for pending in batch:
        if not pending.future.done():
            pending.future.set_exception(exc)


@dataclass(frozen=True)
class Settings:
    server_name: str = "localhost"
    invite_policy: str = "friends"
    max_batch: int = 128
    timeline_cap: int = 256
    max_cached_rooms: int = 20_000
    max_cached_users: int = 50_000
    relations_cache_seconds: float = 5.0


@dataclass
class SyncResult:
    body: JSON
    next_batch: str
    has_changes: bool


def _create_options(creator: str, body: JSON) -> tuple[str, bool, list[str]]:
    """createRoom's scalar fields, type-checked: (preset, is_direct, invitees without the creator)."""
    version = body.get("room_version")
    if version is not None and not isinstance(version, str):
        raise bad_json("room_version must be a string")
    if version is not None and version not in ROOM_VERSIONS:
        raise MessagingError("M_UNSUPPORTED_ROOM_VERSION", f"room version {version[:32]!r} is not supported")
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


def _initial_state(body: JSON) -> list[JSON]:
    """createRoom's initial_state, checked like PUT /state: [{type, state_key, content}]."""
    items = body.get("initial_state", [])
    if not isinstance(items, list):
        raise bad_json("initial_state must be a list")
    checked = []
    for item in items:
        if not isinstance(item, dict) or not isinstance(item.get("type"), str) or not item["type"] or \
                not isinstance(item.get("content"), dict):
            raise bad_json("initial_state entries need type and content")
        state_key = item.get("state_key", "")
        if not isinstance(state_key, str):
            raise bad_json("initial_state state_key must be a string")
        check_id_field(item["type"], "initial_state type")
        check_id_field(state_key, "initial_state state_key")
        validate_state_content(item["type"], item["content"])
        checked.append({"type": item["type"], "state_key": state_key, "content": item["content"]})
    return checked


class Messaging:
    def __init__(self, store: Store, notifier: Notifier | None = None, settings: Settings | None = None) -> None:
        self.store = store
        self.notifier = notifier or NullNotifier()
        self.settings = settings or Settings()
        if self.settings.invite_policy not in INVITE_POLICIES:
            raise ValueError(f"invite policy must be one of {INVITE_POLICIES}")
        self.cache = LogCache(store, timeline_cap=self.settings.timeline_cap,
                              max_rooms=self.settings.max_cached_rooms, max_users=self.settings.max_cached_users)
        self.typing = Typing()
        self.room_docs: OrderedDict[str, JSON] = OrderedDict()  # rooms are immutable once created
        self.relations = Relations(self.settings.relations_cache_seconds)
        self._recent_txns: OrderedDict[str, str] = OrderedDict()
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None

    async def start(self) -> None:
        await self.cache.start()
        self._writer = asyncio.create_task(self._write_loop(), name="messaging-writer")

    async def stop(self) -> None:
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer

    # -- the group-committing writer --------------------------------------------------------------

    async def _submit(self, op: Op, rooms: Iterable[str] = (), state_keys: Iterable[str] = (),
                      append_only: bool = False) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(op, set(rooms), set(state_keys), future, append_only))
        return await future

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self.settings.max_batch and not self._queue.empty():
                batch.append(self._queue.get_nowait())
            await self._run_isolated(batch)

    async def _run_isolated(self, batch: list[_Pending]) -> None:
        """Run a batch; if it fails unexpectedly, commit its requests one by one, so that a request
        nobody foresaw as bad fails alone and never takes other users' requests with it."""
        try:
            await self._run(batch)
            return
        except Exception as exc:  # the writer must survive anything one batch does
            if self.store.is_outage(exc):
                _fail_all(batch, exc)  # the store is down: retrying one by one would only wait longer
                return
            log.warning("write batch of %d failed; committing its requests one by one", len(batch), exc_info=True)
            if len(batch) == 1:
                _fail_all(batch, exc)
                return
        for pending in batch:
            if pending.future.done():
                continue
            try:
                await self._run([pending])
            except Exception as exc:
                log.exception("write request failed")
                _fail_all([pending], exc)

    async def _run(self, pending: list[_Pending]) -> None:
        if all(p.append_only for p in pending):
            await self._run_appends(pending)
        else:
            await self._run_transaction(pending)

    async def _validate(self, batch: Batch, pending: list[_Pending], outcomes: list[tuple[bool, Any]],
                        appended: list[int]) -> None:
        rooms = set().union(*(p.rooms for p in pending))
        state_keys = set().union(*(p.state_keys for p in pending))
        outcomes.clear()
        appended.clear()
        await batch.prefetch(rooms, state_keys)
        for item in pending:
            mark = batch.savepoint()
            try:
                outcomes.append((True, await item.op(batch)))
            except Exception as exc:  # a refusal, or a fault: either way this request's alone
                if not isinstance(exc, MessagingError):
                    log.error("write request failed while validating", exc_info=exc)
                batch.rollback(mark)
                batch.refused = True
                outcomes.append((False, exc))
            appended.append(len(batch.writes.entries) - mark[0])

    async def _run_appends(self, pending: list[_Pending]) -> None:
        """Plain sends: one ordered, non-transactional insert (each entry stands alone: a send that
        was not stored was not acknowledged, and its retry is recognised by its event id)."""
        check_txns = False
        for _attempt in range(10):
            outcomes: list[tuple[bool, Any]] = []
            appended: list[int] = []
            batch = Batch(self, self.store.reader(), check_txns=check_txns, cache_mode=True)
            await self._validate(batch, pending, outcomes, appended)
            try:
                await batch.check_refusals()
                if batch.writes.entries:
                    batch.claim_positions()
                    await self.store.append_entries(batch.writes.entries)
            except StaleCache:
                await self.cache.catch_up()
                continue
            except PartialAppend as partial:
                if partial.inserted:
                    # The claim of base_head+1 held, so every check in this batch held: finish the
                    # requests whose entries are stored (and the refusals), redo the rest.
                    stored, rest, done = partial.inserted, [], []
                    for item, outcome, count in zip(pending, outcomes, appended, strict=True):
                        (rest if count and stored < count else done).append((item, outcome))
                        stored -= count
                    kept = batch.writes.entries[:partial.inserted]
                    kept_ids = {e["_id"] for e in kept}
                    batch.writes.entries[:] = kept
                    batch.writes.txn_ids[:] = [t for t in batch.writes.txn_ids if t[1] in kept_ids]
                    await self._after_commit(batch)
                    self._resolve(done)
                    pending = [item for item, _ in rest]
                if partial.stale:
                    await self.cache.catch_up()
                else:
                    check_txns = True
                if not pending:
                    return
                continue
            await self._after_commit(batch)
            self._resolve(list(zip(pending, outcomes, strict=True)))
            return
        raise RuntimeError("could not append after repeated conflicts")

    async def _run_transaction(self, pending: list[_Pending]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        appended: list[int] = []
        committed: Batch | None = None
        check_txns = False
        stale = 0
        for _attempt in range(10):

            async def work(tx: Tx, check: bool = check_txns, cache_mode: bool = stale < 3) -> Batch:
                batch = Batch(self, tx, check_txns=check, cache_mode=cache_mode)
                await self._validate(batch, pending, outcomes, appended)
                await batch.flush()
                return batch

            try:
                committed = await self.store.transaction(work)
                break
            except DuplicateWrite:
                check_txns = True  # another writer stored the same client transaction; look ids up
            except StaleCache:
                stale += 1  # after a few, validate against the database instead of the cache
                await self.cache.catch_up()
        if committed is None:
            raise RuntimeError("could not commit after repeated conflicts")
        await self._after_commit(committed)
        self._resolve(list(zip(pending, outcomes, strict=True)))

    @staticmethod
    def _resolve(results: list[tuple[_Pending, tuple[bool, Any]]]) -> None:
        for item, (ok, value) in results:
            if item.future.done():
                continue
            if ok:
                item.future.set_result(value)
            else:
                item.future.set_exception(value)

    async def _after_commit(self, batch: Batch) -> None:
        writes = batch.writes
        for doc in writes.rooms:
            self._remember(self.room_docs, doc["_id"], doc, 100_000)
        for key, event_id in writes.txn_ids:
            self._remember(self._recent_txns, key, event_id, 100_000)
        if not writes.entries:
            return
        try:
            await self.cache.apply_committed(writes.entries)
            await self._wake_for(writes.entries)
            await self.notifier.broadcast_entries(writes.entries)
        except Exception:
            # Committed is committed: the requests succeeded. The cache and other replicas catch up
            # from the database (every second), and waiting /syncs re-poll.
            log.exception("after-commit notifications failed")

    async def _wake_for(self, entries: list[JSON]) -> None:
        wake: dict[str, int] = {}
        for entry in entries:
            view = await self.cache.room(entry["room_id"])
            pos = entry["pos"]
            if view is not None:
                for user_id, info in view.members.items():
                    if info.membership in ("join", "invite"):
                        wake[user_id] = pos
            if entry["kind"] == "event" and entry["event"]["type"] == MEMBER:
                wake[entry["event"]["state_key"]] = pos
        await self.notifier.wake(wake)

    async def on_remote_entries(self, entries: list[JSON]) -> None:
        await self.cache.apply_committed(entries)

    @staticmethod
    def _remember(cache: OrderedDict[str, Any], key: str, value: Any, cap: int) -> None:
        cache[key] = value
        cache.move_to_end(key)
        if len(cache) > cap:
            cache.popitem(last=False)

    # -- rooms ----------------------------------------------------------------------------------

    async def create_room(self, creator: str, body: JSON, *, bypass_policy: bool = False,
                          service: str = "") -> str:
        check_canonical(body, "body")
        preset, is_direct, invites = _create_options(creator, body)
        initial_state = _initial_state(body)
        override = body.get("power_level_content_override") or {}
        if not isinstance(override, dict):
            raise bad_json("power_level_content_override must be an object")
        room_id = f"!{_random_id(18)}:{self.settings.server_name}"

        async def op(batch: Batch) -> str:
            if not bypass_policy:
                for invitee in invites:
                    await self._check_invite_policy(batch, creator, invitee)
            else:
                for invitee in invites:
                    if await batch.blocked(creator, invitee):
                        raise forbidden(f"{invitee} cannot be invited")
            batch.add_room({"_id": room_id, "creator": creator, "is_direct": is_direct,
                            "direct_pair": [creator, invites[0]] if is_direct else [],
                            "created_ms": batch.ts, "service": service})
            batch.append_event(room_id, creator, CREATE, {"creator": creator, "room_version": "10"}, state_key="")
            batch.append_member(room_id, creator, creator, "join", ever_joined=True)
            users = {creator: 100}
            if preset == "trusted_private_chat":
                users.update({u: 100 for u in invites})
            pl = {**DEFAULT_POWER_LEVELS, "users": users}
            pl.update({k: v for k, v in override.items() if k != "users"})
            if isinstance(override.get("users"), dict):
                pl["users"] = {**users, **override["users"]}
            validate_state_content(POWER_LEVELS, pl)
            batch.append_event(room_id, creator, POWER_LEVELS, pl, state_key="")
            join_rule = "public" if preset == "public_chat" else "invite"
            batch.append_event(room_id, creator, JOIN_RULES, {"join_rule": join_rule}, state_key="")
            batch.append_event(room_id, creator, HISTORY_VISIBILITY, {"history_visibility": "shared"}, state_key="")
            for item in initial_state:
                batch.append_event(room_id, creator, item["type"], item["content"], state_key=item["state_key"])
            if body.get("name"):
                batch.append_event(room_id, creator, NAME, {"name": body["name"]}, state_key="")
            if body.get("topic"):
                batch.append_event(room_id, creator, TOPIC, {"topic": body["topic"]}, state_key="")
            for invitee in invites:
                batch.append_member(room_id, creator, invitee, "invite", ever_joined=False,
                                    extra={"is_direct": True} if is_direct else None)
            return room_id

        return await self._submit(op)

    async def _check_invite_policy(self, batch: Batch, inviter: str, invitee: str) -> None:
        """The invite policy hook: blocks always refuse; `friends` also requires friendship."""
        relation = await batch.relation(inviter, invitee)
        if relation and (relation.get("a_blocks_b") or relation.get("b_blocks_a")):
            raise forbidden(f"{invitee} cannot be invited")
        if self.settings.invite_policy == "friends" and not (relation and relation.get("friends")):
            raise forbidden(f"{invitee} is not your friend; only friends can be invited")

    async def change_membership(self, sender: str, room_id: str, action: str, target: str = "",
                                reason: str = "") -> str:
        if action in ("join", "leave"):
            target = sender
        elif not valid_user_id(target):
            raise invalid("user_id is not a valid user id")
        keys = {state_key_id(room_id, MEMBER, sender), state_key_id(room_id, MEMBER, target),
                state_key_id(room_id, POWER_LEVELS, "")}

        async def op(batch: Batch) -> str:
            await batch.existing_room(room_id)
            mine, _ = await batch.membership(room_id, sender)
            theirs, their_ever = await batch.membership(room_id, target)
            current = await batch.state_entry(room_id, MEMBER, target)
            pl = await batch.power_levels(room_id)
            my_level = user_level(pl, sender)
            if action == "join":
                if theirs == "join":
                    assert current is not None
                    return str(current["event"]["event_id"])
                if theirs == "ban":
                    raise forbidden("you are banned from this room")
                if theirs != "invite":
                    rules = await batch.state_entry(room_id, JOIN_RULES, "")
                    if not rules or rules["event"]["content"].get("join_rule") != "public":
                        raise forbidden("you are not invited to this room")
                entry = batch.append_member(room_id, sender, sender, "join", ever_joined=True)
                return str(entry["event"]["event_id"])
            if action == "leave":
                if theirs in ("", "leave"):
                    if theirs == "leave" and current is not None:
                        return str(current["event"]["event_id"])
                    raise forbidden("you are not in this room")
                if theirs == "ban":
                    raise forbidden("you are banned from this room")
                entry = batch.append_member(room_id, sender, sender, "leave", ever_joined=their_ever, reason=reason)
                return str(entry["event"]["event_id"])
            if mine != "join":
                raise forbidden("you are not in this room")
            if action == "invite":
                if theirs == "ban":
                    raise forbidden(f"{target} is banned from this room")
                if theirs == "join":
                    raise forbidden(f"{target} is already in this room")
                if my_level < action_level(pl, "invite"):
                    raise forbidden("you may not invite users to this room")
                if theirs == "invite" and current is not None:
                    return str(current["event"]["event_id"])
                await self._check_invite_policy(batch, sender, target)
                entry = batch.append_member(room_id, sender, target, "invite", ever_joined=their_ever, reason=reason)
                return str(entry["event"]["event_id"])
            their_level = user_level(pl, target)
            if action == "kick":
                if theirs not in ("join", "invite"):
                    raise forbidden(f"{target} is not in this room")
                if my_level < action_level(pl, "kick") or (target != sender and their_level >= my_level):
                    raise forbidden("you may not kick this user")
                entry = batch.append_member(room_id, sender, target, "leave", ever_joined=their_ever, reason=reason)
                return str(entry["event"]["event_id"])
            if action == "ban":
                if my_level < action_level(pl, "ban") or (target != sender and their_level >= my_level):
                    raise forbidden("you may not ban this user")
                if theirs == "ban" and current is not None:
                    return str(current["event"]["event_id"])
                entry = batch.append_member(room_id, sender, target, "ban", ever_joined=their_ever, reason=reason)
                return str(entry["event"]["event_id"])
            if action == "unban":
                if theirs != "ban":
                    raise forbidden(f"{target} is not banned")
                if my_level < action_level(pl, "ban"):
                    raise forbidden("you may not unban users")
                entry = batch.append_member(room_id, sender, target, "leave", ever_joined=their_ever, reason=reason)
                return str(entry["event"]["event_id"])
            raise invalid(f"unknown membership action {action!r}")

        return await self._submit(op, {room_id}, keys)

    async def service_set_membership(self, service: str, room_id: str, user_id: str, membership: str,
                                     reason: str = "") -> str:
        """Trusted services decide membership themselves (no invite policy, no power levels)."""
        if membership not in MEMBERSHIPS:
            raise invalid("membership must be invite, join, leave or ban")
        if not valid_user_id(user_id):
            raise invalid("user_id is not a valid user id")
        if not service:
            raise invalid("service is required")

        async def op(batch: Batch) -> str:
            room = await batch.existing_room(room_id)
            theirs, their_ever = await batch.membership(room_id, user_id)
            current = await batch.state_entry(room_id, MEMBER, user_id)
            if theirs == membership and current is not None:
                return str(current["event"]["event_id"])
            sender = user_id if membership in ("join", "leave") and theirs != "ban" else room["creator"]
            entry = batch.append_member(room_id, sender, user_id, membership,
                                        ever_joined=their_ever or membership == "join", reason=reason)
            return str(entry["event"]["event_id"])

        return await self._submit(op, {room_id}, {state_key_id(room_id, MEMBER, user_id)})

    # -- events ---------------------------------------------------------------------------------

    async def send_event(self, sender: str, device_id: str, room_id: str, event_type: str, txn_id: str,
                         raw_content: bytes) -> str:
        if not event_type or not txn_id:
            raise invalid("an event type and a transaction id are required")
        check_id_field(event_type, "event type")
        check_id_field(txn_id, "transaction id")
        key = txn_key(sender, device_id, room_id, event_type, txn_id)
        known = self._recent_txns.get(key)
        if known is not None:
            return known
        content = parse_content(raw_content)
        if event_type in (REDACTION, CREATE, MEMBER, POWER_LEVELS):
            raise forbidden(f"{event_type} cannot be sent as a message")
        validate_message_content(event_type, content)
        relates = content.get("m.relates_to")
        edit_of = relates.get("event_id") if isinstance(relates, dict) and relates.get("rel_type") == "m.replace" \
            else None

        async def op(batch: Batch) -> str:
            existing = await batch.known_txn(key)
            if existing is not None:
                return existing
            await self._check_can_send(batch, sender, room_id, event_type, is_state=False)
            if edit_of is not None:
                original = await batch.tx.entry(edit_of)
                if original is None or original["room_id"] != room_id:
                    raise bad_json("the edited event is not in this room")
                event = original["event"]
                if event["sender"] != sender or "state_key" in event or event["type"] != event_type:
                    raise forbidden("you can only edit your own messages")
                if "redacted_because" in event.get("unsigned", {}):
                    raise forbidden("a redacted event cannot be edited")
            entry = batch.append_event(room_id, sender, event_type, content, event_id=txn_event_id(key),
                                       device_id=device_id, txn_id=txn_id)
            event_id = str(entry["event"]["event_id"])
            batch.record_txn(key, event_id)
            return event_id

        return await self._submit(
            op, {room_id}, {state_key_id(room_id, MEMBER, sender), state_key_id(room_id, POWER_LEVELS, "")},
            append_only=True,
        )

    async def _check_can_send(self, batch: Batch, sender: str, room_id: str, event_type: str, *,
                              is_state: bool) -> None:
        room = await batch.existing_room(room_id)
        membership, _ = await batch.membership(room_id, sender)
        if membership != "join":
            raise forbidden("you are not joined to this room")
        pl = await batch.power_levels(room_id)
        if user_level(pl, sender) < event_level(pl, event_type, is_state):
            raise forbidden(f"you may not send {event_type} events in this room")
        if room.get("direct_pair"):
            a, b = room["direct_pair"]
            other = b if sender == a else a
            if await batch.blocked(sender, other):
                raise forbidden("messages between you and this user are blocked")

    async def set_state(self, sender: str, room_id: str, event_type: str, state_key: str,
                        raw_content: bytes) -> str:
        if not event_type:
            raise invalid("an event type is required")
        check_id_field(event_type, "event type")
        check_id_field(state_key, "state key")
        content = parse_content(raw_content)
        validate_state_content(event_type, content)
        if state_key.startswith("@") and state_key != sender:
            raise forbidden("state keys that are user ids belong to that user")

        async def op(batch: Batch) -> str:
            await self._check_can_send(batch, sender, room_id, event_type, is_state=True)
            if event_type == POWER_LEVELS:
                await self._check_power_change(batch, sender, room_id, content)
            entry = batch.append_event(room_id, sender, event_type, content, state_key=state_key)
            return str(entry["event"]["event_id"])

        return await self._submit(
            op, {room_id}, {state_key_id(room_id, MEMBER, sender), state_key_id(room_id, POWER_LEVELS, "")}
        )

    async def _check_power_change(self, batch: Batch, sender: str, room_id: str, new: JSON) -> None:
        old = await batch.power_levels(room_id)
        mine = user_level(old, sender)
        old_users, new_users = old.get("users", {}), new.get("users", {})
        for user_id in set(old_users) | set(new_users):
            before, after = old_users.get(user_id), new_users.get(user_id)
            if before == after:
                continue
            if (after is not None and after > mine) or (
                user_id != sender and before is not None and before >= mine
            ):
                raise forbidden("you may not change that user's power level")
        for key in ("ban", "kick", "redact", "invite", "events_default", "state_default", "users_default"):
            if old.get(key) != new.get(key) and max(old.get(key, 0), new.get(key, 0)) > mine:
                raise forbidden(f"you may not change {key} above your own level")

    async def redact(self, sender: str, device_id: str, room_id: str, event_id: str, txn_id: str,
                     reason: str = "") -> str:
        key = txn_key(sender, device_id, room_id, f"redact:{event_id}", txn_id)
        known = self._recent_txns.get(key)
        if known is not None:
            return known

        async def op(batch: Batch) -> str:
            existing = await batch.known_txn(key)
            if existing is not None:
                return existing
            await self._check_can_send(batch, sender, room_id, REDACTION, is_state=False)
            target = await batch.tx.entry(event_id)
            if target is None or target["room_id"] != room_id or target["kind"] != "event":
                raise not_found("event not found")
            event = target["event"]
            if event["sender"] != sender:
                pl = await batch.power_levels(room_id)
                if user_level(pl, sender) < action_level(pl, "redact"):
                    raise forbidden("you may only redact your own events")
            content: JSON = {"redacts": event_id}
            if reason:
                content["reason"] = reason
            entry = batch.append_event(room_id, sender, REDACTION, content, redacts=event_id,
                                       event_id=txn_event_id(key), device_id=device_id, txn_id=txn_id)
            batch.add_redaction(event, entry["event"])
            batch.record_txn(key, entry["event"]["event_id"])
            return str(entry["event"]["event_id"])

        return await self._submit(
            op, {room_id}, {state_key_id(room_id, MEMBER, sender), state_key_id(room_id, POWER_LEVELS, "")}
        )

    async def send_receipt(self, user_id: str, room_id: str, receipt_type: str, event_id: str) -> None:
        if receipt_type not in RECEIPT_TYPES:
            raise invalid(f"unsupported receipt type {receipt_type!r}")

        async def op(batch: Batch) -> None:
            await batch.existing_room(room_id)
            membership, _ = await batch.membership(room_id, user_id)
            if membership != "join":
                raise forbidden("you are not joined to this room")
            target = await self.cache.find_entry(room_id, event_id)
            if target is None or target["room_id"] != room_id or target["kind"] != "event":
                raise not_found("event not found")
            if batch.cache_mode:
                view = self.cache.rooms.get(room_id)
                current = view.receipts.get((user_id, receipt_type)) if view is not None else None
            else:
                current = await batch.tx.receipt(receipt_key(room_id, user_id, receipt_type))
            pending = batch.writes.receipts.get(receipt_key(room_id, user_id, receipt_type))
            for doc in (current, pending):
                if doc is not None and doc["event_pos"] >= target["pos"]:
                    return  # receipts only move forward
            batch.add_receipt(room_id, user_id, receipt_type, event_id, target["pos"])

        await self._submit(op, {room_id}, {state_key_id(room_id, MEMBER, user_id)})

    # -- typing ---------------------------------------------------------------------------------

    async def set_typing(self, user_id: str, room_id: str, typing: bool, timeout_ms: int) -> None:
        view = await self.cache.room(room_id)
        if view is None:
            raise not_found("room not found")
        member = view.members.get(user_id)
        if member is None or member.membership != "join":
            raise forbidden("you are not joined to this room")
        timeout_ms = max(1_000, min(timeout_ms or 30_000, 120_000))
        expires = now_ms() + timeout_ms if typing else 0
        serial = self.typing.set(room_id, user_id, expires)
        if serial is not None:
            await self.notifier.broadcast_typing(room_id, user_id, expires, serial)
            await self._wake_room(view)

    async def on_remote_typing(self, room_id: str, user_id: str, expires_at_ms: int, serial: int) -> None:
        if self.typing.set(room_id, user_id, expires_at_ms, serial) is not None:
            view = self.cache.rooms.get(room_id)
            if view is not None:
                await self._wake_room(view)

    async def expire_typing(self) -> None:
        for room_id in self.typing.expire(now_ms()):
            view = self.cache.rooms.get(room_id)
            if view is not None:
                await self._wake_room(view)

    async def _wake_room(self, view: RoomView) -> None:
        await self.notifier.wake({u: 0 for u in view.joined()})

    # -- reads ----------------------------------------------------------------------------------

    def _client_event(self, entry: JSON, device_id: str) -> JSON:
        event = entry["event"]
        if device_id and entry.get("device") == device_id and "txn" in entry:
            return {**event, "unsigned": {**event.get("unsigned", {}), "transaction_id": entry["txn"]}}
        return event

    async def _room_for_reader(self, user_id: str, room_id: str) -> tuple[RoomView, int]:
        """The room and the highest position the user may read; 404 / 403 otherwise."""
        view = await self.cache.room(room_id)
        if view is None:
            raise not_found("room not found")
        member = view.members.get(user_id)
        if member is None or (not member.ever_joined and member.membership != "join"):
            raise forbidden("you have never been a member of this room")
        if member.membership == "join":
            return view, self.cache.head
        return view, await self._left_at(room_id, user_id, member.pos)

    async def _left_at(self, room_id: str, user_id: str, pos: int) -> int:
        """Where a former member stopped being joined: a later ban or re-invite must not let them read on."""
        left_at, joined = pos, False
        for entry in await self.store.state_events_upto(room_id, pos):
            event = entry["event"]
            if event["type"] == MEMBER and event["state_key"] == user_id:
                membership = event["content"]["membership"]
                if joined and membership != "join":
                    left_at = entry["pos"]
                joined = membership == "join"
        return left_at

    async def joined_rooms(self, user_id: str) -> list[str]:
        view = await self.cache.user(user_id)
        return sorted(r for r, m in view.rooms.items() if m.membership == "join")

    async def get_members(self, user_id: str, room_id: str) -> JSON:
        """Members now, or for a former member as of their leave (nothing that happened later)."""
        view, upper = await self._room_for_reader(user_id, room_id)
        if view.members[user_id].membership == "join":
            return {"chunk": [e["event"] for (t, _), e in view.state.items() if t == MEMBER]}
        as_of: dict[str, JSON] = {}
        for entry in await self.store.state_events_upto(room_id, upper):
            if entry["event"]["type"] == MEMBER:
                as_of[entry["event"]["state_key"]] = entry["event"]
        return {"chunk": list(as_of.values())}

    async def get_state(self, user_id: str, room_id: str, event_type: str = "", state_key: str = "",
                        single: bool = False) -> Any:
        view, _ = await self._room_for_reader(user_id, room_id)
        if view.members[user_id].membership != "join":
            raise forbidden("you are not joined to this room")
        if single:
            entry = view.state.get((event_type, state_key))
            if entry is None:
                raise not_found("no such state event")
            return entry["event"]["content"]
        return [e["event"] for e in view.state.values()]

    async def messages(self, user_id: str, device_id: str, room_id: str, from_token: str, to_token: str,
                       direction: str, limit: int) -> JSON:
        if direction not in ("b", "f", ""):
            raise invalid("dir must be b or f")
        limit = max(1, min(limit or 10, 1000))
        view, upper = await self._room_for_reader(user_id, room_id)
        start = parse_page_token(from_token)
        to = parse_page_token(to_token)
        if direction == "f":
            lo = start if start is not None else 0
            hi = min(to if to is not None else upper, upper)
            entries = await self.cache.room_range(view, lo, hi, limit, descending=False)
            body: JSON = {"start": page_token(lo), "chunk": [self._client_event(e, device_id) for e in entries]}
            if entries:
                body["end"] = page_token(entries[-1]["pos"])
            return body
        hi = min(start if start is not None else upper, upper)
        lo = to if to is not None else 0
        entries = await self.cache.room_range(view, lo, hi, limit, descending=True)
        body = {"start": page_token(start if start is not None else hi),
                "chunk": [self._client_event(e, device_id) for e in entries]}
        if len(entries) == limit and entries[-1]["pos"] - 1 > lo:
            body["end"] = page_token(entries[-1]["pos"] - 1)
        return body

    async def sync(self, user_id: str, device_id: str, since: str, timeline_limit: int = 0,
                   full_state: bool = False, min_position: int = 0) -> SyncResult:
        since_pos, since_typing = parse_sync_token(since)
        limit = max(1, min(timeline_limit or DEFAULT_TIMELINE_LIMIT, MAX_TIMELINE_LIMIT))
        target = max(min_position, since_pos)
        if self.cache.head < target:
            await self.cache.catch_up(target)
        user_view = await self.cache.user(user_id)
        head = self.cache.head
        typing_serial = self.typing.serial
        initial = not since or full_state
        join: JSON = {}
        invite: JSON = {}
        leave: JSON = {}
        for room_id, member in list(user_view.rooms.items()):
            if member.pos > head:
                continue
            if member.membership == "join":
                room = await self._sync_joined(room_id, user_id, device_id, member, since_pos, since_typing,
                                               head, limit, initial)
                if room is not None:
                    join[room_id] = room
            elif member.membership == "invite":
                if initial or member.pos > since_pos:
                    view = await self.cache.room(room_id)
                    if view is not None:
                        invite[room_id] = {"invite_state": {"events": self._stripped_state(view, user_id)}}
            elif not initial and member.pos > since_pos:
                view = await self.cache.room(room_id)
                if view is not None:
                    left_at = await self._left_at(room_id, user_id, member.pos) if member.ever_joined else member.pos
                    entries = await self.cache.room_range(view, since_pos, left_at, limit + 1, True)
                    limited = len(entries) > limit
                    entries = entries[:limit][::-1]
                    own = view.state.get((MEMBER, user_id))
                    if left_at < member.pos and own is not None and own["pos"] > since_pos:
                        entries.append(own)  # a later ban or re-invite: only their own membership event
                    leave[room_id] = {
                        "timeline": {"events": [self._client_event(e, device_id) for e in entries],
                                     "limited": limited,
                                     "prev_batch": page_token(entries[0]["pos"] - 1 if entries else since_pos)},
                        "state": {"events": []},
                        "account_data": {"events": []},
                    }
        has_changes = bool(join or invite or leave)
        next_batch = sync_token(head, typing_serial)
        body: JSON = {
            "next_batch": next_batch,
            "rooms": {"join": join, "invite": invite, "leave": leave, "knock": {}},
            "presence": {"events": []},
            "account_data": {"events": []},
            "to_device": {"events": []},
            "device_lists": {"changed": [], "left": []},
            "device_one_time_keys_count": {},
        }
        return SyncResult(body, next_batch, has_changes)

    async def _sync_joined(self, room_id: str, user_id: str, device_id: str, member: MemberInfo, since_pos: int,
                           since_typing: int, head: int, limit: int, initial: bool) -> JSON | None:
        view = await self.cache.room(room_id)
        if view is None:
            return None
        newly = initial or member.pos > since_pos
        typing_changed = self.typing.room_serial.get(room_id, 0) > since_typing
        if not newly and view.last_pos <= since_pos and not typing_changed:
            return None
        lo = 0 if newly else since_pos
        entries = await self.cache.room_range(view, lo, head, limit + 1, True)
        limited = len(entries) > limit
        entries = entries[:limit][::-1]
        events = [self._client_event(e, device_id) for e in entries]
        state: list[JSON] = []
        if newly or limited:
            in_timeline = {e["event"]["event_id"] for e in entries}
            state = [e["event"] for e in view.state.values() if e["pos"] <= head and
                     e["event"]["event_id"] not in in_timeline]
        ephemeral: list[JSON] = []
        if typing_changed or (newly and self.typing.typers(room_id)):
            ephemeral.append({"type": "m.typing", "content": {"user_ids": self.typing.typers(room_id)}})
        receipts: JSON = {}
        for (reader, receipt_type), receipt in view.receipts.items():
            if receipt_type == "m.read.private" and reader != user_id:
                continue
            if (newly or receipt["pos"] > since_pos) and receipt["pos"] <= head:
                receipts.setdefault(receipt["event_id"], {}).setdefault(receipt_type, {})[reader] = {
                    "ts": receipt["ts"]}
        if receipts:
            ephemeral.append({"type": "m.receipt", "content": receipts})
        if not newly and not events and not ephemeral:
            return None
        unread = await self.cache.unread(view, user_id)
        joined = view.joined()
        return {
            "timeline": {"events": events, "limited": limited,
                         "prev_batch": page_token(entries[0]["pos"] - 1 if entries else head)},
            "state": {"events": state},
            "ephemeral": {"events": ephemeral},
            "account_data": {"events": []},
            "unread_notifications": {"notification_count": unread, "highlight_count": 0},
            "summary": {"m.joined_member_count": len(joined),
                        "m.invited_member_count": sum(1 for m in view.members.values() if m.membership == "invite")},
        }

    def _stripped_state(self, view: RoomView, user_id: str) -> list[JSON]:
        wanted = [(CREATE, ""), (JOIN_RULES, ""), (NAME, ""), (AVATAR, ""), (TOPIC, ""),
                  ("m.room.canonical_alias", ""), ("m.room.encryption", ""), (MEMBER, user_id)]
        invite = view.state.get((MEMBER, user_id))
        if invite is not None:
            wanted.append((MEMBER, invite["event"]["sender"]))
        stripped = []
        for key in wanted:
            entry = view.state.get(key)
            if entry is not None:
                event = entry["event"]
                stripped.append({"type": event["type"], "state_key": event["state_key"],
                                 "content": event["content"], "sender": event["sender"]})
        return stripped
