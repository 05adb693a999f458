"""The contacts service's use cases: the rules of `core` applied over the store and the index.

api.py translates gRPC to these calls; events.py feeds auth's events into them. ContactsLogic is
the sum of its flows: the shared replica state in base.py, address books in books.py, the friend
graph in friends.py, discoverability and the directory here. Types and the repository port are in
model.py.
"""

from __future__ import annotations

import logging

from services.contacts.books import BookFlows
from services.contacts.core import (
    Discoverability,
)
from services.contacts.friends import FriendFlows
from services.contacts.model import Summary, check_user_id

log = logging.getLogger(__name__)


class ContactsLogic(BookFlows, FriendFlows):
    """Every contacts use case; api.py calls it, main.py builds it."""

    async def get_discoverability(self, user_id: str) -> Discoverability:
        check_user_id(user_id)
        # From the store: the user's own read sees their write whichever replica took it.
        doc = await self.store.get_profile(user_id)
        if doc is not None:
            self._apply_profile_doc(doc)
        return self.index.discoverability(user_id)

    async def set_discoverability(self, user_id: str, value: Discoverability) -> Discoverability:
        check_user_id(user_id)
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
        check_user_id(user_id)
        stored = await self.store.suggestions_of(user_id)
        if not stored:
            return []
        friends = await self.store.friends_of(user_id)
        visible = await self._visible(user_id, {s for s, _ in stored if s not in friends})
        return [(Summary(s, self.index.display_name(s)), at) for s, at in stored if s in visible]

    async def dismiss_suggestion(self, user_id: str, other: str) -> None:
        check_user_id(user_id)
        check_user_id(other, "other_user_id")
        await self.store.delete_suggestion(user_id, other)

    async def search_directory(self, user_id: str, term: str, limit: int) -> tuple[list[Summary], bool]:
        """Matrix user directory, Laiwang style: only friends and address-book matches."""
        check_user_id(user_id)
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
