"""The contacts service's use cases: the rules of `core` applied over the store and the index.

api.py translates gRPC to these calls; events.py feeds auth's events into them. Every write that
changes the friend graph goes through `ContactsStore.save_pair`, which stages the matching
events in the same transaction (outbox).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

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
from services.contacts.core import (
    HASH_ALGORITHMS,
    MAX_ENTRIES,
    BookChange,
    BudgetPolicy,
    Discoverability,
    Keyring,
    Normaliser,
    Pair,
    PairEvent,
    PhoneIndex,
    Transition,
    decode_lookup_hash,
    may_reveal,
    plan_book_change,
)
from services.contacts.store import Book, BookEntry, Budget, StageEvent, overlap

log = logging.getLogger(__name__)


class ContactsRepository(Protocol):
    """What the use cases need from storage: `store.ContactsStore` over Mongo, or a fake in unit tests."""

    # phone index projection and profiles
    async def bind_phone(self, e164: str, user_id: str, event_ms: int) -> bool: ...
    async def unbind_phone(self, e164: str, user_id: str, event_ms: int) -> bool: ...
    async def numbers_of(self, user_ids: Iterable[str]) -> dict[str, list[str]]: ...
    def all_phones(self) -> AsyncIterator[tuple[str, str]]: ...
    async def phones_changed_since(self, since: datetime) -> list[tuple[str, str | None, int]]: ...
    async def upsert_profile(
        self,
        user_id: str,
        display_name: str | None = None,
        discoverability: Discoverability | None = None,
        deactivated: bool | None = None,
    ) -> dict[str, Any]: ...
    async def get_profile(self, user_id: str) -> dict[str, Any] | None: ...
    def all_profiles(self) -> AsyncIterator[dict[str, Any]]: ...
    async def profiles_changed_since(self, since: datetime) -> list[dict[str, Any]]: ...
    # address books and budgets
    async def load_book(self, owner: str) -> Book: ...
    async def save_book(
        self,
        owner: str,
        expected_rev: int,
        keys_after: set[bytes],
        seen_after: set[bytes],
        added: Sequence[BookEntry],
        removed: Iterable[bytes],
        now_ms: int,
    ) -> None: ...
    async def wait_or_take_over(self, owner: str, book: Book, now_ms: int) -> None: ...
    async def add_book_keys(self, owner: str, entries: Sequence[BookEntry], now_ms: int) -> None: ...
    async def load_budget(self, key: str) -> Budget: ...
    async def save_budget(self, before: Budget, tokens: float, at_ms: int) -> bool: ...
    async def holders(self, keys: Sequence[bytes]) -> list[tuple[str, bytes, int | None]]: ...
    async def has_entries(self, owner: str, keys: Sequence[bytes]) -> bool: ...
    async def set_match(
        self,
        keys: Sequence[bytes],
        user_id: str | None,
        only_owners: Iterable[str] | None = None,
        previous: str | None = None,
    ) -> None: ...
    async def matched_users(self, owner: str) -> list[str]: ...
    async def drop_generations_below(self, gen: int) -> int: ...
    # pairs and suggestions
    async def get_pair(self, x: str, y: str) -> Pair: ...
    async def save_pair(self, before: Pair, after: Pair, events: Sequence[PairEvent], stage: StageEvent) -> None: ...
    async def pairs_of(self, user: str, query: dict[str, Any]) -> list[Pair]: ...
    async def friends_of(self, user: str) -> dict[str, int]: ...
    async def friendships_among(self, users: Sequence[str]) -> list[tuple[str, str]]: ...
    async def blocked_with(self, user: str) -> set[str]: ...
    async def add_suggestions(self, pairs: Iterable[tuple[str, str]], now_ms: int) -> None: ...
    async def suggestions_of(self, owner: str) -> list[tuple[str, int]]: ...
    async def delete_suggestion(self, owner: str, subject: str) -> None: ...
    # lookup peppers
    async def current_pepper(self) -> tuple[int, str, int] | None: ...
    async def pepper_generations(self, keep: int) -> list[tuple[int, str]]: ...
    async def add_pepper(self, after_gen: int, now_ms: int) -> tuple[int, str]: ...


Clock = Callable[[], int]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Settings:
    budget: BudgetPolicy  # per verified phone number, whichever of its accounts uploads
    pepper_rotate_seconds: float
    pepper_keep: int  # generations whose hash-only entries are kept, so late registrations still match
    poll_seconds: float = 0.25
    address_budget: BudgetPolicy | None = None  # per client address, over all its numbers and accounts


# The verified numbers auth holds for a user, with when each was verified: asked when contacts has
# not yet seen the PhoneVerified event (it is on its way), so an upload right after verifying works.
VerifiedPhones = Callable[[str], Awaitable[list[tuple[str, int]]]]

NO_PHONE = (
    "contact matching needs a verified phone number on your account: verify one "
    "(POST /_matrix/client/v3/account/3pid/msisdn/requestToken, then submit_token and 3pid/add)"
)


@dataclass(frozen=True)
class MatchResult:
    index: int
    address: str
    user_id: str
    display_name: str


@dataclass(frozen=True)
class InvalidResult:
    list: str
    index: int
    value: str
    reason: str


@dataclass
class BookResult:
    matches: list[MatchResult] = field(default_factory=list)
    invalid: list[InvalidResult] = field(default_factory=list)
    added: int = 0
    removed: int = 0
    budget_remaining: int = 0


@dataclass(frozen=True)
class Summary:
    user_id: str
    display_name: str


def _check_user_id(user_id: str, what: str = "user_id") -> None:
    if not user_id.startswith("@") or ":" not in user_id or len(user_id) > 255:
        raise invalid(f"{what} must be a full Matrix user id such as @alice:example.org")


@dataclass(frozen=True)
class Charge:
    """Who pays for an upload's new numbers: the uploader's verified number and client address."""

    number: str
    client_address: str
    aliases: dict[bytes, bytes]  # plain key -> its hash-only key (either one uploaded before is free)


BOOK_ATTEMPTS = 200  # with 50 ms waits while another write of the same book applies: about 10 s


class ContactsLogic:
    def __init__(
        self,
        store: ContactsRepository,
        index: PhoneIndex,
        keyring: Keyring,
        normaliser: Normaliser,
        settings: Settings,
        stage: StageEvent,
        after_commit: Callable[[], None],
        clock: Clock = now_ms,
        verified_phones: VerifiedPhones | None = None,
    ) -> None:
        self.store = store
        self.index = index
        self.keyring = keyring
        self.normaliser = normaliser
        self.settings = settings
        self._stage = stage
        self._after_commit = after_commit
        self._clock = clock
        self._verified_phones = verified_phones
        self._pepper_gen = 0
        self._pepper_created_ms = 0
        self._generations: list[tuple[int, str]] = []
        self._phones_seen = datetime.now(UTC)
        self._profiles_seen = datetime.now(UTC)
        self._pepper_lock = asyncio.Lock()

    # ================================================================== start-up and freshness
    async def load(self) -> None:
        """Fill the in-memory index from our own collections, then build the hash map once."""
        started = time.monotonic()
        self._phones_seen = self._profiles_seen = datetime.now(UTC)
        count = 0
        async for e164, user_id in self.store.all_phones():
            self.index.bind(e164, user_id)
            count += 1
            if count % 50_000 == 0:
                await asyncio.sleep(0)
        async for doc in self.store.all_profiles():
            # Not remembered as recent versions: a million of them would be held for nothing (the
            # refresh only ever reads documents at least as new as these).
            self._apply_profile_doc(doc, remember=False)
        current = await self.store.current_pepper()
        if current is None:
            await self.store.add_pepper(0, self._clock())
            current = await self.store.current_pepper()
        assert current is not None
        await self._switch_pepper(*current)
        log.info("phone index loaded", extra={"numbers": count, "seconds": round(time.monotonic() - started, 2)})

    def _apply_profile_doc(self, doc: dict[str, Any], remember: bool = True) -> None:
        """Apply a whole profile document, unless this replica already applied a newer version."""
        if remember and not self.index.profile_versions.admit(str(doc["_id"]), int(doc.get("v") or 0)):
            return
        setting = doc.get("discoverability")
        self.index.set_profile(
            str(doc["_id"]),
            display_name=str(doc.get("display_name") or ""),
            discoverability=Discoverability(setting) if isinstance(setting, str) else None,
            deactivated=bool(doc.get("deactivated", False)),
        )

    async def _switch_pepper(self, gen: int, pepper: str, created_ms: int) -> None:
        async with self._pepper_lock:
            if gen <= self._pepper_gen:
                return
            await self.index.use_pepper(pepper)
            self._pepper_gen, self._pepper_created_ms = gen, created_ms
            self._generations = await self.store.pepper_generations(self.settings.pepper_keep)
        log.info("lookup pepper in use", extra={"generation": gen})

    async def refresh_once(self) -> None:
        """Apply what other replicas (or our own consumer) wrote; start a new pepper when due."""
        phones_since, self._phones_seen = self._phones_seen, datetime.now(UTC)
        for e164, user_id, event_ms in await self.store.phones_changed_since(overlap(phones_since, 2.0)):
            if not self.index.phone_versions.admit(e164, event_ms):
                continue  # read before a newer change this replica applied meanwhile
            if user_id is None:
                self.index.unbind(e164)
            elif self.index.owner(e164) != user_id:
                self.index.bind(e164, user_id)
        profiles_since, self._profiles_seen = self._profiles_seen, datetime.now(UTC)
        for doc in await self.store.profiles_changed_since(overlap(profiles_since, 2.0)):
            self._apply_profile_doc(doc)
        current = await self.store.current_pepper()
        if current is not None and current[0] > self._pepper_gen:
            await self._switch_pepper(*current)
        elif self._clock() - self._pepper_created_ms >= self.settings.pepper_rotate_seconds * 1000:
            await self.rotate_pepper()

    async def run_refresh(self) -> None:
        while True:
            try:
                await self.refresh_once()
            except Exception:
                log.warning("index refresh failed; retrying", exc_info=True)
            await asyncio.sleep(self.settings.poll_seconds)

    async def rotate_pepper(self) -> str:
        gen, _ = await self.store.add_pepper(self._pepper_gen, self._clock())
        current = await self.store.current_pepper()
        assert current is not None
        await self._switch_pepper(*current)
        dropped = await self.store.drop_generations_below(gen - self.settings.pepper_keep + 1)
        log.info("lookup pepper rotated", extra={"generation": gen, "dropped_hash_entries": dropped})
        return self.index.pepper

    def hash_details(self) -> tuple[str, tuple[str, ...]]:
        return self.index.pepper, HASH_ALGORITHMS

    # ================================================================== auth events
    async def user_registered(self, user_id: str, display_name: str) -> None:
        self._apply_profile_doc(await self.store.upsert_profile(user_id, display_name=display_name))

    async def profile_changed(self, user_id: str, display_name: str) -> None:
        self._apply_profile_doc(await self.store.upsert_profile(user_id, display_name=display_name))

    async def phone_verified(self, user_id: str, e164: str, at_ms: int) -> None:
        if not core.is_e164(e164):
            log.error("ignoring PhoneVerified with a number that is not E.164", extra={"user_id": user_id})
            return
        if not await self.store.bind_phone(e164, user_id, at_ms):
            return  # a newer event about this number was applied already
        if self.index.phone_versions.admit(e164, at_ms):
            self.index.bind(e164, user_id)
        plain = self.keyring.number_key(e164)
        hashed = [self.keyring.hashed_key(p, core.lookup_digest(e164, p)) for _, p in self._generations]
        found = await self.store.holders([plain, *hashed])
        with_plain = {owner for owner, key, _ in found if key == plain}
        # People who uploaded only the hash now get the number-keyed entry, so matching,
        # mutual discoverability and free re-sync all see it.
        for owner in {owner for owner, key, _ in found if key != plain} - with_plain:
            await self.store.add_book_keys(owner, [BookEntry(plain, None, user_id)], self._clock())
        await self.store.set_match([plain], user_id)
        holders = {owner for owner, _, _ in found} - {user_id}
        await self._suggest(user_id, holders, only_new_keys=None)

    async def phone_unbound(self, user_id: str, e164: str, at_ms: int) -> None:
        if not core.is_e164(e164) or not await self.store.unbind_phone(e164, user_id, at_ms):
            return
        if self.index.phone_versions.admit(e164, at_ms):
            self.index.unbind(e164, user_id)
        await self.store.set_match([self.keyring.number_key(e164)], None, previous=user_id)

    async def account_deactivated(self, user_id: str, at_ms: int) -> None:
        for e164 in (await self.store.numbers_of([user_id])).get(user_id, []):
            await self.phone_unbound(user_id, e164, at_ms)
        self._apply_profile_doc(await self.store.upsert_profile(user_id, deactivated=True))

    # ================================================================== address books
    async def upload(
        self,
        user_id: str,
        replace_all: bool,
        add: Sequence[str],
        remove: Sequence[str],
        region: str,
        client_address: str = "",
    ) -> BookResult:
        _check_user_id(user_id)
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
        _check_user_id(user_id)
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
        for _ in range(BOOK_ATTEMPTS):
            book = await self.store.load_book(user_id)
            if book.pending_at_ms is not None:  # another write of this book is applying its entries
                await self.store.wait_or_take_over(user_id, book, self._clock())
                continue
            change = plan_book_change(book.keys, add_keys, remove_keys, replace_all)
            # Only numbers never uploaded before cost anything (a removed and re-added one is free, and
            # so is the hashed form of a number uploaded in plain).
            fresh = [k for k in change.added if k not in book.seen and charge.aliases.get(k) not in book.seen]
            if not change.added and not change.removed:
                return change, await self._budget_left(charge)  # a re-sync of known numbers costs nothing
            charged = await self._charge(charge, len(fresh))
            entries = [BookEntry(key, gen, match_of.get(key)) for key, gen in change.added.items()]
            aliases = {charge.aliases[k] for k in change.added if k in charge.aliases}
            seen_after = book.seen | change.added.keys() | aliases
            try:
                await self.store.save_book(
                    user_id, book.rev, change.keys_after, seen_after, entries, change.removed, self._clock()
                )
            except Conflict:
                await self._refund(charge, len(fresh))
                continue
            return change, int(charged)
        raise Conflict("address book kept changing; try again")

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

    async def _holders_of_user(self, user_id: str) -> set[str]:
        """Everyone whose address book holds one of `user_id`'s numbers."""
        numbers = (await self.store.numbers_of([user_id])).get(user_id, [])
        if not numbers:
            return set()
        found = await self.store.holders([self.keyring.number_key(n) for n in numbers])
        return {owner for owner, _, _ in found} - {user_id}

    async def _visible(self, viewer: str, candidates: set[str]) -> set[str]:
        """The candidates (registered numbers in the viewer's book) that may be revealed to the viewer."""
        if not candidates:
            return set()
        blocked = await self.store.blocked_with(viewer)
        mutual = any(self.index.discoverability(c) is Discoverability.MUTUAL for c in candidates)
        have_viewer = await self._holders_of_user(viewer) if mutual else set()
        return {
            c
            for c in candidates
            if self.index.is_active(c)
            and may_reveal(self.index.discoverability(c), c in have_viewer, c in blocked, c == viewer)
        }

    async def _suggest(self, subject: str, holders: set[str], only_new_keys: set[bytes] | None) -> None:
        """Suggest `subject` to those `holders` (who have subject's number) who may now see them.

        `only_new_keys`: after an upload by `subject`, only holders whose number was just added
        (those who could already see subject saw them as a match).
        """
        setting = self.index.discoverability(subject)
        holders = {h for h in holders if h != subject and self.index.is_active(h)}
        if not holders or setting is Discoverability.NOBODY:
            return
        if setting is Discoverability.MUTUAL or only_new_keys is not None:
            book: Book = await self.store.load_book(subject)
            numbers = await self.store.numbers_of(holders)
            keys = only_new_keys if only_new_keys is not None else book.keys
            holders = {h for h in holders if any(self.keyring.number_key(n) in keys for n in numbers.get(h, []))}
        if not holders:
            return
        blocked = await self.store.blocked_with(subject)
        friends = await self.store.friends_of(subject)
        await self.store.add_suggestions(
            [(h, subject) for h in holders if h not in blocked and h not in friends], self._clock()
        )

    async def list_matches(self, user_id: str) -> list[Summary]:
        _check_user_id(user_id)
        candidates = await self.store.matched_users(user_id)
        if not candidates:
            return []
        book = await self.store.load_book(user_id)
        numbers = await self.store.numbers_of(candidates)
        still = {c for c in candidates if any(self.keyring.number_key(n) in book.keys for n in numbers.get(c, []))}
        visible = await self._visible(user_id, still)
        return sorted((Summary(c, self.index.display_name(c)) for c in visible), key=lambda s: s.display_name.lower())

    # ================================================================== discoverability, suggestions, directory
    async def get_discoverability(self, user_id: str) -> Discoverability:
        _check_user_id(user_id)
        # From the store: the user's own read sees their write whichever replica took it.
        doc = await self.store.get_profile(user_id)
        if doc is not None:
            self._apply_profile_doc(doc)
        return self.index.discoverability(user_id)

    async def set_discoverability(self, user_id: str, value: Discoverability) -> Discoverability:
        _check_user_id(user_id)
        before = self.index.discoverability(user_id)
        # Applied here before answering (versioned, so a poll that read the old document cannot undo
        # it): matching on this replica reflects the change as soon as the client hears 200.
        self._apply_profile_doc(await self.store.upsert_profile(user_id, discoverability=value))
        opened = (before, value) in {
            (Discoverability.NOBODY, Discoverability.MUTUAL),
            (Discoverability.NOBODY, Discoverability.EVERYONE),
            (Discoverability.MUTUAL, Discoverability.EVERYONE),
        }
        if opened:
            await self._suggest(user_id, await self._holders_of_user(user_id), only_new_keys=None)
        return value

    async def list_suggestions(self, user_id: str) -> list[tuple[Summary, int]]:
        _check_user_id(user_id)
        stored = await self.store.suggestions_of(user_id)
        if not stored:
            return []
        friends = await self.store.friends_of(user_id)
        visible = await self._visible(user_id, {s for s, _ in stored if s not in friends})
        return [(Summary(s, self.index.display_name(s)), at) for s, at in stored if s in visible]

    async def dismiss_suggestion(self, user_id: str, other: str) -> None:
        _check_user_id(user_id)
        _check_user_id(other, "other_user_id")
        await self.store.delete_suggestion(user_id, other)

    async def search_directory(self, user_id: str, term: str, limit: int) -> tuple[list[Summary], bool]:
        """Matrix user directory, Laiwang style: only friends and address-book matches."""
        _check_user_id(user_id)
        limit = max(1, min(limit or 10, 100))
        friends = await self.store.friends_of(user_id)
        people = {f: self.index.display_name(f) for f in friends if self.index.is_active(f)}
        for match in await self.list_matches(user_id):
            people[match.user_id] = match.display_name
        needle = term.strip().lower()
        found = sorted(
            (Summary(u, name) for u, name in people.items() if needle in u.lower() or needle in name.lower()),
            key=lambda s: (s.display_name.lower(), s.user_id),
        )
        return found[:limit], len(found) > limit

    # ================================================================== friends and blocks
    async def _change_pair(self, user: str, other: str, step: Callable[[Pair], Awaitable[Transition]]) -> Transition:
        _check_user_id(user)
        _check_user_id(other, "other_user_id")
        if user == other:
            raise invalid("that is your own user id")
        for _ in range(5):
            pair = await self.store.get_pair(user, other)
            t = await step(pair)
            if not t.changed:
                return t
            try:
                await self.store.save_pair(pair, t.pair, t.events, self._stage)
            except Conflict:
                continue
            if t.events:
                self._after_commit()
            return t
        raise Conflict("the relationship kept changing; try again")

    async def send_request(self, user: str, other: str, message: str) -> str:
        state = "pending"

        async def step(pair: Pair) -> Transition:
            nonlocal state
            allowed = False
            if not pair.blocked and not pair.friends and pair.request_from is None:
                allowed = await self._may_request(user, other)
            t, state = core.send_request(pair, user, allowed, message, self._clock())
            return t

        await self._change_pair(user, other, step)
        if state == "friends":
            await self.store.delete_suggestion(other, user)
        await self.store.delete_suggestion(user, other)
        return state

    async def _may_request(self, user: str, other: str) -> bool:
        """`other` is a match of `user` right now: their number is in user's book and revealed to user."""
        numbers = (await self.store.numbers_of([other])).get(other, [])
        keys = [self.keyring.number_key(n) for n in numbers]
        if not await self.store.has_entries(user, keys):
            return False
        return other in await self._visible(user, {other})

    async def accept_request(self, user: str, other: str) -> None:
        async def step(pair: Pair) -> Transition:
            return core.accept(pair, user, self._clock())

        await self._change_pair(user, other, step)
        await self.store.delete_suggestion(user, other)
        await self.store.delete_suggestion(other, user)

    async def decline_request(self, user: str, other: str) -> None:
        async def step(pair: Pair) -> Transition:
            return core.decline(pair, user, self._clock())

        await self._change_pair(user, other, step)

    async def remove_friend(self, user: str, other: str) -> None:
        async def step(pair: Pair) -> Transition:
            return core.remove_friend(pair, user, self._clock())

        await self._change_pair(user, other, step)

    async def block(self, user: str, other: str) -> None:
        async def step(pair: Pair) -> Transition:
            return core.block(pair, user, self._clock())

        await self._change_pair(user, other, step)
        await self.store.delete_suggestion(user, other)
        await self.store.delete_suggestion(other, user)

    async def unblock(self, user: str, other: str) -> None:
        async def step(pair: Pair) -> Transition:
            return core.unblock(pair, user, self._clock())

        await self._change_pair(user, other, step)

    async def list_requests(self, user: str) -> tuple[list[Pair], list[Pair]]:
        _check_user_id(user)
        incoming = await self.store.pairs_of(user, {"request_to": user})
        outgoing = await self.store.pairs_of(user, {"request_from": user})
        return incoming, outgoing

    async def list_blocks(self, user: str) -> list[str]:
        _check_user_id(user)
        pairs = await self.store.pairs_of(user, {"blocked": True})
        return sorted(p.other(user) for p in pairs if p.blocks(user))

    async def list_friends(self, user: str, with_mutual_counts: bool) -> list[tuple[Summary, int, int]]:
        """(friend, since_ms, mutual friend count) sorted by name."""
        _check_user_id(user)
        friends = await self.store.friends_of(user)
        counts = dict.fromkeys(friends, 0)
        if with_mutual_counts and friends:
            for x, y in await self.store.friendships_among(list(friends)):
                if x in counts and y in counts:
                    counts[x] += 1
                    counts[y] += 1
        rows = [(Summary(f, self.index.display_name(f)), since, counts[f]) for f, since in friends.items()]
        return sorted(rows, key=lambda r: (r[0].display_name.lower(), r[0].user_id))

    async def relationship(self, user: str, other: str) -> tuple[Pair, int]:
        _check_user_id(user)
        _check_user_id(other, "other_user_id")
        if user == other:
            raise invalid("that is your own user id")
        pair = await self.store.get_pair(user, other)
        return pair, len(await self.mutual_friends(user, other))

    async def mutual_friends(self, user: str, other: str) -> list[str]:
        _check_user_id(user)
        _check_user_id(other, "other_user_id")
        mine, theirs = await asyncio.gather(self.store.friends_of(user), self.store.friends_of(other))
        return sorted(mine.keys() & theirs.keys())


__all__ = ["BookResult", "ContactsLogic", "Settings"]
