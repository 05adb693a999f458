"""Events the messaging service produces and consumes (NATS).

Produces:
  - `laiwang.messaging.room_event` (JetStream): every persisted room event, published by the
    `StreamRelay` tailing the `entries` stream (see its docstring for why not the shared outbox).
  - wake-ups on core NATS `laiwang.wake.<hash>` for each affected user (no data; the gateway
    re-runs /sync), published right after commit.
  - replication between replicas of this service on core NATS `laiwang.internal.messaging.*`
    (outside every stream): committed entries and typing changes, so each replica's cache
    advances without reading the database; a missed message only means a catch-up read.
Consumes:
  - the contacts service's friend-graph events (stream CONTACTS) into the `relations` projection.
  - auth's `profile_changed` (stream AUTH) into the `profiles` projection, and from it new
    m.room.member events in every room the user is joined to (profile propagation).
  - its own `room_event`s (durable `messaging-push`) for push delivery (push_delivery.py), and the
    gateways' `laiwang.presence.syncing` (core NATS) to spare a syncing device its pokes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable

import orjson
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js import JetStreamContext

from laiwang.events.v1 import auth_events_pb2, gateway_events_pb2, messaging_events_pb2
from plumbing.jetstream import MSG_ID_HEADER, ConsumerSpec, EventRouter, Handler
from plumbing.metrics import EVENTS_PUBLISHED
from plumbing.streams import AUTH, CONTACTS, MESSAGING, PAIR_STATE_EVENTS, SYNCING_SUBJECT, PairStateEvent, wake_subject
from services.messaging.core import Messaging
from services.messaging.rules import JSON, MEMBER, canonical_bytes, now_ms, pair_id, parse_sync_token
from services.messaging.store import MessagingStore

log = logging.getLogger(__name__)

ROOM_EVENT_SUBJECT = "laiwang.messaging.room_event"
REPLICATION_PREFIX = "laiwang.internal.messaging"
CONTACTS_CONSUMER = ConsumerSpec(CONTACTS, durable="messaging-relations", filter_subject="laiwang.contacts.>")
PROFILE_CONSUMER = ConsumerSpec(AUTH, durable="messaging-profiles", filter_subject="laiwang.auth.profile_changed")
# Push delivery (push_delivery.py): every room event, retried for days rather than dropped after
# ten tries (a poke that is given up on is a message a sleeping phone never hears of), and from
# the stream's end when first created (history must not wake phones). One message per fetch: a
# fetch of n waits, once the first message is in, until n arrived or its timeout (1 s) passed,
# which a trickle of messages would pay in push latency; under load each fetch still returns at once.
# Eight workers: events fan out independently (`want_pos` makes out-of-order handling safe), and one
# at a time the store round trips capped the fan-out near 20-40 events/s (docs/push.md, "Speed").
PUSH_CONSUMER = ConsumerSpec(
    MESSAGING,
    durable="messaging-push",
    filter_subject=ROOM_EVENT_SUBJECT,
    max_deliver=10_000,
    batch=1,
    only_new=True,
    workers=8,
)


def profile_handler(core: Messaging) -> Handler:
    """auth's ProfileChanged -> member events with the new displayname/avatar_url in every joined
    room. Idempotent: rooms whose member event already shows the profile get nothing."""

    async def handle(event: auth_events_pb2.ProfileChanged, _: Msg) -> None:
        if not event.user_id:
            return
        rooms = await core.profile_changed(event.user_id, event.display_name, event.avatar_url)
        log.debug("profile of %s sent into %d rooms", event.user_id, rooms)

    return EventRouter(PROFILE_CONSUMER.durable).on(auth_events_pb2.ProfileChanged, handle)


def encode_room_event(entry: JSON) -> messaging_events_pb2.RoomEventPersisted:
    event = entry["event"]
    message = messaging_events_pb2.RoomEventPersisted(
        event_id=event["event_id"],
        room_id=event["room_id"],
        sender=event["sender"],
        type=event["type"],
        origin_server_ts=event["origin_server_ts"],
        content_json=canonical_bytes(event["content"]),
        stream_position=entry["pos"],
        redacts=event.get("redacts", ""),
        membership=event["content"].get("membership", "") if event["type"] == MEMBER else "",
    )
    if "state_key" in event:
        message.state_key = event["state_key"]
    return message


class StreamRelay:
    """Publishes committed room events to JetStream by tailing the stream of entries.

    This is the transactional-outbox guarantee without a separate outbox write: `entries` is
    already written with every change, in position order, so it *is* the outbox. One replica at a
    time holds a lease and publishes entries past its persisted cursor (message id = event id, so
    JetStream drops a re-publish after a crash or a lease hand-over), then advances the cursor.
    Entries come from this replica's cache as it applies them (no read in the steady state), or
    from the database when the cache does not reach back to the cursor. It is kicked shortly after
    commits (coalescing a burst into one pass) and polls as a fallback. Sync wake-ups never wait
    for it.
    """

    def __init__(
        self,
        store: MessagingStore,
        js: JetStreamContext,
        owner: str,
        *,
        delay_seconds: float = 0.05,
        poll_seconds: float = 1.0,
        lease_seconds: float = 10.0,
        memory: int = 20_000,
    ) -> None:
        self._store = store
        self._js = js
        self._owner = owner
        self._delay = delay_seconds
        self._poll = poll_seconds
        self._lease_ms = int(lease_seconds * 1000)
        self._wake = asyncio.Event()
        self._scheduled = False
        self._recent: deque[JSON] = deque(maxlen=memory)
        self._cursor: int | None = None  # known only while we hold the lease
        self._covered_from: int | None = None  # `_recent` holds every event from this position on
        self._lease_until = 0

    def remember(self, entry: JSON) -> None:
        """Called for every entry this replica applies, in position order, without gaps."""
        if self._covered_from is None:
            self._covered_from = entry["pos"]
        if entry["kind"] != "event":
            return
        if len(self._recent) == self._recent.maxlen:
            self._covered_from = self._recent[0]["pos"] + 1  # about to drop the oldest
        self._recent.append(entry)

    def kick(self) -> None:
        if self._scheduled:
            return
        self._scheduled = True

        def fire() -> None:
            self._scheduled = False
            self._wake.set()

        asyncio.get_running_loop().call_later(self._delay, fire)

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self._poll)
            self._wake.clear()
            try:
                while await self.relay_once() >= 500:
                    pass
            except Exception:
                self._cursor = None
                log.warning("stream relay failed; will retry", exc_info=True)
                await asyncio.sleep(self._poll)

    async def _hold_lease(self) -> int | None:
        now = now_ms()
        if self._cursor is not None and now < self._lease_until - self._lease_ms // 2:
            return self._cursor
        cursor = await self._store.hold_relay_lease(self._owner, self._lease_ms, now)
        if cursor is None:
            self._cursor = None
            return None
        self._lease_until = now + self._lease_ms
        if self._cursor is None or cursor > self._cursor:
            self._cursor = cursor  # (re)acquired: the stored cursor is the truth
        return self._cursor

    async def _pending(self, cursor: int, limit: int) -> list[JSON]:
        if self._covered_from is not None and self._covered_from <= cursor + 1:
            pending = []
            for entry in reversed(self._recent):
                if entry["pos"] <= cursor:
                    break
                pending.append(entry)
            return pending[::-1][:limit]
        return [e for e in await self._store.entries_after(cursor, limit) if e["kind"] == "event"]

    async def relay_once(self, limit: int = 500) -> int:
        """Publish up to `limit` events past the cursor if this replica holds the lease; how many were read."""
        cursor = await self._hold_lease()
        if cursor is None:
            return 0
        entries = await self._pending(cursor, limit)
        acks = []
        for entry in entries:  # pipelined: all sent, then the acknowledgements awaited in order
            payload = encode_room_event(entry).SerializeToString()
            headers = {MSG_ID_HEADER: entry["_id"]}
            acks.append(await self._js.publish_async(ROOM_EVENT_SUBJECT, payload, headers=headers))
        published = cursor
        for entry, ack in zip(entries, acks, strict=True):
            try:
                await asyncio.wait_for(ack, 10.0)
            except Exception:
                log.warning("JetStream did not acknowledge %s; will publish again", entry["_id"], exc_info=True)
                break
            EVENTS_PUBLISHED.labels("laiwang.messaging").inc()
            published = entry["pos"]
        if published == cursor:
            return 0
        await self._store.advance_relay_cursor(self._owner, published)
        self._cursor = published
        return len(entries)


PEER_TIMEOUT_SECONDS = 5.0


class NatsNotifier:
    """Publishes wake-ups, and replication messages when other replicas are there to hear them.

    Replicas announce themselves every second; with no peer heard from lately, replication is not
    published at all (it only saves other replicas a catch-up read, so skipping it is always safe).
    """

    def __init__(self, nc: NatsClient, replica_id: str) -> None:
        self._nc = nc
        self.replica_id = replica_id
        self.peers: dict[str, float] = {}

    def has_peers(self) -> bool:
        cutoff = time.monotonic() - PEER_TIMEOUT_SECONDS
        for peer, seen in list(self.peers.items()):
            if seen < cutoff:
                del self.peers[peer]
        return bool(self.peers)

    async def announce(self) -> None:
        await self._nc.publish(f"{REPLICATION_PREFIX}.hello.{self.replica_id}", b"")

    async def wake(self, users: dict[str, int]) -> None:
        for user_id, pos in users.items():
            await self._nc.publish(wake_subject(user_id), str(pos).encode())

    async def broadcast_entries(self, entries: list[JSON]) -> None:
        if not self.has_peers():
            return
        await self._nc.publish(f"{REPLICATION_PREFIX}.log.{self.replica_id}", orjson.dumps(entries))

    async def broadcast_typing(self, room_id: str, user_id: str, expires_at_ms: int, serial: int) -> None:
        if not self.has_peers():
            return
        payload = orjson.dumps({"room_id": room_id, "user_id": user_id, "expires": expires_at_ms, "serial": serial})
        await self._nc.publish(f"{REPLICATION_PREFIX}.typing.{self.replica_id}", payload)

    async def relation_changed(self, pair: str) -> None:
        """Every replica (this one included) drops its cached copy of the pair."""
        await self._nc.publish(f"{REPLICATION_PREFIX}.relations.{self.replica_id}", pair.encode())


async def start_replication(nc: NatsClient, core: Messaging, notifier: NatsNotifier) -> list[Subscription]:
    """Apply other replicas' commits and typing changes to this replica's cache."""
    replica_id = notifier.replica_id

    async def on_log(msg: Msg) -> None:
        if msg.subject.endswith("." + replica_id):
            return
        try:
            await core.on_remote_entries(orjson.loads(msg.data))
        except Exception:
            log.warning("could not apply replicated entries; the periodic catch-up will", exc_info=True)

    async def on_typing(msg: Msg) -> None:
        if msg.subject.endswith("." + replica_id):
            return
        data = orjson.loads(msg.data)
        await core.on_remote_typing(data["room_id"], data["user_id"], data["expires"], data["serial"])

    async def on_relation(msg: Msg) -> None:
        core.relations.forget(msg.data.decode())

    async def on_hello(msg: Msg) -> None:
        peer = msg.subject.rsplit(".", 1)[-1]
        if peer != replica_id:
            if peer not in notifier.peers:
                await notifier.announce()  # so a newcomer hears of us at once, not within a second
            notifier.peers[peer] = time.monotonic()

    subscriptions = [
        await nc.subscribe(f"{REPLICATION_PREFIX}.log.*", cb=on_log),
        await nc.subscribe(f"{REPLICATION_PREFIX}.typing.*", cb=on_typing),
        await nc.subscribe(f"{REPLICATION_PREFIX}.relations.*", cb=on_relation),
        await nc.subscribe(f"{REPLICATION_PREFIX}.hello.*", cb=on_hello),
    ]
    await nc.flush()
    await notifier.announce()
    return subscriptions


async def follow_syncing(nc: NatsClient, seen: Callable[[str, str, int], None]) -> Subscription:
    """Gateways' DeviceSyncing (core NATS, every replica hears all): `seen(user, device, pos)`."""

    async def on_syncing(msg: Msg) -> None:
        try:
            message = gateway_events_pb2.DeviceSyncing.FromString(msg.data)
            pos, _ = parse_sync_token(message.since)
        except Exception:  # a token from a client is not ours to trust; ignore what does not parse
            return
        if message.user_id and message.device_id:
            seen(message.user_id, message.device_id, pos)

    return await nc.subscribe(SYNCING_SUBJECT, cb=on_syncing)


