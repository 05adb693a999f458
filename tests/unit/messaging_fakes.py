"""In-memory fakes of the messaging core's ports (store and notifier), for unit tests."""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from services.messaging.ports import DuplicateWrite, PartialAppend, StaleCache, Writes
from services.messaging.rules import JSON

T = TypeVar("T")


class FakeTx:
    def __init__(self, store: FakeStore) -> None:
        self._store = store
        self.pending: Writes | None = None

    async def rooms(self, room_ids: list[str]) -> dict[str, JSON]:
        return {r: self._store.rooms[r] for r in room_ids if r in self._store.rooms}

    async def state_docs(self, keys: list[str]) -> dict[str, JSON]:
        return {k: copy.deepcopy(self._store.state[k]) for k in keys if k in self._store.state}

    async def newer_than(self, pos: int) -> bool:
        return await self._store.head() > pos

    async def relations(self, pair_ids: list[str]) -> dict[str, JSON]:
        return {p: self._store.relations[p] for p in pair_ids if p in self._store.relations}

    async def entry(self, event_id: str) -> JSON | None:
        return self._store.entries.get(event_id)

    async def receipt(self, key: str) -> JSON | None:
        return self._store.receipts.get(key)

    async def account_data(self, key: str) -> JSON | None:
        return self._store.account_data.get(key)

    async def profile(self, user_id: str) -> JSON | None:
        return self._store.profiles.get(user_id)

    async def write(self, writes: Writes) -> None:
        self.pending = writes


