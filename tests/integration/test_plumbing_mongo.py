"""plumbing.mongo against the real Mongo-wire server."""

from __future__ import annotations

import asyncio

import pytest

from plumbing.mongo import connect_mongo, in_transaction, upsert_by_id

pytestmark = pytest.mark.integration


@pytest.fixture
async def db(mongo_uri: str, fresh_db_name: str):
    client, database = await connect_mongo(mongo_uri, fresh_db_name)
    yield client, database
    await client.drop_database(fresh_db_name)
    await client.close()


async def test_concurrent_first_writes_of_one_id_each_get_their_own_post_image(db) -> None:
    # A plain upserting find_one_and_update answered about a third of these with no document.
    _, database = db
    counters = database.counters

    async def bump(key: str) -> int:
        doc = await upsert_by_id(counters, key, {"$inc": {"n": 1}, "$setOnInsert": {"kind": "test"}})
        return int(doc["n"])

    for i in range(100):
        seen = await asyncio.gather(bump(f"k{i}"), bump(f"k{i}"), bump(f"k{i}"))
        assert sorted(seen) == [1, 2, 3]
    stored = await counters.find({}).to_list()
    assert len(stored) == 100
    assert {(d["n"], d["kind"]) for d in stored} == {(3, "test")}


async def test_inside_a_transaction_the_new_document_commits_with_the_work(db) -> None:
    client, database = db

    async def work(session) -> int:
        doc = await upsert_by_id(database.owners, "@a:x", {"$inc": {"apps": 1}}, session=session)
        return int(doc["apps"])

    assert [await in_transaction(client, work) for _ in range(3)] == [1, 2, 3]
    assert await database.owners.find_one({"_id": "@a:x"}) == {"_id": "@a:x", "apps": 3}
