"""Composition root of the zhadui service: builds its parts from the shared runtime and serves them."""

from __future__ import annotations

from laiwang.zhadui.v1 import zhadui_pb2
from plumbing import streams
from plumbing.service import Runtime, ServiceParts, run_service
from services.zhadui.api import ZhaduiApi
from services.zhadui.store import ZhaduiStore


async def build(runtime: Runtime) -> ServiceParts:
    store = ZhaduiStore(runtime.db)
    api = ZhaduiApi()
    return ServiceParts(
        service_names=[zhadui_pb2.DESCRIPTOR.services_by_name["ZhaduiService"].full_name],
        registrations=[api.register],
        indexes=store.indexes(),
        produces=[streams.ZHADUI],
    )


def main() -> None:
    run_service("zhadui", build)
