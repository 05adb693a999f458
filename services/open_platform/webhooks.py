"""Webhook delivery: a durable JetStream consumer signs each WebhookEvent (Standard Webhooks, with the
`standardwebhooks` library) and POSTs it to the app's webhook URL.

- At least once: a message is acked only after a 2xx answer (or after it is dead-lettered); a
  process killed mid-delivery leaves it unacked, and JetStream redelivers it after the ack wait.
- The `webhook-id` is the event's, so it is the same on every retry and replay: receivers drop
  duplicates by it. `webhook-signature` carries one `v1,` signature per signing secret in force (the
  current one, and a rotated one still in its overlap window).
- Each try has a 5 s timeout. Failures back off exponentially (base x 2^(try-1), capped), for 24 h
  from the event's creation; then the event goes to the dead-letter list, where the owner sees and
  replays it. Every try is in the delivery log (status, latency, try number).
- SSRF guard at connection time (plumbing/url_guard.py, as for push): only resolved addresses that
  are public are connected to (loopback only behind OPEN_PLATFORM_ALLOW_LOOPBACK_WEBHOOKS);
  redirects are not followed.
- A suspended app gets nothing: its events wait (backing off) and are dead-lettered after 24 h; a
  deleted app's events are dropped.
- An endpoint that keeps failing is paused and its owner told (webhook_health.py): while paused, its
  events go to the dead-letter list untried, until the owner resumes it.

Order: events are fetched in stream order, one at a time; a failed event waits for its retry while
later ones go on, so after a failure order per app and user is not kept (documented limit).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import aiohttp
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js.api import AckPolicy, ConsumerConfig, DeliverPolicy
from nats.js.client import JetStreamContext
from standardwebhooks import Webhook

from laiwang.events.v1 import open_platform_events_pb2 as pb
from plumbing import streams
from plumbing.jetstream import UndecodableEvent, decode_event, ensure_stream
from plumbing.url_guard import GuardedResolver, UnsafeUrl, check_url
from services.open_platform.core import App, webhook_networks
from services.open_platform.events import SUBJECT_WEBHOOK
from services.open_platform.webhook_health import NOTICE_LEASE_MS, HealthStore, OwnerNotice, PausePolicy

log = logging.getLogger(__name__)

DURABLE = "open-platform-webhooks"
TRY_TIMEOUT_SECONDS = 5.0
USER_AGENT = "Laiwang-Webhooks/1"


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: float = 5.0
    max_seconds: float = 3600.0
    give_up_seconds: float = 24 * 3600.0

    def delay(self, attempt: int) -> float:
        return min(self.max_seconds, self.base_seconds * 2 ** max(0, attempt - 1))


@dataclass(frozen=True)
class Attempt:
    webhook_id: str
    client_id: str
    kind: str
    attempt: int
    status: int  # 0: no HTTP answer
    latency_ms: int
    error: str
    at_ms: int


class DeliveryStore(HealthStore, Protocol):
    async def log_attempt(self, attempt: Attempt) -> None: ...
    async def dead_letter(self, event: pb.WebhookEvent, reason: str, at_ms: int) -> None: ...


def signature_header(secrets: list[str], webhook_id: str, at: datetime, body: str) -> str:
    return " ".join(Webhook(secret).sign(webhook_id, at, body) for secret in secrets)


def payload(event: pb.WebhookEvent) -> str:
    created = datetime.fromtimestamp(event.created_at_ms / 1000, UTC).isoformat().replace("+00:00", "Z")
    data = event.data_json.decode() or "{}"
    return f'{{"type":"{event.type}","timestamp":"{created}","data":{data}}}'


class WebhookDelivery:
    def __init__(
        self,
        apps: Callable[[str], Awaitable[App | None]],
        store: DeliveryStore,
        policy: RetryPolicy,
        allow_loopback: bool,
        pause: PausePolicy,
        notice: OwnerNotice,
    ) -> None:
        self._apps = apps
        self._store = store
        self._policy = policy
        self._allow_loopback = allow_loopback
        self._pause = pause
        self._notice = notice
        self._http: aiohttp.ClientSession | None = None

    def _session(self) -> aiohttp.ClientSession:
        if self._http is None:
            connector = aiohttp.TCPConnector(
                resolver=GuardedResolver(webhook_networks(self._allow_loopback)), limit=100
            )
            self._http = aiohttp.ClientSession(
                connector=connector, timeout=aiohttp.ClientTimeout(total=TRY_TIMEOUT_SECONDS)
            )
        return self._http

    async def close(self) -> None:
        if self._http is not None:
            await self._http.close()

    async def _post(self, url: str, headers: dict[str, str], body: str) -> tuple[int, str]:
        try:
            check_url(url, webhook_networks(self._allow_loopback))  # IP literals never reach the resolver
        except UnsafeUrl as exc:
            return 0, f"webhook URL refused: {exc}"
        try:
            async with self._session().post(url, data=body.encode(), headers=headers, allow_redirects=False) as r:
                await r.read()
                return r.status, "" if 200 <= r.status < 300 else f"HTTP {r.status}"
        except TimeoutError:
            return 0, f"no answer within {TRY_TIMEOUT_SECONDS:g} s"
        except aiohttp.ClientConnectorError as exc:
            return 0, str(exc.os_error) or type(exc).__name__  # the guard's refusal says why
        except aiohttp.ClientError as exc:
            return 0, type(exc).__name__

    async def handle(self, event: pb.WebhookEvent, attempt: int, now_ms: int) -> float | None:
        """One try. None: done (delivered, dropped or dead-lettered; ack). A number: retry in that many seconds."""
        app = await self._apps(event.client_id)
        if app is None:
            return None  # the app is gone: nobody to deliver to
        expired = now_ms - event.created_at_ms > self._policy.give_up_seconds * 1000
        if app.suspended or not app.settings.webhook_url:
            if expired:
                await self._store.dead_letter(event, "suspended" if app.suspended else "no webhook URL", now_ms)
                return None
            return self._policy.delay(attempt)
        health = await self._store.health(app.client_id)
        if health.paused_at_ms:
            return await self._while_paused(app, event, now_ms)
        body = payload(event)
        at = datetime.now(UTC)
        headers = {
            "content-type": "application/json",
            "user-agent": USER_AGENT,
            "webhook-id": event.webhook_id,
            "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": signature_header(app.signing_secrets(now_ms), event.webhook_id, at, body),
        }
        started = time.perf_counter()
        status, error = await self._post(app.settings.webhook_url, headers, body)
        latency_ms = int((time.perf_counter() - started) * 1000)
        await self._store.log_attempt(
            Attempt(event.webhook_id, event.client_id, event.type, attempt, status, latency_ms, error, now_ms)
        )
        if not error:
            if health.consecutive_failures:
                await self._store.record_success(app.client_id)
            return None
        health = await self._store.record_failure(app.client_id, error, now_ms)
        if self._pause.due(health, now_ms) and await self._store.pause(app.client_id, now_ms):
            failures = health.consecutive_failures
            log.warning("webhook endpoint of app %s paused after %d failed tries", app.client_id, failures)
            return await self._while_paused(app, event, now_ms)
        if expired:
            await self._store.dead_letter(event, error, now_ms)
            return None
        return self._policy.delay(attempt)

    async def _while_paused(self, app: App, event: pb.WebhookEvent, now_ms: int) -> float | None:
        # The event is acked only once the owner has been told: a crash before that redelivers it.
        if not await self._notice.tell(app, now_ms):
            return NOTICE_LEASE_MS / 1000  # another try is telling them: look again after its claim
        await self._store.dead_letter(event, "endpoint paused", now_ms)
        return None


class WebhookConsumer:
    """The durable pull consumer feeding WebhookDelivery (its own loop: the retry schedule and the
    dead-letter list are the webhook's, not the shared consumers' 10 tries)."""

    def __init__(self, js: JetStreamContext, delivery: WebhookDelivery, ack_wait_seconds: float) -> None:
        self._js = js
        self._delivery = delivery
        self._ack_wait = ack_wait_seconds
        self._stopping = asyncio.Event()

    async def run(self) -> None:
        await ensure_stream(self._js, streams.OPEN_PLATFORM)
        subscription = await self._js.pull_subscribe(
            SUBJECT_WEBHOOK,
            durable=DURABLE,
            stream=streams.OPEN_PLATFORM.name,
            config=ConsumerConfig(
                durable_name=DURABLE,
                ack_policy=AckPolicy.EXPLICIT,
                deliver_policy=DeliverPolicy.ALL,
                max_deliver=-1,  # the give-up deadline, not a try count, ends an event
                ack_wait=self._ack_wait,
                filter_subject=SUBJECT_WEBHOOK,
            ),
        )
        try:
            while not self._stopping.is_set():
                try:
                    messages = await subscription.fetch(16, timeout=1.0)
                except (NatsTimeoutError, TimeoutError):
                    continue
                except Exception:
                    log.warning("webhook consumer: fetch failed; retrying", exc_info=True)
                    await asyncio.sleep(1.0)
                    continue
                await asyncio.gather(*(self._one(m) for m in messages))
        finally:
            with contextlib.suppress(Exception):
                await subscription.unsubscribe()
            await self._delivery.close()

    async def _one(self, message: Msg) -> None:
        attempt = message.metadata.num_delivered if message.metadata else 1
        try:
            event = decode_event(message.subject, message.data)
        except UndecodableEvent:
            # Redelivery cannot fix a payload that is not a WebhookEvent: drop it, once, loudly.
            log.error("webhook consumer: undecodable event on %s; dropped", message.subject)
            await message.term()
            return
        if not isinstance(event, pb.WebhookEvent):
            await message.ack()
            return
        try:
            retry = await self._delivery.handle(event, attempt, time.time_ns() // 1_000_000)
        except Exception:
            log.warning("webhook delivery failed unexpectedly; retrying", exc_info=True)
            await message.nak(delay=5.0)
            return
        if retry is None:
            await message.ack()
        else:
            await message.nak(delay=retry)

    def stop(self) -> None:
        self._stopping.set()
