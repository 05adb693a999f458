"""An in-memory ContactsRepository for unit tests of contacts' use-case layer (services.contacts.logic)."""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from plumbing.domain_errors import Conflict
from services.contacts.core import Discoverability, Pair, PairEvent, pair_key
from services.contacts.store import Book, BookEntry, Budget, StageEvent


class FakeContactsStore:
    def __init__(self) -> None:
        self.phones: dict[str, tuple[str | None, int]] = {}  # number -> (user, event_ms)
        self.profiles: dict[str, dict[str, Any]] = {}
        self.books: dict[str, Book] = {}
        self.entries: dict[tuple[str, bytes], BookEntry] = {}
        self.budgets: dict[str, Budget] = {}
        self.pairs: dict[str, Pair] = {}
        self.suggestions: dict[tuple[str, str], int] = {}
        self.peppers: dict[int, tuple[str, int]] = {}
        self.staged: list[PairEvent] = []
        self.journals: dict[str, dict[str, Any]] = {}  # owner -> last committed journal
        self.rows_gate: asyncio.Event | None = None

    # phones and profiles
    async def bind_phone(self, e164: str, user_id: str, event_ms: int) -> bool:
        return self._set_phone(e164, user_id, event_ms)

    async def unbind_phone(self, e164: str, user_id: str, event_ms: int) -> bool:
        if self.phones.get(e164, (None, 0))[0] not in (user_id, None):
            return False
        return self._set_phone(e164, None, event_ms)

    def _set_phone(self, e164: str, user_id: str | None, event_ms: int) -> bool:
        if e164 in self.phones and self.phones[e164][1] > event_ms:
            return False
        self.phones[e164] = (user_id, event_ms)
        return True

    async def numbers_of(self, user_ids: Iterable[str]) -> dict[str, list[str]]:
        wanted = set(user_ids)
        found: dict[str, list[str]] = {}
        for number, (user, _) in self.phones.items():
            if user in wanted:
                found.setdefault(user, []).append(number)
        return found

    async def all_phones(self) -> AsyncIterator[tuple[str, str]]:
        for number, (user, _) in list(self.phones.items()):
            if user is not None:
                yield number, user

    async def phones_changed_since(self, since: datetime) -> list[tuple[str, str | None, int]]:
        return [(n, u, ms) for n, (u, ms) in self.phones.items()]

    async def upsert_profile(
        self,
        user_id: str,
        display_name: str | None = None,
        discoverability: Discoverability | None = None,
        deactivated: bool | None = None,
    ) -> dict[str, Any]:
        doc = self.profiles.setdefault(user_id, {"_id": user_id, "v": 0})
        for field, value in (
            ("display_name", display_name),
            ("deactivated", deactivated),
            ("discoverability", discoverability.value if discoverability else None),
        ):
            if value is not None:
                doc[field] = value
        doc["v"] += 1
        doc["updated_at"] = datetime.now(UTC)
        return dict(doc)

    async def get_profile(self, user_id: str) -> dict[str, Any] | None:
        doc = self.profiles.get(user_id)
        return dict(doc) if doc else None

    async def all_profiles(self) -> AsyncIterator[dict[str, Any]]:
        for doc in list(self.profiles.values()):
            yield dict(doc)

    async def profiles_changed_since(self, since: datetime) -> list[dict[str, Any]]:
        return [dict(doc) for doc in self.profiles.values()]

    # books and budgets
    async def load_book(self, owner: str) -> Book:
        return self.books.get(owner, Book(set(), set(), 0))

    async def save_book(
        self,
        owner: str,
        expected_rev: int,
        keys_after: set[bytes],
        seen_after: set[bytes],
        added: Sequence[BookEntry],
        removed: Iterable[bytes],
        now_ms: int,
    ) -> dict[str, Any]:
        book = self.books.get(owner, Book(set(), set(), 0))
        if book.rev != expected_rev or book.pending_at_ms is not None:
            raise Conflict("address book changed concurrently")
        self.books[owner] = Book(set(keys_after), set(seen_after), expected_rev + 1, pending_at_ms=now_ms)
        self.journals[owner] = {"rev": expected_rev + 1, "remove": list(removed), "add": list(added)}
        return self.journals[owner]

    async def apply_journal(self, owner: str, journal: dict[str, Any]) -> None:
        if self.rows_gate is not None:
            await self.rows_gate.wait()  # a slow store: the rows are written only once the test opens it
        for key in journal["remove"]:
            self.entries.pop((owner, key), None)
        for entry in journal["add"]:
            self.entries[(owner, entry.key)] = entry
        book = self.books[owner]
        if book.rev == journal["rev"]:
            self.books[owner] = replace(book, pending_at_ms=None)

    async def pending_matches(self, owner: str) -> list[str]:
        if owner not in self.books or self.books[owner].pending_at_ms is None:
            return []
        return [e.match for e in self.journals[owner]["add"] if e.match]

    async def wait_or_take_over(self, owner: str, book: Book, now_ms: int) -> None:
        await asyncio.sleep(0.001)

    async def add_book_keys(self, owner: str, entries: Sequence[BookEntry], now_ms: int) -> None:
        book = await self.load_book(owner)
        fresh = [e for e in entries if e.key not in book.keys]
        keys = {e.key for e in fresh}
        journal = await self.save_book(owner, book.rev, book.keys | keys, book.seen | keys, fresh, (), now_ms)
        await self.apply_journal(owner, journal)

    async def load_budget(self, key: str) -> Budget:
        return self.budgets.get(key, Budget(key, None, None))

    async def save_budget(self, before: Budget, tokens: float, at_ms: int) -> bool:
        if self.budgets.get(before.key, Budget(before.key, None, None)) != before:
            return False
        self.budgets[before.key] = Budget(before.key, tokens, at_ms)
        return True

    async def holders(self, keys: Sequence[bytes]) -> list[tuple[str, bytes, int | None]]:
        wanted = set(keys)
        return [(owner, key, e.gen) for (owner, key), e in self.entries.items() if key in wanted]

    async def set_match(
        self,
        keys: Sequence[bytes],
        user_id: str | None,
        only_owners: Iterable[str] | None = None,
        previous: str | None = None,
    ) -> None:
        owners = set(only_owners) if only_owners is not None else None
        for (owner, key), entry in list(self.entries.items()):
            if key in keys and (owners is None or owner in owners) and (previous is None or entry.match == previous):
                self.entries[(owner, key)] = replace(entry, match=user_id)

    async def matched_users(self, owner: str) -> list[str]:
        return list(dict.fromkeys(e.match for (o, _), e in self.entries.items() if o == owner and e.match))

    async def drop_generations_below(self, gen: int) -> int:
        old = [k for k, e in self.entries.items() if e.gen is not None and e.gen < gen]
        for k in old:
            del self.entries[k]
        return len(old)

    # pairs and suggestions
    async def get_pair(self, x: str, y: str) -> Pair:
        return self.pairs.get(pair_key(x, y)) or Pair.new(x, y)

    async def save_pair(self, before: Pair, after: Pair, events: Sequence[PairEvent], stage: StageEvent) -> None:
        if self.pairs.get(after.key, Pair.new(after.a, after.b)).version != before.version:
            raise Conflict("relationship changed concurrently")
        self.pairs[after.key] = after
        self.staged.extend(events)

    async def pairs_of(self, user: str, query: dict[str, Any]) -> list[Pair]:
        def fits(pair: Pair) -> bool:
            fields = {
                "friends": pair.friends,
                "blocked": pair.blocked,
                "request_from": pair.request_from,
                "request_to": pair.request_to(),
            }
            return all(fields[k] == v for k, v in query.items())

        return [p for p in self.pairs.values() if user in (p.a, p.b) and fits(p)]

    async def friends_of(self, user: str) -> dict[str, int]:
        return {p.other(user): p.friends_since_ms for p in await self.pairs_of(user, {"friends": True})}

    async def friendships_among(self, users: Sequence[str]) -> list[tuple[str, str]]:
        return [(p.a, p.b) for p in self.pairs.values() if p.friends and (p.a in users or p.b in users)]

    async def blocked_with(self, user: str) -> set[str]:
        return {p.other(user) for p in await self.pairs_of(user, {"blocked": True})}

    async def add_suggestions(self, pairs: Iterable[tuple[str, str]], now_ms: int) -> None:
        for pair in pairs:
            self.suggestions.setdefault(pair, now_ms)

    async def suggestions_of(self, owner: str) -> list[tuple[str, int]]:
        return sorted(((s, at) for (o, s), at in self.suggestions.items() if o == owner), key=lambda r: -r[1])

    async def delete_suggestion(self, owner: str, subject: str) -> None:
        self.suggestions.pop((owner, subject), None)

    # peppers
    async def current_pepper(self) -> tuple[int, str, int] | None:
        if not self.peppers:
            return None
        gen = max(self.peppers)
        return gen, *self.peppers[gen]

    async def pepper_generations(self, keep: int) -> list[tuple[int, str]]:
        return [(g, self.peppers[g][0]) for g in sorted(self.peppers, reverse=True)[:keep]]

    async def add_pepper(self, after_gen: int, now_ms: int) -> tuple[int, str]:
        self.peppers.setdefault(after_gen + 1, (secrets.token_urlsafe(24), now_ms))
        current = await self.current_pepper()
        assert current is not None
        return current[0], current[1]
