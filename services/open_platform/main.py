"""Composition root of the open_platform service: builds its parts from the shared runtime and serves them."""

from __future__ import annotations

from laiwang.open_platform.v1 import open_platform_pb2
from plumbing import streams
from plumbing.config import Env
from plumbing.ids import sortable_id
from plumbing.service import Runtime, ServiceParts, run_service
from services.open_platform.api import OpenPlatformApi
from services.open_platform.core import AppRegistry
from services.open_platform.store import MongoAppStore


async def build(runtime: Runtime) -> ServiceParts:
    env = Env()
    # Development only: lets webhooks reach a partner app on loopback over plain http.
    allow_loopback = env.bool("OPEN_PLATFORM_ALLOW_LOOPBACK_WEBHOOKS", False)
    store = MongoAppStore(runtime.db, runtime.outbox)
    registry = AppRegistry(store, new_id=sortable_id)
    api = OpenPlatformApi(registry, runtime.config.server_name, allow_loopback)
    return ServiceParts(
        service_names=[open_platform_pb2.DESCRIPTOR.services_by_name["OpenPlatformService"].full_name],
        registrations=[api.register],
        indexes=store.indexes(),
        produces=[streams.OPEN_PLATFORM],
    )


def main() -> None:
    run_service("open_platform", build)
