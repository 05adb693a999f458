"""Domain rules of the zhadui service. No gRPC, Mongo or NATS imports here.

Audience(z) = participants(z) ∪ friends(participants(z)), minus anyone who blocked or is
blocked by z's creator.

Feeds are computed on read from an in-memory `AudienceIndex` (friend graph + who takes part
where + each zhadui's activity), not materialised per user: a join then costs one small
transaction instead of a write per friend, and it is visible to all friends at once. Every
replica loads the index from the service's own collections at start and keeps it current from
the events (applied idempotently, newest-wins), so replicas converge whatever order events
arrive in.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import hmac
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import orjson

from plumbing.domain_errors import forbidden, invalid, not_found, rate_limited, too_large

MAX_TITLE_CHARS = 100
MAX_BODY_CHARS = 4000
MAX_TAGS = 10
MAX_TAG_CHARS = 32
MAX_LINK_CHARS = 2048
MAX_CARD_BYTES = 8 * 1024
MAX_FEED_PAGE = 100
DEFAULT_FEED_PAGE = 20
_LINK = re.compile(r"^https?://[^\s/$.?#][^\s]*$", re.IGNORECASE)


class Status(StrEnum):
    OPEN = "open"
    CLOSED = "closed"
    ARCHIVED = "archived"


@dataclass(frozen=True)
class Draft:
    """A validated new zhadui."""

    title: str
    body: str
    link_url: str
    card_json: str
    tags: tuple[str, ...]


@dataclass
class Zhadui:
    zhadui_id: str
    creator: str
    title: str
    body: str
    link_url: str
    card_json: str
    tags: tuple[str, ...]
    status: Status
    created_ms: int
    last_activity_ms: int
    participant_count: int
    room_id: str


@dataclass(frozen=True)
class View:
    """One user's own marks on one zhadui."""

    seen_ms: int = 0
    muted: bool = False


@dataclass(frozen=True)
class PairState:
    """The relationship of two users (user_a < user_b), as contacts reports it."""

    user_a: str
    user_b: str
    friends: bool = False
    a_blocks_b: bool = False
    b_blocks_a: bool = False

    @property
    def blocked(self) -> bool:
        return self.a_blocks_b or self.b_blocks_a


@dataclass(frozen=True)
class Notice:
    zhadui_id: str
    title: str
    actor: str
    at_ms: int


@dataclass
class Preview:
    zhadui: Zhadui
    friends_in_it: list[str] = field(default_factory=list)
    viewer_is_participant: bool = False
    muted: bool = False
    unread: bool = False


def validate_draft(title: str, body: str, link_url: str, card_json: str, tags: Sequence[str]) -> Draft:
    """Check a new zhadui; over-long fields are M_TOO_LARGE, missing or malformed ones M_BAD_JSON."""
    title = title.strip()
    if not title:
        raise invalid("a zhadui needs a title", errcode="M_BAD_JSON")
    if len(title) > MAX_TITLE_CHARS:
        raise too_large(f"title is {len(title)} characters; at most {MAX_TITLE_CHARS} are allowed")
    if len(body) > MAX_BODY_CHARS:
        raise too_large(f"body is {len(body)} characters; at most {MAX_BODY_CHARS} are allowed")
    if link_url:
        if len(link_url) > MAX_LINK_CHARS:
            raise too_large(f"link is longer than {MAX_LINK_CHARS} characters")
        if not _LINK.match(link_url):
            raise invalid("link must be an http(s) URL", errcode="M_BAD_JSON")
    if card_json:
        if len(card_json.encode()) > MAX_CARD_BYTES:
            raise too_large(f"share card is larger than {MAX_CARD_BYTES} bytes")
        try:
            card = orjson.loads(card_json)
        except orjson.JSONDecodeError:
            raise invalid("share card is not valid JSON", errcode="M_BAD_JSON") from None
        if not isinstance(card, dict) or _has_float(card):
            raise invalid("share card must be a JSON object without floats (canonical JSON)", errcode="M_BAD_JSON")
        card_json = orjson.dumps(card, option=orjson.OPT_SORT_KEYS).decode()
    if len(tags) > MAX_TAGS:
        raise too_large(f"at most {MAX_TAGS} tags are allowed")
    clean_tags: list[str] = []
    for tag in tags:
        tag = tag.strip()
        if not tag:
            raise invalid("tags must not be empty", errcode="M_BAD_JSON")
        if len(tag) > MAX_TAG_CHARS:
            raise too_large(f"tag {tag[:16]!r}… is longer than {MAX_TAG_CHARS} characters")
        if tag not in clean_tags:
            clean_tags.append(tag)
    return Draft(title=title, body=body, link_url=link_url, card_json=card_json, tags=tuple(clean_tags))


