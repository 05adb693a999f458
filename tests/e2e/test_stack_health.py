"""The whole stack, started as `make run` starts it, reports healthy on every port."""

from __future__ import annotations

import aiohttp
import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from plumbing.config import SERVICES

pytestmark = pytest.mark.e2e


async def test_healthz_lists_every_service_as_serving(stack) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{stack.base_url}/healthz") as response:
        body = await response.json()
    assert response.status == 200
    assert body["status"] == "ready"
    assert body["services"] == {name: "SERVING" for name in SERVICES}
    assert body["nats"] == "CONNECTED"


@pytest.mark.parametrize("service", SERVICES)
async def test_each_service_answers_the_standard_grpc_health_check(stack, service: str) -> None:
    async with grpc.aio.insecure_channel(stack.grpc_address(service)) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_matrix_versions_endpoint(stack) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{stack.base_url}/_matrix/client/versions") as response:
        body = await response.json()
    assert response.status == 200
    assert "v1.11" in body["versions"]


async def test_unknown_endpoint_is_a_matrix_error(stack) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{stack.base_url}/_matrix/client/v3/nope") as response:
        body = await response.json()
    assert response.status == 404
    assert body["errcode"] == "M_UNRECOGNIZED"
    assert body["error"]


async def test_livez_answers_without_asking_any_service(stack) -> None:
    async with aiohttp.ClientSession() as http, http.get(f"{stack.base_url}/livez") as response:
        assert response.status == 200
        assert await response.json() == {"status": "alive"}
