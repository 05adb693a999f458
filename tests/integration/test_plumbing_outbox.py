"""Outbox, JetStream publishing and durable consumers against a real NATS and Mongo-wire server."""

from __future__ import annotations

import asyncio
import uuid

import pytest
from google.protobuf.wrappers_pb2 import StringValue
from nats.aio.msg import Msg

from plumbing.jetstream import ConsumerSpec, DurableConsumer, EventPublisher, connect_nats, ensure_stream
from plumbing.mongo import connect_mongo, ensure_indexes, in_transaction
from plumbing.outbox import OUTBOX_INDEXES, Outbox
from plumbing.streams import StreamSpec
from tests.support import eventually

pytestmark = pytest.mark.integration


@pytest.fixture
def stream() -> StreamSpec:
    tag = uuid.uuid4().hex[:10]
    return StreamSpec(name=f"TEST_{tag}", subjects=(f"test.{tag}.>",))


@pytest.fixture
async def bus(nats_url: str, stream: StreamSpec):
    nc = await connect_nats(nats_url, "test")
    js = nc.jetstream()
    await ensure_stream(js, stream)
    yield js
    await js.delete_stream(stream.name)
    await nc.close()


@pytest.fixture
async def mongo(mongo_uri: str, fresh_db_name: str):
    client, db = await connect_mongo(mongo_uri, fresh_db_name)
    await ensure_indexes(db, OUTBOX_INDEXES)
    yield client, db
    await client.drop_database(fresh_db_name)
    await client.close()


async def _all_acked(js, spec: ConsumerSpec, delivered: int) -> None:
    """Wait until the durable has had `delivered` stream messages and acked every one of them."""

    async def settled() -> bool:
        info = await js.consumer_info(spec.stream.name, spec.durable)
        return info.delivered.stream_seq >= delivered and info.num_ack_pending == 0 and info.num_pending == 0

    await eventually(settled)


async def stored_messages(js, stream: StreamSpec) -> int:
    return (await js.stream_info(stream.name)).state.messages


async def test_event_committed_with_its_change_survives_a_crash_before_publishing(bus, mongo, stream) -> None:
    client, db = mongo
    subject = stream.subjects[0].replace(">", "thing_created")

    async def change(session) -> None:
        await db.things.insert_one({"_id": "t1"}, session=session)
        await Outbox(db, EventPublisher(bus)).add(session, subject, StringValue(value="t1"))

    await in_transaction(client, change)
    # The process "crashed" here: the relay never ran. Both the change and its event are durable.
    assert await db.things.count_documents({}) == 1
    assert await db.outbox.count_documents({}) == 1
    assert await stored_messages(bus, stream) == 0

    # A new process's relay finds the pending event and publishes it exactly once.
    restarted = Outbox(db, EventPublisher(bus))
    assert await restarted.relay_once() == 1
    assert await restarted.relay_once() == 0
    assert await db.outbox.count_documents({}) == 0
    assert await stored_messages(bus, stream) == 1


async def test_aborted_transaction_leaves_neither_change_nor_event(bus, mongo, stream) -> None:
    client, db = mongo

    async def change(session) -> None:
        await db.things.insert_one({"_id": "t2"}, session=session)
        await Outbox(db, EventPublisher(bus)).add(session, "test.x", StringValue(value="t2"))
        raise RuntimeError("validation failed after the writes")

    with pytest.raises(RuntimeError):
        await in_transaction(client, change)
    assert await db.things.count_documents({}) == 0
    assert await db.outbox.count_documents({}) == 0


async def test_republishing_the_same_event_id_is_stored_once(bus, stream) -> None:
    publisher = EventPublisher(bus)
    subject = stream.subjects[0].replace(">", "dup")
    await publisher.publish(subject, b"one", msg_id="event-1")
    await publisher.publish(subject, b"one", msg_id="event-1")  # relay retried after a crash
    await publisher.publish(subject, b"two", msg_id="event-2")
    assert await stored_messages(bus, stream) == 2


async def test_relay_kick_publishes_promptly(bus, mongo, stream) -> None:
    client, db = mongo
    outbox = Outbox(db, EventPublisher(bus), poll_seconds=30)  # polling alone would be far too slow
    outbox.start()
    try:

        async def change(session) -> None:
            await outbox.add(session, stream.subjects[0].replace(">", "kicked"), StringValue(value="k"))

        await in_transaction(client, change)
        outbox.kick()
        for _ in range(100):
            if await stored_messages(bus, stream) == 1:
                break
            await asyncio.sleep(0.02)
        assert await stored_messages(bus, stream) == 1
    finally:
        await outbox.stop()


async def test_failing_handler_is_retried_and_acked_events_are_not_redelivered(bus, stream) -> None:
    subject = stream.subjects[0].replace(">", "work")
    publisher = EventPublisher(bus)
    seen: list[str] = []
    failures = {"first": 1}
    done = asyncio.Event()

    async def handler(msg: Msg) -> None:
        body = msg.data.decode()
        seen.append(body)
        if failures.get(body, 0) > 0:
            failures[body] -= 1
            raise RuntimeError("transient failure")
        if seen.count("first") == 2 and "second" in seen:
            done.set()  # the nak'ed "first" came back (after its backoff) and succeeded

    spec = ConsumerSpec(stream=stream, durable=f"d{uuid.uuid4().hex[:8]}", filter_subject=subject)
    consumer = DurableConsumer(bus, spec, handler)
    await consumer.start()
    await publisher.publish(subject, b"first", msg_id="m1")
    await publisher.publish(subject, b"second", msg_id="m2")
    await asyncio.wait_for(done.wait(), 10)
    await _all_acked(bus, spec, delivered=2)
    await consumer.stop()
    assert seen.count("first") == 2
    assert seen.count("second") == 1

    # A consumer with the same durable name (a restarted process) sees only what is new.
    after_restart: list[str] = []
    arrived = asyncio.Event()

    async def second_handler(msg: Msg) -> None:
        after_restart.append(msg.data.decode())
        arrived.set()

    restarted = DurableConsumer(bus, spec, second_handler)
    await restarted.start()
    await publisher.publish(subject, b"third", msg_id="m3")
    await asyncio.wait_for(arrived.wait(), 10)
    # Acked messages are never redelivered: once the server holds nothing pending or unacked for
    # this durable, what the restarted consumer got is all it will get.
    await _all_acked(bus, spec, delivered=3)
    await restarted.stop()
    assert after_restart == ["third"]
