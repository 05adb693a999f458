"""Composition root of the messaging service: builds its parts from the shared runtime and serves them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid

from laiwang.messaging.v1 import e2e_pb2, media_pb2, messaging_pb2
from plumbing import streams
from plumbing.config import Env
from plumbing.service import Runtime, ServiceParts, run_service
from services.messaging.api import MessagingApi
from services.messaging.core import Messaging, Settings
from services.messaging.e2e_api import E2eApi
from services.messaging.e2e_store import E2eMongoStore
from services.messaging.events import (
    CONTACTS_CONSUMER,
    PROFILE_CONSUMER,
    NatsNotifier,
    StreamRelay,
    contacts_handler,
    profile_handler,
    start_replication,
)
from services.messaging.media import Access, Media
from services.messaging.media_api import MediaApi
from services.messaging.media_store import GridFsBlobs, MediaRefs
from services.messaging.rules import INVITE_POLICIES
from services.messaging.store import MessagingStore

log = logging.getLogger(__name__)


def settings_from_env(server_name: str, env: Env | None = None) -> Settings:
    env = env or Env()
    return Settings(
        server_name=server_name,
        invite_policy=env.choice("MESSAGING_INVITE_POLICY", "friends", INVITE_POLICIES),
        max_batch=env.int("MESSAGING_MAX_BATCH", 128, minimum=1, maximum=4096),
        timeline_cap=env.int("MESSAGING_TIMELINE_CACHE", 256, minimum=1, maximum=100_000),
        max_cached_rooms=env.int("MESSAGING_CACHED_ROOMS", 20_000, minimum=1),
        max_cached_users=env.int("MESSAGING_CACHED_USERS", 50_000, minimum=1),
        relations_cache_seconds=env.float("MESSAGING_RELATIONS_CACHE_SECONDS", 5.0),
    )


async def build(runtime: Runtime) -> ServiceParts:
    settings = settings_from_env(runtime.config.server_name)
    env = Env()
    store = MessagingStore(runtime.mongo, runtime.db)
    replica_id = uuid.uuid4().hex[:12]
    relay = StreamRelay(
        store, runtime.js, replica_id, delay_seconds=env.int("MESSAGING_RELAY_DELAY_MS", 50, minimum=0) / 1000
    )
    notifier = NatsNotifier(runtime.nats, replica_id)
    e2e_store = E2eMongoStore(runtime.mongo, runtime.db)
    core = Messaging(store, notifier, settings, on_commit=relay.kick, on_applied=relay.remember, e2e_store=e2e_store)
    await core.start()
    subscriptions = await start_replication(runtime.nats, core, notifier)
    api = MessagingApi(core)
    assert core.e2e is not None
    e2e_api = E2eApi(core.e2e)
    blobs, refs = GridFsBlobs(runtime.db), MediaRefs(runtime.db)
    max_upload = env.int("MEDIA_MAX_UPLOAD_BYTES", 7 * 1024 * 1024, minimum=1024, maximum=7 * 1024 * 1024 + 512 * 1024)
    media = Media(
        blobs, settings.server_name, Access(refs.rooms_referencing, core.memberships, core.is_encrypted), max_upload
    )
    media_api = MediaApi(media)
    indexes = store.indexes()
    for plan in (e2e_store.indexes(), blobs.indexes(), refs.indexes()):
        for collection, models in plan.items():
            indexes[collection] = [*indexes.get(collection, []), *models]
    log.info("messaging ready", extra={"invite_policy": settings.invite_policy, "head": core.cache.head})

    async def every_second() -> None:
        try:
            while True:
                await asyncio.sleep(1.0)
                await core.expire_typing()
                await notifier.announce()
        finally:  # background jobs are cancelled at shutdown: leave NATS and the writer tidy
            for subscription in subscriptions:
                with contextlib.suppress(Exception):
                    await subscription.unsubscribe()
            await core.stop()

    async def periodic_catch_up() -> None:
        # Covers replication messages lost on a NATS reconnect: at most a second behind.
        while True:
            await asyncio.sleep(1.0)
            try:
                await core.cache.catch_up()
            except Exception:
                log.warning("catch-up failed", exc_info=True)

    return ServiceParts(
        service_names=[
            messaging_pb2.DESCRIPTOR.services_by_name["MessagingService"].full_name,
            e2e_pb2.DESCRIPTOR.services_by_name["E2eService"].full_name,
            media_pb2.DESCRIPTOR.services_by_name["MediaService"].full_name,
        ],
        registrations=[api.register, e2e_api.register, media_api.register],
        indexes=indexes,
        produces=[streams.MESSAGING],
        consumers=[
            (CONTACTS_CONSUMER, contacts_handler(store, notifier.relation_changed)),
            (PROFILE_CONSUMER, profile_handler(core)),
        ],
        background=[every_second, periodic_catch_up, relay.run],
    )


def main() -> None:
    run_service("messaging", build)
