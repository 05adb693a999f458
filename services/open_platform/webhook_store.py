"""Repository of webhook deliveries: the per-app delivery log and the dead-letter list.

Collections:
  webhook_attempts      one document per try: webhook id, try number, HTTP status, latency, error
  webhook_dead_letters  `<client_id>\\n<webhook id>`: an event that could not be delivered in time;
                        replaying it puts the same event (same webhook id) back through the outbox
  webhook_health        one per app (`_id` the client id): the current streak of failed tries, whether
                        the endpoint is paused, and the owner notice's claim and room (webhook_health.py)
"""

from __future__ import annotations

from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from laiwang.events.v1 import open_platform_events_pb2 as pb
from plumbing.ids import sortable_id
from plumbing.mongo import IndexPlan, in_transaction, upsert_by_id
from plumbing.outbox import Outbox
from services.open_platform.events import SUBJECT_WEBHOOK
from services.open_platform.webhook_health import Health
from services.open_platform.webhooks import Attempt


class MongoWebhookStore:
    def __init__(self, db: AsyncDatabase, outbox: Outbox) -> None:
        self._client = db.client
        self._outbox = outbox
        self._attempts = db["webhook_attempts"]
        self._dead = db["webhook_dead_letters"]
        self._health = db["webhook_health"]

    @staticmethod
    def indexes() -> IndexPlan:
        return {
            "webhook_attempts": [IndexModel([("client_id", ASCENDING), ("_id", DESCENDING)])],
            "webhook_dead_letters": [IndexModel([("client_id", ASCENDING), ("at_ms", DESCENDING)])],
        }

    async def log_attempt(self, attempt: Attempt) -> None:
        await self._attempts.insert_one(
            {
                "_id": sortable_id(),
                "client_id": attempt.client_id,
                "webhook_id": attempt.webhook_id,
                "type": attempt.kind,
                "attempt": attempt.attempt,
                "status": attempt.status,
                "latency_ms": attempt.latency_ms,
                "error": attempt.error,
                "at_ms": attempt.at_ms,
            }
        )

    async def attempts_of(self, client_id: str, limit: int = 100) -> list[dict[str, Any]]:
        return await self._attempts.find({"client_id": client_id}, sort=[("_id", DESCENDING)], limit=limit).to_list()

    async def dead_letter(self, event: pb.WebhookEvent, reason: str, at_ms: int) -> None:
        await self._dead.replace_one(
            {"_id": f"{event.client_id}\n{event.webhook_id}"},
            {
                "client_id": event.client_id,
                "webhook_id": event.webhook_id,
                "type": event.type,
                "event": event.SerializeToString(),
                "reason": reason,
                "at_ms": at_ms,
            },
            upsert=True,
        )

    async def dead_letters_of(self, client_id: str, limit: int = 100) -> list[dict[str, Any]]:
        return await self._dead.find({"client_id": client_id}, sort=[("at_ms", DESCENDING)], limit=limit).to_list()

    async def replay(self, client_id: str, webhook_id: str, at_ms: int) -> bool:
        """Put a dead letter back for delivery (same webhook id, a fresh 24 h); False if there is none."""

        async def write(session: AsyncClientSession) -> bool:
            doc = await self._dead.find_one_and_delete({"_id": f"{client_id}\n{webhook_id}"}, session=session)
            if doc is None:
                return False
            event = pb.WebhookEvent.FromString(bytes(doc["event"]))
            event.created_at_ms = at_ms
            await self._outbox.add(session, SUBJECT_WEBHOOK, event)
            return True

        done = await in_transaction(self._client, write)
        self._outbox.kick()
        return done

    # -- endpoint health ---------------------------------------------------------------------------

    @staticmethod
    def _health_of(doc: dict[str, Any] | None) -> Health:
        if doc is None:
            return Health()
        return Health(
            consecutive_failures=doc.get("failures", 0),
            failing_since_ms=doc.get("failing_since_ms", 0),
            last_error=doc.get("last_error", ""),
            paused_at_ms=doc.get("paused_at_ms", 0),
            owner_told=doc.get("told", False),
            notice_room_id=doc.get("notice_room_id", ""),
        )

    async def health(self, client_id: str) -> Health:
        return self._health_of(await self._health.find_one({"_id": client_id}))

    async def record_failure(self, client_id: str, error: str, at_ms: int) -> Health:
        update = {"$inc": {"failures": 1}, "$min": {"failing_since_ms": at_ms}, "$set": {"last_error": error[:300]}}
        return self._health_of(await upsert_by_id(self._health, client_id, update))

    async def record_success(self, client_id: str) -> None:
        await self._health.update_one(
            {"_id": client_id, "failures": {"$gt": 0}},
            {"$set": {"failures": 0, "last_error": ""}, "$unset": {"failing_since_ms": ""}},
        )

    async def pause(self, client_id: str, at_ms: int) -> bool:
        """Pause the endpoint; False if it already was (another try paused it first)."""
        result = await self._health.update_one(
            {"_id": client_id, "paused_at_ms": {"$in": [0, None]}},
            {"$set": {"paused_at_ms": at_ms, "told": False, "notice_claim_ms": 0}},
        )
        return result.modified_count == 1

    async def claim_notice(self, client_id: str, now_ms: int, lease_ms: int) -> Health | None:
        doc = await self._health.find_one_and_update(
            {
                "_id": client_id,
                "paused_at_ms": {"$gt": 0},
                "told": False,
                "notice_claim_ms": {"$lt": now_ms - lease_ms},
            },
            {"$set": {"notice_claim_ms": now_ms}},
            return_document=ReturnDocument.AFTER,
        )
        return None if doc is None else self._health_of(doc)

    async def release_notice(self, client_id: str) -> None:
        await self._health.update_one({"_id": client_id}, {"$set": {"notice_claim_ms": 0}})

    async def set_notice_room(self, client_id: str, room_id: str) -> None:
        await self._health.update_one({"_id": client_id}, {"$set": {"notice_room_id": room_id}})

    async def owner_told(self, client_id: str, paused_at_ms: int) -> None:
        await self._health.update_one({"_id": client_id, "paused_at_ms": paused_at_ms}, {"$set": {"told": True}})

    async def resume(self, client_id: str) -> Health:
        """Deliveries run again, with a fresh streak (the notice room stays for later notices)."""
        doc = await self._health.find_one_and_update(
            {"_id": client_id},
            {
                "$set": {"failures": 0, "last_error": "", "paused_at_ms": 0, "told": False, "notice_claim_ms": 0},
                "$unset": {"failing_since_ms": ""},
            },
            return_document=ReturnDocument.AFTER,
        )
        return self._health_of(doc)