def _has_float(value: object) -> bool:
    if isinstance(value, float):
        return True
    if isinstance(value, dict):
        return any(_has_float(v) for v in value.values())
    if isinstance(value, list):
        return any(_has_float(v) for v in value)
    return False


def creation_retry_after_ms(recent_creations_ms: Sequence[int], now_ms: int, per_hour: int) -> int:
    """0 if one more zhadui may be created now; else how long until the oldest one leaves the hour."""
    window_start = now_ms - 3_600_000
    recent = sorted(t for t in recent_creations_ms if t > window_start)
    if len(recent) < per_hour:
        return 0
    return recent[len(recent) - per_hour] - window_start


DEV_CURSOR_KEY = b"laiwang-dev-zhadui-cursor-key"
_CURSOR_MAC_BYTES = 12


def _cursor_mac(key: bytes, viewer: str, position: bytes) -> bytes:
    return hmac.digest(key, viewer.encode() + b"\0" + position, "sha256")[:_CURSOR_MAC_BYTES]


def encode_cursor(activity_ms: int, zhadui_id: str, viewer: str = "", key: bytes = DEV_CURSOR_KEY) -> str:
    """The feed position after (activity, id), signed for `viewer`: a cursor is only ever one we gave out."""
    position = f"{activity_ms}:{zhadui_id}".encode()
    return base64.urlsafe_b64encode(_cursor_mac(key, viewer, position) + position).decode().rstrip("=")


