"""The read model of the messaging service: this replica's view of the stream (`LogCache`: rooms,
users, recent timelines, receipts, unread counts), typing, and the cached friend-graph relations."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from services.messaging.ports import Store, Tx
from services.messaging.rules import (
    COUNTED_TYPES,
    DEFAULT_POWER_LEVELS,
    JSON,
    MEMBER,
    POWER_LEVELS,
    RECEIPT_TYPES,
    REDACTION,
    now_ms,
    pruned,
)

log = logging.getLogger(__name__)


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

    def __init__(
        self,
        store: Store,
        *,
        timeline_cap: int = 256,
        max_rooms: int = 20_000,
        max_users: int = 50_000,
        on_applied: Callable[[JSON], None] | None = None,
    ) -> None:
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
        self._on_applied = on_applied

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
            if self._on_applied is not None:
                self._on_applied(entry)

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
                view.unread[user_id] = sum(1 for e in view.timeline if e["pos"] > read_pos and _counts(e, user_id))
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
                            state["membership"], pos, bool(state.get("ever_joined"))
                        )
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
                result += await self._store.room_entries(view.room_id, lo, min(hi, floor), limit - len(result), True)
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
