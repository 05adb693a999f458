"""MongoDB helpers on PyMongo's async API: one database per service, indexes at start-up, transactions."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar

from pymongo import AsyncMongoClient, IndexModel, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.collection import AsyncCollection
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import PyMongoError

from plumbing.errors import StartupError

T = TypeVar("T")
IndexPlan = Mapping[str, Sequence[IndexModel]]


async def connect_mongo(uri: str, db_name: str, timeout_ms: int = 5000) -> tuple[AsyncMongoClient, AsyncDatabase]:
    """Connect and prove the server answers, or fail with a one-line StartupError naming MONGO_URI."""
    client: AsyncMongoClient = AsyncMongoClient(
        uri,
        serverSelectionTimeoutMS=timeout_ms,
        connectTimeoutMS=timeout_ms,
        tz_aware=True,
        uuidRepresentation="standard",
        appname=db_name,
    )
    try:
        await client.admin.command("ping")
    except PyMongoError as exc:
        await client.close()
        reason = str(exc).split(",")[0].split("(configured timeouts")[0].strip()
        raise StartupError(f"cannot reach MongoDB at {_redact(uri)} (MONGO_URI): {reason}") from None
    return client, client[db_name]


def _redact(uri: str) -> str:
    """Hide credentials in a URI before it reaches a log line."""
    if "@" not in uri:
        return uri
    scheme, _, rest = uri.partition("://")
    return f"{scheme}://***@{rest.split('@', 1)[1]}"


async def ensure_indexes(db: AsyncDatabase, plan: IndexPlan) -> None:
    """Create the declared indexes (idempotent: existing identical indexes are left alone)."""
    for collection, indexes in plan.items():
        if indexes:
            await db[collection].create_indexes(list(indexes))


async def in_transaction(client: AsyncMongoClient, work: Callable[[AsyncClientSession], Awaitable[T]]) -> T:
    """Run `work` in a multi-document transaction, retrying on transient errors.

    Everything `work` writes with the given session commits together or not at all; that is what
    keeps a state change and its outbox event from drifting apart.
    """
    async with client.start_session() as session:
        return await session.with_transaction(work)


async def upsert_by_id(
    collection: AsyncCollection,
    key: Any,
    update: Mapping[str, Any],
    session: AsyncClientSession | None = None,
) -> dict[str, Any]:
    """Apply `update` to the document with `_id` `key`, creating it if missing; the document as written.

    Not one upserting find_one_and_update: when two callers upsert a new `_id` at once, the embedded
    Mongo-wire server applies both updates but answers the one that lost the insert with no
    document, and a re-read cannot recover the post-image of a `$inc`. An update of an existing
    document always answers with it, so the first write of a key creates the document (its
    `$setOnInsert` fields only; losing that race is harmless) and then updates it.
    """
    by_id = {"_id": key}
    after = ReturnDocument.AFTER
    doc = await collection.find_one_and_update(by_id, update, return_document=after, session=session)
    if doc is None:
        seed = dict(update.get("$setOnInsert") or {"_id": key})
        await collection.update_one(by_id, {"$setOnInsert": seed}, upsert=True, session=session)
        doc = await collection.find_one_and_update(by_id, update, return_document=after, session=session)
    if doc is None:
        raise RuntimeError(f"{collection.name} {key!r} was deleted while it was being written")
    return doc
