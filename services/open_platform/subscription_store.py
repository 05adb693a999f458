"""Repository of subscriptions and message budgets.

Collections:
  subscriptions  `<client_id>\\n<user>`: the user's subscription to the app, its direct room, active
  budgets        `<key>\\n<window start>`: messages sent in one budget window (fixed windows)

A subscription change commits with its SubscriptionChanged event in the outbox.
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from plumbing.ids import sortable_id
from plumbing.mongo import IndexPlan, in_transaction, upsert_by_id
from plumbing.outbox import Outbox
from services.open_platform import events
from services.open_platform.subscriptions import Subscription


def new_webhook_id() -> str:
    return f"msg_{sortable_id()}"


def _id(client_id: str, user_id: str) -> str:
    return f"{client_id}\n{user_id}"


def _subscription(doc: dict[str, Any]) -> Subscription:
    return Subscription(
        client_id=doc["client_id"],
        user_id=doc["user_id"],
        room_id=doc["room_id"],
        active=doc["active"],
        subscribed_ms=doc["subscribed_ms"],
        updated_ms=doc["updated_ms"],
    )


class MongoSubscriptionStore:
    def __init__(self, db: AsyncDatabase, outbox: Outbox) -> None:
        self._client = db.client
        self._outbox = outbox
        self._subscriptions = db["subscriptions"]
        self._budgets = db["budgets"]

    @staticmethod
    def indexes() -> IndexPlan:
        return {
            "subscriptions": [
                IndexModel([("client_id", ASCENDING), ("active", ASCENDING), ("user_id", ASCENDING)]),
                IndexModel([("user_id", ASCENDING)]),
                IndexModel([("room_id", ASCENDING)]),
            ],
            "budgets": [IndexModel([("window_end_ms", ASCENDING)])],
        }

    async def get_subscription(self, client_id: str, user_id: str) -> Subscription | None:
        doc = await self._subscriptions.find_one({"_id": _id(client_id, user_id)})
        return _subscription(doc) if doc else None

    async def put_subscription(self, sub: Subscription, expected_active: bool | None) -> bool:
        document = {
            "client_id": sub.client_id,
            "user_id": sub.user_id,
            "room_id": sub.room_id,
            "active": sub.active,
            "subscribed_ms": sub.subscribed_ms,
            "updated_ms": sub.updated_ms,
        }

        async def write(session: AsyncClientSession) -> bool:
            key = _id(sub.client_id, sub.user_id)
            if expected_active is None:
                try:
                    await self._subscriptions.insert_one({"_id": key, **document}, session=session)
                except DuplicateKeyError:
                    return False
            else:
                done = await self._subscriptions.update_one(
                    {"_id": key, "active": expected_active}, {"$set": document}, session=session
                )
                if not done.matched_count:
                    return False
            subject, event = events.subscription_changed(
                sub.client_id, sub.user_id, sub.room_id, sub.active, sub.updated_ms
            )
            await self._outbox.add(session, subject, event)
            kind = "subscription.created" if sub.active else "subscription.deleted"
            data = {"user_id": sub.user_id, "room_id": sub.room_id}
            subject, hook = events.webhook_event(
                new_webhook_id(), sub.client_id, sub.user_id, kind, data, sub.updated_ms
            )
            await self._outbox.add(session, subject, hook)
            return True

        done = await in_transaction(self._client, write)
        self._outbox.kick()
        return done

    async def active_by_room(self, room_id: str) -> Subscription | None:
        doc = await self._subscriptions.find_one({"room_id": room_id, "active": True})
        return _subscription(doc) if doc else None

    async def add_webhook(
        self, webhook_id: str, client_id: str, user_id: str, kind: str, data: dict, at_ms: int
    ) -> None:
        """One webhook event through the outbox (its own transaction)."""

        async def write(session: AsyncClientSession) -> None:
            subject, hook = events.webhook_event(webhook_id, client_id, user_id, kind, data, at_ms)
            await self._outbox.add(session, subject, hook)

        await in_transaction(self._client, write)
        self._outbox.kick()

    async def subscriptions_of(self, user_id: str) -> list[Subscription]:
        docs = await self._subscriptions.find({"user_id": user_id}, limit=500).to_list()
        return [_subscription(d) for d in docs]

    async def subscribers_of(self, client_id: str, after_user: str, limit: int) -> list[Subscription]:
        docs = await self._subscriptions.find(
            {"client_id": client_id, "active": True, "user_id": {"$gt": after_user}},
            sort=[("user_id", ASCENDING)],
            limit=limit,
        ).to_list()
        return [_subscription(d) for d in docs]

    async def take(self, key: str, window_start_ms: int, window_ms: int) -> int:
        doc = await upsert_by_id(
            self._budgets,
            f"{key}\n{window_start_ms}",
            {"$inc": {"count": 1}, "$setOnInsert": {"window_end_ms": window_start_ms + window_ms}},
        )
        return int(doc["count"])
