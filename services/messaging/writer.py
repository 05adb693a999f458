"""The group-committing writer of the messaging service: requests queue up while a write is in
flight, and the next write carries all of them (see docs/messaging.md, "Ordering").

`Batch` is one write's unit of work: rules are checked against the cache (or, after repeated
conflicts, the database inside the transaction) through an overlay of the batch's own writes, with
savepoints so that a refused request leaves nothing behind. `Writer` runs the loop, retries on
conflicts, isolates a faulty request from its batch, and after a commit advances the cache, wakes
waiting /syncs and tells the other replicas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from plumbing.domain_errors import DomainError, not_found
from services.messaging.ports import DuplicateWrite, Notifier, PartialAppend, StaleCache, Store, Tx, Writes
from services.messaging.rules import (
    DEFAULT_POWER_LEVELS,
    JSON,
    MAX_EVENT_BYTES,
    MEMBER,
    POWER_LEVELS,
    account_data_key,
    canonical_bytes,
    new_id,
    now_ms,
    pair_id,
    pruned,
    receipt_key,
    state_key_id,
    txn_event_id,
)
from services.messaging.timeline import LogCache, Relations

log = logging.getLogger(__name__)


class Batch:
    """One write's worth of requests.

    Reads go through an overlay of the batch's own writes. In *cache mode* (the normal case) rules
    are checked against this replica's cache as of `base_head`, and the entries claim positions
    base_head+1, base_head+2, ... under a unique index: if another writer already took them, the
    view was stale and the batch is re-run after catching up; if the claim succeeds, nobody wrote
    in between, so the checks held. Without cache mode (the fallback after repeated conflicts),
    reads go to the database inside the transaction. Writes are buffered and flushed in bulk.
    """

    def __init__(self, writer: Writer, tx: Tx, check_txns: bool, cache_mode: bool) -> None:
        self.writer = writer
        self.tx = tx
        self.check_txns = check_txns
        self.cache_mode = cache_mode
        self.base_head = writer.cache.head
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
            targets: dict[str, dict[str, Any]] = {
                "state": self.state,
                "writes.state": w.state,
                "receipts": w.receipts,
                "redactions": w.redactions,
                "account_data": w.account_data,
                "txn_map": self.txn_map,
                "room_docs": self.room_docs,
            }
            target = targets[kind]
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
                await self.writer.cache.room(room_id)
            self.base_head = self.writer.cache.head  # after loading: loads may catch up
        else:
            missing_rooms = [r for r in room_ids if r not in self.room_docs and r not in self.writer.room_docs]
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
        await self.writer.relations.prefetch(self.tx, pairs)

    async def room(self, room_id: str) -> JSON | None:
        cached = self.writer.room_docs.get(room_id)
        if cached is not None:
            return cached
        if room_id in self.room_docs:
            return self.room_docs[room_id]
        if self.cache_mode:
            view = self.writer.cache.rooms.get(room_id) or await self.writer.cache.room(room_id)
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
            view = self.writer.cache.rooms.get(room_id)
            if view is None and room_id not in self.room_docs:
                view = await self.writer.cache.room(room_id)
            entry = view.state.get((event_type, state_key)) if view is not None else None
            if entry is not None:
                doc = {"entry": entry}
                if event_type == MEMBER:
                    info = view.members[state_key] if view is not None else None
                    doc.update(
                        membership=info.membership if info else entry["event"]["content"]["membership"],
                        ever_joined=bool(info and info.ever_joined),
                    )
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
        return await self.writer.relations.get(self.tx, pair_id(a, b))

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

    def append_event(
        self,
        room_id: str,
        sender: str,
        event_type: str,
        content: JSON,
        *,
        state_key: str | None = None,
        redacts: str | None = None,
        event_id: str = "",
        device_id: str = "",
        txn_id: str = "",
        ever_joined: bool = False,
    ) -> JSON:
        event: JSON = {
            "event_id": event_id or "$" + new_id(24),
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
            raise DomainError("M_TOO_LARGE", f"event is larger than {MAX_EVENT_BYTES} bytes")
        entry: JSON = {"_id": event["event_id"], "kind": "event", "room_id": room_id, "event": event, "pos": 0}
        relates = content.get("m.relates_to")
        if (
            isinstance(relates, dict)
            and isinstance(relates.get("event_id"), str)
            and isinstance(relates.get("rel_type"), str)
        ):
            entry["rel"] = {"to": relates["event_id"], "type": relates["rel_type"]}  # for /relations and edits
        if device_id:
            entry["device"] = device_id
        if txn_id:
            entry["txn"] = txn_id
        if state_key is not None:
            key = state_key_id(room_id, event_type, state_key)
            doc: JSON = {"_id": key, "room_id": room_id, "type": event_type, "state_key": state_key, "entry": entry}
            if event_type == MEMBER:
                membership = content["membership"]
                ever = ever_joined or membership == "join"
                entry["ever_joined"] = ever
                doc.update(membership=membership, member_user=state_key, ever_joined=ever)
            previous = self.state.get(key, _MISSING)
            if previous is None or (
                previous is _MISSING and self.room_docs.get(room_id) is not None and room_id in self._created_rooms
            ):
                self.writes.new_state.add(key)  # a plain insert is much cheaper than an upsert
            self._set("state", self.state, key, doc)
            self._set("writes.state", self.writes.state, key, doc)
        self.writes.entries.append(entry)
        return entry

    def append_member(
        self,
        room_id: str,
        sender: str,
        target: str,
        membership: str,
        *,
        ever_joined: bool,
        reason: str = "",
        extra: JSON | None = None,
    ) -> JSON:
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
        receipt = {"user": user_id, "type": receipt_type, "event_id": event_id, "event_pos": event_pos, "ts": self.ts}
        entry: JSON = {"kind": "receipt", "room_id": room_id, "receipt": receipt, "pos": 0}
        self.writes.entries.append(entry)
        key = receipt_key(room_id, user_id, receipt_type)
        doc = {"_id": key, "room_id": room_id, **receipt, "entry": entry}
        self._set("receipts", self.writes.receipts, key, doc)

    async def profile_of(self, user_id: str) -> JSON:
        """displayname / avatar_url for the user's member events (from auth's profile events)."""
        doc = await self.tx.profile(user_id)
        if doc is None:
            return {}
        return {k: doc[k] for k in ("displayname", "avatar_url") if doc.get(k)}

    async def account_data(self, user_id: str, room_id: str, data_type: str) -> JSON | None:
        """The stored content (or None), including this batch's own writes."""
        key = account_data_key(user_id, room_id, data_type)
        pending = self.writes.account_data.get(key)
        if pending is not None:
            return pending["content"]
        if self.cache_mode:
            view = await self.writer.cache.user(user_id)
            found = view.account_data.get((room_id, data_type))
            return found["content"] if found is not None else None
        doc = await self.tx.account_data(key)
        return doc["content"] if doc is not None else None

    def add_account_data(self, user_id: str, room_id: str, data_type: str, content: JSON, event_pos: int = 0) -> None:
        entry: JSON = {
            "kind": "account_data",
            "room_id": room_id,
            "user": user_id,
            "type": data_type,
            "content": content,
            "pos": 0,
        }
        doc: JSON = {"user": user_id, "room_id": room_id, "type": data_type, "content": content}
        if event_pos:  # m.fully_read: where the marker points, for unread counts
            entry["event_pos"] = doc["event_pos"] = event_pos
        self.writes.entries.append(entry)
        key = account_data_key(user_id, room_id, data_type)
        doc.update(_id=key, entry=entry)
        self._set("account_data", self.writes.account_data, key, doc)

    def add_redaction(self, target: JSON, redaction: JSON) -> None:
        self._set("redactions", self.writes.redactions, target["event_id"], pruned(target, redaction))

    def claim_positions(self) -> None:
        for offset, entry in enumerate(self.writes.entries, start=1):
            entry["pos"] = self.base_head + offset
            if entry["kind"] == "receipt":
                entry["_id"] = f"~r{entry['pos']}"
            elif entry["kind"] == "account_data":
                entry["_id"] = f"~a{entry['pos']}"
        for doc in (*self.writes.receipts.values(), *self.writes.account_data.values()):
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


