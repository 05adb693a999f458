"""Zhadui rules with an in-memory store: validation, the audience, how a topic spreads, blocks."""

from __future__ import annotations

import base64
import itertools
from collections.abc import Sequence
from dataclasses import replace

import pytest

from plumbing.domain_errors import DomainError, ErrorKind
from services.zhadui.core import (
    AudienceIndex,
    Notice,
    PairState,
    Status,
    View,
    Zhadui,
    ZhaduiCore,
    creation_retry_after_ms,
    decode_cursor,
    encode_cursor,
    validate_draft,
)

pytestmark = pytest.mark.unit


class FakeStore:
    """The store protocol over dicts. The events a real store would write go to `events`."""

    def __init__(self) -> None:
        self.zhaduis: dict[str, Zhadui] = {}
        self.participation: dict[tuple[str, str], str] = {}
        self.view: dict[tuple[str, str], View] = {}
        self.notice_list: list[tuple[str, Notice]] = []
        self.pair_versions: dict[tuple[str, str], int] = {}
        self.events: list[tuple[str, str, str]] = []
        self.activity_writes = 0

    async def recent_creations_ms(self, creator: str, since_ms: int) -> list[int]:
        return [z.created_ms for z in self.zhaduis.values() if z.creator == creator and z.created_ms > since_ms]

    async def create(self, zhadui: Zhadui) -> None:
        self.zhaduis[zhadui.zhadui_id] = replace(zhadui)
        self.participation[(zhadui.zhadui_id, zhadui.creator)] = "joined"
        self.events.append(("joined", zhadui.zhadui_id, zhadui.creator))

    # Reads hand out copies, as a real store does.
    async def get(self, zhadui_id: str) -> Zhadui | None:
        zhadui = self.zhaduis.get(zhadui_id)
        return replace(zhadui) if zhadui else None

    async def get_many(self, zhadui_ids: Sequence[str]) -> dict[str, Zhadui]:
        return {i: replace(self.zhaduis[i]) for i in zhadui_ids if i in self.zhaduis}

    async def participant_state(self, zhadui_id: str, user: str) -> str | None:
        return self.participation.get((zhadui_id, user))

    async def join(self, zhadui_id: str, user: str, now_ms: int) -> bool:
        if self.participation.get((zhadui_id, user)) in ("joined", "removed"):
            return False
        self.participation[(zhadui_id, user)] = "joined"
        zhadui = self.zhaduis[zhadui_id]
        zhadui.participant_count += 1
        zhadui.last_activity_ms = max(zhadui.last_activity_ms, now_ms)
        self.events.append(("joined", zhadui_id, user))
        return True

    async def leave(self, zhadui_id: str, user: str, removed_by: str, now_ms: int) -> bool:
        if self.participation.get((zhadui_id, user)) != "joined":
            return False
        self.participation[(zhadui_id, user)] = "removed" if removed_by else "left"
        self.zhaduis[zhadui_id].participant_count -= 1
        self.events.append(("removed" if removed_by else "left", zhadui_id, user))
        return True

    async def set_status(self, zhadui_id: str, status: Status, now_ms: int) -> bool:
        zhadui = self.zhaduis[zhadui_id]
        if zhadui.status in (status, Status.ARCHIVED):
            return False
        zhadui.status = status
        return True

    async def record_activity(self, zhadui_id: str, at_ms: int) -> None:
        zhadui = self.zhaduis[zhadui_id]
        zhadui.last_activity_ms = max(zhadui.last_activity_ms, at_ms)
        self.activity_writes += 1

    async def views(self, user: str, zhadui_ids: Sequence[str]) -> dict[str, View]:
        return {z: self.view[(user, z)] for z in zhadui_ids if (user, z) in self.view}

    async def mark_seen(self, user: str, zhadui_id: str, now_ms: int) -> None:
        old = self.view.get((user, zhadui_id), View())
        self.view[(user, zhadui_id)] = replace(old, seen_ms=max(old.seen_ms, now_ms))

    async def set_muted(self, user: str, zhadui_id: str, muted: bool) -> None:
        self.view[(user, zhadui_id)] = replace(self.view.get((user, zhadui_id), View()), muted=muted)

    async def add_notices(self, users: Sequence[str], zhadui: Zhadui, actor: str, at_ms: int) -> None:
        for user in users:
            notice = Notice(zhadui.zhadui_id, zhadui.title, actor, at_ms)
            if user != actor and (user, notice) not in self.notice_list:
                self.notice_list.append((user, notice))

    async def notices(self, user: str, limit: int) -> list[Notice]:
        return [n for u, n in reversed(self.notice_list) if u == user][:limit]

    async def save_pair(self, state: PairState, version: int) -> bool:
        key = (state.user_a, state.user_b)
        if self.pair_versions.get(key, 0) >= version:
            return False
        self.pair_versions[key] = version
        return True