def contacts_handler(store: MessagingStore, on_change: Callable[[str], Awaitable[None]] | None = None) -> Handler:
    """Idempotent: each event carries the pair's whole state and a version; older versions are ignored.

    `on_change(pair)` runs after a newer state was stored (to evict cached copies on every replica).
    """

    async def handle(event: PairStateEvent, msg: Msg) -> None:
        kind = msg.subject.rsplit(".", 1)[-1]
        state = event.state
        if not state.user_a or not state.user_b:
            log.warning("contacts event %s without pair state; ignored", kind)
            return
        pair = pair_id(state.user_a, state.user_b)
        applied = await store.apply_relation(
            pair,
            event.version,
            {
                "user_a": min(state.user_a, state.user_b),
                "user_b": max(state.user_a, state.user_b),
                "friends": state.friends,
                "a_blocks_b": state.a_blocks_b if state.user_a < state.user_b else state.b_blocks_a,
                "b_blocks_a": state.b_blocks_a if state.user_a < state.user_b else state.a_blocks_b,
            },
        )
        log.debug("contacts %s v%d %s", kind, event.version, "applied" if applied else "ignored (not newer)")
        if applied and on_change is not None:
            await on_change(pair)

    # Other contacts events are not ours to project.
    return EventRouter(CONTACTS_CONSUMER.durable).on_each(PAIR_STATE_EVENTS, handle)
