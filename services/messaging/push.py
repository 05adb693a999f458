"""Push delivery rules (docs/push.md), pure: no I/O.

A *poke* is one Push Gateway API request (`POST /_matrix/push/v1/notify`) for one pusher and one
room. Pokes are collapsed per (pusher, room): one durable document holds the newest event that
should wake the device (`want_pos`) and the newest one already delivered (`sent_pos`). An event
older than or equal to `want_pos` changes nothing, which makes a redelivered event, or a replay
after a crash, idempotent per (event, pushkey). The format is event-id-only: ids and counts,
never a message's content, sender or room name, so Apple and Google learn nothing of a chat.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plumbing.url_guard import Network
from services.messaging.push_rules import Outcome
from services.messaging.rules import JSON

HIGH, LOW = "high", "low"
NOTIFY_PATH = "/_matrix/push/v1/notify"
MAX_NOTIFICATIONS_PAGE = 100


@dataclass(frozen=True)
class PushSettings:
    """PUSH_* settings (read in main.py)."""

    allowed_networks: tuple[Network, ...] = ()  # besides public addresses (dev: loopback)
    collapse_ms: int = 1000  # after a poke, the next one for the same room waits this long
    sync_grace_ms: int = 1500  # a device seen syncing gets this long to fetch the event itself
    sync_active_ms: int = 60_000  # a device counts as syncing if it synced this recently
    timeout_seconds: float = 10.0  # one push gateway request
    lease_seconds: float = 15.0  # a claimed poke is retried by anyone after this (a crashed sender)
    max_backoff_seconds: float = 300.0
    give_up_seconds: float = 24 * 3600.0
    concurrency: int = 32
    poll_seconds: float = 1.0


def priority(outcome: Outcome, is_direct: bool, member_count: int) -> str:
    """High for mentions and other highlights and for direct messages; low for the rest (the
    gateway may then let the OS batch them)."""
    return HIGH if outcome.highlight or is_direct or member_count == 2 else LOW


def backoff_ms(attempts: int, cap_seconds: float) -> int:
    """1 s, 2 s, 4 s, ... capped: a gateway that is down is not hammered, nor forgotten."""
    return int(min(cap_seconds, 2.0 ** max(0, attempts - 1)) * 1000)


def device_data(pusher: JSON) -> JSON:
    """The pusher's `data` as sent to the gateway: everything but `url` (Synapse does the same)."""
    return {k: v for k, v in pusher.get("data", {}).items() if k != "url"}


def notification(poke: JSON, pusher: JSON, unread: int) -> JSON:
    """The event-id-only notification: room id, event id, priority, the badge and the device."""
    return {
        "notification": {
            "event_id": poke["want_event"],
            "room_id": poke["room_id"],
            "prio": HIGH if poke.get("high") else LOW,
            "counts": {"unread": unread},
            "devices": [
                {
                    "app_id": pusher["app_id"],
                    "pushkey": pusher["pushkey"],
                    "pushkey_ts": pusher.get("created_ms", 0) // 1000,
                    "data": device_data(pusher),
                }
            ],
        }
    }


def rejected(body: Any, pushkey: str) -> bool:
    """The gateway answered that this pushkey is dead (uninstalled app, expired token)."""
    if not isinstance(body, dict):
        return False
    keys = body.get("rejected")
    return isinstance(keys, list) and pushkey in keys


def permanent_failure(status: int) -> bool:
    """A 4xx other than 408/429 will not get better by retrying the same request."""
    return 400 <= status < 500 and status not in (408, 429)


def due_after_send(now_ms: int, settings: PushSettings) -> int:
    return now_ms + settings.collapse_ms


def device_has_it(sync_positions: dict[tuple[str, str], tuple[int, int]], poke: JSON, now_ms: int) -> bool:
    """The pusher's device has already synced past the event (its `since` covers it): the user saw
    the message arrive, so a push would only buzz a phone that is in use."""
    device = poke.get("device_id", "")
    seen = sync_positions.get((poke["user"], device)) if device else None
    return seen is not None and seen[0] >= poke["want_pos"]


def syncing_recently(
    sync_positions: dict[tuple[str, str], tuple[int, int]], user: str, device: str, now_ms: int, settings: PushSettings
) -> bool:
    seen = sync_positions.get((user, device)) if device else None
    return seen is not None and now_ms - seen[1] <= settings.sync_active_ms


def notifications_page(docs: list[JSON], events: dict[str, JSON], read_pos: dict[str, int], limit: int) -> JSON:
    """GET /notifications: newest first; `next_token` when there may be more."""
    items = []
    for doc in docs[:limit]:
        event = events.get(doc["event_id"])
        if event is None:
            continue
        items.append(
            {
                "actions": doc.get("actions", []),
                "event": event,
                "read": read_pos.get(doc["room_id"], 0) >= doc["pos"],
                "room_id": doc["room_id"],
                "ts": doc["ts"],
            }
        )
    body: JSON = {"notifications": items}
    if len(docs) > limit:
        body["next_token"] = str(docs[limit - 1]["pos"])
    return body
