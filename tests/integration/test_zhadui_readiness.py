"""Zhadui's readiness covers messaging, which it cannot work without: a real zhadui process against
real NATS and the Mongo-wire server, and a real gRPC health service standing in for messaging."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from tests.support import eventually, free_port, stop_process

pytestmark = pytest.mark.integration

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


async def _status(port: int) -> int | None:
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return reply.status
    except grpc.aio.AioRpcError:
        return None  # not listening yet


async def _fake_messaging(port: int) -> grpc.aio.Server:
    server = grpc.aio.server()
    servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    await servicer.set("", SERVING)
    return server


async def test_zhadui_is_ready_only_while_messaging_serves(nats_url: str, mongo_uri: str, tmp_path: Path) -> None:
    port, messaging_port = free_port(), free_port()
    env = {
        **os.environ,
        "GRPC_PORT": str(port),
        "METRICS_PORT": str(free_port()),
        "MONGO_URI": mongo_uri,
        "MONGO_DB": f"zhadui_{uuid.uuid4().hex[:8]}",
        "NATS_URL": nats_url,
        "SERVER_NAME": "laiwang.test",
        "MESSAGING_ADDR": f"127.0.0.1:{messaging_port}",
    }  # nothing listens there yet: a wrong address
    with open(tmp_path / "zhadui.log", "wb") as log:  # noqa: ASYNC230 - once
        process = subprocess.Popen(  # noqa: ASYNC220
            [sys.executable, "-m", "services.zhadui"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    messaging: grpc.aio.Server | None = None
    try:
        deadline = time.monotonic() + 60
        while (status := await _status(port)) is None:
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "zhadui.log").read_text()
            await asyncio.sleep(0.1)
        assert status == NOT_SERVING  # listening, but without messaging it can only fail

        messaging = await _fake_messaging(messaging_port)

        async def status_is(wanted: int) -> bool:
            return await _status(port) == wanted

        await eventually(lambda: status_is(SERVING))
        await messaging.stop(None)
        messaging = None
        await eventually(lambda: status_is(NOT_SERVING))  # it stayed unreachable: not ready again
    finally:
        if messaging is not None:
            await messaging.stop(None)
        stop_process(process, timeout=20)
