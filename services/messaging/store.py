"""Repository over the messaging service's own collections; its indexes are declared here.

Collections:
  entries    the stream: room events (`_id` = event id) and read receipts, each with its `pos`;
             a client transaction's event id is derived from (user, device, room, type, txn id), so
             the unique `_id` is what makes a retried send create nothing
  state      current room state, one document per (room, type, state_key); members carry
             `member_user` / `membership` / `ever_joined`
  rooms      immutable facts of a room (creator, direct-chat pair)
  receipts   latest receipt per (room, user, type)
  relations  projection of the contacts service's friend graph, one document per pair
  counters   `relay`: the stream relay's lease and published-up-to cursor
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from prometheus_client import Histogram
from pymongo import ASCENDING, DESCENDING, AsyncMongoClient, IndexModel, ReplaceOne, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, ConnectionFailure, DuplicateKeyError, OperationFailure

from plumbing.mongo import IndexPlan
from services.messaging.ports import DuplicateWrite, PartialAppend, StaleCache, Writes
from services.messaging.rules import JSON, pusher_key

T = TypeVar("T")
WRITE_SECONDS = Histogram(
    "messaging_write_transaction_seconds",
    "Duration of one group-committed write transaction (retries included).",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1),
)
ENTRIES_PER_WRITE = Histogram(
    "messaging_entries_per_transaction",
    "Stream entries written by one transaction.",
    buckets=(1, 2, 4, 8, 16, 32, 64, 128),
)
RELAY_STATE = "relay"


def _conflict(exc: DuplicateKeyError | BulkWriteError) -> Exception:
    """A taken position means a stale view (StaleCache); a taken event id, a retried txn (DuplicateWrite)."""
    if isinstance(exc, BulkWriteError):
        errors = exc.details.get("writeErrors", [])
        if not errors or errors[0].get("code") not in (11000, 112):
            return exc
        details = errors[0]
    else:
        details = exc.details or {}
    if details.get("code") == 112:
        return StaleCache("write conflict")
    key = details.get("keyPattern") or {}
    text = str(details.get("errmsg", ""))
    if "pos" in key or "pos_" in text:
        return StaleCache(text)
    return DuplicateWrite(text)


class MongoTx:
    def __init__(self, store: MessagingStore, session: AsyncClientSession | None) -> None:
        self._s = store
        self._session = session

    async def _by_ids(self, collection: str, ids: list[str]) -> dict[str, JSON]:
        cursor = self._s.db[collection].find({"_id": {"$in": ids}}, session=self._session)
        return {doc["_id"]: doc async for doc in cursor}

    async def rooms(self, room_ids: list[str]) -> dict[str, JSON]:
        return await self._by_ids("rooms", room_ids)

    async def state_docs(self, keys: list[str]) -> dict[str, JSON]:
        return await self._by_ids("state", keys)

    async def newer_than(self, pos: int) -> bool:
        return (
            await self._s.db.entries.find_one({"pos": {"$gt": pos}}, projection={"pos": 1}, session=self._session)
            is not None
        )

    async def relations(self, pair_ids: list[str]) -> dict[str, JSON]:
        return await self._by_ids("relations", pair_ids)

    async def entry(self, event_id: str) -> JSON | None:
        return await self._s.db.entries.find_one({"_id": event_id}, session=self._session)

    async def receipt(self, key: str) -> JSON | None:
        return await self._s.db.receipts.find_one({"_id": key}, session=self._session)

    async def account_data(self, key: str) -> JSON | None:
        return await self._s.db.account_data.find_one({"_id": key}, session=self._session)

    async def profile(self, user_id: str) -> JSON | None:
        return await self._s.db.profiles.find_one({"_id": user_id}, session=self._session)

    async def write(self, writes: Writes) -> None:
        db, session = self._s.db, self._session
        if writes.rooms:
            await db.rooms.insert_many(writes.rooms, session=session)
        if writes.entries:
            ENTRIES_PER_WRITE.observe(len(writes.entries))
            await db.entries.insert_many(writes.entries, session=session)
        inserts = [doc for key, doc in writes.state.items() if key in writes.new_state]
        replaces = [
            ReplaceOne({"_id": key}, doc, upsert=True)
            for key, doc in writes.state.items()
            if key not in writes.new_state
        ]
        if inserts:
            await db.state.insert_many(inserts, session=session)
        if replaces:
            await db.state.bulk_write(replaces, session=session)
        if writes.receipts:
            await db.receipts.bulk_write(
                [
                    ReplaceOne({"_id": key}, {k: v for k, v in doc.items() if k != "entry"}, upsert=True)
                    for key, doc in writes.receipts.items()
                ],
                session=session,
            )
        if writes.account_data:
            await db.account_data.bulk_write(
                [
                    ReplaceOne({"_id": key}, {k: v for k, v in doc.items() if k != "entry"}, upsert=True)
                    for key, doc in writes.account_data.items()
                ],
                session=session,
            )
        for event_id, pruned in writes.redactions.items():
            await db.entries.update_one({"_id": event_id}, {"$set": {"event": pruned}}, session=session)


class MessagingStore:
    def __init__(self, client: AsyncMongoClient, db: AsyncDatabase) -> None:
        self.client = client
        self.db = db

    def indexes(self) -> IndexPlan:
        return {
            "entries": [
                IndexModel([("pos", ASCENDING)], unique=True),
                IndexModel([("room_id", ASCENDING), ("pos", ASCENDING)]),
                IndexModel([("rel.to", ASCENDING), ("pos", ASCENDING)]),
            ],
            "state": [IndexModel([("room_id", ASCENDING)]), IndexModel([("member_user", ASCENDING)])],
            "receipts": [IndexModel([("room_id", ASCENDING)])],
            "account_data": [IndexModel([("user", ASCENDING)])],
            "pushers": [IndexModel([("user", ASCENDING)]), IndexModel([("app_id", ASCENDING), ("pushkey", ASCENDING)])],
        }

    async def transaction(self, work: Callable[[Any], Awaitable[T]]) -> T:
        with WRITE_SECONDS.time():
            return await self._transaction(work)

    async def _transaction(self, work: Callable[[Any], Awaitable[T]]) -> T:
        # Not `with_transaction`: a conflict means our view of the stream was stale, and retrying
        # the same work would conflict again; the caller catches up first, then retries.
        async with self.client.start_session() as session:
            try:
                async with await session.start_transaction():
                    result = await work(MongoTx(self, session))
            except (DuplicateKeyError, BulkWriteError) as exc:
                raise _conflict(exc) from None
            except OperationFailure as exc:
                if exc.has_error_label("TransientTransactionError"):
                    raise StaleCache(str(exc)) from None  # write conflict with another writer
                raise
        return result

    def reader(self) -> MongoTx:
        """Plain reads (no transaction) for the append-only path."""
        return MongoTx(self, None)

    async def append_entries(self, entries: list[JSON]) -> None:
        """Insert in order, without a transaction; a refused entry stops the rest (PartialAppend)."""
        try:
            with WRITE_SECONDS.time():
                await self.db.entries.insert_many(entries, ordered=True)
        except BulkWriteError as exc:
            inserted = int(exc.details.get("nInserted", 0))
            error = _conflict(exc)
            if isinstance(error, (StaleCache, DuplicateWrite)):
                raise PartialAppend(inserted, stale=isinstance(error, StaleCache)) from None
            raise
        except OperationFailure as exc:
            if exc.has_error_label("TransientTransactionError") or exc.code == 112:
                raise PartialAppend(0, stale=True) from None
            raise
        ENTRIES_PER_WRITE.observe(len(entries))

    async def known_position(self) -> int:
        """A stored position to read forward from: the relay's cursor (a sort for the maximum would
        make the embedded server examine every entry)."""
        doc = await self.db.counters.find_one({"_id": RELAY_STATE})
        return int(doc.get("cursor", 0)) if doc else 0

    async def head(self) -> int:
        """The highest stored position, read forward from `known_position` (tests and tools)."""
        head = await self.known_position()
        while True:
            batch = await self.db.entries.find(
                {"pos": {"$gt": head}}, projection={"pos": 1}, sort=[("pos", ASCENDING)], limit=1000
            ).to_list()
            if not batch:
                return head
            head = int(batch[-1]["pos"])

    async def entries_after(self, pos: int, limit: int) -> list[JSON]:
        return await self.db.entries.find({"pos": {"$gt": pos}}, sort=[("pos", ASCENDING)], limit=limit).to_list()

    async def room_entries(self, room_id: str, lo: int, hi: int, limit: int, descending: bool) -> list[JSON]:
        return await self.db.entries.find(
            {"room_id": room_id, "pos": {"$gt": lo, "$lte": hi}, "kind": "event"},
            sort=[("pos", DESCENDING if descending else ASCENDING)],
            limit=limit,
        ).to_list()

    async def load_room(self, room_id: str) -> tuple[JSON | None, list[JSON], list[JSON]]:
        doc = await self.db.rooms.find_one({"_id": room_id})
        if doc is None:
            return None, [], []
        state = await self.db.state.find({"room_id": room_id}).to_list()
        receipts = await self.db.receipts.find({"room_id": room_id}).to_list()
        return doc, state, receipts

    async def load_users(self, user_ids: list[str]) -> list[JSON]:
        return await self.db.state.find({"member_user": {"$in": user_ids}}).to_list()

    async def entry(self, event_id: str) -> JSON | None:
        return await self.db.entries.find_one({"_id": event_id})

    async def edits_of(self, room_id: str, event_ids: list[str], upper: int) -> list[JSON]:
        """Edits (m.replace) of these events up to `upper`, oldest first."""
        return await self.db.entries.find(
            {"rel.to": {"$in": event_ids}, "rel.type": "m.replace", "room_id": room_id, "pos": {"$lte": upper}},
            sort=[("pos", ASCENDING)],
        ).to_list()

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
        query: JSON = {"rel.to": event_id, "room_id": room_id, "pos": {"$gt": lo, "$lte": hi}, "kind": "event"}
        if rel_type:
            query["rel.type"] = rel_type
        if event_type:
            query["event.type"] = event_type
        return await self.db.entries.find(
            query, sort=[("pos", DESCENDING if descending else ASCENDING)], limit=limit
        ).to_list()

    async def load_account_data(self, user_ids: list[str]) -> list[JSON]:
        return await self.db.account_data.find({"user": {"$in": user_ids}}).to_list()

    async def set_profile(self, user_id: str, displayname: str, avatar_url: str) -> None:
        """The projection of auth's profiles, for the displayname/avatar_url of member events."""
        await self.db.profiles.replace_one(
            {"_id": user_id}, {"displayname": displayname, "avatar_url": avatar_url}, upsert=True
        )

    # -- pushers: plain per-user documents (no stream: /sync never carries them) --------------------

    async def pushers(self, user_id: str) -> list[JSON]:
        return await self.db.pushers.find({"user": user_id}, sort=[("created_ms", ASCENDING)]).to_list()

    async def set_pusher(self, user_id: str, pusher: JSON, append: bool) -> None:
        # One pusher per (app_id, pushkey) across users unless `append` (the spec's rule).
        key = {"app_id": pusher["app_id"], "pushkey": pusher["pushkey"]}
        if not append:
            await self.db.pushers.delete_many({**key, "user": {"$ne": user_id}})
        await self.db.pushers.replace_one(
            {"_id": pusher_key(user_id, pusher["app_id"], pusher["pushkey"])}, {"user": user_id, **pusher}, upsert=True
        )

    async def delete_pusher(self, user_id: str, app_id: str, pushkey: str) -> None:
        await self.db.pushers.delete_one({"_id": pusher_key(user_id, app_id, pushkey)})

    async def state_events_upto(self, room_id: str, pos: int) -> list[JSON]:
        """The room's state events with position <= pos, oldest first (state as of a member's leave)."""
        return await self.db.entries.find(
            {"room_id": room_id, "pos": {"$lte": pos}, "kind": "event", "event.state_key": {"$exists": True}},
            sort=[("pos", ASCENDING)],
        ).to_list()

    @staticmethod
    def is_outage(exc: BaseException) -> bool:
        """The store is unreachable (not the request's fault): the writer fails the batch at once."""
        return isinstance(exc, ConnectionFailure)

    async def apply_relation(self, pair: str, version: int, state: JSON) -> bool:
        """Store the pair's relationship if `version` is newer than what we have; False if ignored."""
        try:
            await self.db.relations.update_one(
                {"_id": pair, "version": {"$lt": version}}, {"$set": {**state, "version": version}}, upsert=True
            )
        except DuplicateKeyError:
            return False  # we already hold this version or a newer one
        return True

    async def relation(self, pair: str) -> JSON | None:
        return await self.db.relations.find_one({"_id": pair})

    # -- the stream relay's lease and cursor (one relaying replica at a time) ----------------------

    async def hold_relay_lease(self, owner: str, lease_ms: int, now_ms: int) -> int | None:
        """Take or renew the relay lease; the published-up-to cursor if we hold it, else None."""
        try:
            doc = await self.db.counters.find_one_and_update(
                {"_id": RELAY_STATE, "$or": [{"owner": owner}, {"expires_ms": {"$lt": now_ms}}]},
                {"$set": {"owner": owner, "expires_ms": now_ms + lease_ms}},
                upsert=True,
                return_document=ReturnDocument.AFTER,
            )
        except DuplicateKeyError:
            return None  # another replica holds a live lease
        if doc is None:
            # The embedded Mongo-wire server may answer a contended upsert without the document;
            # not knowing whether we hold the lease, we act as if we do not and ask again later.
            return None
        return int(doc.get("cursor", 0))

    async def advance_relay_cursor(self, owner: str, cursor: int) -> None:
        await self.db.counters.update_one({"_id": RELAY_STATE, "owner": owner}, {"$max": {"cursor": cursor}})
