"""Contacts' use-case types: the repository port, settings, results and charges. No I/O here."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from plumbing.domain_errors import (
    invalid,
)
from services.contacts.core import (
    BudgetPolicy,
    Discoverability,
    Pair,
    PairEvent,
)
from services.contacts.store import Book, BookEntry, Budget, Journal, StageEvent


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
    ) -> Journal: ...
    async def apply_journal(self, owner: str, journal: Journal) -> None: ...
    async def pending_matches(self, owner: str) -> list[str]: ...
    async def wait_or_take_over(self, owner: str, book: Book, now_ms: int) -> None: ...
    async def add_book_keys(self, owner: str, entries: Sequence[BookEntry], now_ms: int) -> None: ...
    async def load_budget(self, key: str) -> Budget: ...
    async def save_budget(self, before: Budget, tokens: float, at_ms: int) -> bool: ...
    async def holders(self, keys: Sequence[bytes]) -> list[tuple[str, bytes, int | None]]: ...
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
    # A committed upload answers once its entry rows are written or after this long, whichever is
    # first; the rest are written in the background. The rows of a 10,000-number book cost seconds
    # on a busy store, and writing them all inside the caller's deadline made big uploads 504.
    book_inline_seconds: float = 3.0
    # How long a write waits for an earlier write of the same book to finish its rows before it
    # answers a retryable Conflict (under the gateway's 10 s deadline).
    book_wait_seconds: float = 5.0


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


def check_user_id(user_id: str, what: str = "user_id") -> None:
    if not user_id.startswith("@") or ":" not in user_id or len(user_id) > 255:
        raise invalid(f"{what} must be a full Matrix user id such as @alice:example.org")


@dataclass(frozen=True)
class Charge:
    """Who pays for an upload's new numbers: the uploader's verified number and client address."""

    number: str
    client_address: str
    aliases: dict[bytes, bytes]  # plain key -> its hash-only key (either one uploaded before is free)


BOOK_ATTEMPTS = 200  # compare-and-set rounds, and 50 ms waits while another write of the same book applies
NORMALISE_CHUNK = 1_000  # entries parsed between yields to the event loop (10,000 take about 0.4 s of CPU)
