"""What every contacts use case shares: the replica's in-memory state (phone index, pepper keyring,
profiles) and how it stays fresh, auth's events, and the visibility rules every flow applies.

ContactsLogic (logic.py) is the sum of its flows: address books in books.py, the friend graph in
friends.py, discoverability and the directory in logic.py; each flow is a subclass of ContactsBase.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from services.contacts import core
from services.contacts.core import (
    HASH_ALGORITHMS,
    Discoverability,
    Keyring,
    Normaliser,
    PhoneIndex,
    may_reveal,
)
from services.contacts.model import Clock, ContactsRepository, Settings, VerifiedPhones, now_ms
from services.contacts.store import Book, BookEntry, StageEvent, overlap

log = logging.getLogger(__name__)


class ContactsBase:
    """The dependencies and replica state every flow uses, given once by main.py."""

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
        self._entry_writes: set[asyncio.Task[None]] = set()  # address-book rows finishing in the background

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