class FakeRooms:
    def __init__(self) -> None:
        self.members: dict[str, set[str]] = {}
        self.banned: dict[str, set[str]] = {}

    async def create(self, creator: str, title: str) -> str:
        room_id = f"!room{len(self.members)}:test"
        self.members[room_id] = {creator}
        return room_id

    async def join(self, room_id: str, user: str) -> None:
        self.members[room_id].add(user)

    async def leave(self, room_id: str, user: str, ban: bool) -> None:
        self.members[room_id].discard(user)
        if ban:
            self.banned.setdefault(room_id, set()).add(user)


class World:
    """One replica wired to fakes, with the durable event handlers run as the consumer runs them."""

    def __init__(self, per_hour: int = 20) -> None:
        self.store = FakeStore()
        self.rooms = FakeRooms()
        counter = itertools.count(1)
        self.core = ZhaduiCore(
            self.store, self.rooms, AudienceIndex(), new_id=lambda: f"z{next(counter)}", creations_per_hour=per_hour
        )
        self.clock = 1_000_000
        self.version = 0

    def tick(self) -> int:
        self.clock += 1000
        return self.clock

    async def deliver(self) -> None:
        while self.store.events:
            kind, zhadui_id, user = self.store.events.pop(0)
            if kind == "joined":
                await self.core.on_joined(zhadui_id, user, self.clock)
            else:
                await self.core.on_left(zhadui_id, user, removed=kind == "removed")

    async def relate(self, x: str, y: str, friends: bool = True, x_blocks_y: bool = False) -> None:
        a, b = sorted((x, y))
        self.version += 1
        blocks = {"a_blocks_b": x_blocks_y and x == a, "b_blocks_a": x_blocks_y and x == b}
        await self.core.on_pair_changed(PairState(a, b, friends, **blocks), self.version, self.tick())
        await self.deliver()

    async def sees(self, viewer: str, zhadui_id: str) -> bool:
        items, _ = await self.core.feed(viewer, "", 100)
        in_feed = any(p.zhadui.zhadui_id == zhadui_id for p in items)
        try:
            await self.core.preview(viewer, zhadui_id, False, self.clock)
            previewable = True
        except DomainError as error:
            assert error.kind is ErrorKind.NOT_FOUND
            previewable = False
        archived = self.store.zhaduis[zhadui_id].status is Status.ARCHIVED
        assert in_feed == previewable or archived, "the feed and the preview must agree"
        return in_feed

    async def create(self, creator: str, title: str = "hotpot on friday?") -> str:
        preview = await self.core.create(creator, validate_draft(title, "", "", "", []), self.tick())
        await self.deliver()
        return preview.zhadui.zhadui_id

    async def join(self, user: str, zhadui_id: str) -> None:
        await self.core.join(user, zhadui_id, self.tick())
        await self.deliver()

    async def leave(self, user: str, zhadui_id: str) -> None:
        await self.core.leave(user, zhadui_id, self.tick())
        await self.deliver()


