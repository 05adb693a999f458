"""The push store on the real Mongo-wire server: asking for pokes is idempotent per (event,
pushkey) and keeps only the newest event per (pusher, room); a claim is exclusive; a delivery
recorded while a newer event arrived leaves the newer one pending; notifications are stored once."""

from __future__ import annotations

import pytest

from plumbing.mongo import connect_mongo, ensure_indexes
from services.messaging.push_store import PushStore, poke_id

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(mongo_uri: str, fresh_db_name: str):
    client, db = await connect_mongo(mongo_uri, fresh_db_name)
    store = PushStore(db)
    await ensure_indexes(db, store.indexes())
    yield store
    await client.drop_database(fresh_db_name)
    await client.close()


def _poke(room: str = "!r:t") -> dict:
    return {"_id": poke_id("pusher1", room), "user": "@b:t", "room_id": room, "pusher": "pusher1", "device_id": "D"}


async def test_wanting_is_idempotent_and_keeps_the_newest_event(store: PushStore) -> None:
    await store.want([(_poke(), False, 100)], 5, "$e5")
    await store.want([(_poke(), False, 100)], 5, "$e5")  # a redelivered event
    await store.want([(_poke(), True, 50)], 3, "$e3")  # an older event, redelivered late
    [doc] = await store.due(1000, 10)
    assert (doc["want_pos"], doc["want_event"], doc["sent_pos"], doc["due_ms"]) == (5, "$e5", 0, 100)
    assert "high_pos" not in doc  # the older (high) event changed nothing
    await store.want([(_poke(), True, 10), (_poke("!other:t"), False, 10)], 7, "$e7")
    docs = {d["room_id"]: d for d in await store.due(1000, 10)}
    assert (docs["!r:t"]["want_event"], docs["!r:t"]["high_pos"], docs["!r:t"]["due_ms"]) == ("$e7", 7, 100)
    assert docs["!other:t"]["want_event"] == "$e7"


async def test_a_claim_is_exclusive_and_a_newer_event_stays_pending(store: PushStore) -> None:
    await store.want([(_poke(), False, 100)], 5, "$e5")
    [due] = await store.due(1000, 10)
    claimed = await store.claim(due, 1000, 15_000)
    assert claimed is not None and claimed["due_ms"] == 16_000
    assert await store.claim(due, 1000, 15_000) is None  # a second sender gets nothing
    assert await store.due(1000, 10) == []  # nor does the next pass, until the lease ends
    await store.want([(_poke(), False, 1000)], 6, "$e6")  # arrives while $e5 is being sent
    await store.done(claimed, 2000, sent=True)
    [doc] = await store.due(2000, 10)
    assert (doc["pending"], doc["sent_pos"], doc["want_event"], doc["due_ms"]) == (True, 5, "$e6", 2000)
    again = await store.claim(doc, 2000, 15_000)
    assert again is not None
    await store.done(again, 3000, sent=True)
    assert await store.due(10_000, 10) == []
    await store.want([(_poke(), False, 3000)], 6, "$e6")  # a replay after delivery: nothing to send
    assert await store.due(10_000, 10) == []


async def test_notifications_are_stored_once_and_listed_newest_first(store: PushStore) -> None:
    docs = [
        {
            "_id": f"@b:t\x1f$e{i}",
            "user": "@b:t",
            "room_id": "!r:t",
            "event_id": f"$e{i}",
            "pos": i,
            "ts": i,
            "actions": ["notify"],
            "highlight": i == 2,
        }
        for i in (1, 2, 3)
    ]
    await store.add_notifications(docs)
    await store.add_notifications(docs[1:])  # redelivered
    assert [d["pos"] for d in await store.notifications("@b:t", None, 10, False)] == [3, 2, 1]
    assert [d["pos"] for d in await store.notifications("@b:t", 3, 10, False)] == [2, 1]
    assert [d["pos"] for d in await store.notifications("@b:t", None, 10, True)] == [2]
