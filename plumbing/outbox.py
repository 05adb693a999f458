"""Transactional outbox: an event is written in the same transaction as the state change it reports.

A relay then publishes outbox entries to JetStream (message id = outbox id, so a re-publish after
a crash is de-duplicated by the stream) and deletes them. A crash between the commit and the
publish loses nothing: the entry is still in the outbox and the next relay pass sends it.

The relay is woken right after a commit (`kick`) for low latency, and also polls, so entries
left by a crashed process or another replica are picked up.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime

from google.protobuf.message import Message
from pymongo import ASCENDING, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from plumbing.ids import sortable_id
from plumbing.jetstream import EventPublisher
from plumbing.logs import request_id_var
from plumbing.metrics import OUTBOX_OLDEST_AGE, OUTBOX_PENDING

log = logging.getLogger(__name__)

OUTBOX_COLLECTION = "outbox"
OUTBOX_INDEXES = {OUTBOX_COLLECTION: [IndexModel([("created_at", ASCENDING)])]}
# Counting stops here: past it the alert has long fired, and a full count would only cost.
BACKLOG_COUNT_LIMIT = 100_000


class Outbox:
    def __init__(self, db: AsyncDatabase, publisher: EventPublisher, poll_seconds: float = 1.0) -> None:
        self._collection = db[OUTBOX_COLLECTION]
        self._publisher = publisher
        self._poll_seconds = poll_seconds
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._stopping = False
        self._observed_at = float("-inf")

    async def add(self, session: AsyncClientSession, subject: str, event: Message) -> str:
        """Record `event` for publication as part of `session`'s transaction; returns the event id."""
        event_id = sortable_id()
        await self._collection.insert_one(
            {
                "_id": event_id,
                "subject": subject,
                "data": event.SerializeToString(),
                "request_id": request_id_var.get(),
                "created_at": datetime.now(UTC),
            },
            session=session,
        )
        return event_id

    def kick(self) -> None:
        """Ask the relay to publish now (call after the transaction committed)."""
        self._wake.set()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="outbox-relay")

    async def relay_once(self, limit: int = 256) -> int:
        """Publish and delete up to `limit` pending entries, oldest first; returns how many were sent."""
        pending = await self._collection.find({}, sort=[("_id", ASCENDING)], limit=limit).to_list()
        sent: list[str] = []
        try:
            for entry in pending:
                await self._publisher.publish(
                    entry["subject"],
                    bytes(entry["data"]),
                    msg_id=entry["_id"],
                    headers={"x-request-id": entry.get("request_id", "-")},
                )
                sent.append(entry["_id"])
        finally:
            if sent:
                await self._collection.delete_many({"_id": {"$in": sent}})
        return len(sent)

    async def observe_backlog(self) -> None:
        """Export how many entries wait and how old the oldest is (outbox_* gauges)."""
        pending = await self._collection.count_documents({}, limit=BACKLOG_COUNT_LIMIT)
        oldest = await self._collection.find_one({}, sort=[("_id", ASCENDING)], projection={"created_at": 1})
        OUTBOX_PENDING.set(pending)
        age = 0.0
        if oldest is not None and isinstance(oldest.get("created_at"), datetime):
            created = oldest["created_at"]
            created = created if created.tzinfo else created.replace(tzinfo=UTC)
            age = max(0.0, (datetime.now(UTC) - created).total_seconds())
        OUTBOX_OLDEST_AGE.set(age)

    async def _run(self) -> None:
        while not self._stopping:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll_seconds)
            self._wake.clear()
            try:
                while await self.relay_once() and not self._stopping:
                    pass
            except Exception:
                log.warning("outbox relay failed; will retry", exc_info=True)
                await asyncio.sleep(self._poll_seconds)
            await self._observe_now_and_then()

    async def _observe_now_and_then(self) -> None:
        # At most once per poll interval: under load the relay is kicked after every commit.
        now = asyncio.get_running_loop().time()
        if now - self._observed_at < self._poll_seconds:
            return
        self._observed_at = now
        try:
            await self.observe_backlog()
        except Exception:
            log.debug("outbox backlog not observed (store away)", exc_info=True)

    async def stop(self) -> None:
        """Flush what is pending (best effort), then stop the relay."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, timeout=3.0)
        with contextlib.suppress(Exception):
            await self.relay_once()
