"""Webhook endpoint health: an endpoint that keeps failing is paused, and its owner is told.

Every try's outcome updates the app's health: a failure adds to the current streak (and remembers
when it began and what went wrong), a success ends it. An endpoint is paused once its streak has
both `after_failures` failed tries and `after_seconds` of age (20 tries and 12 h by default): a
short outage with many events in flight does not pause it, an endpoint that is down for a long time
does. While paused, nothing is sent: events go straight to the dead-letter list (reason "endpoint
paused"), from where the owner replays them after resuming the endpoint.

The owner hears of it from the app's own bot, as an `m.notice` in a direct room with them (opened
once, kept for later notices). The notice is at least once: a try claims it for NOTICE_LEASE_MS,
the event that found the endpoint paused is not acked until the owner is told, and the message's
transaction id is fixed per pause, so a retried notice is the same Matrix event.

No I/O here beyond the injected store and rooms.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from services.open_platform.core import App, bot_user_id
from services.open_platform.subscriptions import Rooms

NOTICE_LEASE_MS = 20_000
RESUME_PATH = "/_laiwang/client/v1/apps/{client_id}/webhook/resume"


@dataclass(frozen=True)
class Health:
    consecutive_failures: int = 0
    failing_since_ms: int = 0  # 0: the last try succeeded
    last_error: str = ""
    paused_at_ms: int = 0  # 0: deliveries run
    owner_told: bool = False
    notice_room_id: str = ""


@dataclass(frozen=True)
class PausePolicy:
    after_failures: int = 20
    after_seconds: float = 12 * 3600.0

    def due(self, health: Health, now_ms: int) -> bool:
        return (
            not health.paused_at_ms
            and health.consecutive_failures >= self.after_failures
            and now_ms - health.failing_since_ms >= self.after_seconds * 1000
        )


class HealthStore(Protocol):
    async def health(self, client_id: str) -> Health: ...
    async def record_failure(self, client_id: str, error: str, at_ms: int) -> Health: ...
    async def record_success(self, client_id: str) -> None: ...
    async def pause(self, client_id: str, at_ms: int) -> bool: ...
    async def claim_notice(self, client_id: str, now_ms: int, lease_ms: int) -> Health | None: ...
    async def release_notice(self, client_id: str) -> None: ...
    async def set_notice_room(self, client_id: str, room_id: str) -> None: ...
    async def owner_told(self, client_id: str, paused_at_ms: int) -> None: ...


def notice_text(app: App, health: Health, after_seconds: float) -> str:
    hours = max(1, round(after_seconds / 3600))
    return (
        f"Webhook deliveries of {app.settings.name} are paused: its endpoint {app.settings.webhook_url} "
        f"failed {health.consecutive_failures} tries in a row for over {hours} h"
        f"{f' (last: {health.last_error})' if health.last_error else ''}. Events since then are kept in the "
        f"dead-letter list. Fix the endpoint, resume it (POST {RESUME_PATH.format(client_id=app.client_id)}), "
        "then replay the dead letters you need."
    )


class OwnerNotice:
    """Tells an app's owner, from the app's bot, that its webhook endpoint is paused."""

    def __init__(self, store: HealthStore, rooms: Rooms, server_name: str, policy: PausePolicy) -> None:
        self._store = store
        self._rooms = rooms
        self._server_name = server_name
        self._policy = policy

    async def tell(self, app: App, now_ms: int) -> bool:
        """True once the owner has been told of the current pause; False while another try holds the claim."""
        claim = await self._store.claim_notice(app.client_id, now_ms, NOTICE_LEASE_MS)
        if claim is None:
            health = await self._store.health(app.client_id)
            return health.owner_told or not health.paused_at_ms
        try:
            bot = bot_user_id(app.client_id, self._server_name)
            room_id = claim.notice_room_id
            if not room_id:
                room_id = await self._rooms.open_direct(bot, app.owner, f"{app.settings.name}: webhooks")
                await self._store.set_notice_room(app.client_id, room_id)
            content = {"msgtype": "m.notice", "body": notice_text(app, claim, self._policy.after_seconds)}
            await self._rooms.send(room_id, bot, f"webhook-paused-{claim.paused_at_ms}", "m.room.message", content)
        except Exception:
            await self._store.release_notice(app.client_id)  # the next try may claim it at once
            raise
        await self._store.owner_told(app.client_id, claim.paused_at_ms)
        return True
