"""Events the zhadui service consumes.

Durable consumers (each event handled once across replicas, retried until it succeeds):
  - its own joined/left events: notices to friends, discussion-room membership kept in step;
  - contacts' friend-graph events: the `pairs` projection, and blocks taking users out;
  - messaging's room events: a message in a discussion makes its zhadui active.

Index followers (every replica, plain NATS subscriptions on the same subjects): keep this
replica's in-memory AudienceIndex current. Applying is idempotent and newest-wins, so a replay
or a reorder is harmless; after a reconnect (events may have been missed) the index is reloaded.
"""

from __future__ import annotations

import asyncio
import logging
import time

from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from laiwang.events.v1 import messaging_events_pb2 as messaging_events
from laiwang.events.v1 import zhadui_events_pb2 as zhadui_events
from plumbing import streams
from plumbing.jetstream import ConsumerSpec, EventRouter, Handler, UndecodableEvent, decode_event
from services.zhadui.core import AudienceIndex, PairState, Status, ZhaduiCore
from services.zhadui.store import MongoZhaduiStore

log = logging.getLogger(__name__)

OWN_EVENTS = ConsumerSpec(stream=streams.ZHADUI, durable="zhadui-own-events", filter_subject="laiwang.zhadui.>")
FRIEND_GRAPH = ConsumerSpec(stream=streams.CONTACTS, durable="zhadui-friend-graph", filter_subject="laiwang.contacts.>")
DISCUSSIONS = ConsumerSpec(
    stream=streams.MESSAGING, durable="zhadui-discussions", filter_subject="laiwang.messaging.room_event", batch=256
)
# Posts count as activity; membership, state and redactions do not.
_ACTIVITY_TYPES = frozenset({"m.room.message", "m.room.encrypted", "m.sticker"})


def _pair_change(event: streams.PairStateEvent) -> tuple[PairState, int]:
    s = event.state
    return PairState(s.user_a, s.user_b, s.friends, s.a_blocks_b, s.b_blocks_a), event.version


def own_event_handler(core: ZhaduiCore) -> Handler:
    async def joined(event: zhadui_events.ZhaduiJoined, _: Msg) -> None:
        await core.on_joined(event.zhadui_id, event.user_id, event.joined_at_ms)

    async def left(event: zhadui_events.ZhaduiLeft, _: Msg) -> None:
        await core.on_left(event.zhadui_id, event.user_id, removed=bool(event.removed_by))

    return EventRouter(OWN_EVENTS.durable).on(zhadui_events.ZhaduiJoined, joined).on(zhadui_events.ZhaduiLeft, left)


def friend_graph_handler(core: ZhaduiCore) -> Handler:
    async def changed(event: streams.PairStateEvent, _: Msg) -> None:
        await core.on_pair_changed(*_pair_change(event), now_ms=time.time_ns() // 1_000_000)

    # Contacts publishes other events zhadui does not need.
    return EventRouter(FRIEND_GRAPH.durable).on_each(streams.PAIR_STATE_EVENTS, changed)


def discussion_handler(core: ZhaduiCore) -> Handler:
    async def persisted(event: messaging_events.RoomEventPersisted, _: Msg) -> None:
        if event.type in _ACTIVITY_TYPES and not event.HasField("state_key"):
            await core.on_discussion_message(event.room_id, event.origin_server_ts)

    return EventRouter(DISCUSSIONS.durable).on(messaging_events.RoomEventPersisted, persisted)


def apply_to_index(index: AudienceIndex, msg: Msg) -> None:
    """Apply one zhadui or contacts event to an index (idempotent)."""
    try:
        event = decode_event(msg.subject, msg.data)
    except UndecodableEvent:
        log.error("audience index: undecodable event on %s; skipped", msg.subject)
        return
    match event:
        case _ if isinstance(event, streams.PAIR_STATE_EVENTS):
            index.apply_pair(*_pair_change(event))
        case zhadui_events.ZhaduiCreated():
            index.apply_zhadui(event.zhadui_id, event.creator_user_id, event.created_at_ms, Status.OPEN, event.room_id)
        case zhadui_events.ZhaduiJoined():
            index.apply_membership(event.zhadui_id, event.user_id, True, event.joined_at_ms)
        case zhadui_events.ZhaduiLeft():
            index.apply_membership(event.zhadui_id, event.user_id, False, event.left_at_ms)
        case zhadui_events.ZhaduiActive():
            index.apply_zhadui(event.zhadui_id, "", event.at_ms, Status.OPEN)  # status never moves back
        case zhadui_events.ZhaduiClosed():
            index.apply_zhadui(event.zhadui_id, "", 0, Status.CLOSED)
        case zhadui_events.ZhaduiArchived():
            index.apply_zhadui(event.zhadui_id, "", 0, Status.ARCHIVED)
        # Anything else on these subjects (other contacts events, newer kinds) is not the index's.


class IndexFollower:
    """Loads this replica's AudienceIndex and keeps it current from NATS."""

    SUBJECTS = ("laiwang.zhadui.>", "laiwang.contacts.>")

    def __init__(self, core: ZhaduiCore, store: MongoZhaduiStore, nats: NatsClient) -> None:
        self._core = core
        self._store = store
        self._nats = nats
        self._subscriptions: list[Subscription] = []
        self._buffer: list[Msg] | None = None
        self._reconnects = 0
        self._reloading: asyncio.Task[None] | None = None

    async def start(self) -> None:
        # Subscribe first, so nothing published during the load is missed.
        for subject in self.SUBJECTS:
            self._subscriptions.append(await self._nats.subscribe(subject, cb=self._on_message))
        await self.reload()

    async def reload(self) -> None:
        self._buffer = []
        started = time.perf_counter()
        fresh = AudienceIndex()
        await self._store.load_index(fresh)
        for msg in self._buffer:
            apply_to_index(fresh, msg)
        self._core.index = fresh
        self._buffer = None
        self._reconnects = self._nats.stats.get("reconnects", 0)
        log.info("audience index loaded", extra={**fresh.stats(), "seconds": round(time.perf_counter() - started, 2)})

    async def _on_message(self, msg: Msg) -> None:
        apply_to_index(self._core.index, msg)
        if self._buffer is not None:
            self._buffer.append(msg)
        if self._nats.stats.get("reconnects", 0) != self._reconnects and (
            self._reloading is None or self._reloading.done()
        ):
            self._reconnects = self._nats.stats.get("reconnects", 0)
            log.warning("NATS reconnected: events may have been missed; reloading the audience index")
            self._reloading = asyncio.create_task(self.reload())

    async def stop(self) -> None:
        for subscription in self._subscriptions:
            await subscription.unsubscribe()
