"""Composition root of the messaging service: builds its parts from the shared runtime and serves them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from typing import Any

from nats.aio.msg import Msg

from laiwang.events.v1 import messaging_events_pb2
from laiwang.messaging.v1 import e2e_pb2, media_pb2, messaging_pb2
from plumbing import streams
from plumbing.config import Env
from plumbing.errors import StartupError
from plumbing.jetstream import EventRouter, Handler
from plumbing.service import Runtime, ServiceParts, run_service
from plumbing.url_guard import Network, parse_networks
from services.messaging.api import MessagingApi
from services.messaging.core import Messaging, Settings
from services.messaging.e2e_api import E2eApi
from services.messaging.e2e_store import E2eMongoStore
from services.messaging.events import (
    CONTACTS_CONSUMER,
    PROFILE_CONSUMER,
    PUSH_CONSUMER,
    NatsNotifier,
    StreamRelay,
    contacts_handler,
    follow_syncing,
    profile_handler,
    start_replication,
)
from services.messaging.media import Access, Media
from services.messaging.media_api import MediaApi
from services.messaging.media_store import GridFsBlobs, MediaRefs
from services.messaging.push import PushSettings
from services.messaging.push_delivery import PushFanout, PushSender, SyncSeen, notifications
from services.messaging.push_store import PushStore
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
        push_allowed_networks=_networks(env),
    )


def _networks(env: Env) -> tuple[Network, ...]:
    try:
        return parse_networks(env.str("PUSH_ALLOWED_NETWORKS", ""))
    except ValueError as exc:
        raise StartupError(f"PUSH_ALLOWED_NETWORKS: {exc}") from None


def push_settings_from_env(env: Env | None = None) -> PushSettings:
    env = env or Env()
    timeout = env.float("PUSH_TIMEOUT_SECONDS", 10.0, minimum=0.1)
    lease = env.float("PUSH_LEASE_SECONDS", 15.0, minimum=0.2)
    if lease <= timeout:
        raise StartupError("PUSH_LEASE_SECONDS must be longer than PUSH_TIMEOUT_SECONDS")
    return PushSettings(
        allowed_networks=_networks(env),
        collapse_ms=env.int("PUSH_COLLAPSE_MS", 1000, minimum=0, maximum=600_000),
        sync_grace_ms=env.int("PUSH_SYNC_GRACE_MS", 1500, minimum=0, maximum=60_000),
        timeout_seconds=timeout,
        lease_seconds=lease,
        max_backoff_seconds=env.float("PUSH_MAX_BACKOFF_SECONDS", 300.0, minimum=1.0),
        give_up_seconds=env.float("PUSH_GIVE_UP_SECONDS", 24 * 3600.0, minimum=1.0),
    )


def push_handler(fanout: PushFanout) -> Handler:
    async def handle(event: messaging_events_pb2.RoomEventPersisted, _: Msg) -> None:
        await fanout.on_room_event(event.room_id, event.event_id, event.stream_position)

    return EventRouter(PUSH_CONSUMER.durable).on(messaging_events_pb2.RoomEventPersisted, handle)


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
    push_store, seen, push_config = PushStore(runtime.db), SyncSeen(), push_settings_from_env(env)
    fanout = PushFanout(core.cache, push_store, push_config, seen)
    sender = PushSender(core.cache, push_store, push_config, seen)
    fanout.on_wanted = sender.kick
    subscriptions.append(await follow_syncing(runtime.nats, lambda user, device, pos: seen.saw(user, device, pos)))

    async def read_notifications(user_id: str, since: str, limit: int, only: str) -> dict[str, Any]:
        return await notifications(core.cache, push_store, user_id, since, limit, only)

    api = MessagingApi(core, read_notifications)
    assert core.e2e is not None
    e2e_api = E2eApi(core.e2e)
    blobs, refs = GridFsBlobs(runtime.db), MediaRefs(runtime.db)
    max_upload = env.int("MEDIA_MAX_UPLOAD_BYTES", 7 * 1024 * 1024, minimum=1024, maximum=7 * 1024 * 1024 + 512 * 1024)
    media = Media(
        blobs, settings.server_name, Access(refs.rooms_referencing, core.memberships, core.is_encrypted), max_upload
    )
    media_api = MediaApi(media)
    indexes = dict(store.indexes())
    for plan in (e2e_store.indexes(), blobs.indexes(), refs.indexes(), push_store.indexes()):
        for collection, models in plan.items():
            indexes[collection] = [*indexes.get(collection, []), *models]
    log.info("messaging ready", extra={"invite_policy": settings.invite_policy, "head": core.cache.head})

    async def every_second() -> None:
        while True:
            await asyncio.sleep(1.0)
            await core.expire_typing()
            await notifier.announce()

    async def stop_replication() -> None:
        for subscription in subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()

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
            (PUSH_CONSUMER, push_handler(fanout)),
        ],
        background=[every_second, periodic_catch_up, relay.run, sender.run],
        stop=[stop_replication, core.stop],  # leave NATS and the writer tidy
    )


def main() -> None:
    run_service("messaging", build)