@pytest.fixture
async def chain() -> World:
    """A - B - C - D are friends along the chain; E knows nobody."""
    world = World()
    for x, y in (("A", "B"), ("B", "C"), ("C", "D")):
        await world.relate(x, y)
    return world


async def test_a_topic_spreads_one_friendship_at_a_time(chain: World) -> None:
    z = await chain.create("A")
    assert [await chain.sees(u, z) for u in "ABCDE"] == [True, True, False, False, False]
    await chain.join("B", z)
    assert [await chain.sees(u, z) for u in "ABCDE"] == [True, True, True, False, False]
    items, _ = await chain.core.feed("C", "", 10)
    assert items[0].friends_in_it == ["B"]  # why C sees it
    assert not items[0].viewer_is_participant
    await chain.join("C", z)
    assert [await chain.sees(u, z) for u in "ABCDE"] == [True, True, True, True, False]
    assert chain.store.zhaduis[z].participant_count == 3
    assert chain.rooms.members[chain.store.zhaduis[z].room_id] == {"A", "B", "C"}


async def test_leaving_before_a_friend_joins_takes_the_topic_away_from_them(chain: World) -> None:
    z = await chain.create("A")
    await chain.join("B", z)
    assert await chain.sees("C", z)
    await chain.leave("B", z)
    assert not await chain.sees("C", z)
    assert await chain.sees("B", z)  # B is still A's friend
    with pytest.raises(DomainError) as raised:
        await chain.core.join("C", z, chain.tick())
    assert raised.value.kind is ErrorKind.NOT_FOUND


async def test_unfriending_removes_visibility_that_depended_on_it(chain: World) -> None:
    z = await chain.create("A")
    await chain.join("B", z)
    await chain.relate("B", "C", friends=False)
    assert not await chain.sees("C", z)
    await chain.relate("B", "C", friends=True)
    assert await chain.sees("C", z)


async def test_a_block_with_the_creator_hides_the_topic_even_through_friends(chain: World) -> None:
    z = await chain.create("A")
    await chain.join("B", z)
    await chain.join("C", z)
    await chain.relate("C", "A", friends=False, x_blocks_y=True)  # C blocks A
    assert not await chain.sees("C", z)
    assert "C" not in chain.rooms.members[chain.store.zhaduis[z].room_id]
    with pytest.raises(DomainError) as raised:
        await chain.core.discussion("C", z)
    assert raised.value.kind is ErrorKind.FORBIDDEN
    await chain.relate("C", "A", friends=False, x_blocks_y=False)
    assert await chain.sees("C", z)  # B still takes part, so C sees it again


async def test_only_participants_reach_the_discussion(chain: World) -> None:
    z = await chain.create("A")
    for outsider in ("B", "E"):
        with pytest.raises(DomainError) as raised:
            await chain.core.discussion(outsider, z)
        assert raised.value.kind is ErrorKind.FORBIDDEN
    await chain.join("B", z)
    assert await chain.core.discussion("B", z) == chain.store.zhaduis[z].room_id


async def test_joining_tells_friends_once(chain: World) -> None:
    z = await chain.create("A")
    await chain.join("B", z)
    await chain.core.on_joined(z, "B", chain.clock)  # a redelivered event
    notices = await chain.core.notices("C", 10)
    assert [(n.zhadui_id, n.actor) for n in notices] == [(z, "B")]
    items, _ = await chain.core.feed("A", "", 10)
    assert [i.zhadui.zhadui_id for i in items] == [z]  # one entry, however many friends joined


async def test_stale_and_repeated_graph_events_are_ignored(chain: World) -> None:
    z = await chain.create("A")
    await chain.join("B", z)
    await chain.core.on_pair_changed(PairState("B", "C", friends=False), chain.version + 1, chain.tick())
    await chain.core.on_pair_changed(PairState("B", "C", friends=True), chain.version, chain.tick())  # older
    assert not await chain.sees("C", z)


