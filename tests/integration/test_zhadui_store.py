"""The zhadui store on the real Mongo-wire server: participations with their events in one
transaction, the versioned pair projection, views, notices, and rebuilding the audience index."""

from __future__ import annotations

import pytest
from google.protobuf.message import Message

from laiwang.events.v1 import zhadui_events_pb2 as events
from plumbing.jetstream import EventPublisher
from plumbing.mongo import connect_mongo, ensure_indexes
from plumbing.outbox import OUTBOX_INDEXES, Outbox
from services.zhadui.core import AudienceIndex, PairState, Status, View, Zhadui
from services.zhadui.store import MongoZhaduiStore

pytestmark = pytest.mark.integration


class UnusedPublisher(EventPublisher):
    """The relay is not started in these tests; events are read from the outbox collection."""

    def __init__(self) -> None:
        pass


@pytest.fixture
async def store(mongo_uri: str, fresh_db_name: str):
    client, db = await connect_mongo(mongo_uri, fresh_db_name)
    store = MongoZhaduiStore(db, Outbox(db, UnusedPublisher()))
    await ensure_indexes(db, {**OUTBOX_INDEXES, **store.indexes()})
    yield store, db
    await client.drop_database(fresh_db_name)
    await client.close()


def zhadui(zid: str = "z1", creator: str = "@a:t", at: int = 1000) -> Zhadui:
    return Zhadui(zid, creator, "title", "", "", "", (), Status.OPEN, at, at, 1, "!room:t")


async def outbox_events(db) -> list[tuple[str, Message]]:
    kinds = {
        "created": events.ZhaduiCreated,
        "joined": events.ZhaduiJoined,
        "left": events.ZhaduiLeft,
        "closed": events.ZhaduiClosed,
        "archived": events.ZhaduiArchived,
        "active": events.ZhaduiActive,
    }
    found = []
    async for doc in db.outbox.find({}, sort=[("_id", 1)]):
        kind = doc["subject"].rsplit(".", 1)[-1]
        found.append((kind, kinds[kind].FromString(doc["data"])))
    return found


async def test_participation_changes_and_their_events_are_written_together(store) -> None:
    store, db = store
    await store.create(zhadui())
    assert [k for k, _ in await outbox_events(db)] == ["created", "joined"]

    assert await store.join("z1", "@b:t", 2000) is True
    assert await store.join("z1", "@b:t", 2001) is False  # already in: nothing written
    assert await store.leave("z1", "@b:t", "", 3000) is True
    assert await store.leave("z1", "@b:t", "", 3001) is False
    assert await store.join("z1", "@b:t", 4000) is True  # a plain leave allows coming back
    assert await store.leave("z1", "@b:t", "@a:t", 5000) is True  # removed by the creator
    assert await store.join("z1", "@b:t", 6000) is False
    assert await store.participant_state("z1", "@b:t") == "removed"

    kinds = [k for k, _ in await outbox_events(db)]
    assert kinds == ["created", "joined", "joined", "left", "joined", "left"]
    removal = (await outbox_events(db))[-1][1]
    assert removal.removed_by == "@a:t" and removal.left_at_ms == 5000
    assert (await store.get("z1")).participant_count == 1
    assert (await store.get("z1")).last_activity_ms == 4000


async def test_status_only_moves_forward_and_says_so_once(store) -> None:
    store, db = store
    await store.create(zhadui())
    assert await store.set_status("z1", Status.CLOSED, 2000) is True
    assert await store.set_status("z1", Status.CLOSED, 2001) is False
    assert await store.set_status("z1", Status.ARCHIVED, 3000) is True
    assert await store.set_status("z1", Status.CLOSED, 4000) is False
    assert [k for k, _ in await outbox_events(db)][-2:] == ["closed", "archived"]


async def test_pair_projection_keeps_only_newer_versions(store) -> None:
    store, _ = store
    friends = PairState("@a:t", "@b:t", friends=True)
    assert await store.save_pair(friends, 2) is True
    assert await store.save_pair(PairState("@a:t", "@b:t"), 1) is False  # older
    assert await store.save_pair(friends, 2) is False  # repeated
    assert await store.save_pair(PairState("@a:t", "@b:t", a_blocks_b=True), 3) is True
    index = AudienceIndex()
    await store.load_index(index)
    assert index.blocked("@b:t", "@a:t") and not index.friends_of("@a:t")


async def test_the_index_is_rebuilt_from_what_was_stored(store) -> None:
    store, _ = store
    await store.save_pair(PairState("@a:t", "@b:t", friends=True), 1)
    await store.save_pair(PairState("@b:t", "@c:t", friends=True), 1)
    await store.create(zhadui("z1", "@a:t", 1000))
    await store.create(zhadui("z2", "@a:t", 1100))
    await store.join("z1", "@b:t", 2000)
    await store.join("z2", "@b:t", 2100)
    await store.leave("z2", "@b:t", "", 2200)
    await store.set_status("z2", Status.ARCHIVED, 3000)

    index = AudienceIndex()
    await store.load_index(index)
    assert index.participants("z1") == {"@a:t", "@b:t"}
    assert index.participants("z2") == {"@a:t"}
    assert index.can_see("@c:t", "z1") and not index.can_see("@c:t", "z2")
    assert index.feed("@b:t", None, 10) == [(2000, "z1")]  # z2 is archived


async def test_views_and_notices(store) -> None:
    store, _ = store
    z = zhadui()
    await store.create(z)
    await store.mark_seen("@b:t", "z1", 500)
    await store.mark_seen("@b:t", "z1", 400)  # never moves back
    await store.set_muted("@b:t", "z1", True)
    assert await store.views("@b:t", ["z1", "z-none"]) == {"z1": View(seen_ms=500, muted=True)}

    await store.add_notices(["@b:t", "@c:t", "@a:t"], z, "@a:t", 1000)
    await store.add_notices(["@b:t"], z, "@a:t", 1000)  # redelivered: no duplicate
    notices = await store.notices("@b:t", 10)
    assert [(n.zhadui_id, n.actor) for n in notices] == [("z1", "@a:t")]
    assert await store.notices("@a:t", 10) == []  # nobody is told about their own join


async def test_discussion_activity_only_moves_forward_and_is_announced_once(store) -> None:
    store, db = store
    await store.create(zhadui("z1", "@a:t", 1000))
    await store.record_activity("z1", 5000)
    await store.record_activity("z1", 4000)  # an older message arriving late changes nothing
    assert (await store.get("z1")).last_activity_ms == 5000
    active = [event for kind, event in await outbox_events(db) if kind == "active"]
    assert [(e.zhadui_id, e.at_ms) for e in active] == [("z1", 5000)]
    assert (await outbox_events(db))[0][1].room_id == "!room:t"

    index = AudienceIndex()
    await store.load_index(index)
    assert index.zhadui_of_room("!room:t") == "z1"
    assert index.activity_of("z1") == 5000
