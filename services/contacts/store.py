"""Repository over the contacts service's own collections; its indexes are declared here.

Collections:
  phones        _id = E.164 number of a verified phone; user_id (None once unbound), event_ms
                (the auth event time, so a late redelivery cannot undo a newer change), updated_at
  profiles      _id = user id; display_name, discoverability, deactivated, updated_at, v (grows with
                every write: replicas apply a profile only over an older one)
  books         _id = owner; `keys` = the owner's keyed hashes concatenated (16 bytes each), `seen` =
                every key ever uploaded (the "uploaded before?" set the budget charges against),
                rev, and while a write applies its entry changes `pending` (the journal of them)
  budgets       _id = "phone:<E.164>" or "addr:<client address>"; tokens, tokens_at_ms
  book_entries  one per (owner, keyed hash): for "who has this number" (suggestions, mutual
                discoverability); `gen` = pepper generation of hash-only entries; `match` = the
                registered user the entry resolved to
  pairs         _id = "a|b" (a < b): friendship, pending request, blocks, version
  suggestions   _id = "owner|subject"
  peppers       _id = generation (int); pepper, created_at_ms
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from bson import Binary
from pymongo import ASCENDING, AsyncMongoClient, DeleteOne, IndexModel, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from plumbing.domain_errors import Conflict
from plumbing.mongo import IndexPlan, in_transaction, upsert_by_id
from services.contacts.core import KEY_BYTES, Discoverability, Pair, PairEvent, pair_key

# Rows per bulk write: `$in` and big batches cost superlinearly on the embedded store (2,000 ids in one
# `$in` took seconds, 20 chunks of 100 a tenth of that), and small steps let other users' writes through.
ENTRY_CHUNK = 250
IN_CHUNK = 100  # values per `$in` query, for the same reason
PENDING_TAKEOVER_MS = 30_000

StageEvent = Callable[[AsyncClientSession, PairEvent], Awaitable[None]]
Journal = dict[str, Any]  # a committed book write's entry changes: rev, remove (row ids), add (row documents)


@dataclass(frozen=True)
class Book:
    keys: set[bytes]
    seen: set[bytes]  # every key ever uploaded: re-adding a removed number is not charged again
    rev: int
    pending_at_ms: int | None = None  # a writer is still applying its entry changes (see save_book)


@dataclass(frozen=True)
class Budget:
    """One enumeration budget document (a verified number's or a client address's)."""

    key: str
    tokens: float | None
    tokens_at_ms: int | None


@dataclass(frozen=True)
class BookEntry:
    key: bytes
    gen: int | None
    match: str | None


def _now() -> datetime:
    return datetime.now(UTC)


def _split_keys(blob: bytes) -> set[bytes]:
    return {blob[i : i + KEY_BYTES] for i in range(0, len(blob), KEY_BYTES)}


def _pair_from(doc: dict[str, Any]) -> Pair:
    return Pair(
        a=doc["a"],
        b=doc["b"],
        friends=doc.get("friends", False),
        friends_since_ms=doc.get("friends_since_ms", 0),
        request_from=doc.get("request_from"),
        request_message=doc.get("request_message", ""),
        request_at_ms=doc.get("request_at_ms", 0),
        a_blocks_b=doc.get("a_blocks_b", False),
        b_blocks_a=doc.get("b_blocks_a", False),
        version=doc.get("version", 0),
    )


def _pair_doc(pair: Pair) -> dict[str, Any]:
    return {
        "_id": pair.key,
        "a": pair.a,
        "b": pair.b,
        "friends": pair.friends,
        "friends_since_ms": pair.friends_since_ms,
        "request_from": pair.request_from,
        "request_to": pair.request_to(),
        "request_message": pair.request_message,
        "request_at_ms": pair.request_at_ms,
        "a_blocks_b": pair.a_blocks_b,
        "b_blocks_a": pair.b_blocks_a,
        "blocked": pair.blocked,
        "version": pair.version,
    }


class ContactsStore:
    def __init__(self, client: AsyncMongoClient, db: AsyncDatabase) -> None:
        self._client = client
        self.phones = db["phones"]
        self.profiles = db["profiles"]
        self.books = db["books"]
        self.entries = db["book_entries"]
        self.pairs = db["pairs"]
        self.suggestions = db["suggestions"]
        self.peppers = db["peppers"]
        self.budgets = db["budgets"]

    def indexes(self) -> IndexPlan:
        return {
            "phones": [IndexModel([("user_id", ASCENDING)]), IndexModel([("updated_at", ASCENDING)])],
            "profiles": [IndexModel([("updated_at", ASCENDING)])],
            # Few indexes: each costs on every one of the thousands of rows a big book writes (an
            # `owner` index made them ~25 % slower); an owner's rows are found by `_id` prefix.
            "book_entries": [IndexModel([("k", ASCENDING)]), IndexModel([("gen", ASCENDING)])],
            "pairs": [IndexModel([("a", ASCENDING)]), IndexModel([("b", ASCENDING)])],
            "suggestions": [IndexModel([("owner", ASCENDING)])],
        }

    # ------------------------------------------------------------------ phone index projection
    async def bind_phone(self, e164: str, user_id: str, event_ms: int) -> bool:
        """Record that `user_id` verified `e164`, unless a newer event already decided; True if applied."""
        return await self._set_phone(e164, user_id, event_ms)

    async def unbind_phone(self, e164: str, user_id: str, event_ms: int) -> bool:
        doc = await self.phones.find_one({"_id": e164})
        if doc is not None and doc.get("user_id") not in (user_id, None):
            return False  # the number has moved on to someone else since
        return await self._set_phone(e164, None, event_ms)

    async def _set_phone(self, e164: str, user_id: str | None, event_ms: int) -> bool:
        try:
            result = await self.phones.update_one(
                {"_id": e164, "event_ms": {"$lte": event_ms}},
                {"$set": {"user_id": user_id, "event_ms": event_ms, "updated_at": _now()}},
                upsert=True,
            )
        except DuplicateKeyError:
            return False  # exists with a newer event_ms: the upsert tried to insert a second copy
        return result.matched_count > 0 or result.upserted_id is not None

    async def numbers_of(self, user_ids: Iterable[str]) -> dict[str, list[str]]:
        ids = list(set(user_ids))
        found: dict[str, list[str]] = {}
        if not ids:
            return found
        for start in range(0, len(ids), IN_CHUNK):
            chunk = ids[start : start + IN_CHUNK]
            query = {"user_id": chunk[0]} if len(chunk) == 1 else {"user_id": {"$in": chunk}}
            async for doc in self.phones.find(query, {"user_id": 1}):
                found.setdefault(doc["user_id"], []).append(doc["_id"])
        return found

    async def all_phones(self, batch: int = 20_000) -> Any:
        """Every bound number, for loading the in-memory index at start-up."""
        async for doc in self.phones.find({"user_id": {"$ne": None}}, {"user_id": 1}, batch_size=batch):
            yield doc["_id"], doc["user_id"]

    async def phones_changed_since(self, since: datetime) -> list[tuple[str, str | None, int]]:
        """(number, user or None, event_ms) of every binding changed since `since`."""
        docs = await self.phones.find({"updated_at": {"$gte": since}}, {"user_id": 1, "event_ms": 1}).to_list()
        return [(d["_id"], d.get("user_id"), int(d.get("event_ms", 0))) for d in docs]

    # ------------------------------------------------------------------ profiles
    async def upsert_profile(
        self,
        user_id: str,
        display_name: str | None = None,
        discoverability: Discoverability | None = None,
        deactivated: bool | None = None,
    ) -> dict[str, Any]:
        """Write the changes and return the whole document as written, with its new version `v`."""
        changes: dict[str, Any] = {"updated_at": _now()}
        if display_name is not None:
            changes["display_name"] = display_name
        if discoverability is not None:
            changes["discoverability"] = discoverability.value
        if deactivated is not None:
            changes["deactivated"] = deactivated
        return await upsert_by_id(self.profiles, user_id, {"$set": changes, "$inc": {"v": 1}})

    async def get_profile(self, user_id: str) -> dict[str, Any] | None:
        return await self.profiles.find_one({"_id": user_id})

    async def all_profiles(self, batch: int = 20_000) -> Any:
        async for doc in self.profiles.find({}, batch_size=batch):
            yield doc

    async def profiles_changed_since(self, since: datetime) -> list[dict[str, Any]]:
        return await self.profiles.find({"updated_at": {"$gte": since}}).to_list()

    # ------------------------------------------------------------------ address books
    async def load_book(self, owner: str) -> Book:
        doc = await self.books.find_one({"_id": owner}, {"pending": 0})
        if doc is None:
            return Book(set(), set(), 0)
        keys = _split_keys(bytes(doc.get("keys", b"")))
        seen = _split_keys(bytes(doc.get("seen", b""))) | keys
        return Book(keys, seen, doc["rev"], doc.get("pending_at_ms"))

    async def save_book(
        self,
        owner: str,
        expected_rev: int,
        keys_after: set[bytes],
        seen_after: set[bytes],
        added: Sequence[BookEntry],
        removed: Iterable[bytes],
        now_ms: int,
    ) -> Journal:
        """Commit the book; Conflict if `rev` moved or another write is still applying its entries.

        The commit point is one conditional update of the small `books` document, which also
        records the entry changes as a journal (`pending`). The caller then applies the journal
        (`apply_journal`: entry rows deleted and inserted in chunks outside any transaction, then the
        journal cleared). A long transaction (thousands of deletes by `_id $in`, quadratic on the
        embedded store) held the store's write path for seconds and stalled every other user; this
        way no step is big. A writer that finds a journal older than PENDING_TAKEOVER_MS (its writer
        died) applies it.
        """
        journal: Journal = {
            "rev": expected_rev + 1,
            "remove": [f"{owner}|{key.hex()}" for key in removed],
            "add": [
                {"_id": f"{owner}|{e.key.hex()}", "owner": owner, "k": Binary(e.key), "gen": e.gen, "match": e.match}
                for e in added
            ],
        }
        fields = {
            "keys": Binary(b"".join(sorted(keys_after))),
            "seen": Binary(b"".join(sorted(seen_after))),
            "rev": expected_rev + 1,
            "updated_at": _now(),
            "pending": journal,
            "pending_at_ms": now_ms,
        }
        if expected_rev == 0:
            try:
                await self.books.insert_one({"_id": owner, **fields})
            except DuplicateKeyError:
                raise Conflict("address book changed concurrently") from None
        else:
            result = await self.books.update_one(
                {"_id": owner, "rev": expected_rev, "pending_at_ms": None}, {"$set": fields}
            )
            if result.matched_count == 0:
                raise Conflict("address book changed concurrently")
        return journal

    async def pending_matches(self, owner: str) -> list[str]:
        """Users matched by entries of a committed journal whose rows are still being written."""
        doc = await self.books.find_one({"_id": owner, "pending_at_ms": {"$ne": None}}, {"pending.add.match": 1})
        adds = ((doc or {}).get("pending") or {}).get("add") or []
        return list(dict.fromkeys(a["match"] for a in adds if a.get("match")))

    async def finish_pending(self, owner: str) -> None:
        """Apply the journal a writer left behind (it crashed, or took too long), then clear it."""
        doc = await self.books.find_one({"_id": owner}, {"pending": 1})
        if doc is not None and doc.get("pending"):
            await self.apply_journal(owner, doc["pending"])

    async def apply_journal(self, owner: str, journal: Journal) -> None:
        """Write a committed journal's entry rows (idempotent: a takeover may apply it twice), then clear it."""
        # Removals first: a number the owner dropped stops counting as "theirs" before anything else.
        removals = list(journal["remove"])
        for start in range(0, len(removals), ENTRY_CHUNK):
            await self.entries.bulk_write(
                [DeleteOne({"_id": i}) for i in removals[start : start + ENTRY_CHUNK]], ordered=False
            )
        docs = list(journal["add"])
        for start in range(0, len(docs), ENTRY_CHUNK):
            try:
                await self.entries.insert_many(docs[start : start + ENTRY_CHUNK], ordered=False)
            except BulkWriteError as error:
                # Re-applying a journal (takeover, retry) meets rows written the first time: fine.
                if any(e.get("code") != 11000 for e in error.details.get("writeErrors", [])):
                    raise
        await self.books.update_one(
            {"_id": owner, "rev": journal["rev"]}, {"$set": {"pending_at_ms": None}, "$unset": {"pending": ""}}
        )

    async def add_book_keys(self, owner: str, entries: Sequence[BookEntry], now_ms: int) -> None:
        """Add entries outside an upload (a hash-only entry resolved by a later registration)."""
        for _ in range(50):
            book = await self.load_book(owner)
            fresh = [e for e in entries if e.key not in book.keys]
            if not fresh:
                return
            if book.pending_at_ms is not None:
                await self.wait_or_take_over(owner, book, now_ms)
                continue
            try:
                keys = {e.key for e in fresh}
                journal = await self.save_book(owner, book.rev, book.keys | keys, book.seen | keys, fresh, (), now_ms)
            except Conflict:
                continue
            # A few rows: written before answering, and finished even if the caller gives up.
            await asyncio.shield(self.apply_journal(owner, journal))
            return
        raise Conflict("address book kept changing")

    async def wait_or_take_over(self, owner: str, book: Book, now_ms: int) -> None:
        """Another write of this book is applying its entries: wait a moment, or finish it if it died."""
        if book.pending_at_ms is not None and now_ms - book.pending_at_ms > PENDING_TAKEOVER_MS:
            await self.finish_pending(owner)
        else:
            await asyncio.sleep(0.05)

    # ------------------------------------------------------------------ enumeration budgets
    async def load_budget(self, key: str) -> Budget:
        doc = await self.budgets.find_one({"_id": key})
        if doc is None:
            return Budget(key, None, None)
        return Budget(key, doc.get("tokens"), doc.get("tokens_at_ms"))

    async def save_budget(self, before: Budget, tokens: float, at_ms: int) -> bool:
        """Compare-and-set: False if someone else charged this budget since `before` was read."""
        if before.tokens is None:
            try:
                await self.budgets.insert_one({"_id": before.key, "tokens": tokens, "tokens_at_ms": at_ms})
            except DuplicateKeyError:
                return False
            return True
        result = await self.budgets.update_one(
            {"_id": before.key, "tokens": before.tokens, "tokens_at_ms": before.tokens_at_ms},
            {"$set": {"tokens": tokens, "tokens_at_ms": at_ms}},
        )
        return result.matched_count > 0

    async def holders(self, keys: Sequence[bytes]) -> list[tuple[str, bytes, int | None]]:
        """(owner, key, gen) of every stored entry with one of `keys`: who has these numbers."""
        if not keys:
            return []
        query = {"k": Binary(keys[0])} if len(keys) == 1 else {"k": {"$in": [Binary(k) for k in keys]}}
        docs = await self.entries.find(query, {"owner": 1, "k": 1, "gen": 1}).to_list()
        return [(d["owner"], bytes(d["k"]), d.get("gen")) for d in docs]

    async def set_match(
        self,
        keys: Sequence[bytes],
        user_id: str | None,
        only_owners: Iterable[str] | None = None,
        previous: str | None = None,
    ) -> None:
        query: dict[str, Any] = {"k": {"$in": [Binary(k) for k in keys]}}
        if only_owners is not None:
            query["owner"] = {"$in": list(only_owners)}
        if previous is not None:
            query["match"] = previous
        await self.entries.update_many(query, {"$set": {"match": user_id}})

    async def matched_users(self, owner: str) -> list[str]:
        docs = await self.entries.find(
            {"_id": {"$gte": f"{owner}|", "$lt": f"{owner}}}"}, "match": {"$ne": None}}, {"match": 1}
        ).to_list()
        return list(dict.fromkeys(d["match"] for d in docs))

    async def drop_generations_below(self, gen: int) -> int:
        """Forget hash-only entries of retired peppers: they can never be matched again."""
        result = await self.entries.delete_many({"gen": {"$ne": None, "$lt": gen}})
        return result.deleted_count

    # ------------------------------------------------------------------ pairs
    async def get_pair(self, x: str, y: str) -> Pair:
        doc = await self.pairs.find_one({"_id": pair_key(x, y)})
        return _pair_from(doc) if doc is not None else Pair.new(x, y)

    async def save_pair(self, before: Pair, after: Pair, events: Sequence[PairEvent], stage: StageEvent) -> None:
        """Write the pair and stage its events in one transaction; Conflict if someone else wrote first."""

        async def work(session: AsyncClientSession) -> None:
            doc = _pair_doc(after)
            if before.version == 0:
                try:
                    await self.pairs.insert_one(doc, session=session)
                except DuplicateKeyError:
                    raise Conflict("relationship changed concurrently") from None
            else:
                result = await self.pairs.replace_one(
                    {"_id": after.key, "version": before.version}, doc, session=session
                )
                if result.matched_count == 0:
                    raise Conflict("relationship changed concurrently")
            for event in events:
                await stage(session, event)

        await in_transaction(self._client, work)

    async def pairs_of(self, user: str, query: dict[str, Any]) -> list[Pair]:
        docs = await self.pairs.find({"$or": [{"a": user, **query}, {"b": user, **query}]}).to_list()
        return [_pair_from(d) for d in docs]

    async def friends_of(self, user: str) -> dict[str, int]:
        """Friend -> friends since (ms)."""
        return {p.other(user): p.friends_since_ms for p in await self.pairs_of(user, {"friends": True})}

    async def friendships_among(self, users: Sequence[str]) -> list[tuple[str, str]]:
        if not users:
            return []
        docs = await self.pairs.find(
            {"friends": True, "$or": [{"a": {"$in": list(users)}}, {"b": {"$in": list(users)}}]}, {"a": 1, "b": 1}
        ).to_list()
        return [(d["a"], d["b"]) for d in docs]

    async def blocked_with(self, user: str) -> set[str]:
        """Everyone `user` blocks or is blocked by."""
        return {p.other(user) for p in await self.pairs_of(user, {"blocked": True})}

    # ------------------------------------------------------------------ suggestions
    async def add_suggestions(self, pairs: Iterable[tuple[str, str]], now_ms: int) -> None:
        ops = [
            UpdateOne(
                {"_id": f"{owner}|{subject}"},
                {"$setOnInsert": {"owner": owner, "subject": subject, "created_at_ms": now_ms}},
                upsert=True,
            )
            for owner, subject in pairs
        ]
        if ops:
            await self.suggestions.bulk_write(ops, ordered=False)

    async def suggestions_of(self, owner: str) -> list[tuple[str, int]]:
        docs = await self.suggestions.find({"owner": owner}).sort("created_at_ms", -1).to_list()
        return [(d["subject"], d["created_at_ms"]) for d in docs]

    async def delete_suggestion(self, owner: str, subject: str) -> None:
        await self.suggestions.delete_one({"_id": f"{owner}|{subject}"})

    # ------------------------------------------------------------------ peppers
    async def current_pepper(self) -> tuple[int, str, int] | None:
        doc = await self.peppers.find_one({}, sort=[("_id", -1)])
        return None if doc is None else (doc["_id"], doc["pepper"], doc["created_at_ms"])

    async def pepper_generations(self, keep: int) -> list[tuple[int, str]]:
        docs = await self.peppers.find({}).sort("_id", -1).limit(keep).to_list()
        return [(d["_id"], d["pepper"]) for d in docs]

    async def add_pepper(self, after_gen: int, now_ms: int) -> tuple[int, str]:
        """Start generation `after_gen + 1`; if another replica got there first, theirs wins."""
        pepper = secrets.token_urlsafe(24)
        with contextlib.suppress(DuplicateKeyError):
            await self.peppers.insert_one({"_id": after_gen + 1, "pepper": pepper, "created_at_ms": now_ms})
        current = await self.current_pepper()
        assert current is not None
        return current[0], current[1]


def overlap(since: datetime, seconds: float) -> datetime:
    """Polls re-read a short window, so a write committed slightly out of clock order is not missed."""
    return since - timedelta(seconds=seconds)
