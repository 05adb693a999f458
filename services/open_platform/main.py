"""Composition root of the open_platform service: builds its parts from the shared runtime and serves them."""

from __future__ import annotations

from laiwang.open_platform.v1 import open_platform_pb2
from plumbing import streams
from plumbing.service import Runtime, ServiceParts, run_service
from services.open_platform.api import OpenPlatformApi
from services.open_platform.store import OpenPlatformStore


async def build(runtime: Runtime) -> ServiceParts:
    store = OpenPlatformStore(runtime.db)
    api = OpenPlatformApi()
    return ServiceParts(
        service_names=[open_platform_pb2.DESCRIPTOR.services_by_name["OpenPlatformService"].full_name],
        registrations=[api.register],
        indexes=store.indexes(),
        produces=[streams.OPEN_PLATFORM],
    )


def main() -> None:
    run_service("open_platform", build)
