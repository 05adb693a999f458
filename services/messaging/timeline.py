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
from services.messaging.push_rules import RoomContext, evaluate, ruleset
from services.messaging.rules import (
    DEFAULT_POWER_LEVELS,
    FULLY_READ,
    JSON,
    MEMBER,
    POWER_LEVELS,
    PUSH_RULES,
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
        # user -> [notifications, highlights, read_pos]: kept current as events arrive, dropped
        # (and recounted when next asked) when the user's marker or push rules move.
        self.unread: dict[str, list[int]] = {}

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
    __slots__ = ("account_data", "rooms", "user_id")

    def __init__(self, user_id: str) -> None:
        self.user_id = user_id
        self.rooms: dict[str, MemberInfo] = {}
        # (room_id or "" for global, type) -> {"content": ..., "pos": ...}
        self.account_data: dict[tuple[str, str], JSON] = {}


# Unread counts scan at most this many events after the user's marker (a room read long ago
# shows "999+"-style saturated counts instead of a scan of its whole history).
MAX_COUNTED_EVENTS = 1000


def room_context(view: RoomView, user_id: str, sender: str) -> RoomContext:
    levels = view.power_levels()
    users = found if isinstance(found := levels.get("users"), dict) else {}
    default = levels.get("users_default", 0)
    sender_power = users.get(sender, default)
    notifications = found if isinstance(found := levels.get("notifications"), dict) else {}
    own = view.state.get((MEMBER, user_id))
    name = own["event"]["content"].get("displayname") if own is not None else None
    return RoomContext(
        member_count=sum(1 for m in view.members.values() if m.membership == "join"),
        display_name=name if isinstance(name, str) else "",
        sender_power=sender_power if isinstance(sender_power, int) else 0,
        notification_power=lambda key: v if isinstance(v := notifications.get(key, 50), int) else 50,
    )


def is_redacted(event: JSON) -> bool:
    return "redacted_because" in event.get("unsigned", {})


def user_rules(user: UserView) -> dict[str, list[JSON]]:
    stored = user.account_data.get(("", PUSH_RULES))
    return ruleset(user.user_id, stored["content"] if stored is not None else None)


def read_position(view: RoomView, user: UserView) -> int:
    """Where the user has read up to: the furthest of their receipts, their m.fully_read marker and
    their joining (what happened before they joined never notified them)."""
    marker = user.account_data.get((view.room_id, FULLY_READ))
    member = view.members.get(user.user_id)
    return max(
        view.read_up_to(user.user_id),
        int(marker.get("event_pos", 0)) if marker else 0,
        member.pos if member is not None else 0,
    )


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
        if entry["kind"] == "account_data":
            owner = self.users.get(entry["user"])
            if owner is not None:
                owner.account_data[(room_id, entry["type"])] = {
                    "content": entry["content"],
                    "pos": pos,
                    "event_pos": entry.get("event_pos", 0),
                }
            if view is not None and entry["type"] == FULLY_READ:
                view.unread.pop(entry["user"], None)  # recounted from the new marker when next asked
            if owner is not None and entry["type"] == PUSH_RULES and not room_id:
                for joined in owner.rooms:
                    other = self.rooms.get(joined)
                    if other is not None:
                        other.unread.pop(entry["user"], None)
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
            view.unread.clear()  # a redacted message no longer counts: recounted when next asked
            return
        for user_id in list(view.unread):
            if user_id == event["sender"]:
                continue
            user = self.users.get(user_id)
            if user is None:
                del view.unread[user_id]  # its rules are not in memory: recount when asked
                continue
            outcome = evaluate(user_rules(user), event, user_id, room_context(view, user_id, event["sender"]))
            counts = view.unread[user_id]
            counts[0] += outcome.notify
            counts[1] += outcome.highlight

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
        counts = view.unread.get(receipt["user"])
        if counts is not None and receipt["event_pos"] > counts[2]:
            del view.unread[receipt["user"]]  # recounted from the new marker when next asked

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
                    for doc in await self._store.load_account_data(wanted) if wanted else []:
                        views[doc["user"]].account_data[(doc["room_id"], doc["type"])] = {
                            "content": doc["content"],
                            "pos": doc["pos"],
                            "event_pos": doc.get("event_pos", 0),
                        }
                        newest = max(newest, doc["pos"])
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

    async def unread(self, view: RoomView, user: UserView) -> tuple[int, int]:
        """(notification_count, highlight_count) for the user in the room: the events after their
        read position that their push rules notify (and highlight) for."""
        counts = view.unread.get(user.user_id)
        if counts is not None:
            return counts[0], counts[1]
        async with self._lock:
            # Under the lock, so no event is applied between the count and registering it.
            read_pos = read_position(view, user)
            if read_pos >= view.floor:
                entries = [e for e in view.timeline if e["pos"] > read_pos]
            else:
                entries = await self._store.room_entries(view.room_id, read_pos, self.head, MAX_COUNTED_EVENTS, True)
            rules = user_rules(user)
            notify = highlight = 0
            for entry in entries[-MAX_COUNTED_EVENTS:]:
                event = entry["event"]
                if event["sender"] == user.user_id or is_redacted(event):
                    continue
                outcome = evaluate(rules, event, user.user_id, room_context(view, user.user_id, event["sender"]))
                notify += outcome.notify
                highlight += outcome.highlight
            view.unread[user.user_id] = [notify, highlight, read_pos]
            return notify, highlight

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
