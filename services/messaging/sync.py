"""The read side: the one place that knows the Matrix /sync, /messages, /members and /state JSON,
computed from the replica's cache (`LogCache`) and, for what it does not hold, the database."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from plumbing.domain_errors import forbidden, invalid, not_found
from services.messaging.ports import Store
from services.messaging.push_rules import ruleset
from services.messaging.rules import (
    AVATAR,
    CREATE,
    DEFAULT_TIMELINE_LIMIT,
    JOIN_RULES,
    JSON,
    MAX_TIMELINE_LIMIT,
    MEMBER,
    NAME,
    PUSH_RULES,
    TOPIC,
    page_token,
    parse_page_token,
    parse_sync_token,
    sync_token,
)
from services.messaging.timeline import LogCache, MemberInfo, RoomView, Typing, UserView


def account_data_content(user_view: UserView, room_id: str, data_type: str) -> JSON | None:
    """What a client sees: m.push_rules is the whole rule set, computed from the stored changes."""
    stored = user_view.account_data.get((room_id, data_type))
    if data_type == PUSH_RULES and not room_id:
        return {"global": ruleset(user_view.user_id, stored["content"] if stored is not None else None)}
    return stored["content"] if stored is not None else None


def account_data_events(user_view: UserView, room_id: str, since_pos: int, head: int, initial: bool) -> list[JSON]:
    """Account data of one room ("" for global) changed after `since_pos` (all of it when initial)."""
    changed = [
        data_type
        for (room, data_type), record in user_view.account_data.items()
        if room == room_id and record["pos"] <= head and (initial or record["pos"] > since_pos)
    ]
    if initial and not room_id and PUSH_RULES not in changed:
        changed.append(PUSH_RULES)  # the defaults, before the user ever changed a rule
    return [{"type": t, "content": account_data_content(user_view, room_id, t)} for t in sorted(changed)]


@dataclass
class SyncResult:
    body: JSON
    next_batch: str
    has_changes: bool


class Reader:
    def __init__(self, store: Store, cache: LogCache, typing: Typing) -> None:
        self.store = store
        self.cache = cache
        self.typing = typing

    def _client_event(self, entry: JSON, device_id: str) -> JSON:
        event = entry["event"]
        if device_id and entry.get("device") == device_id and "txn" in entry:
            return {**event, "unsigned": {**event.get("unsigned", {}), "transaction_id": entry["txn"]}}
        return event

    async def _room_for_reader(self, user_id: str, room_id: str) -> tuple[RoomView, int]:
        """The room and the highest position the user may read; 404 / 403 otherwise."""
        view = await self.cache.room(room_id)
        if view is None:
            raise not_found("room not found")
        member = view.members.get(user_id)
        if member is None or (not member.ever_joined and member.membership != "join"):
            raise forbidden("you have never been a member of this room")
        if member.membership == "join":
            return view, self.cache.head
        return view, await self._left_at(room_id, user_id, member.pos)

    async def _left_at(self, room_id: str, user_id: str, pos: int) -> int:
        """Where a former member stopped being joined: a later ban or re-invite must not let them read on."""
        left_at, joined = pos, False
        for entry in await self.store.state_events_upto(room_id, pos):
            event = entry["event"]
            if event["type"] == MEMBER and event["state_key"] == user_id:
                membership = event["content"]["membership"]
                if joined and membership != "join":
                    left_at = entry["pos"]
                joined = membership == "join"
        return left_at

    async def joined_rooms(self, user_id: str) -> list[str]:
        view = await self.cache.user(user_id)
        return sorted(r for r, m in view.rooms.items() if m.membership == "join")

    async def get_members(self, user_id: str, room_id: str) -> JSON:
        """Members now, or for a former member as of their leave (nothing that happened later)."""
        view, upper = await self._room_for_reader(user_id, room_id)
        if view.members[user_id].membership == "join":
            return {"chunk": [e["event"] for (t, _), e in view.state.items() if t == MEMBER]}
        as_of: dict[str, JSON] = {}
        for entry in await self.store.state_events_upto(room_id, upper):
            if entry["event"]["type"] == MEMBER:
                as_of[entry["event"]["state_key"]] = entry["event"]
        return {"chunk": list(as_of.values())}

    async def get_state(
        self, user_id: str, room_id: str, event_type: str = "", state_key: str = "", single: bool = False
    ) -> Any:
        view, _ = await self._room_for_reader(user_id, room_id)
        if view.members[user_id].membership != "join":
            raise forbidden("you are not joined to this room")
        if single:
            entry = view.state.get((event_type, state_key))
            if entry is None:
                raise not_found("no such state event")
            return entry["event"]["content"]
        return [e["event"] for e in view.state.values()]

    async def messages(
        self, user_id: str, device_id: str, room_id: str, from_token: str, to_token: str, direction: str, limit: int
    ) -> JSON:
        if direction not in ("b", "f", ""):
            raise invalid("dir must be b or f")
        limit = max(1, min(limit or 10, 1000))
        view, upper = await self._room_for_reader(user_id, room_id)
        start = parse_page_token(from_token)
        to = parse_page_token(to_token)
        if direction == "f":
            lo = start if start is not None else 0
            hi = min(to if to is not None else upper, upper)
            entries = await self.cache.room_range(view, lo, hi, limit, descending=False)
            body: JSON = {"start": page_token(lo), "chunk": [self._client_event(e, device_id) for e in entries]}
            if entries:
                body["end"] = page_token(entries[-1]["pos"])
            return body
        hi = min(start if start is not None else upper, upper)
        lo = to if to is not None else 0
        entries = await self.cache.room_range(view, lo, hi, limit, descending=True)
        body = {
            "start": page_token(start if start is not None else hi),
            "chunk": [self._client_event(e, device_id) for e in entries],
        }
        if len(entries) == limit and entries[-1]["pos"] - 1 > lo:
            body["end"] = page_token(entries[-1]["pos"] - 1)
        return body

    async def sync(
        self,
        user_id: str,
        device_id: str,
        since: str,
        timeline_limit: int = 0,
        full_state: bool = False,
        min_position: int = 0,
    ) -> SyncResult:
        since_pos, since_typing = parse_sync_token(since)
        limit = max(1, min(timeline_limit or DEFAULT_TIMELINE_LIMIT, MAX_TIMELINE_LIMIT))
        target = max(min_position, since_pos)
        if self.cache.head < target:
            await self.cache.catch_up(target)
        user_view = await self.cache.user(user_id)
        head = self.cache.head
        typing_serial = self.typing.serial
        initial = not since or full_state
        join: JSON = {}
        invite: JSON = {}
        leave: JSON = {}
        for room_id, member in list(user_view.rooms.items()):
            if member.pos > head:
                continue
            if member.membership == "join":
                room = await self._sync_joined(
                    room_id, user_view, device_id, member, since_pos, since_typing, head, limit, initial
                )
                if room is not None:
                    join[room_id] = room
            elif member.membership == "invite":
                if initial or member.pos > since_pos:
                    view = await self.cache.room(room_id)
                    if view is not None:
                        invite[room_id] = {"invite_state": {"events": self._stripped_state(view, user_id)}}
            elif not initial and member.pos > since_pos:
                view = await self.cache.room(room_id)
                if view is not None:
                    left_at = await self._left_at(room_id, user_id, member.pos) if member.ever_joined else member.pos
                    entries = await self.cache.room_range(view, since_pos, left_at, limit + 1, True)
                    limited = len(entries) > limit
                    entries = entries[:limit][::-1]
                    own = view.state.get((MEMBER, user_id))
                    if left_at < member.pos and own is not None and own["pos"] > since_pos:
                        entries.append(own)  # a later ban or re-invite: only their own membership event
                    leave[room_id] = {
                        "timeline": {
                            "events": [self._client_event(e, device_id) for e in entries],
                            "limited": limited,
                            "prev_batch": page_token(entries[0]["pos"] - 1 if entries else since_pos),
                        },
                        "state": {"events": []},
                        "account_data": {"events": []},
                    }
        account_data = account_data_events(user_view, "", since_pos, head, initial)
        has_changes = bool(join or invite or leave or account_data)
        next_batch = sync_token(head, typing_serial)
        body: JSON = {
            "next_batch": next_batch,
            "rooms": {"join": join, "invite": invite, "leave": leave, "knock": {}},
            "presence": {"events": []},
            "account_data": {"events": account_data},
            "to_device": {"events": []},
            "device_lists": {"changed": [], "left": []},
            "device_one_time_keys_count": {},
        }
        return SyncResult(body, next_batch, has_changes)

    async def _sync_joined(
        self,
        room_id: str,
        user_view: UserView,
        device_id: str,
        member: MemberInfo,
        since_pos: int,
        since_typing: int,
        head: int,
        limit: int,
        initial: bool,
    ) -> JSON | None:
        view = await self.cache.room(room_id)
        if view is None:
            return None
        user_id = user_view.user_id
        newly = initial or member.pos > since_pos
        typing_changed = self.typing.room_serial.get(room_id, 0) > since_typing
        account_data = account_data_events(user_view, room_id, since_pos, head, newly)
        if not newly and view.last_pos <= since_pos and not typing_changed and not account_data:
            return None
        lo = 0 if newly else since_pos
        entries = await self.cache.room_range(view, lo, head, limit + 1, True)
        limited = len(entries) > limit
        entries = entries[:limit][::-1]
        events = [self._client_event(e, device_id) for e in entries]
        state: list[JSON] = []
        if newly or limited:
            in_timeline = {e["event"]["event_id"] for e in entries}
            state = [
                e["event"]
                for e in view.state.values()
                if e["pos"] <= head and e["event"]["event_id"] not in in_timeline
            ]
        ephemeral: list[JSON] = []
        if typing_changed or (newly and self.typing.typers(room_id)):
            ephemeral.append({"type": "m.typing", "content": {"user_ids": self.typing.typers(room_id)}})
        receipts: JSON = {}
        for (reader, receipt_type), receipt in view.receipts.items():
            if receipt_type == "m.read.private" and reader != user_id:
                continue
            if (newly or receipt["pos"] > since_pos) and receipt["pos"] <= head:
                receipts.setdefault(receipt["event_id"], {}).setdefault(receipt_type, {})[reader] = {
                    "ts": receipt["ts"]
                }
        if receipts:
            ephemeral.append({"type": "m.receipt", "content": receipts})
        if not newly and not events and not ephemeral and not account_data:
            return None
        notifications, highlights = await self.cache.unread(view, user_view)
        joined = view.joined()
        return {
            "timeline": {
                "events": events,
                "limited": limited,
                "prev_batch": page_token(entries[0]["pos"] - 1 if entries else head),
            },
            "state": {"events": state},
            "ephemeral": {"events": ephemeral},
            "account_data": {"events": account_data},
            "unread_notifications": {"notification_count": notifications, "highlight_count": highlights},
            "summary": {
                "m.joined_member_count": len(joined),
                "m.invited_member_count": sum(1 for m in view.members.values() if m.membership == "invite"),
            },
        }

    def _stripped_state(self, view: RoomView, user_id: str) -> list[JSON]:
        wanted = [
            (CREATE, ""),
            (JOIN_RULES, ""),
            (NAME, ""),
            (AVATAR, ""),
            (TOPIC, ""),
            ("m.room.canonical_alias", ""),
            ("m.room.encryption", ""),
            (MEMBER, user_id),
        ]
        invite = view.state.get((MEMBER, user_id))
        if invite is not None:
            wanted.append((MEMBER, invite["event"]["sender"]))
        stripped = []
        for key in wanted:
            entry = view.state.get(key)
            if entry is not None:
                event = entry["event"]
                stripped.append(
                    {
                        "type": event["type"],
                        "state_key": event["state_key"],
                        "content": event["content"],
                        "sender": event["sender"],
                    }
                )
        return stripped
