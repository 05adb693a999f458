"""Readiness that covers a service's gRPC dependencies.

A service that cannot work without another one (zhadui without messaging, for its discussion
rooms) must not report SERVING while that one is unreachable or wrongly configured: a load
balancer or `laiwang run` would send it traffic it can only fail. `DependencyGate` asks each
dependency's standard health service and reports the result to the server's own health.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Mapping

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from plumbing.grpc_client import open_channel

log = logging.getLogger(__name__)

SetServing = Callable[[bool], Awaitable[None]]


class DependencyGate:
    """NOT_SERVING until every dependency answers SERVING; back to NOT_SERVING once one has failed
    `misses_allowed` checks in a row (one lost check is not an outage)."""

    def __init__(
        self, dependencies: Mapping[str, str], interval: float = 1.0, timeout: float = 1.0, misses_allowed: int = 3
    ) -> None:
        self._dependencies = dict(dependencies)  # name -> address
        self._interval = interval
        self._timeout = timeout
        self._misses_allowed = misses_allowed

    async def run(self, set_serving: SetServing) -> None:
        channels = {name: open_channel(address) for name, address in self._dependencies.items()}
        serving: bool | None = None
        misses = 0
        try:
            while True:
                down = [
                    name
                    for name, ok in zip(
                        channels,
                        await asyncio.gather(*(self._healthy(channel) for channel in channels.values())),
                        strict=True,
                    )
                    if not ok
                ]
                misses = 0 if not down else misses + 1
                wanted = not down or (serving is True and misses < self._misses_allowed)
                if wanted != serving:
                    await set_serving(wanted)
                    if wanted:
                        log.info("dependencies serving: ready", extra={"dependencies": sorted(channels)})
                    else:
                        log.warning(
                            "dependency not serving: not ready",
                            extra={"down": down, "addresses": [self._dependencies[n] for n in down]},
                        )
                    serving = wanted
                # Before the first success, check often so start-up is quick.
                await asyncio.sleep(self._interval if serving else min(self._interval, 0.2))
        finally:
            for channel in channels.values():
                await channel.close()

    async def _healthy(self, channel: grpc.aio.Channel) -> bool:
        try:
            reply = await health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(), timeout=self._timeout
            )
        except grpc.aio.AioRpcError:
            return False
        return reply.status == health_pb2.HealthCheckResponse.SERVING