async def test_creator_powers(chain: World) -> None:
    z = await chain.create("A")
    await chain.join("B", z)
    with pytest.raises(DomainError) as raised:
        await chain.core.close("B", z, chain.tick())
    assert raised.value.kind is ErrorKind.FORBIDDEN
    with pytest.raises(DomainError) as raised:
        await chain.core.close("E", z, chain.tick())
    assert raised.value.kind is ErrorKind.NOT_FOUND  # outsiders learn nothing
    await chain.core.remove("A", z, "B", chain.tick())
    await chain.deliver()
    assert "B" in chain.rooms.banned[chain.store.zhaduis[z].room_id]
    with pytest.raises(DomainError) as raised:
        await chain.core.join("B", z, chain.tick())
    assert raised.value.kind is ErrorKind.FORBIDDEN
    closing = await chain.create("A", "closing soon")
    await chain.core.close("A", closing, chain.tick())
    with pytest.raises(DomainError, match="closed"):
        await chain.core.join("B", closing, chain.tick())
    assert await chain.sees("B", closing)  # closed is still visible, just not joinable


async def test_idle_topics_are_archived_and_leave_the_feeds(chain: World) -> None:
    z = await chain.create("A")
    fresh = await chain.create("A", "still going")
    assert await chain.core.archive_idle(chain.clock + 500, idle_ms=1_000) == 1
    assert not await chain.sees("B", z)
    assert await chain.sees("B", fresh)
    assert await chain.core.archive_idle(chain.clock + 500, idle_ms=1_000) == 0
    with pytest.raises(DomainError, match="archived"):
        await chain.core.join("B", z, chain.tick())


async def test_feed_is_newest_activity_first_with_a_cursor(chain: World) -> None:
    ids = [await chain.create("A", f"topic {i}") for i in range(5)]
    await chain.join("B", ids[1])  # activity brings topic 1 to the top
    first, cursor = await chain.core.feed("B", "", 2)
    second, cursor2 = await chain.core.feed("B", cursor, 2)
    third, cursor3 = await chain.core.feed("B", cursor2, 2)
    order = [p.zhadui.zhadui_id for p in first + second + third]
    assert order == [ids[1], ids[4], ids[3], ids[2], ids[0]]
    assert cursor3 == ""


async def test_creation_flood_is_limited() -> None:
    world = World(per_hour=3)
    for _ in range(3):
        await world.create("A")
    with pytest.raises(DomainError) as raised:
        await world.create("A")
    assert raised.value.kind is ErrorKind.RATE_LIMITED
    assert raised.value.errcode == "M_LIMIT_EXCEEDED"
    assert 0 < raised.value.retry_after_ms <= 3_600_000


@pytest.mark.parametrize(
    ("title", "card", "errcode"),
    [
        ("", "", "M_BAD_JSON"),
        ("   ", "", "M_BAD_JSON"),
        ("x" * 101, "", "M_TOO_LARGE"),
        ("fine", '{"price": 9.99}', "M_BAD_JSON"),
        ("fine", "[1, 2]", "M_BAD_JSON"),
        ("fine", "{not json", "M_BAD_JSON"),
    ],
)
def test_bad_drafts(title: str, card: str, errcode: str) -> None:
    with pytest.raises(DomainError) as raised:
        validate_draft(title, "", "", card, [])
    assert raised.value.errcode == errcode


def test_a_good_draft_is_normalised() -> None:
    draft = validate_draft(
        "  x" * 1 + "  ", "body", "https://shop.example/item/1", '{"b": 1, "a": "fen"}', ["food", "food", "friday"]
    )
    assert draft.title == "x"
    assert draft.card_json == '{"a":"fen","b":1}'
    assert draft.tags == ("food", "friday")
    assert len(validate_draft("字" * 100, "", "", "", []).title) == 100