def decode_cursor(cursor: str, viewer: str = "", key: bytes = DEV_CURSOR_KEY) -> tuple[int, str]:
    """The position in a cursor we gave `viewer`; 400 M_INVALID_PARAM for anything else (even well-formed)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        mac, position = raw[:_CURSOR_MAC_BYTES], raw[_CURSOR_MAC_BYTES:]
        if not hmac.compare_digest(mac, _cursor_mac(key, viewer, position)):
            raise ValueError("not signed by us")
        activity, zhadui_id = position.decode().split(":", 1)
        return int(activity), zhadui_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid("cursor is not one this server gave out") from None


def page_size(limit: int) -> int:
    if limit <= 0:
        return DEFAULT_FEED_PAGE
    return min(limit, MAX_FEED_PAGE)


@dataclass
class _Meta:
    creator: str
    activity_ms: int
    status: Status


_KEY_DIGITS = 15  # milliseconds, zero-padded, so the keys sort as strings in activity order


def _rank_key(activity_ms: int, zhadui_id: str) -> str:
    return f"{activity_ms:0{_KEY_DIGITS}d}|{zhadui_id}"


def _from_rank_key(key: str) -> tuple[int, str]:
    return int(key[:_KEY_DIGITS]), key[_KEY_DIGITS + 1 :]


class AudienceIndex:
    """Who can see which zhadui, in memory. Every `apply_*` is idempotent and order-insensitive:
    pair changes carry contacts' per-pair version, memberships the time of the change."""

    def __init__(self) -> None:
        self._friends: dict[str, set[str]] = {}
        self._blocks: dict[str, set[str]] = {}  # user -> users with a block between them, either way
        self._pair_versions: dict[tuple[str, str], int] = {}
        self._members: dict[str, set[str]] = {}
        self._joined: dict[str, set[str]] = {}
        self._member_stamp: dict[tuple[str, str], int] = {}
        self._meta: dict[str, _Meta] = {}
        # One string per unarchived zhadui that sorts by (activity, id): feeds rank candidates with
        # C-level comparisons instead of building a tuple per candidate.
        self._rank: dict[str, str] = {}
        self._zhadui_of_room: dict[str, str] = {}

    # --- keeping it current -------------------------------------------------------------

    def apply_pair(self, state: PairState, version: int) -> bool:
        # Interned ids: a million pairs loaded from the store share one string per user.
        key = (sys.intern(state.user_a), sys.intern(state.user_b))
        if self._pair_versions.get(key, -1) >= version:
            return False
        self._pair_versions[key] = version
        a, b = key
        for user, other in ((a, b), (b, a)):
            if state.friends:
                self._friends.setdefault(user, set()).add(other)
            else:
                self._friends.get(user, set()).discard(other)
            if state.blocked:
                self._blocks.setdefault(user, set()).add(other)
            elif user in self._blocks:
                self._blocks[user].discard(other)
                if not self._blocks[user]:
                    del self._blocks[user]
        return True

    def apply_zhadui(self, zhadui_id: str, creator: str, activity_ms: int, status: Status, room_id: str = "") -> None:
        zhadui_id, creator = sys.intern(zhadui_id), sys.intern(creator)
        if room_id:
            self._zhadui_of_room[room_id] = zhadui_id
        meta = self._meta.get(zhadui_id)
        if meta is None:
            if creator:  # a status change for a zhadui we have not heard of yet waits for its load
                meta = self._meta[zhadui_id] = _Meta(creator, activity_ms, status)
                self._rerank(zhadui_id, meta)
            return
        meta.activity_ms = max(meta.activity_ms, activity_ms)
        if status is Status.ARCHIVED or (status is Status.CLOSED and meta.status is Status.OPEN):
            meta.status = status  # status only moves forward
        self._rerank(zhadui_id, meta)

    def _rerank(self, zhadui_id: str, meta: _Meta) -> None:
        if meta.status is Status.ARCHIVED:
            self._rank.pop(zhadui_id, None)
        else:
            self._rank[zhadui_id] = _rank_key(meta.activity_ms, zhadui_id)

    def apply_membership(self, zhadui_id: str, user: str, joined: bool, at_ms: int) -> None:
        zhadui_id, user = sys.intern(zhadui_id), sys.intern(user)
        key = (zhadui_id, user)
        if self._member_stamp.get(key, -1) > at_ms:
            return  # a newer change for this pair is already applied
        self._member_stamp[key] = at_ms
        if joined:
            self._members.setdefault(zhadui_id, set()).add(user)
            self._joined.setdefault(user, set()).add(zhadui_id)
            if (meta := self._meta.get(zhadui_id)) and at_ms > meta.activity_ms:
                meta.activity_ms = at_ms
                self._rerank(zhadui_id, meta)
        else:
            self._members.get(zhadui_id, set()).discard(user)
            self._joined.get(user, set()).discard(zhadui_id)

    # --- reading ------------------------------------------------------------------------

    def friends_of(self, user: str) -> set[str]:
        return self._friends.get(user, set())

    def blocked(self, user_x: str, user_y: str) -> bool:
        return user_y in self._blocks.get(user_x, ())

    def participants(self, zhadui_id: str) -> set[str]:
        return self._members.get(zhadui_id, set())

    def joined_by(self, user: str) -> set[str]:
        return self._joined.get(user, set())

    def zhadui_of_room(self, room_id: str) -> str | None:
        return self._zhadui_of_room.get(room_id)

    def activity_of(self, zhadui_id: str) -> int | None:
        meta = self._meta.get(zhadui_id)
        return meta.activity_ms if meta else None

    def creator_of(self, zhadui_id: str) -> str | None:
        meta = self._meta.get(zhadui_id)
        return meta.creator if meta else None

    def is_participant(self, user: str, zhadui_id: str) -> bool:
        return user in self._members.get(zhadui_id, ())

    def via(self, user: str, zhadui_id: str) -> list[str]:
        """The user's friends who take part: the reason the user can see the zhadui."""
        return sorted(self.friends_of(user) & self.participants(zhadui_id))

    def can_see(self, user: str, zhadui_id: str) -> bool:
        meta = self._meta.get(zhadui_id)
        if meta is None or (user != meta.creator and self.blocked(user, meta.creator)):
            return False
        members = self.participants(zhadui_id)
        return user in members or not self.friends_of(user).isdisjoint(members)

    def feed(self, user: str, after: tuple[int, str] | None, limit: int) -> list[tuple[int, str]]:
        """(activity_ms, zhadui_id) of the user's visible, unarchived zhaduis, newest first."""
        joined = self._joined
        candidates = set(joined.get(user, ()))
        for friend in self.friends_of(user):
            if zhaduis := joined.get(friend):
                candidates |= zhaduis
        keys = [key for key in map(self._rank.get, candidates) if key is not None]  # drops archived
        if after is not None:
            bound = _rank_key(*after)
            keys = [key for key in keys if key < bound]
        blocked = self._blocks.get(user)
        if not blocked:
            return [_from_rank_key(key) for key in heapq.nlargest(limit, keys)]
        page: list[tuple[int, str]] = []
        for key in sorted(keys, reverse=True):
            activity, zhadui_id = _from_rank_key(key)
            if self._meta[zhadui_id].creator not in blocked:
                page.append((activity, zhadui_id))
                if len(page) == limit:
                    break
        return page

    def idle(self, before_ms: int) -> list[str]:
        return [z for z, m in self._meta.items() if m.status is not Status.ARCHIVED and m.activity_ms < before_ms]

    def stats(self) -> dict[str, int]:
        return {
            "users_with_friends": len(self._friends),
            "friend_edges": sum(len(f) for f in self._friends.values()) // 2,
            "zhaduis": len(self._meta),
            "participations": sum(len(m) for m in self._members.values()),
        }