_MISSING = object()


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


class Writer:
    """The one writer of a replica. Its hooks are given here: `on_commit` (after every successful
    commit: the stream relay's kick) and the notifier (wake-ups and replication)."""

    def __init__(
        self,
        store: Store,
        cache: LogCache,
        relations: Relations,
        notifier: Notifier,
        *,
        max_batch: int = 128,
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self.store = store
        self.cache = cache
        self.relations = relations
        self.notifier = notifier
        self.room_docs: OrderedDict[str, JSON] = OrderedDict()  # rooms are immutable once created
        self.recent_txns: OrderedDict[str, str] = OrderedDict()
        self._max_batch = max_batch
        self._on_commit = on_commit
        self._queue: asyncio.Queue[_Pending] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._write_loop(), name="messaging-writer")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def submit(
        self, op: Op, rooms: Iterable[str] = (), state_keys: Iterable[str] = (), append_only: bool = False
    ) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        await self._queue.put(_Pending(op, set(rooms), set(state_keys), future, append_only))
        return await future

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while len(batch) < self._max_batch and not self._queue.empty():
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

    async def _validate(
        self, batch: Batch, pending: list[_Pending], outcomes: list[tuple[bool, Any]], appended: list[int]
    ) -> None:
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
                if not isinstance(exc, DomainError):
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
                    stored = partial.inserted
                    rest: list[tuple[_Pending, tuple[bool, Any]]] = []
                    done: list[tuple[_Pending, tuple[bool, Any]]] = []
                    for item, outcome, count in zip(pending, outcomes, appended, strict=True):
                        (rest if count and stored < count else done).append((item, outcome))
                        stored -= count
                    kept = batch.writes.entries[: partial.inserted]
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
            self._remember(self.recent_txns, key, event_id, 100_000)
        if not writes.entries:
            return
        try:
            self._on_commit()
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
            pos = entry["pos"]
            if entry["kind"] == "account_data":
                wake[entry["user"]] = pos  # private to its owner
                continue
            view = await self.cache.room(entry["room_id"])
            if view is not None:
                for user_id, info in view.members.items():
                    if info.membership in ("join", "invite"):
                        wake[user_id] = pos
            if entry["kind"] == "event" and entry["event"]["type"] == MEMBER:
                wake[entry["event"]["state_key"]] = pos
        await self.notifier.wake(wake)

    @staticmethod
    def _remember(cache: OrderedDict[str, Any], key: str, value: Any, cap: int) -> None:
        cache[key] = value
        cache.move_to_end(key)
        if len(cache) > cap:
            cache.popitem(last=False)
