"""Ports of the messaging core: what it needs from the outside world (implemented in store.py and
events.py, faked in tests), and the conflicts a store reports."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

from services.messaging.rules import JSON

T = TypeVar("T")


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
    account_data: dict[str, JSON] = field(default_factory=dict)  # account_data_key -> doc


class Tx(Protocol):
    """Reads and writes inside one transaction (or plain reads, for the append-only fast path)."""

    async def rooms(self, room_ids: list[str]) -> dict[str, JSON]: ...
    async def state_docs(self, keys: list[str]) -> dict[str, JSON]: ...
    async def newer_than(self, pos: int) -> bool: ...
    async def relations(self, pair_ids: list[str]) -> dict[str, JSON]: ...
    async def entry(self, event_id: str) -> JSON | None: ...
    async def receipt(self, key: str) -> JSON | None: ...
    async def account_data(self, key: str) -> JSON | None: ...
    async def profile(self, user_id: str) -> JSON | None: ...
    async def write(self, writes: Writes) -> None: ...


class Store(Protocol):
    async def transaction(self, work: Callable[[Tx], Awaitable[T]]) -> T: ...
    def reader(self) -> Tx: ...
    async def append_entries(self, entries: list[JSON]) -> None: ...
    async def known_position(self) -> int: ...
    async def entries_after(self, pos: int, limit: int) -> list[JSON]: ...
    async def room_entries(self, room_id: str, lo: int, hi: int, limit: int, descending: bool) -> list[JSON]: ...
    async def load_room(self, room_id: str) -> tuple[JSON | None, list[JSON], list[JSON]]: ...
    async def load_users(self, user_ids: list[str]) -> list[JSON]: ...
    async def load_account_data(self, user_ids: list[str]) -> list[JSON]: ...
    async def edits_of(self, room_id: str, event_ids: list[str], upper: int) -> list[JSON]: ...
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
    ) -> list[JSON]: ...
    async def pushers(self, user_id: str) -> list[JSON]: ...
    async def set_profile(self, user_id: str, displayname: str, avatar_url: str) -> None: ...
    async def set_pusher(self, user_id: str, pusher: JSON, append: bool) -> None: ...
    async def delete_pusher(self, user_id: str, app_id: str, pushkey: str) -> None: ...
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
