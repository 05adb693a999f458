"""Composition root of the open_platform service: builds its parts from the shared runtime and serves them."""

from __future__ import annotations

from laiwang.open_platform.v1 import open_platform_pb2
from plumbing import streams
from plumbing.config import Env
from plumbing.ids import sortable_id
from plumbing.service import Runtime, ServiceParts, run_service
from services.open_platform.api import OpenPlatformApi
from services.open_platform.authorizations import Authorizations
from services.open_platform.core import AppRegistry
from services.open_platform.oauth import OAuthServer
from services.open_platform.oauth_store import MongoOAuthStore
from services.open_platform.store import MongoAppStore


async def build(runtime: Runtime) -> ServiceParts:
    env = Env()
    # Development only: lets webhooks reach a partner app on loopback over plain http.
    allow_loopback = env.bool("OPEN_PLATFORM_ALLOW_LOOPBACK_WEBHOOKS", False)
    store = MongoAppStore(runtime.db, runtime.outbox)
    registry = AppRegistry(store, new_id=sortable_id)
    oauth_store = MongoOAuthStore(runtime.db, runtime.outbox)
    # Authlib wants an absolute https URI for every request; nothing is derived from it.
    oauth = OAuthServer(store.get, oauth_store, f"https://{runtime.config.server_name}")
    authorizations = Authorizations(store.get, oauth_store)
    api = OpenPlatformApi(registry, runtime.config.server_name, allow_loopback, oauth, authorizations)
    return ServiceParts(
        service_names=[open_platform_pb2.DESCRIPTOR.services_by_name["OpenPlatformService"].full_name],
        registrations=[api.register],
        indexes={**store.indexes(), **oauth_store.indexes()},
        produces=[streams.OPEN_PLATFORM],
    )


def main() -> None:
    run_service("open_platform", build)