class ZhaduiStore(Protocol):
    """Durable state (implemented over Mongo in store.py). Changes to a zhadui or a participation
    are written with their event in one transaction."""

    async def recent_creations_ms(self, creator: str, since_ms: int) -> list[int]: ...
    async def create(self, zhadui: Zhadui) -> None: ...
    async def get(self, zhadui_id: str) -> Zhadui | None: ...
    async def get_many(self, zhadui_ids: Sequence[str]) -> dict[str, Zhadui]: ...
    async def participant_state(self, zhadui_id: str, user: str) -> str | None: ...
    async def join(self, zhadui_id: str, user: str, now_ms: int) -> bool: ...
    async def leave(self, zhadui_id: str, user: str, removed_by: str, now_ms: int) -> bool: ...
    async def set_status(self, zhadui_id: str, status: Status, now_ms: int) -> bool: ...
    async def record_activity(self, zhadui_id: str, at_ms: int) -> None: ...
    async def views(self, user: str, zhadui_ids: Sequence[str]) -> dict[str, View]: ...
    async def mark_seen(self, user: str, zhadui_id: str, now_ms: int) -> None: ...
    async def set_muted(self, user: str, zhadui_id: str, muted: bool) -> None: ...
    async def add_notices(self, users: Sequence[str], zhadui: Zhadui, actor: str, at_ms: int) -> None: ...
    async def notices(self, user: str, limit: int) -> list[Notice]: ...
    async def save_pair(self, state: PairState, version: int) -> bool: ...


class DiscussionRooms(Protocol):
    """The messaging service, as zhadui needs it. Both membership calls are idempotent."""

    async def create(self, creator: str, title: str) -> str: ...
    async def join(self, room_id: str, user: str) -> None: ...
    async def leave(self, room_id: str, user: str, ban: bool) -> None: ...


class Ids(Protocol):
    def __call__(self) -> str: ...


