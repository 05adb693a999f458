"""Domain rules of the zhadui service. No gRPC, Mongo or NATS imports here.

Audience(z) = participants(z) ∪ friends(participants(z)), minus anyone who blocked or is
blocked by z's creator. Each user's feed is kept materialised (one entry per visible zhadui,
with `via` = the friends through whom they see it), so reading a feed is one indexed query.
Joins and leaves commit small transactions; their fan-out into friends' feeds runs from the
service's own events and is idempotent, so a crash mid fan-out is finished by the redelivery.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

import orjson

from plumbing.domain_errors import DomainError, ErrorKind, forbidden, invalid, not_found, rate_limited

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


@dataclass
class FeedEntry:
    user: str
    zhadui_id: str
    via: list[str]
    participant: bool
    activity_ms: int
    seen_ms: int
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


class TooLarge(DomainError):
    def __init__(self, message: str) -> None:
        super().__init__(ErrorKind.TOO_LARGE, "M_TOO_LARGE", message)


def validate_draft(title: str, body: str, link_url: str, card_json: str, tags: Sequence[str]) -> Draft:
    """Check a new zhadui; over-long fields are M_TOO_LARGE, missing or malformed ones M_BAD_JSON."""
    title = title.strip()
    if not title:
        raise invalid("a zhadui needs a title", errcode="M_BAD_JSON")
    if len(title) > MAX_TITLE_CHARS:
        raise TooLarge(f"title is {len(title)} characters; at most {MAX_TITLE_CHARS} are allowed")
    if len(body) > MAX_BODY_CHARS:
        raise TooLarge(f"body is {len(body)} characters; at most {MAX_BODY_CHARS} are allowed")
    if link_url:
        if len(link_url) > MAX_LINK_CHARS:
            raise TooLarge(f"link is longer than {MAX_LINK_CHARS} characters")
        if not _LINK.match(link_url):
            raise invalid("link must be an http(s) URL", errcode="M_BAD_JSON")
    if card_json:
        if len(card_json.encode()) > MAX_CARD_BYTES:
            raise TooLarge(f"share card is larger than {MAX_CARD_BYTES} bytes")
        try:
            card = orjson.loads(card_json)
        except orjson.JSONDecodeError:
            raise invalid("share card is not valid JSON", errcode="M_BAD_JSON") from None
        if not isinstance(card, dict) or _has_float(card):
            raise invalid("share card must be a JSON object without floats (canonical JSON)", errcode="M_BAD_JSON")
        card_json = orjson.dumps(card, option=orjson.OPT_SORT_KEYS).decode()
    if len(tags) > MAX_TAGS:
        raise TooLarge(f"at most {MAX_TAGS} tags are allowed")
    clean_tags: list[str] = []
    for tag in tags:
        tag = tag.strip()
        if not tag:
            raise invalid("tags must not be empty", errcode="M_BAD_JSON")
        if len(tag) > MAX_TAG_CHARS:
            raise TooLarge(f"tag {tag[:16]!r}… is longer than {MAX_TAG_CHARS} characters")
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


def encode_cursor(activity_ms: int, zhadui_id: str) -> str:
    return base64.urlsafe_b64encode(f"{activity_ms}:{zhadui_id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[int, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        activity, zhadui_id = raw.split(":", 1)
        return int(activity), zhadui_id
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise invalid("cursor is not one this server gave out") from None


def page_size(limit: int) -> int:
    if limit <= 0:
        return DEFAULT_FEED_PAGE
    return min(limit, MAX_FEED_PAGE)


def via_for(viewer_friends: Iterable[str], participants: Iterable[str]) -> list[str]:
    """The viewer's friends among the participants: why the viewer can see the zhadui."""
    friends = set(viewer_friends)
    return sorted(p for p in participants if p in friends)


