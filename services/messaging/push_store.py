"""Repository of push delivery (docs/push.md), in the messaging service's own database.

Collections:
  push_pokes     one document per (pusher, room): the newest event that should wake the device
                 (`want_pos`, `want_event`), the newest delivered (`sent_pos`), `pending`, when it is
                 due (`due_ms`: also the claim of the sender working on it), retry state
  notifications  one document per (user, event) that the user's push rules notify for: what
                 GET /notifications lists (`_id` = user + event id, so a replay stores nothing new)
"""

from __future__ import annotations

from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument, UpdateOne
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError

from plumbing.mongo import IndexPlan
from services.messaging.rules import JSON


def poke_id(pusher_id: str, room_id: str) -> str:
    return f"{pusher_id}\x1f{room_id}"


class PushStore:
    def __init__(self, db: AsyncDatabase) -> None:
        self.db = db

    @staticmethod
    def indexes() -> IndexPlan:
        return {
            "push_pokes": [
                IndexModel([("pending", ASCENDING), ("due_ms", ASCENDING)]),
                IndexModel([("pusher", ASCENDING)]),
            ],
            "notifications": [IndexModel([("user", ASCENDING), ("pos", DESCENDING)])],
        }

    async def pushers_of(self, users: list[str]) -> list[JSON]:
        return await self.db.pushers.find({"user": {"$in": users}}).to_list()

    async def pusher(self, pusher_id: str) -> JSON | None:
        return await self.db.pushers.find_one({"_id": pusher_id})

    async def delete_pusher(self, pusher_id: str) -> None:
        await self.db.pushers.delete_one({"_id": pusher_id})
        await self.db.push_pokes.delete_many({"pusher": pusher_id})

    async def add_notifications(self, docs: list[JSON]) -> None:
        if not docs:
            return
        try:
            await self.db.notifications.insert_many(docs, ordered=False)
        except BulkWriteError as exc:
            if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                raise  # anything but "already recorded" (a redelivered event)

    async def want(self, wanted: list[tuple[JSON, bool, int]], pos: int, event_id: str) -> None:
        """Ask for a poke of `event_id` for each (poke, high, due_ms), unless this or a newer event
        was asked for already (one unordered bulk write)."""
        ops = [
            UpdateOne(
                {"_id": poke["_id"], "want_pos": {"$lt": pos}},
                {
                    "$set": {**poke, "want_pos": pos, "want_event": event_id, "pending": True},
                    "$max": {"due_ms": due_ms, **({"high_pos": pos} if high else {})},
                    "$setOnInsert": {"sent_pos": 0, "attempts": 0},
                },
                upsert=True,
            )
            for poke, high, due_ms in wanted
        ]
        if not ops:
            return
        try:
            await self.db.push_pokes.bulk_write(ops, ordered=False)
        except BulkWriteError as exc:
            # A duplicate key: that document holds this event or a newer one, nothing to add.
            if any(e.get("code") != 11000 for e in exc.details.get("writeErrors", [])):
                raise

    async def due(self, now_ms: int, limit: int) -> list[JSON]:
        return await self.db.push_pokes.find(
            {"pending": True, "due_ms": {"$lte": now_ms}}, sort=[("due_ms", ASCENDING)], limit=limit
        ).to_list()

    async def next_due(self, excluding: list[str] | None = None) -> int | None:
        """When the earliest pending poke (but those `excluding`: being sent) falls due (ms), if any."""
        query: JSON = {"pending": True}
        if excluding:
            query["_id"] = {"$nin": excluding}
        doc = await self.db.push_pokes.find_one(
            query, projection={"due_ms": 1}, sort=[("pending", ASCENDING), ("due_ms", ASCENDING)]
        )
        return int(doc["due_ms"]) if doc else None

    async def claim(self, poke: JSON, now_ms: int, lease_ms: int) -> JSON | None:
        """Take the poke for `lease_ms` (unless another sender took it first); its current state."""
        return await self.db.push_pokes.find_one_and_update(
            {"_id": poke["_id"], "pending": True, "due_ms": poke["due_ms"]},
            {"$set": {"due_ms": now_ms + lease_ms}},
            return_document=ReturnDocument.AFTER,
        )

    async def done(self, poke: JSON, next_due_ms: int, sent: bool) -> None:
        """The claimed event was delivered (or needs no delivery); a newer one keeps it pending."""
        pos = poke["want_pos"]
        fields: JSON = {"due_ms": next_due_ms, "attempts": 0, "failing_since": 0}
        if sent:
            fields["sent_event"] = poke["want_event"]
        result = await self.db.push_pokes.update_one(
            {"_id": poke["_id"], "want_pos": pos}, {"$set": {**fields, "pending": False, "sent_pos": pos}}
        )
        if result.matched_count == 0:  # a newer event arrived meanwhile: it is sent after the collapse delay
            await self.db.push_pokes.update_one({"_id": poke["_id"]}, {"$set": fields, "$max": {"sent_pos": pos}})

    async def failed(self, poke: JSON, attempts: int, due_ms: int, failing_since: int) -> None:
        await self.db.push_pokes.update_one(
            {"_id": poke["_id"]}, {"$set": {"attempts": attempts, "due_ms": due_ms, "failing_since": failing_since}}
        )

    async def drop(self, poke_id: str) -> None:
        await self.db.push_pokes.delete_one({"_id": poke_id})

    async def notifications(self, user_id: str, before: int | None, limit: int, only_highlight: bool) -> list[JSON]:
        query: JSON = {"user": user_id}
        if before is not None:
            query["pos"] = {"$lt": before}
        if only_highlight:
            query["highlight"] = True
        return await self.db.notifications.find(query, sort=[("pos", DESCENDING)], limit=limit).to_list()

    async def events(self, event_ids: list[str]) -> dict[str, JSON]:
        docs = await self.db.entries.find({"_id": {"$in": event_ids}}, projection={"event": 1}).to_list()
        return {doc["_id"]: doc["event"] for doc in docs}
