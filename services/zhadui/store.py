"""Repository over the zhadui service's own collections; its indexes are declared here.

Collections:
  zhaduis       one document per zhadui
  participants  `<zhadui>|<user>`: state "joined" or "removed" (a plain leave deletes it)
  feed          `<user>|<zhadui>`: the materialised feed (via = friends who take part)
  notices       `<user>|<zhadui>|<actor>`: "a friend joined" notices, de-duplicated
  pairs         `<a>|<b>`: the friend graph / blocks projected from contacts' events, versioned
  friend_edges  `<user>|<friend>`: both directions of each friendship, for friends_of()
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel, UpdateOne
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import BulkWriteError, DuplicateKeyError

from laiwang.events.v1 import zhadui_events_pb2 as events
from plumbing.mongo import IndexPlan, in_transaction
from plumbing.outbox import Outbox
from services.zhadui.core import FeedEntry, Notice, PairState, Status, Zhadui

SUBJECT_CREATED = "laiwang.zhadui.created"
SUBJECT_JOINED = "laiwang.zhadui.joined"
SUBJECT_LEFT = "laiwang.zhadui.left"
SUBJECT_CLOSED = "laiwang.zhadui.closed"
SUBJECT_ARCHIVED = "laiwang.zhadui.archived"
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


def _entry(doc: dict[str, Any]) -> FeedEntry:
    return FeedEntry(
        user=doc["user"],
        zhadui_id=doc["zid"],
        via=list(doc.get("via", [])),
        participant=bool(doc.get("participant")),
        activity_ms=doc.get("activity_ms", 0),
        seen_ms=doc.get("seen_ms", 0),
        muted=bool(doc.get("muted")),
    )


class MongoZhaduiStore:
    def __init__(self, db: AsyncDatabase, outbox: Outbox) -> None:
        self._db = db
        self._client = db.client
        self._outbox = outbox
        self._zhaduis = db["zhaduis"]
        self._participants = db["participants"]
        self._feed = db["feed"]
        self._notices = db["notices"]
        self._pairs = db["pairs"]
        self._edges = db["friend_edges"]

    @staticmethod
    def indexes() -> IndexPlan:
        return {
            "zhaduis": [
                IndexModel([("creator", ASCENDING), ("created_ms", DESCENDING)]),
                IndexModel([("status", ASCENDING), ("last_activity_ms", ASCENDING)]),
            ],
            "participants": [
                IndexModel([("user", ASCENDING), ("state", ASCENDING)]),
                IndexModel([("zid", ASCENDING), ("state", ASCENDING)]),
            ],
            "feed": [
                IndexModel([("user", ASCENDING), ("activity_ms", DESCENDING), ("zid", DESCENDING)]),
                IndexModel([("zid", ASCENDING)]),
            ],
            "notices": [IndexModel([("user", ASCENDING), ("at_ms", DESCENDING)])],
            "friend_edges": [IndexModel([("user", ASCENDING)])],
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
                {"_id": f"{zhadui.zhadui_id}|{zhadui.creator}", "zid": zhadui.zhadui_id, "user": zhadui.creator,
                 "state": "joined", "joined_ms": zhadui.created_ms},
                session=session,
            )
            await self._emit(session, SUBJECT_CREATED, events.ZhaduiCreated(
                zhadui_id=zhadui.zhadui_id, creator_user_id=zhadui.creator, title=zhadui.title,
                created_at_ms=zhadui.created_ms))
            await self._emit(session, SUBJECT_JOINED, events.ZhaduiJoined(
                zhadui_id=zhadui.zhadui_id, user_id=zhadui.creator, joined_at_ms=zhadui.created_ms))

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

    async def participants(self, zhadui_id: str) -> list[str]:
        cursor = self._participants.find({"zid": zhadui_id, "state": "joined"}, {"user": 1})
        return [doc["user"] async for doc in cursor]

    async def joined_by(self, user: str) -> list[Zhadui]:
        ids = [doc["zid"] async for doc in self._participants.find({"user": user, "state": "joined"}, {"zid": 1})]
        return list((await self.get_many(ids)).values())

    async def created_by(self, user: str) -> list[Zhadui]:
        return [_zhadui(doc) async for doc in self._zhaduis.find({"creator": user})]

    async def join(self, zhadui_id: str, user: str, now_ms: int) -> bool:
        async def write(session: AsyncClientSession) -> bool:
            key = f"{zhadui_id}|{user}"
            existing = await self._participants.find_one({"_id": key}, session=session)
            if existing is not None:
                return False
            await self._participants.insert_one(
                {"_id": key, "zid": zhadui_id, "user": user, "state": "joined", "joined_ms": now_ms}, session=session
            )
            await self._zhaduis.update_one(
                {"_id": zhadui_id},
                {"$inc": {"participant_count": 1}, "$max": {"last_activity_ms": now_ms}},
                session=session,
            )
            await self._emit(session, SUBJECT_JOINED,
                             events.ZhaduiJoined(zhadui_id=zhadui_id, user_id=user, joined_at_ms=now_ms))
            return True

        joined = await in_transaction(self._client, write)
        self._outbox.kick()
        return joined

    async def leave(self, zhadui_id: str, user: str, removed_by: str, now_ms: int) -> bool:
        async def write(session: AsyncClientSession) -> bool:
            key = f"{zhadui_id}|{user}"
            if removed_by:
                result = await self._participants.update_one(
                    {"_id": key, "state": "joined"}, {"$set": {"state": "removed", "removed_by": removed_by}},
                    session=session,
                )
                changed = result.modified_count == 1
            else:
                changed = (await self._participants.delete_one({"_id": key, "state": "joined"}, session=session)
                           ).deleted_count == 1
            if not changed:
                return False
            await self._zhaduis.update_one(
                {"_id": zhadui_id}, {"$inc": {"participant_count": -1}}, session=session
            )
            await self._emit(session, SUBJECT_LEFT, events.ZhaduiLeft(
                zhadui_id=zhadui_id, user_id=user, removed_by=removed_by, left_at_ms=now_ms))
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
                await self._emit(session, SUBJECT_ARCHIVED,
                                 events.ZhaduiArchived(zhadui_id=zhadui_id, archived_at_ms=now_ms))
            return True

        changed = await in_transaction(self._client, write)
        self._outbox.kick()
        return changed

    async def set_muted(self, zhadui_id: str, user: str, muted: bool) -> bool:
        result = await self._feed.update_one({"_id": f"{user}|{zhadui_id}"}, {"$set": {"muted": muted}})
        return result.matched_count == 1

    async def idle_since(self, before_ms: int, limit: int) -> list[str]:
        cursor = self._zhaduis.find(
            {"status": {"$in": [Status.OPEN.value, Status.CLOSED.value]}, "last_activity_ms": {"$lt": before_ms}},
            {"_id": 1},
            limit=limit,
        )
        return [doc["_id"] async for doc in cursor]

    # --- feeds ------------------------------------------------------------------------

    async def feed_entry(self, user: str, zhadui_id: str) -> FeedEntry | None:
        doc = await self._feed.find_one({"_id": f"{user}|{zhadui_id}"})
        return _entry(doc) if doc else None

    async def feed_page(self, user: str, after: tuple[int, str] | None, limit: int) -> list[FeedEntry]:
        query: dict[str, Any] = {"user": user}
        if after is not None:
            activity, zid = after
            query["$or"] = [{"activity_ms": {"$lt": activity}}, {"activity_ms": activity, "zid": {"$lt": zid}}]
        cursor = self._feed.find(query, sort=[("activity_ms", DESCENDING), ("zid", DESCENDING)], limit=limit)
        return [_entry(doc) async for doc in cursor]

    async def mark_seen(self, user: str, zhadui_id: str, now_ms: int) -> None:
        await self._feed.update_one({"_id": f"{user}|{zhadui_id}"}, {"$max": {"seen_ms": now_ms}})

    async def add_via(self, zhadui_id: str, users: Sequence[str], via: str, activity_ms: int) -> None:
        if not users:
            return
        await self._feed.bulk_write(
            [
                UpdateOne(
                    {"_id": f"{user}|{zhadui_id}"},
                    {
                        "$addToSet": {"via": via},
                        "$max": {"activity_ms": activity_ms},
                        "$setOnInsert": {"user": user, "zid": zhadui_id, "participant": False, "seen_ms": 0},
                    },
                    upsert=True,
                )
                for user in users
            ],
            ordered=False,
        )

    async def remove_via(self, zhadui_id: str, users: Sequence[str], via: str) -> None:
        if not users:
            return
        ids = [f"{user}|{zhadui_id}" for user in users]
        await self._feed.update_many({"_id": {"$in": ids}}, {"$pull": {"via": via}})
        await self._feed.delete_many({"_id": {"$in": ids}, "via": {"$size": 0}, "participant": False})

    async def put_entry(self, user: str, zhadui_id: str, via: list[str], participant: bool, activity_ms: int) -> None:
        await self._feed.update_one(
            {"_id": f"{user}|{zhadui_id}"},
            {
                "$set": {"user": user, "zid": zhadui_id, "via": via, "participant": participant},
                "$max": {"activity_ms": activity_ms},
                "$setOnInsert": {"seen_ms": 0},
            },
            upsert=True,
        )

    async def drop_entries(self, zhadui_id: str, users: Sequence[str] | None = None) -> None:
        query: dict[str, Any] = {"zid": zhadui_id}
        if users is not None:
            query = {"_id": {"$in": [f"{user}|{zhadui_id}" for user in users]}}
        await self._feed.delete_many(query)

    async def bump_activity(self, zhadui_id: str, activity_ms: int) -> None:
        await self._zhaduis.update_one({"_id": zhadui_id}, {"$max": {"last_activity_ms": activity_ms}})
        await self._feed.update_many({"zid": zhadui_id}, {"$max": {"activity_ms": activity_ms}})

    async def add_notices(self, users: Sequence[str], zhadui: Zhadui, actor: str, at_ms: int) -> None:
        documents = [
            {"_id": f"{user}|{zhadui.zhadui_id}|{actor}", "user": user, "zid": zhadui.zhadui_id,
             "title": zhadui.title, "actor": actor, "at_ms": at_ms}
            for user in users if user != actor
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

    # --- friend graph projection ----------------------------------------------------------

    async def friends_of(self, user: str) -> list[str]:
        return [doc["friend"] async for doc in self._edges.find({"user": user}, {"friend": 1})]

    async def pair(self, user_x: str, user_y: str) -> PairState:
        key, a, b = _pair_id(user_x, user_y)
        doc = await self._pairs.find_one({"_id": key})
        if doc is None:
            return PairState(a, b)
        return PairState(a, b, doc["friends"], doc["a_blocks_b"], doc["b_blocks_a"])

    async def apply_pair(self, state: PairState, version: int) -> PairState | None:
        """Store `state` if `version` is newer than what we have; returns the previous state, or None."""
        key, a, b = _pair_id(state.user_a, state.user_b)
        for _ in range(5):
            current = await self._pairs.find_one({"_id": key})
            if current is not None and current["version"] >= version:
                return None
            document = {"_id": key, "a": a, "b": b, "friends": state.friends, "a_blocks_b": state.a_blocks_b,
                        "b_blocks_a": state.b_blocks_a, "version": version}
            try:
                if current is None:
                    await self._pairs.insert_one(document)
                else:
                    result = await self._pairs.replace_one({"_id": key, "version": current["version"]}, document)
                    if result.matched_count == 0:
                        continue  # another replica applied a newer event meanwhile: look again
            except DuplicateKeyError:
                continue
            await self._apply_edges(a, b, state.friends)
            if current is None:
                return PairState(a, b)
            return PairState(a, b, current["friends"], current["a_blocks_b"], current["b_blocks_a"])
        raise RuntimeError(f"pair {key} kept changing under us")

    async def _apply_edges(self, a: str, b: str, friends: bool) -> None:
        edges = [(a, b), (b, a)]
        if friends:
            await self._edges.bulk_write(
                [UpdateOne({"_id": f"{u}|{f}"}, {"$set": {"user": u, "friend": f}}, upsert=True) for u, f in edges]
            )
        else:
            await self._edges.delete_many({"_id": {"$in": [f"{u}|{f}" for u, f in edges]}})
