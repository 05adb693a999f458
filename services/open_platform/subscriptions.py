"""Subscriptions (订阅): a user asks to hear from an app; the app may message its subscribers only.

Each app has a bot identity (`@app_<client_id>:<server>`). Subscribing opens a direct room between
the user and the bot (through messaging's service calls), so any Matrix client shows the app's
messages; the app then messages the subscriber there, within two budgets (fixed windows, kept in
the store so that they hold across open_platform replicas): per subscriber and per app. Over a
budget: 429 with `retry_after_ms` until the window ends. Unsubscribing stops it at once: the
subscription is inactive before the call returns, and the bot leaves the room. A subscribe whose
store write fails leaves no orphan room behind: the bot leaves the room it opened, unless the write
landed after all.

No I/O here beyond the injected store, rooms and registry lookups.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

from plumbing.domain_errors import forbidden, invalid, not_found, rate_limited
from services.open_platform.core import App, bot_user_id

MAX_BODY_CHARS = 4000
MAX_TXN_ID = 64


@dataclass(frozen=True)
class Subscription:
    client_id: str
    user_id: str
    room_id: str
    active: bool
    subscribed_ms: int
    updated_ms: int


@dataclass(frozen=True)
class Budget:
    """At most `limit` messages per `window_ms`."""

    limit: int
    window_ms: int


class SubscriptionStore(Protocol):
    async def get_subscription(self, client_id: str, user_id: str) -> Subscription | None: ...
    # Writes the subscription and its SubscriptionChanged event together; False if `expected_active`
    # no longer holds (a concurrent subscribe/unsubscribe won).
    async def put_subscription(self, sub: Subscription, expected_active: bool | None) -> bool: ...
    async def subscriptions_of(self, user_id: str) -> list[Subscription]: ...
    async def subscribers_of(self, client_id: str, after_user: str, limit: int) -> list[Subscription]: ...
    # Adds one to the counter of `key` in the window starting at `window_start_ms`; the new count.
    async def take(self, key: str, window_start_ms: int, window_ms: int) -> int: ...


class Rooms(Protocol):
    async def open_direct(self, bot: str, user: str, name: str) -> str: ...
    async def leave(self, room_id: str, user: str) -> None: ...
    async def send(self, room_id: str, sender: str, txn_id: str, event_type: str, content: dict) -> str: ...


class Subscriptions:
    def __init__(
        self,
        apps: Callable[[str], Awaitable[App | None]],
        store: SubscriptionStore,
        rooms: Rooms,
        server_name: str,
        per_subscriber: Budget,
        per_app: Budget,
    ) -> None:
        self._apps = apps
        self._store = store
        self._rooms = rooms
        self._server_name = server_name
        self._per_subscriber = per_subscriber
        self._per_app = per_app

    def bot(self, client_id: str) -> str:
        return bot_user_id(client_id, self._server_name)

    async def _live_app(self, client_id: str) -> App:
        app = await self._apps(client_id) if client_id and len(client_id) <= 64 else None
        if app is None or app.suspended:
            raise not_found("no such app")
        return app

    async def subscribe(self, user_id: str, client_id: str, now_ms: int) -> Subscription:
        app = await self._live_app(client_id)
        existing = await self._store.get_subscription(client_id, user_id)
        if existing is not None and existing.active:
            return existing  # repeating a subscribe changes nothing
        room_id = await self._rooms.open_direct(self.bot(client_id), user_id, app.settings.name)
        sub = Subscription(client_id, user_id, room_id, True, now_ms, now_ms)
        try:
            stored = await self._store.put_subscription(sub, expected_active=existing.active if existing else None)
        except Exception:
            await self._drop_unless_recorded(sub)
            raise
        if not stored:
            await self._rooms.leave(room_id, self.bot(client_id))  # a concurrent subscribe won: drop ours
            winner = await self._store.get_subscription(client_id, user_id)
            if winner is None:
                raise not_found("no such subscription")
            return winner
        return sub

    async def _drop_unless_recorded(self, sub: Subscription) -> None:
        """The store failed to answer a write: unless the write landed after all, nothing will ever
        point at the new room again, so the bot leaves it rather than sit in an orphan with the user."""
        try:
            recorded = await self._store.get_subscription(sub.client_id, sub.user_id)
        except Exception:
            recorded = None
        if recorded is None or recorded.room_id != sub.room_id:
            await self._rooms.leave(sub.room_id, self.bot(sub.client_id))

    async def unsubscribe(self, user_id: str, client_id: str, now_ms: int) -> None:
        existing = await self._store.get_subscription(client_id, user_id) if client_id else None
        if existing is None or not existing.active:
            raise not_found("you are not subscribed to this app")
        if await self._store.put_subscription(replace(existing, active=False, updated_ms=now_ms), expected_active=True):
            await self._rooms.leave(existing.room_id, self.bot(client_id))

    async def of_user(self, user_id: str) -> list[Subscription]:
        return [s for s in await self._store.subscriptions_of(user_id) if s.active]

    async def of_app(self, client_id: str, after_user: str, limit: int) -> list[Subscription]:
        await self._live_app(client_id)
        return await self._store.subscribers_of(client_id, after_user, max(1, min(limit, 500)))

    async def _spend(self, key: str, budget: Budget, now_ms: int, what: str) -> None:
        start = now_ms - now_ms % budget.window_ms
        if await self._store.take(key, start, budget.window_ms) > budget.limit:
            raise rate_limited(
                f"{what}: at most {budget.limit} messages per {budget.window_ms // 1000} s",
                start + budget.window_ms - now_ms,
            )

    async def message(self, client_id: str, user_id: str, body: str, txn_id: str, now_ms: int) -> tuple[str, str]:
        """(room id, event id) of a text message from the app's bot to one of its subscribers."""
        if not body.strip() or len(body) > MAX_BODY_CHARS:
            raise invalid(f"body must be 1-{MAX_BODY_CHARS} characters")
        if len(txn_id) > MAX_TXN_ID or any(not (c.isalnum() or c in "-_.") for c in txn_id):
            raise invalid(f"txn_id must be up to {MAX_TXN_ID} of [A-Za-z0-9._-]")
        await self._live_app(client_id)
        sub = await self._store.get_subscription(client_id, user_id) if user_id else None
        if sub is None or not sub.active:
            raise forbidden("this user is not subscribed to the app")  # never disturb those who did not ask
        await self._spend(f"app\n{client_id}", self._per_app, now_ms, "the app's budget")
        await self._spend(f"sub\n{client_id}\n{user_id}", self._per_subscriber, now_ms, "this subscriber's budget")
        content = {"msgtype": "m.text", "body": body}
        # The app's txn_id makes a retried call idempotent (messaging dedupes on sender, device, txn).
        event_id = await self._rooms.send(sub.room_id, self.bot(client_id), txn_id, "m.room.message", content)
        return sub.room_id, event_id


def content_json(content: dict) -> bytes:
    return json.dumps(content, separators=(",", ":"), ensure_ascii=False).encode()