@dataclass
class ZhaduiCore:
    store: ZhaduiStore
    rooms: DiscussionRooms
    index: AudienceIndex
    new_id: Ids
    creations_per_hour: int = 20
    # Activity in a discussion is recorded at most this often per zhadui (one write, not one per message).
    activity_resolution_ms: int = 5_000
    # Signs feed cursors; replicas share it (ZHADUI_CURSOR_KEY) so any of them accepts any cursor.
    cursor_key: bytes = DEV_CURSOR_KEY

    # --- who may see and do what -------------------------------------------------------

    async def _visible(self, viewer: str, zhadui_id: str) -> Zhadui:
        """The zhadui, or NOT_FOUND (the same answer as for one that does not exist)."""
        zhadui = await self.store.get(zhadui_id) if self.index.can_see(viewer, zhadui_id) else None
        if zhadui is None:
            raise not_found("no such zhadui")
        return zhadui

    async def _creator_only(self, viewer: str, zhadui_id: str) -> Zhadui:
        zhadui = await self._visible(viewer, zhadui_id)
        if zhadui.creator != viewer:
            raise forbidden("only the creator may do this")
        return zhadui

    def _preview(self, viewer: str, zhadui: Zhadui, view: View, seen_now: bool = False) -> Preview:
        return Preview(
            zhadui,
            friends_in_it=self.index.via(viewer, zhadui.zhadui_id),
            viewer_is_participant=self.index.is_participant(viewer, zhadui.zhadui_id),
            muted=view.muted,
            unread=not seen_now and not view.muted and zhadui.last_activity_ms > view.seen_ms,
        )

    # --- commands and queries ----------------------------------------------------------

    async def create(self, creator: str, draft: Draft, now_ms: int) -> Preview:
        recent = await self.store.recent_creations_ms(creator, now_ms - 3_600_000)
        wait = creation_retry_after_ms(recent, now_ms, self.creations_per_hour)
        if wait:
            raise rate_limited(f"at most {self.creations_per_hour} zhaduis an hour", retry_after_ms=wait)
        # The room comes first, so a zhadui never exists without its discussion.
        room_id = await self.rooms.create(creator, draft.title)
        zhadui = Zhadui(
            zhadui_id=self.new_id(),
            creator=creator,
            title=draft.title,
            body=draft.body,
            link_url=draft.link_url,
            card_json=draft.card_json,
            tags=draft.tags,
            status=Status.OPEN,
            created_ms=now_ms,
            last_activity_ms=now_ms,
            participant_count=1,
            room_id=room_id,
        )
        await self.store.create(zhadui)
        self.index.apply_zhadui(zhadui.zhadui_id, creator, now_ms, Status.OPEN, room_id)
        self.index.apply_membership(zhadui.zhadui_id, creator, True, now_ms)
        await self.store.mark_seen(creator, zhadui.zhadui_id, now_ms)
        return self._preview(creator, zhadui, View(), seen_now=True)

    async def preview(self, viewer: str, zhadui_id: str, mark_seen: bool, now_ms: int) -> Preview:
        zhadui = await self._visible(viewer, zhadui_id)
        if mark_seen:
            await self.store.mark_seen(viewer, zhadui_id, now_ms)
        view = (await self.store.views(viewer, [zhadui_id])).get(zhadui_id, View())
        return self._preview(viewer, zhadui, view, seen_now=mark_seen)

    async def feed(self, viewer: str, cursor: str, limit: int) -> tuple[list[Preview], str]:
        size = page_size(limit)
        after = decode_cursor(cursor, viewer, self.cursor_key) if cursor else None
        keys = self.index.feed(viewer, after, size + 1)
        page = keys[:size]
        ids = [zhadui_id for _, zhadui_id in page]
        zhaduis = await self.store.get_many(ids)
        views = await self.store.views(viewer, ids)
        items = [self._preview(viewer, zhaduis[i], views.get(i, View())) for i in ids if i in zhaduis]
        next_cursor = encode_cursor(*page[-1], viewer, self.cursor_key) if len(keys) > size else ""
        return items, next_cursor

    async def join(self, viewer: str, zhadui_id: str, now_ms: int) -> Preview:
        zhadui = await self._visible(viewer, zhadui_id)
        state = await self.store.participant_state(zhadui_id, viewer)
        if state == "removed":
            raise forbidden("the creator removed you from this zhadui")
        if state != "joined":
            if zhadui.status is not Status.OPEN:
                raise forbidden(f"this zhadui is {zhadui.status.value}")
            if await self.store.join(zhadui_id, viewer, now_ms):
                zhadui.participant_count += 1
                zhadui.last_activity_ms = max(zhadui.last_activity_ms, now_ms)
        self.index.apply_membership(zhadui_id, viewer, True, now_ms)
        await self.store.mark_seen(viewer, zhadui_id, now_ms)
        # Usable at once; the joined-event handler repeats this (idempotently) if it failed here.
        await self.rooms.join(zhadui.room_id, viewer)
        return self._preview(viewer, zhadui, View(seen_ms=now_ms), seen_now=True)

    async def leave(self, viewer: str, zhadui_id: str, now_ms: int) -> None:
        zhadui = await self._visible(viewer, zhadui_id)
        if viewer == zhadui.creator:
            raise forbidden("the creator cannot leave; close the zhadui instead")
        if not await self.store.leave(zhadui_id, viewer, "", now_ms):
            raise forbidden("you are not taking part in this zhadui")
        self.index.apply_membership(zhadui_id, viewer, False, now_ms)

    async def remove(self, viewer: str, zhadui_id: str, user: str, now_ms: int) -> None:
        zhadui = await self._creator_only(viewer, zhadui_id)
        if user == zhadui.creator:
            raise invalid("the creator cannot remove themself")
        if not await self.store.leave(zhadui_id, user, viewer, now_ms):
            raise not_found("that user is not taking part")
        self.index.apply_membership(zhadui_id, user, False, now_ms)

    async def close(self, viewer: str, zhadui_id: str, now_ms: int) -> None:
        zhadui = await self._creator_only(viewer, zhadui_id)
        if await self.store.set_status(zhadui_id, Status.CLOSED, now_ms):
            self.index.apply_zhadui(zhadui_id, zhadui.creator, now_ms, Status.CLOSED)

    async def mute(self, viewer: str, zhadui_id: str, muted: bool) -> None:
        await self._visible(viewer, zhadui_id)
        if not self.index.is_participant(viewer, zhadui_id):
            raise forbidden("only participants can mute a zhadui")
        await self.store.set_muted(viewer, zhadui_id, muted)

    async def discussion(self, viewer: str, zhadui_id: str) -> str:
        zhadui = await self.store.get(zhadui_id)
        if (
            zhadui is None
            or await self.store.participant_state(zhadui_id, viewer) != "joined"
            or self.index.blocked(viewer, zhadui.creator)
        ):
            raise forbidden("only participants can read or post in the discussion")
        return zhadui.room_id

    async def notices(self, viewer: str, limit: int) -> list[Notice]:
        return await self.store.notices(viewer, page_size(limit))

    async def archive_idle(self, now_ms: int, idle_ms: int) -> int:
        archived = 0
        for zhadui_id in self.index.idle(now_ms - idle_ms):
            creator = self.index.creator_of(zhadui_id) or ""
            if await self.store.set_status(zhadui_id, Status.ARCHIVED, now_ms):
                archived += 1
            self.index.apply_zhadui(zhadui_id, creator, 0, Status.ARCHIVED)
        return archived

    # --- reactions to the service's durable events (idempotent: redelivery is harmless) --

    async def on_joined(self, zhadui_id: str, user: str, at_ms: int) -> None:
        """Tell the joiner's friends (once each) and make sure the joiner is in the room."""
        zhadui = await self.store.get(zhadui_id)
        if zhadui is None or await self.store.participant_state(zhadui_id, user) != "joined":
            return  # left again before we got here
        audience = [f for f in self.index.friends_of(user) if not self.index.blocked(f, zhadui.creator)]
        await self.store.add_notices(audience, zhadui, user, at_ms)
        await self.rooms.join(zhadui.room_id, user)

    async def on_left(self, zhadui_id: str, user: str, removed: bool) -> None:
        zhadui = await self.store.get(zhadui_id)
        if zhadui is None or await self.store.participant_state(zhadui_id, user) == "joined":
            return  # joined again since
        await self.rooms.leave(zhadui.room_id, user, ban=removed)

    async def on_discussion_message(self, room_id: str, sent_ms: int) -> None:
        """A message in some room: if it is a zhadui's discussion, that zhadui is active."""
        zhadui_id = self.index.zhadui_of_room(room_id)
        last = self.index.activity_of(zhadui_id) if zhadui_id else None
        if zhadui_id is None or last is None or sent_ms < last + self.activity_resolution_ms:
            return
        await self.store.record_activity(zhadui_id, sent_ms)
        self.index.apply_zhadui(zhadui_id, "", sent_ms, Status.OPEN)  # status never moves back

    async def on_pair_changed(self, state: PairState, version: int, now_ms: int) -> None:
        """Record contacts' pair state durably; a new block takes the other user out of the creator's zhaduis."""
        if not await self.store.save_pair(state, version):
            return
        self.index.apply_pair(state, version)
        if not state.blocked:
            return
        for creator, other in ((state.user_a, state.user_b), (state.user_b, state.user_a)):
            for zhadui_id in list(self.index.joined_by(other)):
                if self.index.creator_of(zhadui_id) == creator and await self.store.leave(zhadui_id, other, "", now_ms):
                    self.index.apply_membership(zhadui_id, other, False, now_ms)
