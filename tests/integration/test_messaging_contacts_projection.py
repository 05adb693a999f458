"""Contacts' friend-graph events, published to a real NATS JetStream, drive messaging's invite policy.

The durable consumer and handler are messaging's own (services/messaging/events.py); the stream is
a private one per test so other tests' contacts events cannot interfere.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
from pymongo import AsyncMongoClient

from laiwang.events.v1 import contacts_events_pb2 as ce
from plumbing.domain_errors import DomainError
from plumbing.jetstream import ConsumerSpec, DurableConsumer, connect_nats, ensure_stream
from plumbing.mongo import ensure_indexes
from plumbing.streams import StreamSpec
from services.messaging.core import Messaging, Settings
from services.messaging.events import contacts_handler
from services.messaging.rules import pair_id
from services.messaging.store import MessagingStore

pytestmark = pytest.mark.integration

ALICE, BOB = "@alice:t", "@bob:t"


@pytest.fixture
async def setup(nats_url: str, mongo_uri: str, fresh_db_name: str) -> AsyncIterator[tuple]:
    tag = uuid.uuid4().hex[:10]
    stream = StreamSpec(name=f"CONTACTS_{tag}", subjects=(f"t{tag}.contacts.>",))
    nc = await connect_nats(nats_url, "test")
    js = nc.jetstream()
    await ensure_stream(js, stream)
    client: AsyncMongoClient = AsyncMongoClient(mongo_uri, tz_aware=True)
    store = MessagingStore(client, client[fresh_db_name])
    await ensure_indexes(store.db, store.indexes())
    changed: list[str] = []

    async def on_change(pair: str) -> None:
        changed.append(pair)

    consumer = DurableConsumer(
        js,
        ConsumerSpec(stream, durable=f"m{tag}", filter_subject=f"t{tag}.contacts.>"),
        contacts_handler(store, on_change),
    )
    await consumer.start()
    core = Messaging(store, settings=Settings(server_name="t", invite_policy="friends", relations_cache_seconds=0))
    await core.start()

    async def publish(kind: str, event) -> None:
        await js.publish(f"t{tag}.contacts.{kind}", event.SerializeToString())

    yield core, store, publish, changed
    await core.stop()
    await consumer.stop()
    await js.delete_stream(stream.name)
    await nc.close()
    await client.drop_database(fresh_db_name)
    await client.close()


async def _until(predicate, seconds: float = 10.0) -> None:
    for _ in range(int(seconds / 0.05)):
        if await predicate():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("condition not reached")


def _state(friends: bool, a_blocks_b: bool = False, b_blocks_a: bool = False) -> ce.PairState:
    a, b = sorted((ALICE, BOB))
    return ce.PairState(user_a=a, user_b=b, friends=friends, a_blocks_b=a_blocks_b, b_blocks_a=b_blocks_a)


async def test_projection_follows_versions_and_drives_the_friends_policy(setup) -> None:
    core, store, publish, changed = setup
    pair = pair_id(ALICE, BOB)
    a, b = sorted((ALICE, BOB))

    with pytest.raises(DomainError) as refused:
        await core.create_room(ALICE, {"is_direct": True, "invite": [BOB]})
    assert refused.value.errcode == "M_FORBIDDEN"

    await publish("friendship_created", ce.FriendshipCreated(user_a=a, user_b=b, version=2, state=_state(True)))
    await _until(lambda: _has(store, pair, version=2))
    room = await core.create_room(ALICE, {"is_direct": True, "invite": [BOB]})
    await core.change_membership(BOB, room, "join")
    await core.send_event(ALICE, "d", room, "m.room.message", "1", b'{"msgtype":"m.text","body":"hi"}')

    # An older event arriving late (redelivery, reordering) changes nothing.
    await publish("friendship_removed", ce.FriendshipRemoved(user_a=a, user_b=b, version=1, state=_state(False)))
    # A block by Bob (newer version) stops messages both ways in the direct chat.
    blocked = _state(True, a_blocks_b=(a == BOB), b_blocks_a=(b == BOB))
    await publish("user_blocked", ce.UserBlocked(blocker=BOB, blocked=ALICE, version=3, state=blocked))
    await _until(lambda: _has(store, pair, version=3))
    assert (await store.relation(pair))["friends"] is True  # the stale removal was ignored
    for sender in (ALICE, BOB):
        with pytest.raises(DomainError) as refused:
            await core.send_event(sender, "d", room, "m.room.message", f"x{sender}", b'{"msgtype":"m.text","body":"?"}')
        assert refused.value.errcode == "M_FORBIDDEN"

    # The same event delivered again is harmless, and unblocking restores the chat.
    await publish("user_blocked", ce.UserBlocked(blocker=BOB, blocked=ALICE, version=3, state=blocked))
    await publish("user_unblocked", ce.UserUnblocked(blocker=BOB, blocked=ALICE, version=4, state=_state(True)))
    await _until(lambda: _has(store, pair, version=4))
    await core.send_event(ALICE, "d", room, "m.room.message", "2", b'{"msgtype":"m.text","body":"again"}')
    assert changed.count(pair) == 3  # versions 2, 3 and 4; the stale and repeated events changed nothing


async def _has(store: MessagingStore, pair: str, version: int) -> bool:
    doc = await store.relation(pair)
    return doc is not None and doc["version"] >= version