def test_cursor_round_trip_and_garbage() -> None:
    assert decode_cursor(encode_cursor(123, "z9", "@a:x", b"k1"), "@a:x", b"k1") == (123, "z9")
    with pytest.raises(DomainError):
        decode_cursor("!!not-a-cursor")


def test_a_well_formed_cursor_we_never_gave_out_is_refused() -> None:
    # The old unsigned shape: base64 of "<activity>:<id>", well-formed and plausible.
    forged = base64.urlsafe_b64encode(b"99999999999999:z1").decode().rstrip("=")
    for cursor, viewer, key in (
        (forged, "@a:x", b"k1"),
        (encode_cursor(1, "z1", "@b:x", b"k1"), "@a:x", b"k1"),  # someone else's
        (encode_cursor(1, "z1", "@a:x", b"k2"), "@a:x", b"k1"),
    ):  # another key
        with pytest.raises(DomainError) as refused:
            decode_cursor(cursor, viewer, key)
        assert refused.value.errcode == "M_INVALID_PARAM"


def test_retry_after_counts_from_the_oldest_creation_in_the_hour() -> None:
    now = 10_000_000
    assert creation_retry_after_ms([now - 10, now - 20], now, per_hour=3) == 0
    assert creation_retry_after_ms([now - 3_000_000, now - 10, now - 20], now, per_hour=3) == 600_000


def test_index_converges_whatever_order_events_arrive_in() -> None:
    events = [
        ("pair", PairState("A", "B", friends=True), 1),
        ("pair", PairState("A", "B", friends=False), 2),
        ("member", "z1", "A", True, 10),
        ("member", "z1", "A", False, 20),
        ("member", "z1", "A", True, 30),
    ]
    finals = set()
    for ordering in itertools.permutations(events):
        index = AudienceIndex()
        index.apply_zhadui("z1", "A", 5, Status.OPEN)
        for event in ordering:
            if event[0] == "pair":
                index.apply_pair(event[1], event[2])
            else:
                index.apply_membership(*event[1:])
        finals.add((frozenset(index.friends_of("A")), frozenset(index.participants("z1"))))
    assert finals == {(frozenset(), frozenset({"A"}))}


def test_index_feed_excludes_archived_and_blocked() -> None:
    index = AudienceIndex()
    index.apply_pair(PairState("A", "B", friends=True), 1)
    index.apply_pair(PairState("B", "C", friends=True), 1)
    for zhadui_id, creator, at in (("z1", "A", 10), ("z2", "C", 20), ("z3", "A", 30)):
        index.apply_zhadui(zhadui_id, creator, at, Status.OPEN)
        index.apply_membership(zhadui_id, creator, True, at)
    assert index.feed("B", None, 10) == [(30, "z3"), (20, "z2"), (10, "z1")]
    index.apply_zhadui("z3", "", 0, Status.ARCHIVED)
    index.apply_pair(PairState("B", "C", friends=True, a_blocks_b=True), 2)
    assert index.feed("B", None, 10) == [(10, "z1")]
    assert index.feed("B", (10, "z1"), 10) == []


async def test_talk_in_the_discussion_brings_a_zhadui_back_up_and_marks_it_unread(chain: World) -> None:
    older = await chain.create("A", "older topic")
    newer = await chain.create("A", "newer topic")
    await chain.core.preview("B", older, True, chain.tick())  # B has seen both
    await chain.core.preview("B", newer, True, chain.tick())
    room = chain.store.zhaduis[older].room_id

    await chain.core.on_discussion_message(room, chain.tick() + 10_000)
    items, _ = await chain.core.feed("B", "", 10)
    assert [(i.zhadui.zhadui_id, i.unread) for i in items] == [(older, True), (newer, False)]

    writes = chain.store.activity_writes
    await chain.core.on_discussion_message(room, chain.clock + 10_001)  # within the resolution
    await chain.core.on_discussion_message("!not-a-discussion:test", chain.clock + 60_000)
    assert chain.store.activity_writes == writes == 1
