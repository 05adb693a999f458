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
        self._counted_at = float("-inf")

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
        await self._export_backlog(pending, limit)
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

    async def _export_backlog(self, page: list[dict], limit: int) -> None:
        """outbox_* gauges from the page the relay just read (no extra query while it keeps up);
        a full page means a real backlog, counted at most once per poll interval."""
        OUTBOX_OLDEST_AGE.set(_age(page[0]) if page else 0.0)
        if len(page) < limit:
            OUTBOX_PENDING.set(len(page))
            return
        now = asyncio.get_running_loop().time()
        if now - self._counted_at >= self._poll_seconds:
            self._counted_at = now
            OUTBOX_PENDING.set(await self._collection.count_documents({}, limit=BACKLOG_COUNT_LIMIT))

    async def observe_backlog(self) -> None:
        """Count the whole backlog now and export it (what the relay's pages export as it runs)."""
        OUTBOX_PENDING.set(await self._collection.count_documents({}, limit=BACKLOG_COUNT_LIMIT))
        oldest = await self._collection.find_one({}, sort=[("_id", ASCENDING)], projection={"created_at": 1})
        OUTBOX_OLDEST_AGE.set(_age(oldest) if oldest is not None else 0.0)

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

    async def stop(self) -> None:
        """Flush what is pending (best effort), then stop the relay."""
        self._stopping = True
        self._wake.set()
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(self._task, timeout=3.0)
        with contextlib.suppress(Exception):
            await self.relay_once()


def _age(entry: dict) -> float:
    created = entry.get("created_at")
    if not isinstance(created, datetime):
        return 0.0
    created = created if created.tzinfo else created.replace(tzinfo=UTC)
    return max(0.0, (datetime.now(UTC) - created).total_seconds())
