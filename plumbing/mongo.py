"""MongoDB helpers on PyMongo's async API: one database per service, indexes at start-up, transactions."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from pymongo import AsyncMongoClient, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
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
