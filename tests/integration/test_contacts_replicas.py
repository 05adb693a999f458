"""Two contacts replicas on one database: the durable consumer hands each auth event to one of
them, and the other still matches the number (it picks the write up from the shared collection).
A pepper rotated on one replica reaches the other too.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import nats
import pytest

from laiwang.contacts.v1 import contacts_pb2 as pb
from laiwang.contacts.v1 import contacts_pb2_grpc
from laiwang.events.v1 import auth_events_pb2
from plumbing import streams
from plumbing.jetstream import ensure_stream
from services.contacts.core import lookup_hash
from tests.integration.test_contacts_service import _serving, eventually
from tests.support import free_port

pytestmark = pytest.mark.integration

SERVER = "laiwang.test"


@pytest.fixture
async def replicas(
    nats_url: str, mongo_uri: str, fresh_db_name: str
) -> AsyncIterator[list[contacts_pb2_grpc.ContactsServiceStub]]:
    processes, channels, stubs = [], [], []
    try:
        for _ in range(2):
            port = free_port()
            env = {
                **os.environ,
                "GRPC_PORT": str(port),
                "METRICS_PORT": str(free_port()),
                "MONGO_URI": mongo_uri,
                "MONGO_DB": fresh_db_name,
                "NATS_URL": nats_url,
                "SERVER_NAME": SERVER,
                "LOG_LEVEL": "WARNING",
                "CONTACTS_HASH_KEY": "replica-test-hash-key-0123456789",
                "AUTH_ADDR": f"127.0.0.1:{free_port()}",
            }
            process = subprocess.Popen(  # noqa: ASYNC220 - long-lived children, started once per test
                [sys.executable, "-m", "services.contacts"],
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            processes.append(process)
            deadline = time.monotonic() + 60
            while not await _serving(port):
                assert process.poll() is None and time.monotonic() < deadline, "contacts replica did not start"
                await asyncio.sleep(0.1)
            channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
            channels.append(channel)
            stubs.append(contacts_pb2_grpc.ContactsServiceStub(channel))
        yield stubs
    finally:
        for channel in channels:
            await channel.close()
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


async def test_every_replica_matches_every_verified_number(replicas, nats_url: str) -> None:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_stream(js, streams.AUTH)
    people = {}
    for i in range(8):
        user = f"@r{i}-{uuid.uuid4().hex[:6]}:{SERVER}"
        number = f"+86137{int(uuid.uuid4().int % 100_000_000):08d}"
        people[number] = user
        await replicas[0].SetDiscoverability(
            pb.SetDiscoverabilityRequest(user_id=user, discoverability=pb.DISCOVERABILITY_EVERYONE)
        )
        await js.publish(
            "laiwang.auth.phone_verified",
            auth_events_pb2.PhoneVerified(
                user_id=user, msisdn=number, verified_at_ms=int(time.time() * 1000)
            ).SerializeToString(),
            headers={"Nats-Msg-Id": uuid.uuid4().hex},
        )
    viewer = f"@viewer-{uuid.uuid4().hex[:6]}:{SERVER}"
    await js.publish(
        "laiwang.auth.phone_verified",
        auth_events_pb2.PhoneVerified(
            user_id=viewer,
            msisdn=f"+86136{int(uuid.uuid4().int % 100_000_000):08d}",
            verified_at_ms=int(time.time() * 1000),
        ).SerializeToString(),
        headers={"Nats-Msg-Id": uuid.uuid4().hex},
    )
    await nc.close()

    for stub in replicas:

        async def all_matched(stub=stub) -> bool:
            try:
                reply = await stub.UploadContacts(
                    pb.UploadContactsRequest(user_id=viewer, mode=pb.UPLOAD_MODE_REPLACE, add=list(people))
                )
            except grpc.aio.AioRpcError as error:  # the viewer's own phone is still on its way
                if error.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.UNAVAILABLE):
                    return False
                raise
            return {m.address: m.user_id for m in reply.matches} == people

        await eventually(all_matched)

    # Rotation on one replica: the other adopts the new pepper and answers hashed lookups with it.
    rotated = (await replicas[0].RotatePepper(pb.RotatePepperRequest())).lookup_pepper

    async def second_adopted() -> bool:
        return (await replicas[1].GetHashDetails(pb.GetHashDetailsRequest())).lookup_pepper == rotated

    await eventually(second_adopted)
    hashes = {lookup_hash(number, rotated): user for number, user in people.items()}
    for stub in replicas:
        reply = await stub.LookupHashes(
            pb.LookupHashesRequest(user_id=viewer, algorithm="sha256", pepper=rotated, addresses=list(hashes))
        )
        assert {m.address: m.user_id for m in reply.matches} == hashes
