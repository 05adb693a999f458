"""Composition root of the zhadui service: builds its parts from the shared runtime and serves them."""

from __future__ import annotations

import asyncio
import logging
import time

from laiwang.zhadui.v1 import zhadui_pb2
from plumbing import streams
from plumbing.config import Env, default_address
from plumbing.grpc_client import open_channel
from plumbing.ids import sortable_id
from plumbing.service import Runtime, ServiceParts, run_service
from services.zhadui.api import ZhaduiApi
from services.zhadui.clients import MessagingRooms
from services.zhadui.core import DEV_CURSOR_KEY, AudienceIndex, ZhaduiCore
from services.zhadui.events import (
    DISCUSSIONS,
    FRIEND_GRAPH,
    OWN_EVENTS,
    IndexFollower,
    discussion_handler,
    friend_graph_handler,
    own_event_handler,
)
from services.zhadui.store import MongoZhaduiStore

log = logging.getLogger(__name__)


async def build(runtime: Runtime) -> ServiceParts:
    env = Env()
    archive_after = env.float("ZHADUI_ARCHIVE_AFTER_SECONDS", 7 * 24 * 3600.0, minimum=1.0)
    archive_every = env.float("ZHADUI_ARCHIVE_SWEEP_SECONDS", 60.0, minimum=0.1)
    per_hour = env.int("ZHADUI_CREATIONS_PER_HOUR", 20, minimum=1)
    activity_resolution = env.float("ZHADUI_ACTIVITY_RESOLUTION_SECONDS", 5.0, minimum=0.0)
    messaging = env.address("MESSAGING_ADDR", default_address("messaging"))
    cursor_key = env.str("ZHADUI_CURSOR_KEY", DEV_CURSOR_KEY.decode()).encode()

    store = MongoZhaduiStore(runtime.db, runtime.outbox)
    core = ZhaduiCore(
        store=store,
        rooms=MessagingRooms(open_channel(messaging)),
        index=AudienceIndex(),
        new_id=sortable_id,
        creations_per_hour=per_hour,
        activity_resolution_ms=int(activity_resolution * 1000),
        cursor_key=cursor_key,
    )
    follower = IndexFollower(core, store, runtime.nats)
    await follower.start()

    async def archive_forever() -> None:
        while True:
            await asyncio.sleep(archive_every)
            try:
                archived = await core.archive_idle(time.time_ns() // 1_000_000, int(archive_after * 1000))
            except Exception:
                log.warning("archive sweep failed; next sweep retries", exc_info=True)
                continue
            if archived:
                log.info("archived idle zhaduis", extra={"count": archived})

    return ServiceParts(
        service_names=[zhadui_pb2.DESCRIPTOR.services_by_name["ZhaduiService"].full_name],
        registrations=[ZhaduiApi(core).register],
        indexes=store.indexes(),
        produces=[streams.ZHADUI],
        consumers=[
            (OWN_EVENTS, own_event_handler(core)),
            (FRIEND_GRAPH, friend_graph_handler(core)),
            (DISCUSSIONS, discussion_handler(core)),
        ],
        background=[archive_forever],
        stop=[follower.stop],
        depends_on={"messaging": messaging},  # every discussion is a messaging room
    )


def main() -> None:
    run_service("zhadui", build)
