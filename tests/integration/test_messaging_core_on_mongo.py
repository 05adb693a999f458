"""The messaging core against the real Mongo-wire server: transactions, positions, cache catch-up."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from pymongo import AsyncMongoClient

from plumbing.domain_errors import DomainError
from plumbing.mongo import ensure_indexes
from services.messaging.core import Messaging, Settings
from services.messaging.store import MessagingStore

pytestmark = pytest.mark.integration

ALICE, BOB, CAROL = "@alice:t", "@bob:t", "@carol:t"


@pytest.fixture
async def store(mongo_uri: str, fresh_db_name: str) -> AsyncIterator[MessagingStore]:
    client: AsyncMongoClient = AsyncMongoClient(mongo_uri, tz_aware=True)
    store = MessagingStore(client, client[fresh_db_name])
    await ensure_indexes(store.db, store.indexes())
    yield store
    await client.drop_database(fresh_db_name)
    await client.close()


async def _core(store: MessagingStore) -> Messaging:
    core = Messaging(store, settings=Settings(server_name="t", invite_policy="anyone"))
    await core.start()
    return core


def _body(text: str) -> bytes:
    return orjson.dumps({"msgtype": "m.text", "body": text})


async def test_room_lifecycle_sync_history_and_idempotent_send(store: MessagingStore) -> None:
    core = await _core(store)
    try:
        room = await core.create_room(ALICE, {"preset": "private_chat", "invite": [BOB]})
        await core.change_membership(BOB, room, "join")
        sends = [core.send_event(ALICE, "D1", room, "m.room.message", f"t{i}", _body(f"m{i}")) for i in range(20)]
        ids = await asyncio.gather(*sends)  # concurrent: group-committed
        assert len(set(ids)) == 20
        again = await core.send_event(ALICE, "D1", room, "m.room.message", "t3", _body("m3"))
        assert again == ids[3]

        first = await core.sync(BOB, "B1", "", timeline_limit=50)
        timeline = first.body["rooms"]["join"][room]["timeline"]["events"]
        bodies = [e["content"]["body"] for e in timeline if e["type"] == "m.room.message"]
        assert sorted(bodies, key=lambda b: int(b[1:])) == [f"m{i}" for i in range(20)]
        assert first.body["rooms"]["join"][room]["unread_notifications"]["notification_count"] == 20

        # A second replica over the same database sees the same stream, from the database.
        other = await _core(store)
        history = await other.messages(BOB, "B1", room, "", "", "b", 5)
        assert [e["content"]["body"] for e in history["chunk"]] == [f"m{i}" for i in (19, 18, 17, 16, 15)]
        assert "end" in history
        more = await other.messages(BOB, "B1", room, history["end"], "", "b", 100)
        assert [e["content"]["body"] for e in more["chunk"] if e["type"] == "m.room.message"][:2] == ["m14", "m13"]
        await other.stop()

        await core.change_membership(ALICE, room, "kick", BOB)
        await core.send_event(ALICE, "D1", room, "m.room.message", "after", _body("after kick"))
        later = await core.sync(BOB, "B1", first.next_batch, timeline_limit=50)
        assert room in later.body["rooms"]["leave"]
        assert room not in later.body["rooms"]["join"]
        left = later.body["rooms"]["leave"][room]["timeline"]["events"]
        left_bodies = [e.get("content", {}).get("body") for e in left]
        assert "after kick" not in left_bodies
        with pytest.raises(DomainError) as err:
            await core.send_event(BOB, "B1", room, "m.room.message", "x", _body("let me in"))
        assert err.value.errcode == "M_FORBIDDEN"
    finally:
        await core.stop()


async def test_nothing_half_written_after_refusals(store: MessagingStore) -> None:
    core = await _core(store)
    try:
        room = await core.create_room(ALICE, {"name": "g"})
        head = await store.head()
        oversized = orjson.dumps({"msgtype": "m.text", "body": "x" * 70000})
        for raw in (b'{"msgtype":"m.text","body":"x","n":1.5}', oversized):
            with pytest.raises(DomainError):
                await core.send_event(ALICE, "D", room, "m.room.message", "bad", raw)
        with pytest.raises(DomainError) as err:
            await core.send_event(CAROL, "D", room, "m.room.message", "c", _body("hi"))
        assert err.value.errcode == "M_FORBIDDEN"
        with pytest.raises(DomainError) as err:
            await core.send_event(ALICE, "D", "!nope:t", "m.room.message", "n", _body("hi"))
        assert err.value.errcode == "M_NOT_FOUND"
        assert await store.head() == head
        assert await store.db.entries.count_documents({"event.type": "m.room.message"}) == 0
    finally:
        await core.stop()
