"""Repository of end-to-end encryption data, in the messaging service's database.

Collections:
  e2e_devices    signed device keys, one document per (user, device)
  e2e_otks       one-time keys, one document per key (claimed = deleted)
  e2e_fallback   fallback keys, one per (user, device, algorithm), with `used`
  e2e_signing    cross-signing keys, one document per user
  e2e_changes    the sequence at which a user's keys last changed, one document per user
  e2e_inbox      to-device messages with their `seq`; `_id` is (recipient, device, sender,
                 sender device, txn id), so a retried send stores nothing new
  e2e_backups    key backup versions; e2e_backup_keys their encrypted sessions
  counters       `e2e`: the sequence, incremented in the same transaction as what it orders
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pymongo import ASCENDING, AsyncMongoClient, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from plumbing.mongo import IndexPlan, upsert_by_id
from services.messaging.e2e import better_session
from services.messaging.rules import JSON

T = TypeVar("T")
SEQ = "e2e"


def _dev(user_id: str, device_id: str) -> str:
    return f"{user_id}|{device_id}"


class E2eMongoStore:
    def __init__(self, client: AsyncMongoClient, db: AsyncDatabase) -> None:
        self.client = client
        self.db = db

    @staticmethod
    def indexes() -> IndexPlan:
        return {
            "e2e_devices": [IndexModel([("user_id", ASCENDING)])],
            "e2e_otks": [IndexModel([("dev", ASCENDING), ("algorithm", ASCENDING)])],
            "e2e_fallback": [IndexModel([("dev", ASCENDING)])],
            "e2e_changes": [IndexModel([("seq", ASCENDING)])],
            "e2e_inbox": [IndexModel([("dev", ASCENDING), ("seq", ASCENDING)])],
            "e2e_backup_keys": [IndexModel([("backup", ASCENDING), ("room_id", ASCENDING)])],
        }

    async def _tx(self, work: Callable[[AsyncClientSession], Awaitable[T]]) -> T:
        async with self.client.start_session() as session:
            # with_transaction retries on write conflicts (two writers taking the next sequence).
            return await session.with_transaction(work)

    async def _next_seq(self, session: AsyncClientSession, count: int = 1) -> int:
        doc = await upsert_by_id(self.db.counters, SEQ, {"$inc": {"seq": count}}, session=session)
        return int(doc["seq"])

    async def head(self) -> int:
        doc = await self.db.counters.find_one({"_id": SEQ})
        return int(doc.get("seq", 0)) if doc else 0

    # -- device, one-time, fallback and cross-signing keys -------------------------------------------

    async def device_keys(self, user_id: str, device_id: str) -> JSON | None:
        doc = await self.db.e2e_devices.find_one({"_id": _dev(user_id, device_id)})
        return doc["keys"] if doc else None

    async def _changed(self, session: AsyncClientSession, user_id: str) -> None:
        seq = await self._next_seq(session)
        await self.db.e2e_changes.update_one({"_id": user_id}, {"$set": {"seq": seq}}, upsert=True, session=session)

    async def put_device_keys(self, user_id: str, device_id: str, keys: JSON) -> None:
        async def work(session: AsyncClientSession) -> None:
            await self.db.e2e_devices.replace_one(
                {"_id": _dev(user_id, device_id)},
                {"user_id": user_id, "device_id": device_id, "keys": keys},
                upsert=True,
                session=session,
            )
            await self._changed(session, user_id)

        await self._tx(work)

    async def add_one_time_keys(self, user_id: str, device_id: str, keys: dict[str, Any]) -> None:
        dev = _dev(user_id, device_id)
        for key_id, key in keys.items():
            algorithm = key_id.partition(":")[0]
            # A key id uploaded again keeps its first value (clients re-send after a lost answer).
            with contextlib.suppress(DuplicateKeyError):
                await self.db.e2e_otks.insert_one(
                    {"_id": f"{dev}|{key_id}", "dev": dev, "algorithm": algorithm, "key_id": key_id, "key": key}
                )

    async def put_fallback_keys(self, user_id: str, device_id: str, keys: dict[str, Any]) -> None:
        dev = _dev(user_id, device_id)
        for key_id, key in keys.items():
            algorithm = key_id.partition(":")[0]
            await self.db.e2e_fallback.replace_one(
                {"_id": f"{dev}|{algorithm}"},
                {"dev": dev, "algorithm": algorithm, "key_id": key_id, "key": key, "used": False},
                upsert=True,
            )

    async def key_counts(self, user_id: str, device_id: str) -> tuple[dict[str, int], list[str]]:
        dev = _dev(user_id, device_id)
        counts: dict[str, int] = {"signed_curve25519": 0}
        async for doc in self.db.e2e_otks.find({"dev": dev}, projection={"algorithm": 1}):
            counts[doc["algorithm"]] = counts.get(doc["algorithm"], 0) + 1
        unused = sorted([doc["algorithm"] async for doc in self.db.e2e_fallback.find({"dev": dev, "used": False})])
        return counts, unused

    async def devices_of(self, user_ids: list[str]) -> list[JSON]:
        if not user_ids:
            return []
        return await self.db.e2e_devices.find({"user_id": {"$in": user_ids}}).to_list()

    async def cross_signing(self, user_ids: list[str]) -> list[JSON]:
        if not user_ids:
            return []
        docs = await self.db.e2e_signing.find({"_id": {"$in": user_ids}}).to_list()
        return [{**doc, "user_id": doc["_id"]} for doc in docs]

    async def put_cross_signing(self, user_id: str, keys: JSON) -> bool:
        async def work(session: AsyncClientSession) -> bool:
            existing = await self.db.e2e_signing.find_one({"_id": user_id}, session=session)
            if (
                existing
                and "master_key" in existing
                and existing["master_key"] != keys.get("master_key", existing["master_key"])
            ):
                return False
            await self.db.e2e_signing.update_one({"_id": user_id}, {"$set": keys}, upsert=True, session=session)
            await self._changed(session, user_id)
            return True

        return await self._tx(work)

    async def claim(self, user_id: str, device_id: str, algorithm: str) -> tuple[str, Any] | None:
        dev = _dev(user_id, device_id)
        doc = await self.db.e2e_otks.find_one_and_delete({"dev": dev, "algorithm": algorithm})
        if doc is None:  # the fallback key, until the device replaces it
            doc = await self.db.e2e_fallback.find_one_and_update(
                {"_id": f"{dev}|{algorithm}"}, {"$set": {"used": True}}
            )
        return (doc["key_id"], doc["key"]) if doc else None

    async def changed_since(self, since: int, upto: int) -> list[str]:
        cursor = self.db.e2e_changes.find({"seq": {"$gt": since, "$lte": upto}})
        return [doc["_id"] async for doc in cursor]

    # -- to-device ----------------------------------------------------------------------------------

    async def send_to_device(self, messages: list[JSON]) -> None:
        async def work(session: AsyncClientSession) -> None:
            ids = [m["_id"] for m in messages]
            seen = {d["_id"] async for d in self.db.e2e_inbox.find({"_id": {"$in": ids}}, {"_id": 1}, session=session)}
            new = [m for m in messages if m["_id"] not in seen]
            if not new:
                return
            last = await self._next_seq(session, len(new))
            docs = [
                {**m, "dev": _dev(m["user_id"], m["device_id"]), "seq": last - len(new) + 1 + i}
                for i, m in enumerate(new)
            ]
            await self.db.e2e_inbox.insert_many(docs, session=session)

        await self._tx(work)

    async def take_to_device(self, user_id: str, device_id: str, since: int, upto: int, limit: int) -> list[JSON]:
        """Messages after `since`; those up to `since` were acknowledged by the client's token."""
        dev = _dev(user_id, device_id)
        if since:
            await self.db.e2e_inbox.delete_many({"dev": dev, "seq": {"$lte": since}})
        return await self.db.e2e_inbox.find(
            {"dev": dev, "seq": {"$gt": since, "$lte": upto}}, sort=[("seq", ASCENDING)], limit=limit
        ).to_list()

    # -- key backup ----------------------------------------------------------------------------------

    async def backup(self, user_id: str, version: str = "") -> JSON | None:
        if version:
            return await self.db.e2e_backups.find_one({"_id": f"{user_id}|{version}", "deleted": False})
        docs = await self.db.e2e_backups.find({"user_id": user_id, "deleted": False}).to_list()
        return max(docs, key=lambda d: int(d["version"]), default=None)

    async def create_backup(self, user_id: str, algorithm: str, auth_data: JSON) -> str:
        async def work(session: AsyncClientSession) -> str:
            counter = await upsert_by_id(self.db.counters, f"backup|{user_id}", {"$inc": {"seq": 1}}, session=session)
            version = str(counter["seq"])
            await self.db.e2e_backups.insert_one(
                {
                    "_id": f"{user_id}|{version}",
                    "user_id": user_id,
                    "version": version,
                    "algorithm": algorithm,
                    "auth_data": auth_data,
                    "etag": 0,
                    "count": 0,
                    "deleted": False,
                },
                session=session,
            )
            return version

        return await self._tx(work)

    async def update_backup(self, user_id: str, version: str, auth_data: JSON) -> None:
        await self.db.e2e_backups.update_one({"_id": f"{user_id}|{version}"}, {"$set": {"auth_data": auth_data}})

    async def delete_backup(self, user_id: str, version: str) -> None:
        await self.db.e2e_backups.update_one({"_id": f"{user_id}|{version}"}, {"$set": {"deleted": True}})
        await self.db.e2e_backup_keys.delete_many({"backup": f"{user_id}|{version}"})

    async def backup_keys(self, user_id: str, version: str, room_id: str, session_id: str) -> list[JSON]:
        query: JSON = {"backup": f"{user_id}|{version}"}
        if room_id:
            query["room_id"] = room_id
        if session_id:
            query["session_id"] = session_id
        return await self.db.e2e_backup_keys.find(query).to_list()

    async def _recount(self, backup: str) -> None:
        count = await self.db.e2e_backup_keys.count_documents({"backup": backup})
        await self.db.e2e_backups.update_one({"_id": backup}, {"$set": {"count": count}, "$inc": {"etag": 1}})

    async def put_backup_keys(self, user_id: str, version: str, keys: list[tuple[str, str, JSON]]) -> None:
        backup = f"{user_id}|{version}"
        for room_id, session_id, data in keys:
            key = f"{backup}|{room_id}|{session_id}"
            old = await self.db.e2e_backup_keys.find_one({"_id": key})
            if better_session(data, old["data"] if old else None):
                await self.db.e2e_backup_keys.replace_one(
                    {"_id": key},
                    {"backup": backup, "room_id": room_id, "session_id": session_id, "data": data},
                    upsert=True,
                )
        await self._recount(backup)

    async def delete_backup_keys(self, user_id: str, version: str, room_id: str, session_id: str) -> None:
        backup = f"{user_id}|{version}"
        query: JSON = {"backup": backup}
        if room_id:
            query["room_id"] = room_id
        if session_id:
            query["session_id"] = session_id
        await self.db.e2e_backup_keys.delete_many(query)
        await self._recount(backup)
