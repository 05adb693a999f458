"""GET /sync with long-poll, and client filters.

Waking: while a user has a /sync waiting here, this gateway replica subscribes to the user's
core-NATS wake subject (`plumbing.streams.wake_subject`); messaging publishes there right after
each commit that concerns the user, so NATS delivers the wake-up only to replicas holding that
user. The subscription is made (and flushed to the server) *before* the first sync computation,
so nothing committed afterwards can slip between computing and waiting. It lingers a minute
after the last waiter leaves, since a client re-polls at once.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import orjson
from aiohttp import web
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import Gauge

from gateway.app import DEPS_KEY, GatewayDeps
from gateway.fields import (
    INT32_MAX,
    check_json,
    parse_json,
    path_user_id,
    query_bool,
    query_int,
    query_str,
    read_json_object,
)
from gateway.matrix import MatrixError, json_response
from gateway.routes.rooms import PREFIXES, messaging_stub
from gateway.rpc import matrix_error_from
from gateway.session import authenticate
from laiwang.events.v1 import gateway_events_pb2
from laiwang.messaging.v1 import messaging_pb2 as pb
from plumbing.streams import SYNCING_SUBJECT, wake_subject

log = logging.getLogger(__name__)

MAX_TIMEOUT_MS = 30_000
SYNC_WAITING = Gauge("gateway_sync_long_polls", "/sync requests currently held open by this gateway replica.")
SYNC_SUBSCRIPTIONS = Gauge("gateway_sync_wake_subscriptions", "Per-user wake subjects this replica subscribes to.")
_MAX_FILTER_BYTES = 4096


class SingleFlight:
    """Identical initial syncs of one device running at once share one computation.

    An initial sync (no `since`) builds every joined room's state and timeline: seconds for an account
    in a few hundred rooms. A client that retries it, or opens several tabs, or a hostile one that
    fires it in parallel, made messaging compute it once per request until the gateway deadline ran
    out for all of them (Synapse keeps a response cache for the same reason). A request that joins
    a running computation gets an answer as of that computation's start; its `next_batch` leads on.
    """

    def __init__(self) -> None:
        self._running: dict[bytes, asyncio.Future[Any]] = {}

    async def run(self, key: bytes, compute: Callable[[], Awaitable[Any]]) -> Any:
        future = self._running.get(key)
        if future is None:
            future = asyncio.ensure_future(compute())
            self._running[key] = future
            future.add_done_callback(lambda done: self._forget(key, done))
        # Shielded: one caller going away (client gone) does not cancel the others' answer.
        return await asyncio.shield(future)

    def _forget(self, key: bytes, done: asyncio.Future[Any]) -> None:
        if self._running.get(key) is done:
            del self._running[key]
        if not done.cancelled():
            done.exception()  # retrieved, so an error nobody waits for any more is not logged as lost

    def __len__(self) -> int:
        return len(self._running)


async def _sync_call(deps: GatewayDeps, stub: Any, sync_request: pb.SyncRequest) -> pb.SyncResponse:
    if sync_request.since:  # incremental syncs are cheap, and each must see what was written before it
        reply: pb.SyncResponse = await stub.Sync(sync_request, timeout=10.0)
        return reply
    flights = deps.initial_syncs
    assert flights is not None, "set by startup()"
    request = pb.SyncRequest()
    request.CopyFrom(sync_request)  # the caller may change its copy (min_position) while we wait
    return await flights.run(request.SerializeToString(deterministic=True), lambda: stub.Sync(request, timeout=10.0))


class Waiter:
    __slots__ = ("event", "pos")

    def __init__(self) -> None:
        self.event = asyncio.Event()
        self.pos = 0

    def wake(self, pos: int) -> None:
        self.pos = max(self.pos, pos)
        self.event.set()

    async def wait(self, seconds: float) -> bool:
        try:
            await asyncio.wait_for(self.event.wait(), seconds)
        except TimeoutError:
            return False
        return True


class _Entry:
    """One user's wake subscription on this replica.

    `wakes` counts wake-ups since subscribing and `max_pos` is the highest position named. `quiet`
    remembers, for recently returned tokens, the wake count when their computation began: if no
    wake-up has arrived since, nothing concerning the user was committed, and a re-poll with that
    token can go straight to waiting without asking messaging (a client re-polls after every answer).
    """

    __slots__ = ("idle_since", "max_pos", "quiet", "ready", "subscription", "waiters", "wakes")

    def __init__(self) -> None:
        self.waiters: set[Waiter] = set()
        self.subscription: Subscription | None = None
        self.ready = asyncio.Event()
        self.idle_since = 0.0
        self.wakes = 0
        self.max_pos = 0
        self.quiet: dict[str, int] = {}

    def remember(self, token: str, wakes_at_start: int) -> None:
        self.quiet.pop(token, None)
        self.quiet[token] = wakes_at_start
        if len(self.quiet) > 8:  # a few devices' worth
            del self.quiet[next(iter(self.quiet))]

    def is_quiet_since(self, token: str) -> bool:
        return self.quiet.get(token) == self.wakes


class WakeHub:
    """Per-user wake subscriptions of this gateway replica."""

    def __init__(self, nc: NatsClient | None, linger_seconds: float = 60.0) -> None:
        self._nc = nc
        self._linger = linger_seconds
        self._entries: dict[str, _Entry] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.draining = False

    @property
    def subscriptions(self) -> int:
        return len(self._entries)

    def start(self) -> None:
        self._sweeper = asyncio.create_task(self._sweep(), name="wake-hub-sweeper")

    async def acquire(self, user_id: str) -> tuple[Waiter, _Entry]:
        waiter = Waiter()
        entry = self._entries.get(user_id)
        if entry is None:
            entry = self._entries[user_id] = _Entry()
            entry.waiters.add(waiter)
            try:
                if self._nc is not None:
                    entry.subscription = await self._nc.subscribe(wake_subject(user_id), cb=self._deliver(entry))
                    await self._nc.flush()  # the server knows the subscription before we compute
            except Exception:
                self._entries.pop(user_id, None)
                entry.ready.set()
                raise
            entry.ready.set()
        else:
            entry.waiters.add(waiter)
            await entry.ready.wait()
        return waiter, entry

    async def syncing(self, user_id: str, device_id: str, since: str) -> None:
        """Tell push delivery this device has everything up to `since` (best effort, core NATS)."""
        if self._nc is None or not since:
            return
        message = gateway_events_pb2.DeviceSyncing(user_id=user_id, device_id=device_id, since=since)
        try:
            await self._nc.publish(SYNCING_SUBJECT, message.SerializeToString())
        except Exception:  # NATS away: the device may get a push it did not need, nothing worse
            log.debug("could not publish that %s is syncing", user_id, exc_info=True)

    def release(self, user_id: str, waiter: Waiter) -> None:
        entry = self._entries.get(user_id)
        if entry is not None:
            entry.waiters.discard(waiter)
            if not entry.waiters:
                entry.idle_since = time.monotonic()

    def drain(self) -> None:
        """Shutting down: every waiting /sync answers now (with its current token), and none waits
        from here on, so that long-polls end within the grace period and clients re-poll elsewhere."""
        self.draining = True
        for entry in self._entries.values():
            for waiter in entry.waiters:
                waiter.event.set()

    @staticmethod
    def _deliver(entry: _Entry) -> Callable[[Msg], Awaitable[None]]:
        async def on_message(msg: Msg) -> None:
            try:
                pos = int(msg.data or b"0")
            except ValueError:
                pos = 0
            entry.wakes += 1
            entry.max_pos = max(entry.max_pos, pos)
            for waiter in entry.waiters:
                waiter.wake(pos)

        return on_message

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(min(10.0, self._linger))
            cutoff = time.monotonic() - self._linger
            for user_id, entry in list(self._entries.items()):
                if not entry.waiters and entry.ready.is_set() and entry.idle_since < cutoff:
                    del self._entries[user_id]
                    if entry.subscription is not None:
                        with contextlib.suppress(Exception):
                            await entry.subscription.unsubscribe()

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for entry in self._entries.values():
            if entry.subscription is not None:
                with contextlib.suppress(Exception):
                    await entry.subscription.unsubscribe()
        self._entries.clear()


# -- filters: the id is the filter itself (base64url of its JSON), so any replica can read it --------


def _encode_filter(definition: dict[str, Any]) -> str:
    return "f" + base64.urlsafe_b64encode(orjson.dumps(definition)).decode().rstrip("=")


def _decode_filter(filter_id: str) -> dict[str, Any]:
    if not filter_id.startswith("f"):
        raise MatrixError(404, "M_NOT_FOUND", "unknown filter")
    data = filter_id[1:]
    try:
        value = orjson.loads(base64.urlsafe_b64decode(data + "=" * (-len(data) % 4)))
    except (binascii.Error, ValueError):
        raise MatrixError(404, "M_NOT_FOUND", "unknown filter") from None
    if not isinstance(value, dict):
        raise MatrixError(404, "M_NOT_FOUND", "unknown filter")
    # Not one we issued if it fails the checks every filter passed when it was created (it is echoed back).
    try:
        check_json(value)
    except MatrixError:
        raise MatrixError(404, "M_NOT_FOUND", "unknown filter") from None
    return value


def filter_definition(filter_param: str | None) -> dict[str, Any]:
    """A filter given inline (JSON) or by id, as a dict ({} when none)."""
    if not filter_param:
        return {}
    if filter_param.lstrip().startswith("{"):
        if len(filter_param) > _MAX_FILTER_BYTES:
            raise MatrixError(400, "M_INVALID_PARAM", "filter is too large")
        try:
            definition = parse_json(filter_param, where="filter")
        except MatrixError as exc:
            raise MatrixError(400, "M_INVALID_PARAM", exc.error) from None
    else:
        definition = _decode_filter(filter_param)
    if not isinstance(definition, dict):
        raise MatrixError(400, "M_INVALID_PARAM", "filter must be a JSON object")
    return definition


def timeline_limit(filter_param: str | None) -> int:
    """The room timeline limit of a filter given inline (JSON) or by id; 0 when unset."""
    definition = filter_definition(filter_param)
    room = definition.get("room")
    timeline = room.get("timeline") if isinstance(room, dict) else None
    limit = timeline.get("limit") if isinstance(timeline, dict) else None
    if isinstance(limit, bool) or not isinstance(limit, int) or limit <= 0:
        return 0
    return min(limit, INT32_MAX)  # an int32 field; messaging clamps it to its own maximum


async def post_filter(request: web.Request) -> web.Response:
    who = await authenticate(request)
    if path_user_id(request) != who.user_id:
        raise MatrixError(403, "M_FORBIDDEN", "you can only create filters for yourself")
    body = await read_json_object(request)
    if len(orjson.dumps(body)) > _MAX_FILTER_BYTES:
        raise MatrixError(413, "M_TOO_LARGE", "filter is too large")
    return json_response({"filter_id": _encode_filter(body)})


async def get_filter(request: web.Request) -> web.Response:
    who = await authenticate(request)
    if path_user_id(request) != who.user_id:
        raise MatrixError(403, "M_FORBIDDEN", "you can only read your own filters")
    return json_response(_decode_filter(request.match_info["filter_id"]))


# -- /sync ------------------------------------------------------------------------------------------


async def sync(request: web.Request) -> web.Response:
    who = await authenticate(request)
    deps = request.app[DEPS_KEY]
    timeout_ms = query_int(request, "timeout", 0, maximum=MAX_TIMEOUT_MS)
    sync_request = pb.SyncRequest(
        requester=pb.Requester(user_id=who.user_id, device_id=who.device_id),
        since=query_str(request, "since", max_len=64),
        timeline_limit=timeline_limit(query_str(request, "filter", max_len=_MAX_FILTER_BYTES)),
        full_state=query_bool(request, "full_state"),
    )
    stub = messaging_stub(deps)
    hub = deps.wake_hub
    if hub is None:  # startup() runs before the first request is served
        raise MatrixError(503, "M_UNAVAILABLE", "sync is starting", retry_after_ms=1000)
    await hub.syncing(who.user_id, who.device_id, sync_request.since)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_ms / 1000
    if timeout_ms <= 0:
        try:
            answer = await _sync_call(deps, stub, sync_request)
        except grpc.aio.AioRpcError as exc:
            raise matrix_error_from(exc) from None
        return web.Response(body=answer.body_json, content_type="application/json")
    waiter, entry = await hub.acquire(who.user_id)
    SYNC_WAITING.inc()
    try:
        reply: pb.SyncResponse | None = None
        if not (sync_request.since and not sync_request.full_state and entry.is_quiet_since(sync_request.since)):
            reply = await _compute(deps, stub, sync_request, waiter, entry)
        while reply is None or not reply.has_changes:
            remaining = deadline - loop.time()
            if remaining <= 0 or hub.draining or not await waiter.wait(remaining) or hub.draining:
                if reply is None:  # skipped above, and nothing came: answer with the current token
                    reply = await _compute(deps, stub, sync_request, waiter, entry)
                break
            reply = await _compute(deps, stub, sync_request, waiter, entry)
    finally:
        SYNC_WAITING.dec()
        hub.release(who.user_id, waiter)
    return web.Response(body=reply.body_json, content_type="application/json")


async def _compute(
    deps: GatewayDeps, stub: Any, sync_request: pb.SyncRequest, waiter: Waiter, entry: _Entry
) -> pb.SyncResponse:
    waiter.event.clear()  # a wake-up from here on means "compute again"
    wakes = entry.wakes
    # Include everything we were woken for so far, even if messaging's replica has not seen it yet.
    sync_request.min_position = max(sync_request.min_position, entry.max_pos)
    try:
        reply = await _sync_call(deps, stub, sync_request)
    except grpc.aio.AioRpcError as exc:
        if exc.code() not in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.PERMISSION_DENIED):
            log.warning("sync computation failed: %s %s", exc.code().name, exc.details())
        raise matrix_error_from(exc) from None
    entry.remember(reply.next_batch, wakes)
    return reply


def routes(deps: GatewayDeps) -> list[web.RouteDef]:
    table: list[web.RouteDef] = []
    for prefix in PREFIXES:
        table += [
            web.get(f"{prefix}/sync", sync),
            web.post(prefix + "/user/{user_id}/filter", post_filter),
            web.get(prefix + "/user/{user_id}/filter/{filter_id}", get_filter),
        ]
    return table


async def startup(deps: GatewayDeps) -> None:
    hub = WakeHub(deps.nats, deps.config.wake_linger_seconds)
    hub.start()
    SYNC_SUBSCRIPTIONS.set_function(lambda: hub.subscriptions)
    deps.wake_hub = hub
    deps.initial_syncs = SingleFlight()


async def drain(deps: GatewayDeps) -> None:
    if deps.wake_hub is not None:
        deps.wake_hub.drain()


async def cleanup(deps: GatewayDeps) -> None:
    hub, deps.wake_hub = deps.wake_hub, None
    if hub is not None:
        await hub.close()
