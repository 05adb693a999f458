"""Composition root of the messaging service: builds its parts from the shared runtime and serves them."""

from __future__ import annotations

from laiwang.messaging.v1 import messaging_pb2
from plumbing import streams
from plumbing.service import Runtime, ServiceParts, run_service
from services.messaging.api import MessagingApi
from services.messaging.store import MessagingStore


async def build(runtime: Runtime) -> ServiceParts:
    store = MessagingStore(runtime.db)
    api = MessagingApi()
    return ServiceParts(
        service_names=[messaging_pb2.DESCRIPTOR.services_by_name["MessagingService"].full_name],
        registrations=[api.register],
        indexes=store.indexes(),
        produces=[streams.MESSAGING],
    )


def main() -> None:
    run_service("messaging", build)