class ZhaduiStore(Protocol):
    """What the rules need from storage (implemented over Mongo in store.py, by fakes in tests).

    Methods that change a zhadui or a participation write their event in the same transaction.
    """

    # zhaduis and participations
    async def recent_creations_ms(self, creator: str, since_ms: int) -> list[int]: ...
    async def create(self, zhadui: Zhadui) -> None: ...
    async def get(self, zhadui_id: str) -> Zhadui | None: ...
    async def get_many(self, zhadui_ids: Sequence[str]) -> dict[str, Zhadui]: ...
    async def participant_state(self, zhadui_id: str, user: str) -> str | None: ...
    async def participants(self, zhadui_id: str) -> list[str]: ...
    async def joined_by(self, user: str) -> list[Zhadui]: ...
    async def created_by(self, user: str) -> list[Zhadui]: ...
    async def join(self, zhadui_id: str, user: str, now_ms: int) -> bool: ...
    async def leave(self, zhadui_id: str, user: str, removed_by: str, now_ms: int) -> bool: ...
    async def set_status(self, zhadui_id: str, status: Status, now_ms: int) -> bool: ...
    async def set_muted(self, zhadui_id: str, user: str, muted: bool) -> bool: ...
    async def idle_since(self, before_ms: int, limit: int) -> list[str]: ...
    # feeds (materialised)
    async def feed_entry(self, user: str, zhadui_id: str) -> FeedEntry | None: ...
    async def feed_page(self, user: str, after: tuple[int, str] | None, limit: int) -> list[FeedEntry]: ...
    async def mark_seen(self, user: str, zhadui_id: str, now_ms: int) -> None: ...
    async def add_via(self, zhadui_id: str, users: Sequence[str], via: str, activity_ms: int) -> None: ...
    async def remove_via(self, zhadui_id: str, users: Sequence[str], via: str) -> None: ...
    async def put_entry(
        self, user: str, zhadui_id: str, via: list[str], participant: bool, activity_ms: int
    ) -> None: ...
    async def drop_entries(self, zhadui_id: str, users: Sequence[str] | None = None) -> None: ...
    async def bump_activity(self, zhadui_id: str, activity_ms: int) -> None: ...
    async def add_notices(self, users: Sequence[str], zhadui: Zhadui, actor: str, at_ms: int) -> None: ...
    async def notices(self, user: str, limit: int) -> list[Notice]: ...
    # the friend graph, projected from contacts' events
    async def friends_of(self, user: str) -> list[str]: ...
    async def pair(self, user_x: str, user_y: str) -> PairState: ...
    async def apply_pair(self, state: PairState, version: int) -> PairState | None: ...


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
    new_id: Ids
    creations_per_hour: int = 20

    # --- who may see and do what -------------------------------------------------------

    async def blocked_with_creator(self, viewer: str, zhadui: Zhadui) -> bool:
        if viewer == zhadui.creator:
            return False
        return (await self.store.pair(viewer, zhadui.creator)).blocked

    async def visible(self, viewer: str, zhadui_id: str) -> tuple[Zhadui, FeedEntry | None, str | None]:
        """The zhadui, the viewer's feed entry and participation, or NOT_FOUND if it is not theirs to see."""
        zhadui = await self.store.get(zhadui_id)
        if zhadui is None:
            raise not_found("no such zhadui")
        participation = await self.store.participant_state(zhadui_id, viewer)
        entry = await self.store.feed_entry(viewer, zhadui_id)
        in_audience = participation == "joined" or (entry is not None and bool(entry.via))
        if not in_audience or await self.blocked_with_creator(viewer, zhadui):
            raise not_found("no such zhadui")  # the same answer as for one that does not exist
        return zhadui, entry, participation

    async def _creator_only(self, viewer: str, zhadui_id: str) -> Zhadui:
        zhadui = await self.store.get(zhadui_id)
        if zhadui is None:
            raise not_found("no such zhadui")
        if zhadui.creator != viewer:
            await self.visible(viewer, zhadui_id)  # outsiders learn nothing
            raise forbidden("only the creator may do this")
        return zhadui

    # --- commands ----------------------------------------------------------------------

    async def create(self, creator: str, draft: Draft, now_ms: int) -> Preview:
        recent = await self.store.recent_creations_ms(creator, now_ms - 3_600_000)
        wait = creation_retry_after_ms(recent, now_ms, self.creations_per_hour)
        if wait:
            raise rate_limited(f"at most {self.creations_per_hour} zhaduis an hour", retry_after_ms=wait)
        # The room comes first: a zhadui never exists without its discussion.
        room_id = await self.rooms.create(creator, draft.title)
        zhadui = Zhadui(
            zhadui_id=self.new_id(), creator=creator, title=draft.title, body=draft.body,
            link_url=draft.link_url, card_json=draft.card_json, tags=draft.tags, status=Status.OPEN,
            created_ms=now_ms, last_activity_ms=now_ms, participant_count=1, room_id=room_id,
        )
        await self.store.create(zhadui)
        await self.store.put_entry(creator, zhadui.zhadui_id, [], True, now_ms)
        await self.store.mark_seen(creator, zhadui.zhadui_id, now_ms)
        return Preview(zhadui, viewer_is_participant=True)

    async def preview(self, viewer: str, zhadui_id: str, mark_seen: bool, now_ms: int) -> Preview:
        zhadui, entry, participation = await self.visible(viewer, zhadui_id)
        if mark_seen:
            await self.store.mark_seen(viewer, zhadui_id, now_ms)
        return self._preview(zhadui, entry, participation == "joined", seen_now=mark_seen)

    def _preview(self, zhadui: Zhadui, entry: FeedEntry | None, participant: bool, seen_now: bool = False) -> Preview:
        unread = bool(entry) and not seen_now and entry.activity_ms > entry.seen_ms and not entry.muted
        return Preview(
            zhadui,
            friends_in_it=list(entry.via) if entry else [],
            viewer_is_participant=participant,
            muted=bool(entry and entry.muted),
            unread=unread,
        )

    async def feed(self, viewer: str, cursor: str, limit: int) -> tuple[list[Preview], str]:
        size = page_size(limit)
        after = decode_cursor(cursor) if cursor else None
        entries = await self.store.feed_page(viewer, after, size + 1)
        more = len(entries) > size
        entries = entries[:size]
        zhaduis = await self.store.get_many([e.zhadui_id for e in entries])
        items: list[Preview] = []
        for entry in entries:
            zhadui = zhaduis.get(entry.zhadui_id)
            if zhadui is None or zhadui.status is Status.ARCHIVED:
                continue
            if await self.blocked_with_creator(viewer, zhadui):
                continue  # a block hides it at once, even before the fan-out catches up
            items.append(self._preview(zhadui, entry, entry.participant))
        next_cursor = encode_cursor(entries[-1].activity_ms, entries[-1].zhadui_id) if more and entries else ""
        return items, next_cursor

    async def join(self, viewer: str, zhadui_id: str, now_ms: int) -> Preview:
        zhadui, entry, participation = await self.visible(viewer, zhadui_id)
        if participation == "removed":
            raise forbidden("the creator removed you from this zhadui")
        if participation != "joined":
            if zhadui.status is not Status.OPEN:
                raise forbidden(f"this zhadui is {zhadui.status.value}")
            if await self.store.join(zhadui_id, viewer, now_ms):
                zhadui.participant_count += 1
            await self.store.put_entry(viewer, zhadui_id, list(entry.via) if entry else [], True, now_ms)
            await self.store.mark_seen(viewer, zhadui_id, now_ms)
        # Immediately usable; the joined-event handler repeats this idempotently if it failed here.
        await self.rooms.join(zhadui.room_id, viewer)
        return Preview(zhadui, friends_in_it=list(entry.via) if entry else [], viewer_is_participant=True)

    async def leave(self, viewer: str, zhadui_id: str, now_ms: int) -> None:
        zhadui, _, participation = await self.visible(viewer, zhadui_id)
        if participation != "joined":
            raise forbidden("you are not taking part in this zhadui")
        if viewer == zhadui.creator:
            raise forbidden("the creator cannot leave; close the zhadui instead")
        await self.store.leave(zhadui_id, viewer, "", now_ms)

    async def remove(self, viewer: str, zhadui_id: str, user: str, now_ms: int) -> None:
        zhadui = await self._creator_only(viewer, zhadui_id)
        if user == zhadui.creator:
            raise invalid("the creator cannot remove themself")
        if await self.store.participant_state(zhadui_id, user) != "joined":
            raise not_found("that user is not taking part")
        await self.store.leave(zhadui_id, user, viewer, now_ms)

    async def close(self, viewer: str, zhadui_id: str, now_ms: int) -> None:
        zhadui = await self._creator_only(viewer, zhadui_id)
        if zhadui.status is Status.OPEN:
            await self.store.set_status(zhadui_id, Status.CLOSED, now_ms)

    async def mute(self, viewer: str, zhadui_id: str, muted: bool) -> None:
        _, _, participation = await self.visible(viewer, zhadui_id)
        if participation != "joined":
            raise forbidden("only participants can mute a zhadui")
        await self.store.set_muted(zhadui_id, viewer, muted)

    async def discussion(self, viewer: str, zhadui_id: str) -> str:
        zhadui = await self.store.get(zhadui_id)
        if zhadui is None or await self.store.participant_state(zhadui_id, viewer) != "joined":
            raise forbidden("only participants can read or post in the discussion")
        if await self.blocked_with_creator(viewer, zhadui):
            raise forbidden("only participants can read or post in the discussion")
        return zhadui.room_id

    async def notices(self, viewer: str, limit: int) -> list[Notice]:
        return await self.store.notices(viewer, page_size(limit))

    async def archive_idle(self, now_ms: int, idle_ms: int, batch: int = 200) -> int:
        archived = 0
        for zhadui_id in await self.store.idle_since(now_ms - idle_ms, batch):
            if await self.store.set_status(zhadui_id, Status.ARCHIVED, now_ms):
                archived += 1
        return archived

    # --- reactions to events (all idempotent: redelivery repeats them harmlessly) --------

    async def on_joined(self, zhadui_id: str, user: str, at_ms: int) -> None:
        zhadui = await self.store.get(zhadui_id)
        if zhadui is None or await self.store.participant_state(zhadui_id, user) != "joined":
            return  # left again (or never existed) before we got here: nothing to spread
        audience = [f for f in await self.store.friends_of(user) if not await self.blocked_with_creator(f, zhadui)]
        await self._recompute(user, zhadui)
        await self.store.add_via(zhadui_id, audience, user, at_ms)
        await self.store.bump_activity(zhadui_id, at_ms)
        await self.store.add_notices(audience, zhadui, user, at_ms)
        await self.rooms.join(zhadui.room_id, user)

    async def on_left(self, zhadui_id: str, user: str, removed: bool) -> None:
        zhadui = await self.store.get(zhadui_id)
        if zhadui is None or await self.store.participant_state(zhadui_id, user) == "joined":
            return  # re-joined since: the join's fan-out stands
        await self.store.remove_via(zhadui_id, await self.store.friends_of(user), user)
        await self._recompute(user, zhadui)
        await self.rooms.leave(zhadui.room_id, user, ban=removed)

    async def on_archived(self, zhadui_id: str) -> None:
        await self.store.drop_entries(zhadui_id)

    async def on_pair_changed(self, state: PairState, version: int) -> None:
        before = await self.store.apply_pair(state, version)
        if before is None:
            return  # stale or repeated event
        a, b = state.user_a, state.user_b
        if before.friends != state.friends:
            for user, friend in ((a, b), (b, a)):
                for zhadui in await self.store.joined_by(user):
                    if zhadui.status is Status.ARCHIVED:
                        continue
                    if state.friends and not await self.blocked_with_creator(friend, zhadui):
                        await self.store.add_via(zhadui.zhadui_id, [friend], user, zhadui.last_activity_ms)
                    elif not state.friends:
                        await self.store.remove_via(zhadui.zhadui_id, [friend], user)
                        await self._recompute(friend, zhadui)
        if before.blocked != state.blocked:
            for creator, other in ((a, b), (b, a)):
                for zhadui in await self.store.created_by(creator):
                    if zhadui.status is Status.ARCHIVED:
                        continue
                    if state.blocked and await self.store.participant_state(zhadui.zhadui_id, other) == "joined":
                        # Out of the zhadui and its discussion; the left event removes them from the room.
                        await self.store.leave(zhadui.zhadui_id, other, "", zhadui.last_activity_ms)
                    await self._recompute(other, zhadui)

    async def _recompute(self, user: str, zhadui: Zhadui) -> None:
        """Rebuild one user's entry for one zhadui from the current participants and graph."""
        participant = await self.store.participant_state(zhadui.zhadui_id, user) == "joined"
        if await self.blocked_with_creator(user, zhadui):
            await self.store.drop_entries(zhadui.zhadui_id, [user])
            return
        via = via_for(await self.store.friends_of(user), await self.store.participants(zhadui.zhadui_id))
        if via or participant:
            await self.store.put_entry(user, zhadui.zhadui_id, via, participant, zhadui.last_activity_ms)
        else:
            await self.store.drop_entries(zhadui.zhadui_id, [user])
