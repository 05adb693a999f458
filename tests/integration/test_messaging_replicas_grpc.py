"""Two messaging replicas (separate processes) on one database and one NATS, driven over gRPC.

Writes go to both replicas at once; both must agree on one order per room, every sync position
must only move forward, wake-ups must reach the user's subject, and every event must reach the
MESSAGING JetStream stream through the outbox.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import orjson
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from laiwang.events.v1 import messaging_events_pb2
from laiwang.messaging.v1 import messaging_pb2 as pb
from laiwang.messaging.v1 import messaging_pb2_grpc
from plumbing.jetstream import connect_nats
from plumbing.streams import wake_subject
from tests.support import eventually, free_port

pytestmark = pytest.mark.integration

BIN = Path(sys.executable).parent
ALICE, BOB = "@alice:t", "@bob:t"


@pytest.fixture(scope="module")
def own_nats(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A NATS of our own: the replicas' durable consumers must not meet other tests' streams."""
    port = free_port()
    process = subprocess.Popen(
        [
            str(BIN / "nats-server"),
            "-a",
            "127.0.0.1",
            "-p",
            str(port),
            "-js",
            "-sd",
            str(tmp_path_factory.mktemp("nats-replicas")),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield f"nats://127.0.0.1:{port}"
    process.terminate()
    process.wait(10)


async def _serving(port: int, process: asyncio.subprocess.Process) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert process.returncode is None, "messaging replica exited"
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
        except grpc.aio.AioRpcError:
            pass
        await asyncio.sleep(0.1)
    raise AssertionError("replica did not become ready")


@pytest.fixture
async def replicas(own_nats: str, mongo_uri: str, fresh_db_name: str) -> AsyncIterator[list]:
    processes, stubs, channels = [], [], []
    for _ in range(2):
        port = free_port()
        env = {
            **os.environ,
            "GRPC_PORT": str(port),
            "METRICS_PORT": str(free_port()),
            "MONGO_URI": mongo_uri,
            "MONGO_DB": fresh_db_name,
            "NATS_URL": own_nats,
            "SERVER_NAME": "t",
            "LOG_LEVEL": "WARNING",
            "MESSAGING_INVITE_POLICY": "anyone",
        }
        process = await asyncio.create_subprocess_exec(sys.executable, "-m", "services.messaging", env=env)
        processes.append(process)
        await _serving(port, process)
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        channels.append(channel)
        stubs.append(messaging_pb2_grpc.MessagingServiceStub(channel))
    yield stubs
    for channel in channels:
        await channel.close()
    for process in processes:
        process.terminate()
        await asyncio.wait_for(process.wait(), 20)


def _who(user_id: str) -> pb.Requester:
    return pb.Requester(user_id=user_id, device_id="DEV")


def _send(user_id: str, room_id: str, txn: str, body: str) -> pb.SendEventRequest:
    return pb.SendEventRequest(
        requester=_who(user_id),
        room_id=room_id,
        event_type="m.room.message",
        txn_id=txn,
        content_json=orjson.dumps({"msgtype": "m.text", "body": body}),
    )


async def test_two_replicas_agree_on_one_order_and_publish_everything(replicas, own_nats: str) -> None:
    one, two = replicas
    nc = await connect_nats(own_nats, "test")
    woken: list[int] = []

    async def on_wake(msg) -> None:
        woken.append(int(msg.data))

    await nc.subscribe(wake_subject(BOB), cb=on_wake)
    await nc.flush()

    created = await one.CreateRoom(
        pb.CreateRoomRequest(requester=_who(ALICE), body_json=orjson.dumps({"invite": [BOB]}))
    )
    room = created.room_id
    await two.ChangeMembership(
        pb.ChangeMembershipRequest(requester=_who(BOB), room_id=room, action=pb.MEMBERSHIP_ACTION_JOIN)
    )
    first = await two.Sync(pb.SyncRequest(requester=_who(BOB), timeline_limit=100))

    # 40 messages, alternating replicas, all in flight at once; a retried txn on the other replica.
    sends = [(one if i % 2 else two).SendEvent(_send(ALICE, room, f"t{i}", f"m{i}")) for i in range(40)]
    ids = [r.event_id for r in await asyncio.gather(*sends)]
    retried = await one.SendEvent(_send(ALICE, room, "t2", "m2"))
    assert retried.event_id == ids[2]
    assert len(set(ids)) == 40

    head = max(woken) if woken else 0
    views = []
    for stub in (one, two):
        reply = await stub.Sync(
            pb.SyncRequest(requester=_who(BOB), since=first.next_batch, timeline_limit=100, min_position=head)
        )
        body = orjson.loads(reply.body_json)
        events = body["rooms"]["join"][room]["timeline"]["events"]
        views.append([e["event_id"] for e in events if e["type"] == "m.room.message"])
        assert reply.next_batch > first.next_batch or len(reply.next_batch) > len(first.next_batch)
    assert views[0] == views[1]  # one order, whichever replica answers
    assert sorted(views[0]) == sorted(ids)
    assert woken, "no wake-up reached Bob's subject"

    history = await two.Messages(pb.MessagesRequest(requester=_who(BOB), room_id=room, dir="b", limit=100))
    backwards = [e["event_id"] for e in orjson.loads(history.body_json)["chunk"] if e["type"] == "m.room.message"]
    assert backwards == views[0][::-1]

    # Every event reached the MESSAGING stream (outbox relay), in a form other services can read.
    js = nc.jetstream()
    subscription = await js.pull_subscribe("laiwang.messaging.room_event", durable="test-reader", stream="MESSAGING")
    seen: dict[str, int] = {}
    for _ in range(100):
        try:
            batch = await subscription.fetch(100, timeout=0.5)
        except Exception:
            batch = []
        for msg in batch:
            event = messaging_events_pb2.RoomEventPersisted.FromString(msg.data)
            seen[event.event_id] = event.stream_position
            await msg.ack()
        if set(ids) <= set(seen):
            break
    assert set(ids) <= set(seen)
    positions = [seen[i] for i in views[0]]
    assert positions == sorted(positions)
    await nc.close()


async def test_errors_carry_the_matrix_errcode(replicas) -> None:
    one, _ = replicas
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await one.SendEvent(_send(ALICE, "!missing:t", "x", "hello"))
    assert caught.value.code() == grpc.StatusCode.NOT_FOUND
    assert ("laiwang-errcode", "M_NOT_FOUND") in tuple(caught.value.trailing_metadata())
    room = (await one.CreateRoom(pb.CreateRoomRequest(requester=_who(ALICE), body_json=b"{}"))).room_id
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await one.SendEvent(
            pb.SendEventRequest(
                requester=_who(ALICE),
                room_id=room,
                event_type="m.room.message",
                txn_id="f",
                content_json=b'{"msgtype":"m.text","body":"x","v":0.1}',
            )
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert ("laiwang-errcode", "M_BAD_JSON") in tuple(caught.value.trailing_metadata())
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await one.SendEvent(_send(BOB, room, "y", "not a member"))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_stream_relay_is_leased_resumes_from_its_cursor_and_never_duplicates(
    own_nats: str, mongo_uri: str, fresh_db_name: str
) -> None:
    from pymongo import AsyncMongoClient

    from plumbing.jetstream import ensure_stream
    from plumbing.mongo import ensure_indexes
    from plumbing.streams import MESSAGING
    from services.messaging.core import Messaging, Settings
    from services.messaging.events import StreamRelay
    from services.messaging.store import MessagingStore

    client: AsyncMongoClient = AsyncMongoClient(mongo_uri, tz_aware=True)
    store = MessagingStore(client, client[fresh_db_name])
    await ensure_indexes(store.db, store.indexes())
    nc = await connect_nats(own_nats, "test")
    js = nc.jetstream()
    await ensure_stream(js, MESSAGING)
    await js.purge_stream("MESSAGING")
    core = Messaging(store, settings=Settings(server_name="t", invite_policy="anyone"))
    await core.start()
    try:
        room = await core.create_room(ALICE, {"name": "relay"})
        for i in range(5):
            await core.send_event(ALICE, "D", room, "m.room.message", f"r{i}", b'{"msgtype":"m.text","body":"x"}')
        first = StreamRelay(store, js, "replica-a", lease_seconds=0.5)  # nothing in memory: reads the database
        second = StreamRelay(store, js, "replica-b", lease_seconds=0.5)
        assert await first.relay_once() > 0
        assert await second.relay_once() == 0  # the lease is taken
        head = await store.head()
        assert (await store.db.counters.find_one({"_id": "relay"}))["cursor"] == head

        for i in range(3):
            await core.send_event(ALICE, "D", room, "m.room.message", f"s{i}", b'{"msgtype":"m.text","body":"y"}')
        # replica-a "crashes"; after its lease runs out, replica-b resumes from the stored cursor.
        await store.db.counters.update_one({"_id": "relay"}, {"$inc": {"cursor": -2}})  # as if it died mid-pass

        async def second_takes_over() -> bool:  # replica-a's 0.5 s lease runs out
            return await second.relay_once() > 0

        await eventually(second_takes_over, timeout=10)
        info = await js.stream_info("MESSAGING")
        events = await store.db.entries.count_documents({"kind": "event"})
        assert info.state.messages == events  # re-published ones were dropped by message id
    finally:
        await core.stop()
        await nc.close()
        await client.drop_database(fresh_db_name)
        await client.close()
