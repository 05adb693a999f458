"""Push delivery (docs/push.md): the fan-out from room events to pokes, the sender that speaks the
Push Gateway API, and GET /notifications.

`PushFanout.on_room_event` runs for every `laiwang.messaging.room_event` from the durable
consumer `messaging-push`: it evaluates each recipient's push rules against the replica's read
model (the same evaluation that gives /sync its unread counts), records the notifications, and
asks for a poke per pusher. Only then is the JetStream message acknowledged, so a crash loses
nothing: a redelivered event finds its notifications and pokes already there and adds nothing.

`PushSender` delivers due pokes: claim (a lease, so two replicas never send the same one),
check it is still wanted (the room was not muted, the user has not read it, the device has not
synced it), POST, then record it delivered. Failures back off with a cap; a gateway's
`rejected` pushkey deletes the pusher.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import OrderedDict
from typing import Any

import aiohttp
import orjson
from prometheus_client import Counter, Histogram

from plumbing.domain_errors import invalid
from plumbing.url_guard import GuardedResolver, UnsafeUrl, check_url
from services.messaging import push
from services.messaging.push import PushSettings
from services.messaging.push_rules import matching_actions, outcome_of
from services.messaging.push_store import PushStore, poke_id
from services.messaging.rules import JSON, MEMBER, now_ms
from services.messaging.timeline import LogCache, is_redacted, read_position, room_context, user_rules

log = logging.getLogger(__name__)

POKES = Counter("push_pokes_total", "Pokes handled by the push sender, by outcome.", ["outcome"])
POKE_LATENCY = Histogram(
    "push_event_to_poke_seconds",
    "From an event's origin_server_ts to its poke being answered by the push gateway.",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
MAX_SYNC_DEVICES = 200_000


class SyncSeen:
    """Where each device's latest /sync started (its `since` position) and when, as heard from the
    gateways; bounded (a forgotten device only gets a push it did not need)."""

    def __init__(self) -> None:
        self.positions: OrderedDict[tuple[str, str], tuple[int, int]] = OrderedDict()

    def saw(self, user_id: str, device_id: str, pos: int, at_ms: int | None = None) -> None:
        at_ms = now_ms() if at_ms is None else at_ms
        key = (user_id, device_id)
        old = self.positions.pop(key, None)
        self.positions[key] = (max(pos, old[0] if old else 0), at_ms)
        if len(self.positions) > MAX_SYNC_DEVICES:
            self.positions.popitem(last=False)


class PushFanout:
    def __init__(self, cache: LogCache, store: PushStore, settings: PushSettings, seen: SyncSeen) -> None:
        self._cache = cache
        self._store = store
        self._settings = settings
        self._seen = seen
        self.on_wanted: Any = lambda: None  # the sender's kick

    async def on_room_event(self, room_id: str, event_id: str, pos: int) -> None:
        await self._cache.catch_up(pos)  # the relay publishes only committed entries: they are there
        view = await self._cache.room(room_id)
        entry = await self._cache.find_entry(room_id, event_id)
        if view is None or entry is None or entry["kind"] != "event" or is_redacted(entry["event"]):
            return
        event = entry["event"]
        sender = event["sender"]
        recipients = set(view.joined())
        if event["type"] == MEMBER and event["content"].get("membership") == "invite":
            recipients.add(event["state_key"])  # the invitee is not joined yet
        recipients.discard(sender)  # never the user's own events
        if not recipients:
            return
        users = await asyncio.gather(*(self._cache.user(u) for u in sorted(recipients)))
        notes: list[JSON] = []
        high: dict[str, bool] = {}
        direct = bool(view.doc.get("is_direct"))
        for user in users:
            context = room_context(view, user.user_id, sender)
            actions = matching_actions(user_rules(user), event, user.user_id, context)
            outcome = outcome_of(actions)
            if not outcome.notify or read_position(view, user) >= pos:
                continue
            notes.append(
                {
                    "_id": f"{user.user_id}\x1f{event_id}",
                    "user": user.user_id,
                    "room_id": room_id,
                    "event_id": event_id,
                    "pos": pos,
                    "ts": event["origin_server_ts"],
                    "actions": actions,
                    "highlight": outcome.highlight,
                }
            )
            high[user.user_id] = push.priority(outcome, direct, context.member_count) == push.HIGH
        await self._store.add_notifications(notes)
        if not high:
            return
        now = now_ms()
        wanted = []
        for pusher in await self._store.pushers_of(sorted(high)):
            device = pusher.get("device_id", "")
            syncing = push.syncing_recently(self._seen.positions, pusher["user"], device, now, self._settings)
            poke = {
                "_id": poke_id(pusher["_id"], room_id),
                "user": pusher["user"],
                "room_id": room_id,
                "pusher": pusher["_id"],
                "device_id": device,
            }
            due = now + self._settings.sync_grace_ms if syncing else now
            wanted.append((poke, high[pusher["user"]], due))
        await self._store.want(wanted, pos, event_id)
        self.on_wanted()


class PushSender:
    def __init__(self, cache: LogCache, store: PushStore, settings: PushSettings, seen: SyncSeen) -> None:
        self._cache = cache
        self._store = store
        self._settings = settings
        self._seen = seen
        self._wake = asyncio.Event()
        self._sending: dict[str, asyncio.Task[None]] = {}  # poke id -> its send, at most `concurrency`

    def kick(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        connector = aiohttp.TCPConnector(resolver=GuardedResolver(self._settings.allowed_networks), limit=256)
        timeout = aiohttp.ClientTimeout(total=self._settings.timeout_seconds)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
            try:
                await self._loop(session)
            finally:
                # A send cut short leaves its claim to expire; the next sender (or replica) repeats it.
                for task in self._sending.values():
                    task.cancel()
                await asyncio.gather(*self._sending.values(), return_exceptions=True)

    async def _loop(self, session: aiohttp.ClientSession) -> None:
        wait = self._settings.poll_seconds
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)
            self._wake.clear()
            wait = self._settings.poll_seconds
            try:
                limit = self._settings.concurrency + len(self._sending)
                self.start_due(await self._store.due(now_ms(), limit), session)
                # Wake for the next collapsed or retried poke, not a poll later; a finished send
                # wakes the loop too (a free slot for a poke that is due already).
                due = await self._store.next_due(excluding=list(self._sending))
                if due is not None and (due > now_ms() or len(self._sending) < self._settings.concurrency):
                    wait = min(wait, max(0.01, (due - now_ms()) / 1000))
            except Exception:
                log.warning("push sender pass failed; will retry", exc_info=True)

    def start_due(self, due: list[JSON], session: aiohttp.ClientSession) -> int:
        """Start sending due pokes, up to `concurrency` at once, never waiting for one: a push
        gateway that hangs until the timeout must not hold back everyone else's pokes."""
        started = 0
        for candidate in due:
            if len(self._sending) >= self._settings.concurrency:
                break
            poke = candidate["_id"]
            if poke in self._sending:
                continue  # still being sent (its claim may not have landed when `due` was read)
            task = asyncio.create_task(self._one(session, candidate))
            self._sending[poke] = task
            task.add_done_callback(functools.partial(self._finished, poke))
            started += 1
        return started

    def _finished(self, poke: str, _: asyncio.Task[None]) -> None:
        self._sending.pop(poke, None)
        self.kick()  # a slot is free, and this poke may be due again (a newer event, a retry)

    async def _one(self, session: aiohttp.ClientSession, candidate: JSON) -> None:
        try:
            await self._deliver(session, candidate)
        except Exception:
            log.warning("poke %r failed unexpectedly; retried after its lease", candidate["_id"], exc_info=True)

    async def _unwanted(self, poke: JSON) -> str:
        """Why this poke should not be sent any more ('' if it should)."""
        view = await self._cache.room(poke["room_id"])
        user = await self._cache.user(poke["user"])
        entry = await self._cache.find_entry(poke["room_id"], poke["want_event"])
        member = view.members.get(poke["user"]) if view is not None else None
        if view is None or entry is None or member is None or member.membership not in ("join", "invite"):
            return "gone"
        event = entry["event"]
        if is_redacted(event):
            return "redacted"
        context = room_context(view, user.user_id, event["sender"])
        actions = matching_actions(user_rules(user), event, user.user_id, context)
        if not outcome_of(actions).notify:
            return "muted"  # the rules changed since (a muted room stops at once)
        if read_position(view, user) >= poke["want_pos"]:
            return "read"
        if push.device_has_it(self._seen.positions, poke, now_ms()):
            return "synced"
        return ""

    async def badge(self, user_id: str) -> int:
        """The unread count across the user's rooms: what the app icon shows."""
        user = await self._cache.user(user_id)
        total = 0
        for room_id, member in list(user.rooms.items()):
            if member.membership == "join":
                view = await self._cache.room(room_id)
                if view is not None:
                    total += (await self._cache.unread(view, user))[0]
        return total

    async def _deliver(self, session: aiohttp.ClientSession, candidate: JSON) -> None:
        settings = self._settings
        now = now_ms()
        poke = await self._store.claim(candidate, now, int(settings.lease_seconds * 1000))
        if poke is None:
            return  # another sender took it, or it changed: the next pass sees its new state
        pusher = await self._store.pusher(poke["pusher"])
        if pusher is None:
            await self._store.drop(poke["_id"])
            return
        reason = await self._unwanted(poke)
        if reason:
            POKES.labels(reason).inc()
            await self._store.done(poke, now, sent=False)
            return
        poke["high"] = poke.get("high_pos", 0) > poke.get("sent_pos", 0)
        body = push.notification(poke, pusher, await self.badge(poke["user"]))
        status, answer = 0, None
        try:
            url = check_url(pusher.get("data", {}).get("url"), settings.allowed_networks)
            async with session.post(url, data=orjson.dumps(body), headers={"Content-Type": "application/json"}) as r:
                status = r.status
                raw = await r.content.read(64 * 1024)
            if 200 <= status < 300:
                with contextlib.suppress(ValueError):
                    answer = orjson.loads(raw)
        except UnsafeUrl as exc:
            log.warning("pusher %r: %s; not sent", poke["pusher"], exc)
            POKES.labels("unsafe_url").inc()
            await self._store.done(poke, now, sent=False)
            return
        except (aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.info("push gateway for %r unreachable: %s", poke["pusher"], exc or type(exc).__name__)
        if 200 <= status < 300:
            if push.rejected(answer, pusher["pushkey"]):
                log.info("push gateway rejected pushkey of %r; pusher removed", poke["pusher"])
                POKES.labels("rejected").inc()
                await self._store.delete_pusher(poke["pusher"])
                return
            await self._store.done(poke, push.due_after_send(now_ms(), settings), sent=True)
            POKES.labels("sent").inc()  # after the record: a scrape that sees it sees it durable
            await self._observe_latency(poke)
            return
        if status and push.permanent_failure(status):
            log.warning("push gateway answered %d for %r; poke dropped", status, poke["pusher"])
            POKES.labels("refused").inc()
            await self._store.done(poke, now, sent=False)
            return
        attempts = int(poke.get("attempts", 0)) + 1
        failing_since = int(poke.get("failing_since") or now)
        if now - failing_since > settings.give_up_seconds * 1000:
            log.warning("push gateway for %r failing since %d; poke given up", poke["pusher"], failing_since)
            POKES.labels("given_up").inc()
            await self._store.done(poke, now, sent=False)
            return
        POKES.labels("retried").inc()
        due = now + push.backoff_ms(attempts, settings.max_backoff_seconds)
        await self._store.failed(poke, attempts, due, failing_since)

    async def _observe_latency(self, poke: JSON) -> None:
        entry = await self._cache.find_entry(poke["room_id"], poke["want_event"])
        if entry is not None:
            POKE_LATENCY.observe(max(0.0, time.time() - entry["event"]["origin_server_ts"] / 1000))


async def notifications(
    cache: LogCache, store: PushStore, user_id: str, from_token: str, limit: int, only: str
) -> JSON:
    """GET /notifications: the events the user's rules notified for, newest first, with `read`."""
    if from_token and not from_token.isdigit():
        raise invalid("unknown 'from' token")
    if only not in ("", "highlight"):
        raise invalid("'only' may only be 'highlight'")
    limit = max(1, min(limit or 20, push.MAX_NOTIFICATIONS_PAGE))
    docs = await store.notifications(user_id, int(from_token) if from_token else None, limit + 1, only == "highlight")
    events = await store.events([d["event_id"] for d in docs[:limit]])
    user = await cache.user(user_id)
    read: dict[str, int] = {}
    for room_id in {d["room_id"] for d in docs[:limit]}:
        view = await cache.room(room_id)
        if view is not None:
            read[room_id] = read_position(view, user)
    return push.notifications_page(docs, events, read, limit)
