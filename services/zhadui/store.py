"""Repository over the zhadui service's own collections; its indexes are declared here.

Collections:
  zhaduis       one document per zhadui
  participants  `<zhadui>|<user>`: state joined / left / removed, with the time of the change
  views         `<user>|<zhadui>`: when the user last looked at it, and whether they muted it
  notices       `<user>|<zhadui>|<actor>`: "a friend joined" notices, de-duplicated
  pairs         `<a>|<b>`: the friend graph and blocks projected from contacts' events, versioned

The in-memory AudienceIndex is loaded from zhaduis, participants and pairs (`load_index`).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from laiwang.events.v1 import zhadui_events_pb2 as events
from plumbing.mongo import IndexPlan, in_transaction
from plumbing.outbox import Outbox
from services.zhadui.core import AudienceIndex, Notice, PairState, Status, View, Zhadui

SUBJECT_CREATED = "laiwang.zhadui.created"
SUBJECT_JOINED = "laiwang.zhadui.joined"
SUBJECT_LEFT = "laiwang.zhadui.left"
SUBJECT_CLOSED = "laiwang.zhadui.closed"
SUBJECT_ARCHIVED = "laiwang.zhadui.archived"
SUBJECT_ACTIVE = "laiwang.zhadui.active"
MAX_NOTICES_KEPT = 200


def _pair_id(x: str, y: str) -> tuple[str, str, str]:
    a, b = sorted((x, y))
    return f"{a}|{b}", a, b


def _zhadui(doc: dict[str, Any]) -> Zhadui:
    return Zhadui(
        zhadui_id=doc["_id"],
        creator=doc["creator"],
        title=doc["title"],
        body=doc.get("body", ""),
        link_url=doc.get("link_url", ""),
        card_json=doc.get("card_json", ""),
        tags=tuple(doc.get("tags", ())),
        status=Status(doc["status"]),
        created_ms=doc["created_ms"],
        last_activity_ms=doc["last_activity_ms"],
        participant_count=doc["participant_count"],
        room_id=doc.get("room_id", ""),
    )


class MongoZhaduiStore:
    def __init__(self, db: AsyncDatabase, outbox: Outbox) -> None:
        self._client = db.client
        self._outbox = outbox
        self._zhaduis = db["zhaduis"]
        self._participants = db["participants"]
        self._views = db["views"]
        self._notices = db["notices"]
        self._pairs = db["pairs"]

    @staticmethod
    def indexes() -> IndexPlan:
        return {
            "zhaduis": [
                IndexModel([("creator", ASCENDING), ("created_ms", DESCENDING)]),
                IndexModel([("status", ASCENDING), ("last_activity_ms", ASCENDING)]),
            ],
            "participants": [IndexModel([("zid", ASCENDING), ("state", ASCENDING)])],
            "notices": [IndexModel([("user", ASCENDING), ("at_ms", DESCENDING)])],
        }

    async def _emit(self, session: AsyncClientSession, subject: str, event: Any) -> None:
        await self._outbox.add(session, subject, event)

    # --- zhaduis and participations ---------------------------------------------------

    async def recent_creations_ms(self, creator: str, since_ms: int) -> list[int]:
        cursor = self._zhaduis.find({"creator": creator, "created_ms": {"$gt": since_ms}}, {"created_ms": 1})
        return [doc["created_ms"] async for doc in cursor]

    async def create(self, zhadui: Zhadui) -> None:
        async def write(session: AsyncClientSession) -> None:
            await self._zhaduis.insert_one(
                {
                    "_id": zhadui.zhadui_id,
                    "creator": zhadui.creator,
                    "title": zhadui.title,
                    "body": zhadui.body,
                    "link_url": zhadui.link_url,
                    "card_json": zhadui.card_json,
                    "tags": list(zhadui.tags),
                    "status": zhadui.status.value,
                    "created_ms": zhadui.created_ms,
                    "last_activity_ms": zhadui.last_activity_ms,
                    "participant_count": 1,
                    "room_id": zhadui.room_id,
                    "created_at": datetime.now(UTC),
                },
                session=session,
            )
            await self._participants.insert_one(
                {
                    "_id": f"{zhadui.zhadui_id}|{zhadui.creator}",
                    "zid": zhadui.zhadui_id,
                    "user": zhadui.creator,
                    "state": "joined",
                    "changed_ms": zhadui.created_ms,
                },
                session=session,
            )
            await self._emit(
                session,
                SUBJECT_CREATED,
                events.ZhaduiCreated(
                    zhadui_id=zhadui.zhadui_id,
                    creator_user_id=zhadui.creator,
                    title=zhadui.title,
                    created_at_ms=zhadui.created_ms,
                    room_id=zhadui.room_id,
                ),
            )
            await self._emit(
                session,
                SUBJECT_JOINED,
                events.ZhaduiJoined(zhadui_id=zhadui.zhadui_id, user_id=zhadui.creator, joined_at_ms=zhadui.created_ms),
            )

        await in_transaction(self._client, write)
        self._outbox.kick()

    async def get(self, zhadui_id: str) -> Zhadui | None:
        doc = await self._zhaduis.find_one({"_id": zhadui_id})
        return _zhadui(doc) if doc else None

    async def get_many(self, zhadui_ids: Sequence[str]) -> dict[str, Zhadui]:
        if not zhadui_ids:
            return {}
        return {doc["_id"]: _zhadui(doc) async for doc in self._zhaduis.find({"_id": {"$in": list(zhadui_ids)}})}

    async def participant_state(self, zhadui_id: str, user: str) -> str | None:
        doc = await self._participants.find_one({"_id": f"{zhadui_id}|{user}"}, {"state": 1})
        return doc["state"] if doc else None

    async def join(self, zhadui_id: str, user: str, now_ms: int) -> bool:
        """Make `user` a participant (again, after a plain leave); False if already one or removed."""

        async def write(session: AsyncClientSession) -> bool:
            result = await self._participants.update_one(
                {"_id": f"{zhadui_id}|{user}", "state": {"$nin": ["joined", "removed"]}},
                {"$set": {"zid": zhadui_id, "user": user, "state": "joined", "changed_ms": now_ms}},
                upsert=True,
                session=session,
            )
            if result.modified_count == 0 and result.upserted_id is None:
                return False
            await self._zhaduis.update_one(
                {"_id": zhadui_id},
                {"$inc": {"participant_count": 1}, "$max": {"last_activity_ms": now_ms}},
                session=session,
            )
            await self._emit(
                session, SUBJECT_JOINED, events.ZhaduiJoined(zhadui_id=zhadui_id, user_id=user, joined_at_ms=now_ms)
            )
            return True

        try:
            joined = await in_transaction(self._client, write)
        except DuplicateKeyError:
            return False  # the upsert met an existing joined/removed participation
        self._outbox.kick()
        return joined

    async def leave(self, zhadui_id: str, user: str, removed_by: str, now_ms: int) -> bool:
        async def write(session: AsyncClientSession) -> bool:
            result = await self._participants.update_one(
                {"_id": f"{zhadui_id}|{user}", "state": "joined"},
                {
                    "$set": {
                        "state": "removed" if removed_by else "left",
                        "removed_by": removed_by,
                        "changed_ms": now_ms,
                    }
                },
                session=session,
            )
            if result.modified_count != 1:
                return False
            await self._zhaduis.update_one({"_id": zhadui_id}, {"$inc": {"participant_count": -1}}, session=session)
            await self._emit(
                session,
                SUBJECT_LEFT,
                events.ZhaduiLeft(zhadui_id=zhadui_id, user_id=user, removed_by=removed_by, left_at_ms=now_ms),
            )
            return True

        left = await in_transaction(self._client, write)
        self._outbox.kick()
        return left

    async def set_status(self, zhadui_id: str, status: Status, now_ms: int) -> bool:
        async def write(session: AsyncClientSession) -> bool:
            result = await self._zhaduis.update_one(
                {"_id": zhadui_id, "status": {"$nin": [status.value, Status.ARCHIVED.value]}},
                {"$set": {"status": status.value}},
                session=session,
            )
            if result.modified_count != 1:
                return False
            if status is Status.CLOSED:
                await self._emit(session, SUBJECT_CLOSED, events.ZhaduiClosed(zhadui_id=zhadui_id, closed_at_ms=now_ms))
            elif status is Status.ARCHIVED:
                await self._emit(
                    session, SUBJECT_ARCHIVED, events.ZhaduiArchived(zhadui_id=zhadui_id, archived_at_ms=now_ms)
                )
            return True

        changed = await in_transaction(self._client, write)
        self._outbox.kick()
        return changed

    async def record_activity(self, zhadui_id: str, at_ms: int) -> None:
        async def write(session: AsyncClientSession) -> None:
            result = await self._zhaduis.update_one(
                {"_id": zhadui_id, "last_activity_ms": {"$lt": at_ms}},
                {"$set": {"last_activity_ms": at_ms}},
                session=session,
            )
            if result.modified_count == 1:
                await self._emit(session, SUBJECT_ACTIVE, events.ZhaduiActive(zhadui_id=zhadui_id, at_ms=at_ms))

        await in_transaction(self._client, write)
        self._outbox.kick()

    async def views(self, user: str, zhadui_ids: Sequence[str]) -> dict[str, View]:
        if not zhadui_ids:
            return {}
        cursor = self._views.find({"_id": {"$in": [f"{user}|{z}" for z in zhadui_ids]}})
        return {doc["zid"]: View(doc.get("seen_ms", 0), bool(doc.get("muted"))) async for doc in cursor}

    async def mark_seen(self, user: str, zhadui_id: str, now_ms: int) -> None:
        await self._views.update_one(
            {"_id": f"{user}|{zhadui_id}"}, {"$max": {"seen_ms": now_ms}, "$set": {"zid": zhadui_id}}, upsert=True
        )

    async def set_muted(self, user: str, zhadui_id: str, muted: bool) -> None:
        await self._views.update_one(
            {"_id": f"{user}|{zhadui_id}"}, {"$set": {"muted": muted, "zid": zhadui_id}}, upsert=True
        )

    async def add_notices(self, users: Sequence[str], zhadui: Zhadui, actor: str, at_ms: int) -> None:
        documents = [
            {
                "_id": f"{user}|{zhadui.zhadui_id}|{actor}",
                "user": user,
                "zid": zhadui.zhadui_id,
                "title": zhadui.title,
                "actor": actor,
                "at_ms": at_ms,
            }
            for user in users
            if user != actor
        ]
        if not documents:
            return
        try:
            await self._notices.insert_many(documents, ordered=False)
        except BulkWriteError as error:
            # Redelivery: the notices that exist already are the same ones.
            if any(e.get("code") != 11000 for e in error.details.get("writeErrors", [])):
                raise

    async def notices(self, user: str, limit: int) -> list[Notice]:
        cursor = self._notices.find({"user": user}, sort=[("at_ms", DESCENDING)], limit=min(limit, MAX_NOTICES_KEPT))
        return [Notice(doc["zid"], doc["title"], doc["actor"], doc["at_ms"]) async for doc in cursor]

    # --- friend graph projection and index loading ----------------------------------------

    async def save_pair(self, state: PairState, version: int) -> bool:
        """Store contacts' pair state if `version` is newer than what is stored."""
        key, a, b = _pair_id(state.user_a, state.user_b)
        document = {
            "a": a,
            "b": b,
            "friends": state.friends,
            "a_blocks_b": state.a_blocks_b,
            "b_blocks_a": state.b_blocks_a,
            "version": version,
        }
        try:
            result = await self._pairs.update_one(
                {"_id": key, "version": {"$lt": version}}, {"$set": document}, upsert=True
            )
        except DuplicateKeyError:
            return False  # the stored version is newer or equal: the upsert collided with it
        return result.modified_count == 1 or result.upserted_id is not None

    async def load_index(self, index: AudienceIndex) -> None:
        async for doc in self._pairs.find({}):
            index.apply_pair(
                PairState(doc["a"], doc["b"], doc["friends"], doc["a_blocks_b"], doc["b_blocks_a"]), doc["version"]
            )
        projection = {"creator": 1, "last_activity_ms": 1, "status": 1, "room_id": 1}
        async for doc in self._zhaduis.find({}, projection):
            index.apply_zhadui(
                doc["_id"], doc["creator"], doc["last_activity_ms"], Status(doc["status"]), doc.get("room_id", "")
            )
        async for doc in self._participants.find({}, {"zid": 1, "user": 1, "state": 1, "changed_ms": 1}):
            index.apply_membership(doc["zid"], doc["user"], doc["state"] == "joined", doc.get("changed_ms", 0))
