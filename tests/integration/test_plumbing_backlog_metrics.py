"""Backlog gauges the PrometheusRule alerts use (outbox backlog, JetStream consumer lag), and the
cluster stream settings (replicas, storage, max age), against a real NATS and Mongo-wire server."""

from __future__ import annotations

import asyncio
import contextlib
import uuid

import pytest
from google.protobuf.wrappers_pb2 import StringValue
from nats.aio.msg import Msg
from nats.js.api import StorageType
from nats.js.errors import NotFoundError
from prometheus_client import REGISTRY, generate_latest

from plumbing.jetstream import ConsumerSpec, DurableConsumer, EventPublisher, connect_nats, ensure_stream
from plumbing.mongo import connect_mongo, ensure_indexes, in_transaction
from plumbing.outbox import OUTBOX_INDEXES, Outbox
from plumbing.streams import StreamSettings, StreamSpec

pytestmark = pytest.mark.integration


@pytest.fixture
def stream() -> StreamSpec:
    tag = uuid.uuid4().hex[:10]
    return StreamSpec(name=f"TEST_{tag}", subjects=(f"test.{tag}.>",))


@pytest.fixture
async def js(nats_url: str, stream: StreamSpec):
    nc = await connect_nats(nats_url, "test")
    js = nc.jetstream()
    yield js
    with contextlib.suppress(NotFoundError):  # the refused-R3 test never created it
        await js.delete_stream(stream.name)
    await nc.close()


def sample(name: str, **labels: str) -> float | None:
    return REGISTRY.get_sample_value(name, labels)


async def test_outbox_backlog_gauges_count_unpublished_events_and_their_age(js, stream, mongo_uri, fresh_db_name):
    await ensure_stream(js, stream)
    client, db = await connect_mongo(mongo_uri, fresh_db_name)
    try:
        await ensure_indexes(db, OUTBOX_INDEXES)
        outbox = Outbox(db, EventPublisher(js))
        subject = stream.subjects[0].replace(">", "thing")

        async def change(session) -> None:
            for n in range(3):
                await outbox.add(session, subject, StringValue(value=str(n)))

        await in_transaction(client, change)
        await outbox.observe_backlog()
        assert sample("outbox_pending_events") == 3
        assert sample("outbox_oldest_event_age_seconds") >= 0
        # The exported text carries the names the alerts in deploy/k8s/base refer to.
        text = generate_latest().decode()
        assert "outbox_pending_events 3.0" in text
        assert "outbox_oldest_event_age_seconds" in text

        # The relay exports what each page it reads holds: 3 waiting, then none.
        assert await outbox.relay_once() == 3
        assert sample("outbox_pending_events") == 3
        assert await outbox.relay_once() == 0
        assert sample("outbox_pending_events") == 0
        assert sample("outbox_oldest_event_age_seconds") == 0
        await outbox.observe_backlog()
        assert sample("outbox_pending_events") == 0
    finally:
        await client.drop_database(fresh_db_name)
        await client.close()


async def test_consumer_lag_gauges_follow_the_servers_consumer_info(js, stream) -> None:
    await ensure_stream(js, stream)
    subject = stream.subjects[0].replace(">", "thing")
    publisher = EventPublisher(js)
    for n in range(5):
        await publisher.publish(subject, b"x", msg_id=f"m{n}")
    durable = f"lag-{uuid.uuid4().hex[:8]}"
    handled: list[Msg] = []
    release = asyncio.Event()
    first = asyncio.Event()

    async def handler(msg: Msg) -> None:
        handled.append(msg)
        first.set()
        await release.wait()  # hold the first message: the other 4 are pending, 1 awaits its ack

    consumer = DurableConsumer(
        js, ConsumerSpec(stream=stream, durable=durable, filter_subject=stream.subjects[0], batch=1), handler
    )
    await consumer.start()
    try:
        await asyncio.wait_for(first.wait(), 10)
        # Observed before each fetch; the first fetch ran with all 5 undelivered.
        assert sample("jetstream_consumer_pending_messages", consumer=durable) == 5
        assert sample("jetstream_consumer_ack_pending_messages", consumer=durable) == 0
        # Polled again on demand: 4 undelivered, 1 delivered and not acked.
        consumer._lag_polled_at = float("-inf")
        await consumer._observe_lag()
        assert sample("jetstream_consumer_pending_messages", consumer=durable) == 4
        assert sample("jetstream_consumer_ack_pending_messages", consumer=durable) == 1
        assert f'jetstream_consumer_pending_messages{{consumer="{durable}"}}' in generate_latest().decode()
    finally:
        release.set()
        await consumer.stop()


async def test_stream_settings_set_replicas_storage_and_max_age(js, stream) -> None:
    await ensure_stream(js, stream, StreamSettings(replicas=1, storage="memory", max_age_seconds=3600))
    config = (await js.stream_info(stream.name)).config
    assert config.num_replicas == 1
    assert config.storage == StorageType.MEMORY
    assert config.max_age == 3600

    # The defaults are the one-node setup the stream always had: file storage, the spec's 7 days.
    other = StreamSpec(name=f"{stream.name}_D", subjects=(f"{stream.subjects[0][:-2]}_d.>",))
    await ensure_stream(js, other)
    try:
        config = (await js.stream_info(other.name)).config
        assert config.storage == StorageType.FILE
        assert config.max_age == 7 * 24 * 3600
        assert config.num_replicas == 1
    finally:
        await js.delete_stream(other.name)


async def test_a_one_node_server_refuses_r3_streams_loudly(js, stream) -> None:
    # STREAM_REPLICAS=3 is for a 3-node cluster; against one node, start-up fails instead of
    # silently running unreplicated.
    with pytest.raises(Exception, match=r"(?i)replica|insufficient|cluster"):
        await ensure_stream(js, stream, StreamSettings(replicas=3))
