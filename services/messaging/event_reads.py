"""Reading single events and what surrounds or relates to them: GET /rooms/{id}/event/{eventId},
/context/{eventId} and /relations/{eventId}[/{relType}[/{eventType}]], and the server-side
aggregation of edits (`unsigned.m.relations.m.replace`) on events served by them and /messages.

Visibility is the reader's rule ("members see everything; former members up to their leave"); to
anyone else an event is indistinguishable from a missing one (404), as the spec asks."""

from __future__ import annotations

from plumbing.domain_errors import DomainError, invalid, not_found
from services.messaging.ports import Store
from services.messaging.rules import (
    JSON,
    MEMBER,
    page_token,
    parse_page_token,
)
from services.messaging.sync import Reader
from services.messaging.timeline import RoomView

REPLACE = "m.replace"
MAX_CONTEXT = 100
MAX_RELATIONS = 1000


class EventReads:
    def __init__(self, reader: Reader, store: Store) -> None:
        self._reader = reader
        self._store = store

    async def _visible(self, user_id: str, room_id: str) -> tuple[RoomView, int]:
        try:
            return await self._reader._room_for_reader(user_id, room_id)
        except DomainError as exc:
            if exc.errcode == "M_FORBIDDEN":
                raise not_found("event not found") from None  # do not tell outsiders what exists
            raise

    async def _entry(self, room_id: str, event_id: str, upper: int) -> JSON:
        entry = await self._reader.cache.find_entry(room_id, event_id)
        if entry is None or entry["room_id"] != room_id or entry["kind"] != "event" or entry["pos"] > upper:
            raise not_found("event not found")
        return entry

    async def with_edits(self, room_id: str, events: list[JSON], upper: int) -> list[JSON]:
        """The events with their newest visible edit named in unsigned.m.relations (one query)."""
        ids = [e["event_id"] for e in events if "state_key" not in e]
        if not ids:
            return events
        latest: dict[str, JSON] = {}
        for edit in await self._store.edits_of(room_id, ids, upper):
            latest[edit["rel"]["to"]] = edit["event"]  # ascending positions: the newest wins
        if not latest:
            return events
        result = []
        for event in events:
            newest = latest.get(event["event_id"])
            if newest is not None:
                unsigned = dict(event.get("unsigned", {}))
                relations = dict(unsigned.get("m.relations", {}))
                relations[REPLACE] = {
                    "event_id": newest["event_id"],
                    "origin_server_ts": newest["origin_server_ts"],
                    "sender": newest["sender"],
                }
                unsigned["m.relations"] = relations
                event = {**event, "unsigned": unsigned}
            result.append(event)
        return result

    async def event(self, user_id: str, device_id: str, room_id: str, event_id: str) -> JSON:
        _, upper = await self._visible(user_id, room_id)
        entry = await self._entry(room_id, event_id, upper)
        (event,) = await self.with_edits(room_id, [self._reader._client_event(entry, device_id)], upper)
        return event

    async def context(
        self, user_id: str, device_id: str, room_id: str, event_id: str, limit: int, lazy_members: bool
    ) -> JSON:
        view, upper = await self._visible(user_id, room_id)
        entry = await self._entry(room_id, event_id, upper)
        limit = max(0, min(limit, MAX_CONTEXT))
        before_count = limit // 2
        before = await self._reader.cache.room_range(view, 0, entry["pos"] - 1, before_count, True)
        after = await self._reader.cache.room_range(view, entry["pos"], upper, limit - before_count, False)
        client = self._reader._client_event
        events = await self.with_edits(room_id, [client(e, device_id) for e in [*before, entry, *after]], upper)
        state = await self._state(view, user_id, upper)
        if lazy_members:
            senders = {e["sender"] for e in events} | {user_id}
            state = [e for e in state if e["type"] != MEMBER or e["state_key"] in senders]
        earliest = before[-1]["pos"] if before else entry["pos"]
        latest = after[-1]["pos"] if after else entry["pos"]
        return {
            "start": page_token(earliest - 1),
            "end": page_token(latest),
            "events_before": events[: len(before)],
            "event": events[len(before)],
            "events_after": events[len(before) + 1 :],
            "state": state,
        }

    async def _state(self, view: RoomView, user_id: str, upper: int) -> list[JSON]:
        member = view.members[user_id]
        if member.membership == "join":
            return [e["event"] for e in view.state.values() if e["pos"] <= upper]
        as_of: dict[tuple[str, str], JSON] = {}
        for state_entry in await self._store.state_events_upto(view.room_id, upper):
            event = state_entry["event"]
            as_of[(event["type"], event["state_key"])] = event
        return list(as_of.values())

    async def relations(
        self,
        user_id: str,
        device_id: str,
        room_id: str,
        event_id: str,
        rel_type: str,
        event_type: str,
        from_token: str,
        to_token: str,
        direction: str,
        limit: int,
    ) -> JSON:
        if direction not in ("b", "f", ""):
            raise invalid("dir must be b or f")
        _, upper = await self._visible(user_id, room_id)
        await self._entry(room_id, event_id, upper)
        limit = max(1, min(limit or 50, MAX_RELATIONS))
        start, end = parse_page_token(from_token), parse_page_token(to_token)
        if (from_token and start is None) or (to_token and end is None):
            raise invalid("from and to must be tokens this server gave")
        forward = direction == "f"
        if forward:
            lo, hi = start or 0, min(end if end is not None else upper, upper)
        else:
            lo, hi = end or 0, min(start if start is not None else upper, upper)
        found = await self._store.relations_of(room_id, event_id, rel_type, event_type, lo, hi, limit + 1, not forward)
        more = len(found) > limit
        found = found[:limit]
        body: JSON = {"chunk": [self._reader._client_event(e, device_id) for e in found]}
        if more:
            body["next_batch"] = page_token(found[-1]["pos"] if forward else found[-1]["pos"] - 1)
        if from_token:
            body["prev_batch"] = from_token
        return body