class FakeStore:
    def __init__(self) -> None:
        self.entries: dict[str, JSON] = {}
        self.state: dict[str, JSON] = {}
        self.rooms: dict[str, JSON] = {}
        self.receipts: dict[str, JSON] = {}
        self.relations: dict[str, JSON] = {}
        self.account_data: dict[str, JSON] = {}
        self.profiles: dict[str, JSON] = {}
        self.pusher_docs: dict[tuple[str, str, str], JSON] = {}
        self.transactions = 0
        self.fail_next_commit: Exception | None = None

    async def transaction(self, work: Callable[[Any], Awaitable[T]]) -> T:
        tx = FakeTx(self)
        result = await work(tx)
        if self.fail_next_commit is not None:
            error, self.fail_next_commit = self.fail_next_commit, None
            raise error
        writes = tx.pending
        if writes is not None:
            taken = {e["pos"] for e in self.entries.values()}
            if any(e["pos"] in taken for e in writes.entries):
                raise StaleCache("position taken")
            if any(e["_id"] in self.entries for e in writes.entries):
                raise DuplicateWrite("entry")
            for doc in writes.rooms:
                self.rooms[doc["_id"]] = doc
            for entry in writes.entries:
                self.entries[entry["_id"]] = entry
            self.state.update(copy.deepcopy(writes.state))
            self.receipts.update(writes.receipts)
            self.account_data.update(copy.deepcopy(writes.account_data))
            for event_id, pruned in writes.redactions.items():
                self.entries[event_id] = {**self.entries[event_id], "event": pruned}
        self.transactions += 1
        return result

    @property
    def counter(self) -> int:
        return max((e["pos"] for e in self.entries.values()), default=0)

    async def head(self) -> int:
        return self.counter

    async def known_position(self) -> int:
        return 0

    def reader(self) -> FakeTx:
        return FakeTx(self)

    async def append_entries(self, entries: list[JSON]) -> None:
        taken = {e["pos"] for e in self.entries.values()}
        for index, entry in enumerate(entries):
            if entry["pos"] in taken or entry["_id"] in self.entries:
                raise PartialAppend(index, stale=entry["pos"] in taken)
            self.entries[entry["_id"]] = entry
        self.transactions += 1

    def _sorted(self) -> list[JSON]:
        return sorted(self.entries.values(), key=lambda e: e["pos"])

    async def entries_after(self, pos: int, limit: int) -> list[JSON]:
        return [e for e in self._sorted() if e["pos"] > pos][:limit]

    async def room_entries(self, room_id: str, lo: int, hi: int, limit: int, descending: bool) -> list[JSON]:
        found = [e for e in self._sorted() if e["room_id"] == room_id and e["kind"] == "event" and lo < e["pos"] <= hi]
        return (found[::-1] if descending else found)[:limit]

    async def edits_of(self, room_id: str, event_ids: list[str], upper: int) -> list[JSON]:
        return [
            e
            for e in self._sorted()
            if e.get("rel", {}).get("to") in event_ids and e["rel"]["type"] == "m.replace" and e["pos"] <= upper
        ]

    async def relations_of(
        self,
        room_id: str,
        event_id: str,
        rel_type: str,
        event_type: str,
        lo: int,
        hi: int,
        limit: int,
        descending: bool,
    ) -> list[JSON]:
        found = [
            e
            for e in self._sorted()
            if e.get("rel", {}).get("to") == event_id
            and e["room_id"] == room_id
            and lo < e["pos"] <= hi
            and (not rel_type or e["rel"]["type"] == rel_type)
            and (not event_type or e["event"]["type"] == event_type)
        ]
        return (found[::-1] if descending else found)[:limit]

    async def load_account_data(self, user_ids: list[str]) -> list[JSON]:
        return [
            {k: v for k, v in d.items() if k != "entry"} for d in self.account_data.values() if d["user"] in user_ids
        ]

    async def set_profile(self, user_id: str, displayname: str, avatar_url: str) -> None:
        self.profiles[user_id] = {"displayname": displayname, "avatar_url": avatar_url}

    async def pushers(self, user_id: str) -> list[JSON]:
        return [p for p in self.pusher_docs.values() if p["user"] == user_id]

    async def set_pusher(self, user_id: str, pusher: JSON, append: bool) -> None:
        if not append:
            same = (pusher["app_id"], pusher["pushkey"])
            for key in [k for k, p in self.pusher_docs.items() if (p["app_id"], p["pushkey"]) == same]:
                if key[0] != user_id:
                    del self.pusher_docs[key]
        self.pusher_docs[(user_id, pusher["app_id"], pusher["pushkey"])] = {"user": user_id, **pusher}

    async def delete_pusher(self, user_id: str, app_id: str, pushkey: str) -> None:
        self.pusher_docs.pop((user_id, app_id, pushkey), None)

    async def load_room(self, room_id: str) -> tuple[JSON | None, list[JSON], list[JSON]]:
        room = self.rooms.get(room_id)
        if room is None:
            return None, [], []
        state = [copy.deepcopy(d) for d in self.state.values() if d["room_id"] == room_id]
        receipts = [
            {k: v for k, v in d.items() if k != "entry"} for d in self.receipts.values() if d["room_id"] == room_id
        ]
        return room, state, receipts

    async def load_users(self, user_ids: list[str]) -> list[JSON]:
        return [copy.deepcopy(d) for d in self.state.values() if d.get("member_user") in user_ids]

    async def entry(self, event_id: str) -> JSON | None:
        return self.entries.get(event_id)

    async def state_events_upto(self, room_id: str, pos: int) -> list[JSON]:
        return [
            e
            for e in self._sorted()
            if e["room_id"] == room_id and e["kind"] == "event" and "state_key" in e["event"] and e["pos"] <= pos
        ]

    @staticmethod
    def is_outage(exc: BaseException) -> bool:
        return isinstance(exc, ConnectionError)


class RecordingNotifier:
    def __init__(self) -> None:
        self.woken: list[dict[str, int]] = []
        self.broadcasts: list[list[JSON]] = []
        self.typing: list[tuple[str, str, int, int]] = []

    async def wake(self, users: dict[str, int]) -> None:
        self.woken.append(dict(users))

    async def broadcast_entries(self, entries: list[JSON]) -> None:
        self.broadcasts.append(entries)

    async def broadcast_typing(self, room_id: str, user_id: str, expires_at_ms: int, serial: int) -> None:
        self.typing.append((room_id, user_id, expires_at_ms, serial))

    def woken_users(self) -> set[str]:
        return {u for batch in self.woken for u in batch}
