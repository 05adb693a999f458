"""Contacts' friend graph: requests, acceptance, removal, blocks, and the lists built on them.

Every write that changes the graph goes through `ContactsRepository.save_pair`, which stages the
matching events in the same transaction (outbox).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from plumbing.domain_errors import (
    Conflict,
    invalid,
)
from services.contacts import core
from services.contacts.base import ContactsBase
from services.contacts.core import (
    Pair,
    Transition,
)
from services.contacts.model import Summary, check_user_id

log = logging.getLogger(__name__)


class FriendFlows(ContactsBase):
    """Friend requests, friendships and blocks between two users."""

    async def _change_pair(self, user: str, other: str, step: Callable[[Pair], Awaitable[Transition]]) -> Transition:
        check_user_id(user)
        check_user_id(other, "other_user_id")
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
        # The book document, not its entry rows: those of an upload that just answered may still be
        # being written, and a request right after seeing the match must be allowed.
        book = await self.store.load_book(user)
        if not any(self.keyring.number_key(n) in book.keys for n in numbers):
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
        check_user_id(user)
        incoming = await self.store.pairs_of(user, {"request_to": user})
        outgoing = await self.store.pairs_of(user, {"request_from": user})
        return incoming, outgoing

    async def list_blocks(self, user: str) -> list[str]:
        check_user_id(user)
        pairs = await self.store.pairs_of(user, {"blocked": True})
        return sorted(p.other(user) for p in pairs if p.blocks(user))

    async def list_friends(self, user: str, with_mutual_counts: bool) -> list[tuple[Summary, int, int]]:
        """(friend, since_ms, mutual friend count) sorted by name."""
        check_user_id(user)
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
        check_user_id(user)
        check_user_id(other, "other_user_id")
        if user == other:
            raise invalid("that is your own user id")
        pair = await self.store.get_pair(user, other)
        return pair, len(await self.mutual_friends(user, other))

    async def mutual_friends(self, user: str, other: str) -> list[str]:
        check_user_id(user)
        check_user_id(other, "other_user_id")
        mine, theirs = await asyncio.gather(self.store.friends_of(user), self.store.friends_of(other))
        return sorted(mine.keys() & theirs.keys())
