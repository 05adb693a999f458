"""Domain rules of the contacts service. No gRPC, Mongo or NATS imports here.

- phone-number normalisation (E.164) and the two hash families: the public Matrix IS v2 lookup
  hash (SHA-256 of "<digits> msisdn <pepper>") and our secret keyed hash (HMAC) under which
  address books are stored, so the database never holds raw numbers of people without accounts;
- the in-memory phone index (number -> user, lookup-hash -> number) that matching runs against;
- discoverability, the enumeration budget, and the friend/block state machine of a user pair.

The orchestration over storage lives in `services.contacts.logic`; this module is pure.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum

import phonenumbers

from plumbing.domain_errors import forbidden, invalid, not_found, rate_limited

MAX_ENTRIES = 10_000
MAX_ENTRY_LENGTH = 64
KEY_BYTES = 16  # 128-bit keyed hashes: collision-free in practice, half the size of a full digest
HASH_ALGORITHMS = ("sha256",)
_E164 = re.compile(r"^\+[1-9]\d{6,14}$")
_SEPARATORS = re.compile(r"[\s\-().]")
_LOOKUP_HASH = re.compile(r"^[A-Za-z0-9_-]{43}$")


class Discoverability(StrEnum):
    EVERYONE = "everyone"
    MUTUAL = "mutual"
    NOBODY = "nobody"


DEFAULT_DISCOVERABILITY = Discoverability.MUTUAL


# ---------------------------------------------------------------------------------------------
# Numbers and hashes


@dataclass(frozen=True)
class Normalised:
    e164: str | None
    reason: str | None = None


class Normaliser:
    """Raw address-book entries -> E.164, with a default region for national numbers."""

    def __init__(self, default_region: str) -> None:
        self.default_region = default_region.upper()

    def region(self, requested: str) -> str:
        region = (requested or self.default_region).upper()
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise invalid(f"unknown region {requested!r}; use an ISO 3166 code such as CN")
        return region

    def normalise(self, raw: str, region: str, known: dict[int, str] | None = None) -> Normalised:
        if len(raw) > MAX_ENTRY_LENGTH:
            return Normalised(None, "too_long")
        compact = _SEPARATORS.sub("", raw)
        # Fast path: an E.164 number that is already in the index was verified, so it is valid.
        if known is not None and _E164.match(compact) and int(compact[1:]) in known:
            return Normalised(compact)
        try:
            parsed = phonenumbers.parse(raw, region)
        except phonenumbers.NumberParseException:
            return Normalised(None, "not_a_number")
        if not phonenumbers.is_valid_number(parsed):
            return Normalised(None, "invalid_number")
        return Normalised(phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164))


def is_e164(value: str) -> bool:
    return bool(_E164.match(value))


def lookup_digest(e164: str, pepper: str) -> bytes:
    """Matrix IS v2: SHA-256 of "<address> msisdn <pepper>"; a Matrix msisdn has no leading '+'."""
    return hashlib.sha256(f"{e164[1:]} msisdn {pepper}".encode()).digest()


def encode_lookup_hash(digest: bytes) -> str:
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def lookup_hash(e164: str, pepper: str) -> str:
    return encode_lookup_hash(lookup_digest(e164, pepper))


def decode_lookup_hash(value: str) -> bytes | None:
    """The 32-byte digest of an unpadded URL-safe base64 hash, or None when malformed."""
    if not _LOOKUP_HASH.match(value):
        return None
    try:
        digest = base64.urlsafe_b64decode(value + "=")
    except ValueError:
        return None
    return digest if len(digest) == 32 else None


class Keyring:
    """Secret keyed hashes (HMAC-SHA-256, truncated) under which address books are stored.

    Without the key a stolen database cannot be brute-forced back to phone numbers, unlike
    plain or peppered hashes of the small number space.
    """

    def __init__(self, key: bytes) -> None:
        if len(key) < 16:
            raise ValueError("the hash key must be at least 16 bytes")
        self._key = key

    def number_key(self, e164: str) -> bytes:
        return hmac.digest(self._key, b"n:" + e164.encode(), "sha256")[:KEY_BYTES]

    def hashed_key(self, pepper: str, digest: bytes) -> bytes:
        """Key of an entry only known by its lookup hash (the number was not registered yet)."""
        return hmac.digest(self._key, b"h:" + pepper.encode() + b":" + digest, "sha256")[:KEY_BYTES]


# ---------------------------------------------------------------------------------------------
# The in-memory phone index


class RecentVersions:
    """The newest version applied per key, remembered for `horizon_s` to two horizons.

    A poll reads documents and applies them a moment later; a write applied in between (this
    replica's own, or an event) is newer and must win. Only that short window matters, so only
    recent versions are kept (two generations of dicts, swapped every horizon), not one per user
    forever: the index holds a million users.
    """

    def __init__(self, horizon_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        self._horizon = horizon_s
        self._clock = clock
        self._current: dict[str, int] = {}
        self._previous: dict[str, int] = {}
        self._swapped_at = clock()

    def admit(self, key: str, version: int) -> bool:
        """True (and remembered) unless a newer version of `key` was applied recently."""
        now = self._clock()
        if now - self._swapped_at >= self._horizon:
            self._previous, self._current, self._swapped_at = self._current, {}, now
        known = max(self._current.get(key, -1), self._previous.get(key, -1))
        if version < known:
            return False
        self._current[key] = version
        return True


class PhoneIndex:
    """Verified numbers -> users, and lookup-hash -> number for the active pepper.

    Numbers are kept as integers (the E.164 digits) and hashes by their first 8 bytes, which
    keeps a million entries in roughly a third of the memory of string keys; a prefix hit is
    confirmed against the full digest, so a truncation collision cannot return a wrong user.
    """

    def __init__(self) -> None:
        self.numbers: dict[int, str] = {}
        self._names: dict[str, str] = {}
        self._settings: dict[str, Discoverability] = {}  # only users who changed the default
        self._deactivated: set[str] = set()
        self.pepper = ""
        self._by_hash: dict[int, int] = {}
        self.profile_versions = RecentVersions()
        self.phone_versions = RecentVersions()

    # numbers
    def bind(self, e164: str, user_id: str) -> None:
        number = int(e164[1:])
        # Interned: the same id keys the profile maps, so a million users are stored once (~50 MB less).
        self.numbers[number] = sys.intern(user_id)
        if self.pepper:
            self._by_hash[_prefix(lookup_digest(e164, self.pepper))] = number

    def unbind(self, e164: str, user_id: str | None = None) -> None:
        number = int(e164[1:])
        if user_id is not None and self.numbers.get(number) != user_id:
            return
        if self.numbers.pop(number, None) is not None and self.pepper:
            self._by_hash.pop(_prefix(lookup_digest(e164, self.pepper)), None)

    def owner(self, e164: str) -> str | None:
        return self.numbers.get(int(e164[1:]))

    def __len__(self) -> int:
        return len(self.numbers)

    # profiles
    def set_profile(
        self,
        user_id: str,
        display_name: str | None = None,
        discoverability: Discoverability | None = None,
        deactivated: bool | None = None,
    ) -> None:
        user_id = sys.intern(user_id)
        if display_name is not None:
            if display_name:
                self._names[user_id] = display_name
            else:
                self._names.pop(user_id, None)
        if discoverability is not None:
            if discoverability == DEFAULT_DISCOVERABILITY:
                self._settings.pop(user_id, None)
            else:
                self._settings[user_id] = discoverability
        if deactivated:
            self._deactivated.add(user_id)
        elif deactivated is False:
            self._deactivated.discard(user_id)

    def display_name(self, user_id: str) -> str:
        name = self._names.get(user_id)
        if name:
            return name
        return user_id[1:].split(":", 1)[0] if user_id.startswith("@") else user_id

    def discoverability(self, user_id: str) -> Discoverability:
        if user_id in self._deactivated:
            return Discoverability.NOBODY
        return self._settings.get(user_id, DEFAULT_DISCOVERABILITY)

    def is_active(self, user_id: str) -> bool:
        return user_id not in self._deactivated

    # hashed lookups
    async def use_pepper(self, pepper: str, chunk: int = 20_000) -> None:
        """Rebuild the lookup-hash map for `pepper`, yielding to the event loop between chunks."""
        built: dict[int, int] = {}
        numbers = list(self.numbers)
        for start in range(0, len(numbers), chunk):
            for number in numbers[start : start + chunk]:
                digest = hashlib.sha256(f"{number} msisdn {pepper}".encode()).digest()
                built[int.from_bytes(digest[:8], "big")] = number
            await asyncio.sleep(0)
        # Numbers bound while we were building.
        for number in self.numbers.keys() - set(numbers):
            built[_prefix(lookup_digest(f"+{number}", pepper))] = number
        self._by_hash = built
        self.pepper = pepper

    def resolve_hash(self, digest: bytes) -> str | None:
        """The E.164 number whose lookup hash under the active pepper is `digest`, if registered."""
        number = self._by_hash.get(int.from_bytes(digest[:8], "big"))
        if number is None or number not in self.numbers:
            return None
        e164 = f"+{number}"
        return e164 if lookup_digest(e164, self.pepper) == digest else None


def _prefix(digest: bytes) -> int:
    return int.from_bytes(digest[:8], "big")


# ---------------------------------------------------------------------------------------------
# Discoverability and the enumeration budget


def may_reveal(setting: Discoverability, subject_has_viewer: bool, blocked: bool, same_user: bool = False) -> bool:
    """May a subject whose number is in the viewer's address book be revealed to the viewer?"""
    if same_user or blocked:
        return False
    if setting is Discoverability.EVERYONE:
        return True
    if setting is Discoverability.MUTUAL:
        return subject_has_viewer
    return False


@dataclass(frozen=True)
class BudgetPolicy:
    """Numbers a user may upload for the first time: `initial`, refilled at `refill_per_hour`."""

    initial: int
    refill_per_hour: float

    def available(self, tokens: float | None, updated_ms: int | None, now_ms: int) -> float:
        if tokens is None or updated_ms is None:
            return float(self.initial)
        refilled = max(0, now_ms - updated_ms) / 3_600_000 * self.refill_per_hour
        return min(float(self.initial), tokens + refilled)

    def charge(self, available: float, cost: int) -> float:
        """Tokens left after `cost`, or M_LIMIT_EXCEEDED (with when to retry) if not affordable."""
        if cost <= available:
            return available - cost
        if self.refill_per_hour <= 0:
            retry_ms = 0
        else:
            missing = (min(cost, self.initial) - available) if cost <= self.initial else self.initial - available
            retry_ms = int(max(missing, 1) / self.refill_per_hour * 3_600_000) + 1
        raise rate_limited(
            f"{cost} numbers not uploaded before exceed the remaining budget of {int(available)}",
            retry_after_ms=max(retry_ms, 1000),
        )


@dataclass(frozen=True)
class BookChange:
    added: dict[bytes, int | None]  # new key -> pepper generation (None: keyed by the number)
    removed: set[bytes]
    keys_after: set[bytes]


def plan_book_change(
    existing: set[bytes],
    add: dict[bytes, int | None],
    remove: Iterable[bytes],
    replace_all: bool,
) -> BookChange:
    """Which keys are new (charged and stored) and which go, for a full or incremental upload."""
    added = {key: gen for key, gen in add.items() if key not in existing}
    removed = existing - add.keys() if replace_all else (set(remove) & existing) - add.keys()
    return BookChange(added, removed, (existing - removed) | added.keys())


# ---------------------------------------------------------------------------------------------
# The relationship of two users


class PairEventKind(StrEnum):
    FRIENDSHIP_CREATED = "friendship_created"
    FRIENDSHIP_REMOVED = "friendship_removed"
    USER_BLOCKED = "user_blocked"
    USER_UNBLOCKED = "user_unblocked"


@dataclass(frozen=True)
class Pair:
    """Everything between two users; `a` < `b`. `version` grows with every change."""

    a: str
    b: str
    friends: bool = False
    friends_since_ms: int = 0
    request_from: str | None = None
    request_message: str = ""
    request_at_ms: int = 0
    a_blocks_b: bool = False
    b_blocks_a: bool = False
    version: int = 0

    @staticmethod
    def new(x: str, y: str) -> Pair:
        if x == y:
            raise invalid("that is your own user id")
        a, b = sorted((x, y))
        return Pair(a, b)

    @property
    def key(self) -> str:
        return pair_key(self.a, self.b)

    def other(self, user: str) -> str:
        return self.b if user == self.a else self.a

    def blocks(self, blocker: str) -> bool:
        return self.a_blocks_b if blocker == self.a else self.b_blocks_a

    @property
    def blocked(self) -> bool:
        return self.a_blocks_b or self.b_blocks_a

    def request_to(self) -> str | None:
        return None if self.request_from is None else self.other(self.request_from)


def pair_key(x: str, y: str) -> str:
    a, b = sorted((x, y))
    return f"{a}|{b}"


@dataclass(frozen=True)
class PairEvent:
    kind: PairEventKind
    # friendship events: the ordered pair; block events: blocker, blocked
    first: str
    second: str
    version: int
    at_ms: int
    state: Pair


@dataclass
class Transition:
    pair: Pair
    events: list[PairEvent] = field(default_factory=list)
    changed: bool = False

    def apply(
        self, kind: PairEventKind | None, now_ms: int, first: str = "", second: str = "", **changes: object
    ) -> None:
        self.pair = replace(self.pair, version=self.pair.version + 1, **changes)  # type: ignore[arg-type]
        self.changed = True
        if kind is not None:
            if kind in (PairEventKind.FRIENDSHIP_CREATED, PairEventKind.FRIENDSHIP_REMOVED):
                first, second = self.pair.a, self.pair.b
            self.events.append(PairEvent(kind, first, second, self.pair.version, now_ms, self.pair))


def send_request(pair: Pair, sender: str, allowed: bool, message: str, now_ms: int) -> tuple[Transition, str]:
    """`allowed`: the other user is a current match or suggestion of the sender."""
    t = Transition(pair)
    if pair.blocked:
        raise forbidden("you cannot send a friend request to this user")
    if pair.friends:
        return t, "friends"
    if pair.request_from == pair.other(sender):
        accept_request(t, sender, now_ms)
        return t, "friends"
    if pair.request_from == sender:
        return t, "pending"
    if not allowed:
        raise forbidden("friend requests go only to people from your address book or your suggestions")
    t.apply(None, now_ms, request_from=sender, request_message=message[:500], request_at_ms=now_ms)
    return t, "pending"


def accept_request(t: Transition, user: str, now_ms: int) -> None:
    pair = t.pair
    if pair.friends:
        return
    if pair.request_from != pair.other(user):
        raise not_found("there is no friend request from this user")
    t.apply(
        PairEventKind.FRIENDSHIP_CREATED,
        now_ms,
        friends=True,
        friends_since_ms=now_ms,
        request_from=None,
        request_message="",
        request_at_ms=0,
    )


def accept(pair: Pair, user: str, now_ms: int) -> Transition:
    t = Transition(pair)
    accept_request(t, user, now_ms)
    return t


def decline(pair: Pair, user: str, now_ms: int) -> Transition:
    t = Transition(pair)
    if pair.request_from is None:
        raise not_found("there is no pending friend request between you")
    t.apply(None, now_ms, request_from=None, request_message="", request_at_ms=0)
    return t


def remove_friend(pair: Pair, user: str, now_ms: int) -> Transition:
    t = Transition(pair)
    if not pair.friends:
        raise not_found("you are not friends")
    t.apply(PairEventKind.FRIENDSHIP_REMOVED, now_ms, friends=False, friends_since_ms=0)
    return t


def block(pair: Pair, blocker: str, now_ms: int) -> Transition:
    """Blocking ends a friendship and any pending request; the block itself is one more event."""
    t = Transition(pair)
    if pair.blocks(blocker):
        return t
    if pair.friends:
        t.apply(PairEventKind.FRIENDSHIP_REMOVED, now_ms, friends=False, friends_since_ms=0)
    flag = "a_blocks_b" if blocker == pair.a else "b_blocks_a"
    t.apply(
        PairEventKind.USER_BLOCKED,
        now_ms,
        blocker,
        pair.other(blocker),
        request_from=None,
        request_message="",
        request_at_ms=0,
        **{flag: True},
    )
    return t


def unblock(pair: Pair, blocker: str, now_ms: int) -> Transition:
    t = Transition(pair)
    if not pair.blocks(blocker):
        return t
    flag = "a_blocks_b" if blocker == pair.a else "b_blocks_a"
    t.apply(PairEventKind.USER_UNBLOCKED, now_ms, blocker, pair.other(blocker), **{flag: False})
    return t
