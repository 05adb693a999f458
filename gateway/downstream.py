"""gRPC channels from the gateway to every service, and their health."""

from __future__ import annotations

import asyncio

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from plumbing.grpc_client import open_channel


class Downstream:
    """One channel per service, opened once and shared by every request."""

    def __init__(self, addresses: dict[str, str]) -> None:
        self.addresses = dict(addresses)
        self.channels = {name: open_channel(address) for name, address in addresses.items()}

    async def health(self, timeout: float = 1.0) -> dict[str, str]:
        """Each service's gRPC health status name (SERVING, NOT_SERVING, UNREACHABLE)."""

        async def check(name: str) -> tuple[str, str]:
            stub = health_pb2_grpc.HealthStub(self.channels[name])
            try:
                reply = await stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=timeout)
            except grpc.aio.AioRpcError:
                return name, "UNREACHABLE"
            return name, health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)

        return dict(await asyncio.gather(*(check(name) for name in self.channels)))

    async def close(self) -> None:
        for channel in self.channels.values():
            await channel.close()
