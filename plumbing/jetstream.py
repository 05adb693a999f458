"""NATS JetStream helpers: connect, declare streams, publish with de-duplication, durable consumers.

Delivery is at-least-once: a handler may see the same event twice (after a crash before its ack,
or a redelivery after a timeout), so handlers must be idempotent. A handler that raises is
nak'ed with a growing delay, and given up on (terminated, and logged) after `max_deliver` tries.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import nats
from google.protobuf.message import DecodeError, Message
from nats.aio.client import Client as NatsClient
from nats.aio.msg import Msg
from nats.errors import NoServersError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy, StorageType, StreamConfig
from nats.js.errors import BadRequestError

from plumbing.errors import StartupError
from plumbing.metrics import CONSUMER_ACK_PENDING, CONSUMER_PENDING, EVENTS_CONSUMED, EVENTS_PUBLISHED
from plumbing.streams import EVENT_TYPES, StreamSettings, StreamSpec, event_type

log = logging.getLogger(__name__)

Handler = Callable[[Msg], Awaitable[None]]
MSG_ID_HEADER = "Nats-Msg-Id"
E = TypeVar("E", bound=Message)


class UndecodableEvent(Exception):
    """A payload that is not the message its subject carries; retrying cannot fix it."""


def decode_event(subject: str, data: bytes) -> Message | None:
    """The event on `subject`, decoded as the type `streams.EVENT_TYPES` names; None for a subject
    that carries no event of the contract."""
    message_type = event_type(subject)
    if message_type is None:
        return None
    try:
        return message_type.FromString(data)
    except DecodeError as exc:
        raise UndecodableEvent(f"{subject}: payload is not a {message_type.__name__}") from exc


class EventRouter:
    """The one typed consumer helper: a Handler that decodes each event once and calls the route
    for its type, `router.on(ProfileChanged, handle)` with `handle(event, msg)`.

    A subject without a route (another service's event, or one newer than this consumer) is
    ignored explicitly and acked; an undecodable payload is logged and acked, because redelivery
    cannot fix it. A route that raises is retried by DurableConsumer as usual.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._routes: dict[type[Message], Callable[[Any, Msg], Awaitable[None]]] = {}

    def on(self, message_type: type[E], route: Callable[[E, Msg], Awaitable[None]]) -> EventRouter:
        if message_type not in EVENT_TYPES.values():
            raise ValueError(f"{message_type.__name__} is not in plumbing.streams.EVENT_TYPES")
        self._routes[message_type] = route
        return self

    def on_each(self, message_types: tuple[type[E], ...], route: Callable[[E, Msg], Awaitable[None]]) -> EventRouter:
        """The same route for several types (such as `streams.PAIR_STATE_EVENTS`)."""
        for message_type in message_types:
            self.on(message_type, route)
        return self

    async def __call__(self, msg: Msg) -> None:
        message_type = event_type(msg.subject)
        route = self._routes.get(message_type) if message_type is not None else None
        if route is None:
            log.debug("%s: %s is not ours; ignored", self.name, msg.subject)
            return
        try:
            event = decode_event(msg.subject, msg.data)
        except UndecodableEvent:
            log.error("%s: undecodable event on %s; skipped", self.name, msg.subject)
            return
        await route(event, msg)


async def connect_nats(url: str, name: str, timeout_seconds: float = 5.0) -> NatsClient:
    """Connect (reconnecting forever afterwards), or fail with a one-line StartupError naming NATS_URL."""
    connected = False
    last_error: list[str] = []

    async def on_error(exc: Exception) -> None:
        # Before the first connection the failure is reported once, as the start-up error.
        if connected:
            log.warning("nats: %s", exc)
        else:
            last_error[:] = [str(exc) or type(exc).__name__]

    try:
        client = await asyncio.wait_for(
            nats.connect(
                url,
                name=name,
                connect_timeout=2,
                max_reconnect_attempts=-1,
                reconnect_time_wait=0.5,
                allow_reconnect=True,
                error_cb=on_error,
            ),
            timeout_seconds,
        )
    except (NoServersError, OSError, TimeoutError, NatsTimeoutError) as exc:
        reason = last_error[0] if last_error else (str(exc) or "no answer")
        raise StartupError(f"cannot reach NATS at {url} (NATS_URL): {reason}") from None
    connected = True
    return client


async def ensure_stream(js: JetStreamContext, spec: StreamSpec, settings: StreamSettings | None = None) -> None:
    settings = settings or StreamSettings()
    config = StreamConfig(
        name=spec.name,
        subjects=list(spec.subjects),
        max_age=settings.max_age_seconds or spec.max_age_seconds,
        duplicate_window=spec.duplicate_window_seconds,
        num_replicas=settings.replicas,
        storage=StorageType(settings.storage),
    )
    try:
        await js.add_stream(config)
    except BadRequestError:
        # Exists with a different config (e.g. changed max_age): bring it up to date.
        await js.update_stream(config)


class EventPublisher:
    """Publishes to JetStream with a message id, so a re-sent event is stored once."""

    def __init__(self, js: JetStreamContext) -> None:
        self._js = js

    async def publish(self, subject: str, payload: bytes, msg_id: str, headers: dict[str, str] | None = None) -> None:
        all_headers = {MSG_ID_HEADER: msg_id, **(headers or {})}
        await self._js.publish(subject, payload, headers=all_headers)
        EVENTS_PUBLISHED.labels(subject.rsplit(".", 1)[0]).inc()


@dataclass(frozen=True)
class ConsumerSpec:
    stream: StreamSpec
    durable: str
    filter_subject: str
    max_deliver: int = 10
    ack_wait_seconds: int = 30
    batch: int = 64
    # A new durable starts at the stream's end instead of its beginning (a consumer that must not
    # act on history, such as push delivery: old messages would wake phones).
    only_new: bool = False
    # Pull subscriptions bound to the durable, each fetching and handling on its own: events are
    # then handled concurrently and out of order, for handlers whose events are independent.
    workers: int = 1


def backoff_seconds(delivery_count: int) -> float:
    """0.5 s, 1 s, 2 s, ... capped at 60 s."""
    return min(60.0, 0.5 * (2 ** max(0, delivery_count - 1)))


class DurableConsumer:
    """A durable pull consumer with explicit ack; runs `handler` for each message until stopped.

    Its lag (messages not yet delivered, and delivered but not acked) is exported as
    `jetstream_consumer_pending_messages` / `jetstream_consumer_ack_pending_messages`, read from
    the server's consumer info every `lag_poll_seconds`."""

    def __init__(
        self,
        js: JetStreamContext,
        spec: ConsumerSpec,
        handler: Handler,
        stream_settings: StreamSettings | None = None,
        lag_poll_seconds: float = 5.0,
    ) -> None:
        self._js = js
        self._spec = spec
        self._handler = handler
        self._stream_settings = stream_settings
        self._lag_poll_seconds = lag_poll_seconds
        self._lag_polled_at = float("-inf")
        self._task: asyncio.Task[None] | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._subscriptions: list[JetStreamContext.PullSubscription] = []
        self._stopping = asyncio.Event()

    async def start(self) -> None:
        await ensure_stream(self._js, self._spec.stream, self._stream_settings)
        config = ConsumerConfig(
            durable_name=self._spec.durable,
            ack_policy=AckPolicy.EXPLICIT,
            deliver_policy=DeliverPolicy.NEW if self._spec.only_new else DeliverPolicy.ALL,
            max_deliver=self._spec.max_deliver,
            ack_wait=self._spec.ack_wait_seconds,
            filter_subject=self._spec.filter_subject,
        )
        for _ in range(max(1, self._spec.workers)):
            subscription = await self._js.pull_subscribe(
                self._spec.filter_subject, durable=self._spec.durable, stream=self._spec.stream.name, config=config
            )
            self._subscriptions.append(subscription)
        self._subscription = self._subscriptions[0]
        self._tasks = [
            asyncio.create_task(self._run(subscription), name=f"consumer:{self._spec.durable}:{i}")
            for i, subscription in enumerate(self._subscriptions)
        ]
        self._task = self._tasks[0]

    async def _run(self, subscription: JetStreamContext.PullSubscription) -> None:
        while not self._stopping.is_set():
            await self._observe_lag()
            try:
                messages = await subscription.fetch(self._spec.batch, timeout=1.0)
            except (NatsTimeoutError, TimeoutError):
                continue
            except Exception:
                if self._stopping.is_set():
                    return
                log.warning("consumer %s: fetch failed; retrying", self._spec.durable, exc_info=True)
                await asyncio.sleep(1.0)
                continue
            for message in messages:
                await self._handle(message)

    async def _observe_lag(self) -> None:
        now = asyncio.get_running_loop().time()
        if now - self._lag_polled_at < self._lag_poll_seconds:
            return
        self._lag_polled_at = now
        try:
            info = await self._subscription.consumer_info()
        except Exception:  # NATS away: keep the last figures; the fetch below reports the outage
            return
        CONSUMER_PENDING.labels(self._spec.durable).set(info.num_pending or 0)
        CONSUMER_ACK_PENDING.labels(self._spec.durable).set(info.num_ack_pending or 0)

    async def _handle(self, message: Msg) -> None:
        durable = self._spec.durable
        try:
            await self._handler(message)
        except Exception:
            delivered = message.metadata.num_delivered if message.metadata else 1
            if delivered >= self._spec.max_deliver:
                log.error(
                    "consumer %s: giving up on %s after %d tries", durable, message.subject, delivered, exc_info=True
                )
                await message.term()
                EVENTS_CONSUMED.labels(durable, "terminated").inc()
            else:
                log.warning(
                    "consumer %s: handler failed on %s (try %d)", durable, message.subject, delivered, exc_info=True
                )
                await message.nak(delay=backoff_seconds(delivered))
                EVENTS_CONSUMED.labels(durable, "retried").inc()
            return
        await message.ack()
        EVENTS_CONSUMED.labels(durable, "acked").inc()

    async def stop(self) -> None:
        self._stopping.set()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, TimeoutError):
                await asyncio.wait_for(task, timeout=3.0)
        # An open pull subscription makes the connection's drain wait its full timeout (30 s).
        for subscription in self._subscriptions:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
