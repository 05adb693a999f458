"""Composition root of the auth service: builds its parts from the shared runtime and serves them."""

from __future__ import annotations

from laiwang.auth.v1 import auth_pb2
from plumbing import streams
from plumbing.service import Runtime, ServiceParts, run_service
from services.auth.api import AuthApi
from services.auth.store import AuthStore


async def build(runtime: Runtime) -> ServiceParts:
    store = AuthStore(runtime.db)
    api = AuthApi()
    return ServiceParts(
        service_names=[auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name],
        registrations=[api.register],
        indexes=store.indexes(),
        produces=[streams.AUTH],
    )


def main() -> None:
    run_service("auth", build)
