"""Contacts' address books: uploads, hash lookups, the budgets that pay for new numbers, matches."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from plumbing.domain_errors import (
    Conflict,
    DomainError,
    Errcode,
    ErrorKind,
    forbidden,
    invalid,
    too_large,
)
from services.contacts import core
from services.contacts.base import ContactsBase
from services.contacts.core import (
    HASH_ALGORITHMS,
    MAX_ENTRIES,
    BookChange,
    BudgetPolicy,
    Discoverability,
    decode_lookup_hash,
    plan_book_change,
)
from services.contacts.model import (
    BOOK_ATTEMPTS,
    NO_PHONE,
    NORMALISE_CHUNK,
    BookResult,
    Charge,
    InvalidResult,
    MatchResult,
    Summary,
    check_user_id,
)
from services.contacts.store import BookEntry, Journal

log = logging.getLogger(__name__)


class BookFlows(ContactsBase):
    """Upload and look up address books, charged against per-number and per-address budgets."""

    async def upload(
        self,
        user_id: str,
        replace_all: bool,
        add: Sequence[str],
        remove: Sequence[str],
        region: str,
        client_address: str = "",
    ) -> BookResult:
        check_user_id(user_id)
        self._check_size(add, remove, replace_all)
        region = self.normaliser.region(region)
        number = await self._verified_number(user_id)
        result = BookResult()
        add_keys: dict[bytes, int | None] = {}
        match_of: dict[bytes, str] = {}
        candidates: list[tuple[int, str, str]] = []
        aliases: dict[bytes, bytes] = {}
        known = self.index.numbers
        pepper = self.index.pepper
        for i, raw in enumerate(add):
            if i and i % NORMALISE_CHUNK == 0:
                await asyncio.sleep(0)  # other users' calls are served meanwhile
            n = self.normaliser.normalise(raw, region, known)
            if n.e164 is None:
                result.invalid.append(InvalidResult("add", i, raw, n.reason or "invalid_number"))
                continue
            key = self.keyring.number_key(n.e164)
            add_keys[key] = None
            owner = self.index.owner(n.e164)
            if owner is not None:
                match_of[key] = owner
                candidates.append((i, n.e164, owner))
            elif pepper:
                # Its hash-only key under the current pepper: a later hashed lookup of the same number
                # (which cannot be turned back into the number) is then recognised as uploaded before.
                aliases[key] = self.keyring.hashed_key(pepper, core.lookup_digest(n.e164, pepper))
        remove_keys: list[bytes] = []
        for i, raw in enumerate(remove):
            n = self.normaliser.normalise(raw, region, known)
            if n.e164 is None:
                result.invalid.append(InvalidResult("remove", i, raw, n.reason or "invalid_number"))
            else:
                remove_keys.append(self.keyring.number_key(n.e164))
        charge = Charge(number, client_address, aliases)
        await self._finish(user_id, result, add_keys, match_of, remove_keys, replace_all, candidates, charge)
        return result

    async def lookup_hashes(
        self,
        user_id: str,
        algorithm: str,
        pepper: str,
        addresses: Sequence[str],
        remove: Sequence[str],
        replace_all: bool,
        client_address: str = "",
    ) -> BookResult:
        check_user_id(user_id)
        if algorithm not in HASH_ALGORITHMS:
            raise invalid(f"unsupported algorithm {algorithm!r}; supported: {', '.join(HASH_ALGORITHMS)}")
        self._check_size(addresses, remove, replace_all)
        current = self.index.pepper
        if pepper != current:
            raise DomainError(Errcode.INVALID_PEPPER, "the pepper is not current; hash again with lookup_pepper")
        number = await self._verified_number(user_id)
        result = BookResult()
        add_keys: dict[bytes, int | None] = {}
        match_of: dict[bytes, str] = {}
        candidates: list[tuple[int, str, str]] = []
        for i, value in enumerate(addresses):
            digest = decode_lookup_hash(value)
            if digest is None:
                result.invalid.append(InvalidResult("add", i, value[:64], "bad_hash"))
                continue
            e164 = self.index.resolve_hash(digest)
            owner = self.index.owner(e164) if e164 is not None else None
            if e164 is not None and owner is not None:
                key = self.keyring.number_key(e164)
                add_keys[key] = None
                match_of[key] = owner
                candidates.append((i, value, owner))
            else:
                add_keys[self.keyring.hashed_key(current, digest)] = self._pepper_gen
        remove_keys: list[bytes] = []
        for i, value in enumerate(remove):
            digest = decode_lookup_hash(value)
            if digest is None:
                result.invalid.append(InvalidResult("remove", i, value[:64], "bad_hash"))
                continue
            e164 = self.index.resolve_hash(digest)
            if e164 is not None:
                remove_keys.append(self.keyring.number_key(e164))
            remove_keys.append(self.keyring.hashed_key(current, digest))
        charge = Charge(number, client_address, {})
        await self._finish(user_id, result, add_keys, match_of, remove_keys, replace_all, candidates, charge)
        return result

    async def _verified_number(self, user_id: str) -> str:
        """The verified number whose budget this user's uploads are charged to; M_FORBIDDEN without one.

        Accounts are cheap and numbers are not: matching is tied to a verified phone, and the budget
        to the number, so it holds across the number's accounts and re-registrations.
        """
        numbers = (await self.store.numbers_of([user_id])).get(user_id, [])
        if not numbers and self._verified_phones is not None:
            for e164, verified_ms in await self._verified_phones(user_id):
                await self.phone_verified(user_id, e164, verified_ms)
            numbers = (await self.store.numbers_of([user_id])).get(user_id, [])
        if not numbers:
            raise forbidden(NO_PHONE)
        return min(numbers)

    @staticmethod
    def _check_size(add: Sequence[str], remove: Sequence[str], replace_all: bool) -> None:
        if len(add) + len(remove) > MAX_ENTRIES:
            raise too_large(f"at most {MAX_ENTRIES} entries per upload; send the rest incrementally")
        if replace_all and remove:
            raise invalid("a full upload replaces the book; send removals with an incremental sync")

    async def _finish(
        self,
        user_id: str,
        result: BookResult,
        add_keys: dict[bytes, int | None],
        match_of: dict[bytes, str],
        remove_keys: list[bytes],
        replace_all: bool,
        candidates: list[tuple[int, str, str]],
        charge: Charge,
    ) -> None:
        change, remaining = await self._apply_book(user_id, add_keys, match_of, remove_keys, replace_all, charge)
        result.added, result.removed, result.budget_remaining = len(change.added), len(change.removed), remaining
        visible = await self._visible(user_id, {owner for _, _, owner in candidates})
        result.matches = [
            MatchResult(i, address, owner, self.index.display_name(owner))
            for i, address, owner in candidates
            if owner in visible
        ]
        if change.added and self.index.discoverability(user_id) is Discoverability.MUTUAL:
            # Someone who has my number may see me now that I have theirs.
            holders = await self._holders_of_user(user_id)
            await self._suggest(user_id, holders, only_new_keys=set(change.added))

    async def _apply_book(
        self,
        user_id: str,
        add_keys: dict[bytes, int | None],
        match_of: dict[bytes, str],
        remove_keys: list[bytes],
        replace_all: bool,
        charge: Charge,
    ) -> tuple[BookChange, int]:
        waited_until = time.monotonic() + self.settings.book_wait_seconds
        for _ in range(BOOK_ATTEMPTS):
            book = await self.store.load_book(user_id)
            change = plan_book_change(book.keys, add_keys, remove_keys, replace_all)
            # Only numbers never uploaded before cost anything (a removed and re-added one is free, and
            # so is the hashed form of a number uploaded in plain).
            fresh = [k for k in change.added if k not in book.seen and charge.aliases.get(k) not in book.seen]
            if not change.added and not change.removed:
                return change, await self._budget_left(charge)  # a re-sync of known numbers costs nothing
            if book.pending_at_ms is not None:
                # Another write of this book is still writing its rows. The committed document already
                # says what this write would cost, so a refusal need not wait for them.
                await self._check_affordable(charge, len(fresh))
                if time.monotonic() > waited_until:
                    raise DomainError(
                        Errcode.UNKNOWN,
                        "an earlier change of this address book is still being applied; try again",
                        kind=ErrorKind.UNAVAILABLE,
                        retry_after_ms=1000,
                    )
                await self.store.wait_or_take_over(user_id, book, self._clock())
                continue
            charged = await self._charge(charge, len(fresh))
            entries = [BookEntry(key, gen, match_of.get(key)) for key, gen in change.added.items()]
            aliases = {charge.aliases[k] for k in change.added if k in charge.aliases}
            seen_after = book.seen | change.added.keys() | aliases
            try:
                journal = await self.store.save_book(
                    user_id, book.rev, change.keys_after, seen_after, entries, change.removed, self._clock()
                )
            except Conflict:
                await self._refund(charge, len(fresh))
                continue
            await self._write_entries(user_id, journal)
            return change, int(charged)
        raise Conflict("address book kept changing; try again")

    async def _write_entries(self, owner: str, journal: Journal) -> None:
        """Write a committed journal's rows; answer when done or after `book_inline_seconds`.

        The book document is the truth for its owner (matches, friend requests and the next upload
        read it), so only "who has this number" for other users trails a big upload, by seconds.
        The rows are finished even if the caller gives up (deadline, client gone).
        """
        task = asyncio.ensure_future(self.store.apply_journal(owner, journal))
        self._entry_writes.add(task)
        task.add_done_callback(self._entry_write_done)
        done, _ = await asyncio.wait({task}, timeout=self.settings.book_inline_seconds)
        if task in done:
            task.result()  # a store error while the caller still waits is the caller's error

    def _entry_write_done(self, task: asyncio.Task[None]) -> None:
        self._entry_writes.discard(task)
        if not task.cancelled() and task.exception() is not None:
            # The journal stays in the book document; the next write of the book takes it over.
            log.warning("writing address-book rows failed", exc_info=task.exception())

    async def _check_affordable(self, charge: Charge, cost: int) -> None:
        """M_LIMIT_EXCEEDED if either budget cannot pay `cost` now (nothing is taken)."""
        for key, policy in self._budgets(charge):
            budget = await self.store.load_budget(key)
            policy.charge(policy.available(budget.tokens, budget.tokens_at_ms, self._clock()), cost)

    def _budgets(self, charge: Charge) -> list[tuple[str, BudgetPolicy]]:
        budgets = [(f"phone:{charge.number}", self.settings.budget)]
        if charge.client_address and self.settings.address_budget is not None:
            budgets.append((f"addr:{charge.client_address}", self.settings.address_budget))
        return budgets

    async def _budget_left(self, charge: Charge) -> int:
        key, policy = self._budgets(charge)[0]
        budget = await self.store.load_budget(key)
        return int(policy.available(budget.tokens, budget.tokens_at_ms, self._clock()))

    async def _charge(self, charge: Charge, cost: int) -> float:
        """Take `cost` from the number's budget and the address's ceiling (all or nothing);
        the tokens left on the number's budget. M_LIMIT_EXCEEDED if either cannot pay."""
        left: list[float] = []
        paid: list[tuple[str, BudgetPolicy]] = []
        try:
            for key, policy in self._budgets(charge):
                left.append(await self._take(key, policy, cost))
                paid.append((key, policy))
        except DomainError as error:
            if error.kind is not ErrorKind.RATE_LIMITED:
                raise
            for key, policy in paid:
                await self._give_back(key, policy, cost)
            raise
        return left[0]

    async def _take(self, key: str, policy: BudgetPolicy, cost: int) -> float:
        for _ in range(BOOK_ATTEMPTS):
            budget = await self.store.load_budget(key)
            now = self._clock()
            available = policy.available(budget.tokens, budget.tokens_at_ms, now)
            left = policy.charge(available, cost)
            if cost == 0 or await self.store.save_budget(budget, left, now):
                return left
        raise Conflict("the budget kept changing; try again")

    async def _give_back(self, key: str, policy: BudgetPolicy, cost: int) -> None:
        if cost == 0:
            return
        for _ in range(BOOK_ATTEMPTS):
            budget = await self.store.load_budget(key)
            now = self._clock()
            available = policy.available(budget.tokens, budget.tokens_at_ms, now)
            if await self.store.save_budget(budget, min(float(policy.initial), available + cost), now):
                return

    async def _refund(self, charge: Charge, cost: int) -> None:
        for key, policy in self._budgets(charge):
            await self._give_back(key, policy, cost)

    async def list_matches(self, user_id: str) -> list[Summary]:
        check_user_id(user_id)
        candidates = await self.store.matched_users(user_id)
        book = await self.store.load_book(user_id)
        if book.pending_at_ms is not None:  # rows of the last upload still being written
            candidates = list(dict.fromkeys([*candidates, *await self.store.pending_matches(user_id)]))
        if not candidates:
            return []
        numbers = await self.store.numbers_of(candidates)
        still = {c for c in candidates if any(self.keyring.number_key(n) in book.keys for n in numbers.get(c, []))}
        visible = await self._visible(user_id, still)
        return sorted((Summary(c, self.index.display_name(c)) for c in visible), key=lambda s: s.display_name.lower())
