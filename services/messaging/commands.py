"""What a request does to a room: each command validates its input completely (before it joins a
group commit), then submits an `op` that checks the rules against the batch's view and appends its
entries. Like Dendrite's perform_*: one short function per request kind."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from plumbing.domain_errors import bad_json, forbidden, invalid, not_found
from services.messaging.ports import Notifier
from services.messaging.rules import (
    APP_CARD,
    CREATE,
    DEFAULT_POWER_LEVELS,
    ENCRYPTION,
    HISTORY_VISIBILITY,
    JOIN_RULES,
    JSON,
    MEMBER,
    MEMBERSHIPS,
    NAME,
    POWER_LEVELS,
    RECEIPT_TYPES,
    REDACTION,
    TOPIC,
    action_level,
    check_canonical,
    check_id_field,
    checked_initial_state,
    create_options,
    event_level,
    new_id,
    now_ms,
    parse_content,
    receipt_key,
    state_key_id,
    txn_event_id,
    txn_key,
    user_level,
    valid_user_id,
    validate_message_content,
    validate_state_content,
)
from services.messaging.timeline import LogCache, RoomView, Typing
from services.messaging.writer import Batch, Writer


@dataclass(frozen=True)
class Deps:
    server_name: str
    invite_policy: str
    cache: LogCache
    typing: Typing
    notifier: Notifier
    writer: Writer


async def perform_create_room(
    deps: Deps, creator: str, body: JSON, *, bypass_policy: bool = False, service: str = ""
) -> str:
    check_canonical(body, "body")
    preset, is_direct, invites = create_options(creator, body)
    initial_state = checked_initial_state(body)
    override = body.get("power_level_content_override") or {}
    if not isinstance(override, dict):
        raise bad_json("power_level_content_override must be an object")
    room_id = f"!{new_id(18)}:{deps.server_name}"

    async def op(batch: Batch) -> str:
        if not bypass_policy:
            for invitee in invites:
                await _check_invite_policy(deps, batch, creator, invitee)
        else:
            for invitee in invites:
                if await batch.blocked(creator, invitee):
                    raise forbidden(f"{invitee} cannot be invited")
        batch.add_room(
            {
                "_id": room_id,
                "creator": creator,
                "is_direct": is_direct,
                "direct_pair": [creator, invites[0]] if is_direct else [],
                "created_ms": batch.ts,
                "service": service,
            }
        )
        batch.append_event(room_id, creator, CREATE, {"creator": creator, "room_version": "10"}, state_key="")
        batch.append_member(room_id, creator, creator, "join", ever_joined=True, extra=await batch.profile_of(creator))
        users = {creator: 100}
        if preset == "trusted_private_chat":
            users.update({u: 100 for u in invites})
        pl = {**DEFAULT_POWER_LEVELS, "users": users}
        pl.update({k: v for k, v in override.items() if k != "users"})
        if isinstance(override.get("users"), dict):
            pl["users"] = {**users, **override["users"]}
        validate_state_content(POWER_LEVELS, pl)
        batch.append_event(room_id, creator, POWER_LEVELS, pl, state_key="")
        join_rule = "public" if preset == "public_chat" else "invite"
        batch.append_event(room_id, creator, JOIN_RULES, {"join_rule": join_rule}, state_key="")
        batch.append_event(room_id, creator, HISTORY_VISIBILITY, {"history_visibility": "shared"}, state_key="")
        for item in initial_state:
            batch.append_event(room_id, creator, item["type"], item["content"], state_key=item["state_key"])
        if body.get("name"):
            batch.append_event(room_id, creator, NAME, {"name": body["name"]}, state_key="")
        if body.get("topic"):
            batch.append_event(room_id, creator, TOPIC, {"topic": body["topic"]}, state_key="")
        for invitee in invites:
            batch.append_member(
                room_id, creator, invitee, "invite", ever_joined=False, extra={"is_direct": True} if is_direct else None
            )
        return room_id

    return await deps.writer.submit(op)


async def _check_invite_policy(deps: Deps, batch: Batch, inviter: str, invitee: str) -> None:
    """The invite policy hook: blocks always refuse; `friends` also requires friendship."""
    relation = await batch.relation(inviter, invitee)
    if relation and (relation.get("a_blocks_b") or relation.get("b_blocks_a")):
        raise forbidden(f"{invitee} cannot be invited")
    if deps.invite_policy == "friends" and not (relation and relation.get("friends")):
        raise forbidden(f"{invitee} is not your friend; only friends can be invited")


async def perform_membership(
    deps: Deps, sender: str, room_id: str, action: str, target: str = "", reason: str = ""
) -> str:
    if action in ("join", "leave"):
        target = sender
    elif not valid_user_id(target):
        raise invalid("user_id is not a valid user id")
    keys = {
        state_key_id(room_id, MEMBER, sender),
        state_key_id(room_id, MEMBER, target),
        state_key_id(room_id, POWER_LEVELS, ""),
    }

    async def op(batch: Batch) -> str:
        await batch.existing_room(room_id)
        mine, _ = await batch.membership(room_id, sender)
        theirs, their_ever = await batch.membership(room_id, target)
        change = _Change(
            batch,
            room_id,
            sender,
            target,
            reason,
            theirs,
            their_ever,
            await batch.state_entry(room_id, MEMBER, target),
            await batch.power_levels(room_id),
        )
        if action == "join":
            return await _join(change)
        if action == "leave":
            return _leave(change)
        if mine != "join":
            raise forbidden("you are not in this room")
        if action == "invite":
            return await _invite(deps, change)
        handler = _MODERATION.get(action)
        if handler is None:
            raise invalid(f"unknown membership action {action!r}")
        return handler(change)

    return await deps.writer.submit(op, {room_id}, keys)


@dataclass(frozen=True)
class _Change:
    """One membership request as seen by its batch: who, whom, and the target's current membership."""

    batch: Batch
    room_id: str
    sender: str
    target: str
    reason: str
    theirs: str
    their_ever: bool
    current: JSON | None  # the target's member event entry, if any
    pl: JSON

    def append(self, membership: str, *, ever_joined: bool | None = None) -> str:
        entry = self.batch.append_member(
            self.room_id,
            self.sender,
            self.target,
            membership,
            ever_joined=self.their_ever if ever_joined is None else ever_joined,
            reason=self.reason,
        )
        return str(entry["event"]["event_id"])

    def current_id(self) -> str:
        assert self.current is not None
        return str(self.current["event"]["event_id"])

    def outranks_target(self, action: str) -> bool:
        mine = user_level(self.pl, self.sender)
        return mine >= action_level(self.pl, action) and (
            self.target == self.sender or user_level(self.pl, self.target) < mine
        )


async def _join(c: _Change) -> str:
    if c.theirs == "join":
        return c.current_id()
    if c.theirs == "ban":
        raise forbidden("you are banned from this room")
    if c.theirs != "invite":
        rules = await c.batch.state_entry(c.room_id, JOIN_RULES, "")
        if not rules or rules["event"]["content"].get("join_rule") != "public":
            raise forbidden("you are not invited to this room")
    profile = await c.batch.profile_of(c.sender)
    entry = c.batch.append_member(c.room_id, c.sender, c.sender, "join", ever_joined=True, extra=profile)
    return str(entry["event"]["event_id"])


def _leave(c: _Change) -> str:
    if c.theirs in ("", "leave"):
        if c.theirs == "leave" and c.current is not None:
            return c.current_id()
        raise forbidden("you are not in this room")
    if c.theirs == "ban":
        raise forbidden("you are banned from this room")
    return c.append("leave")


async def _invite(deps: Deps, c: _Change) -> str:
    if c.theirs == "ban":
        raise forbidden(f"{c.target} is banned from this room")
    if c.theirs == "join":
        raise forbidden(f"{c.target} is already in this room")
    if user_level(c.pl, c.sender) < action_level(c.pl, "invite"):
        raise forbidden("you may not invite users to this room")
    if c.theirs == "invite" and c.current is not None:
        return c.current_id()
    await _check_invite_policy(deps, c.batch, c.sender, c.target)
    return c.append("invite")


def _kick(c: _Change) -> str:
    if c.theirs not in ("join", "invite"):
        raise forbidden(f"{c.target} is not in this room")
    if not c.outranks_target("kick"):
        raise forbidden("you may not kick this user")
    return c.append("leave")


def _ban(c: _Change) -> str:
    if not c.outranks_target("ban"):
        raise forbidden("you may not ban this user")
    if c.theirs == "ban" and c.current is not None:
        return c.current_id()
    return c.append("ban")


def _unban(c: _Change) -> str:
    if c.theirs != "ban":
        raise forbidden(f"{c.target} is not banned")
    if user_level(c.pl, c.sender) < action_level(c.pl, "ban"):
        raise forbidden("you may not unban users")
    return c.append("leave")


_MODERATION: dict[str, Callable[[_Change], str]] = {"kick": _kick, "ban": _ban, "unban": _unban}


async def perform_service_membership(
    deps: Deps, service: str, room_id: str, user_id: str, membership: str, reason: str = ""
) -> str:
    """Trusted services decide membership themselves (no invite policy, no power levels)."""
    if membership not in MEMBERSHIPS:
        raise invalid("membership must be invite, join, leave or ban")
    if not valid_user_id(user_id):
        raise invalid("user_id is not a valid user id")
    if not service:
        raise invalid("service is required")

    async def op(batch: Batch) -> str:
        room = await batch.existing_room(room_id)
        theirs, their_ever = await batch.membership(room_id, user_id)
        current = await batch.state_entry(room_id, MEMBER, user_id)
        if theirs == membership and current is not None:
            return str(current["event"]["event_id"])
        sender = user_id if membership in ("join", "leave") and theirs != "ban" else room["creator"]
        profile = await batch.profile_of(user_id) if membership == "join" else {}
        entry = batch.append_member(
            room_id,
            sender,
            user_id,
            membership,
            ever_joined=their_ever or membership == "join",
            reason=reason,
            extra=profile,
        )
        return str(entry["event"]["event_id"])

    return await deps.writer.submit(op, {room_id}, {state_key_id(room_id, MEMBER, user_id)})


async def perform_send(
    deps: Deps, sender: str, device_id: str, room_id: str, event_type: str, txn_id: str, raw_content: bytes
) -> str:
    if not event_type or not txn_id:
        raise invalid("an event type and a transaction id are required")
    check_id_field(event_type, "event type")
    check_id_field(txn_id, "transaction id")
    key = txn_key(sender, device_id, room_id, event_type, txn_id)
    known = deps.writer.recent_txns.get(key)
    if known is not None:
        return known
    content = parse_content(raw_content)
    if event_type in (REDACTION, CREATE, MEMBER, POWER_LEVELS):
        raise forbidden(f"{event_type} cannot be sent as a message")
    validate_message_content(event_type, content)
    relates = content.get("m.relates_to")
    edit_of = relates.get("event_id") if isinstance(relates, dict) and relates.get("rel_type") == "m.replace" else None

    async def op(batch: Batch) -> str:
        existing = await batch.known_txn(key)
        if existing is not None:
            return existing
        await _check_can_send(deps, batch, sender, room_id, event_type, is_state=False)
        if event_type == APP_CARD and await batch.state_entry(room_id, ENCRYPTION, "") is not None:
            # The server cannot read an encrypted room, so apps get no cards into it (docs/e2ee.md).
            raise forbidden("app cards are not available in encrypted rooms")
        if edit_of is not None:
            original = await batch.tx.entry(edit_of)
            if original is None or original["room_id"] != room_id:
                raise bad_json("the edited event is not in this room")
            event = original["event"]
            if event["sender"] != sender or "state_key" in event or event["type"] != event_type:
                raise forbidden("you can only edit your own messages")
            if "redacted_because" in event.get("unsigned", {}):
                raise forbidden("a redacted event cannot be edited")
        entry = batch.append_event(
            room_id, sender, event_type, content, event_id=txn_event_id(key), device_id=device_id, txn_id=txn_id
        )
        event_id = str(entry["event"]["event_id"])
        batch.record_txn(key, event_id)
        return event_id

    return await deps.writer.submit(
        op,
        {room_id},
        {state_key_id(room_id, MEMBER, sender), state_key_id(room_id, POWER_LEVELS, "")}
        | ({state_key_id(room_id, ENCRYPTION, "")} if event_type == APP_CARD else set()),
        append_only=True,
    )


async def _check_can_send(
    deps: Deps, batch: Batch, sender: str, room_id: str, event_type: str, *, is_state: bool
) -> None:
    room = await batch.existing_room(room_id)
    membership, _ = await batch.membership(room_id, sender)
    if membership != "join":
        raise forbidden("you are not joined to this room")
    pl = await batch.power_levels(room_id)
    if user_level(pl, sender) < event_level(pl, event_type, is_state):
        raise forbidden(f"you may not send {event_type} events in this room")
    if room.get("direct_pair"):
        a, b = room["direct_pair"]
        other = b if sender == a else a
        if await batch.blocked(sender, other):
            raise forbidden("messages between you and this user are blocked")


async def perform_set_state(
    deps: Deps, sender: str, room_id: str, event_type: str, state_key: str, raw_content: bytes
) -> str:
    if not event_type:
        raise invalid("an event type is required")
    check_id_field(event_type, "event type")
    check_id_field(state_key, "state key")
    content = parse_content(raw_content)
    validate_state_content(event_type, content)
    if state_key.startswith("@") and state_key != sender:
        raise forbidden("state keys that are user ids belong to that user")

    async def op(batch: Batch) -> str:
        await _check_can_send(deps, batch, sender, room_id, event_type, is_state=True)
        if event_type == POWER_LEVELS:
            await _check_power_change(deps, batch, sender, room_id, content)
        entry = batch.append_event(room_id, sender, event_type, content, state_key=state_key)
        return str(entry["event"]["event_id"])

    return await deps.writer.submit(
        op, {room_id}, {state_key_id(room_id, MEMBER, sender), state_key_id(room_id, POWER_LEVELS, "")}
    )


async def _check_power_change(deps: Deps, batch: Batch, sender: str, room_id: str, new: JSON) -> None:
    old = await batch.power_levels(room_id)
    mine = user_level(old, sender)
    old_users, new_users = old.get("users", {}), new.get("users", {})
    for user_id in set(old_users) | set(new_users):
        before, after = old_users.get(user_id), new_users.get(user_id)
        if before == after:
            continue
        if (after is not None and after > mine) or (user_id != sender and before is not None and before >= mine):
            raise forbidden("you may not change that user's power level")
    for key in ("ban", "kick", "redact", "invite", "events_default", "state_default", "users_default"):
        if old.get(key) != new.get(key) and max(old.get(key, 0), new.get(key, 0)) > mine:
            raise forbidden(f"you may not change {key} above your own level")


async def perform_redact(
    deps: Deps, sender: str, device_id: str, room_id: str, event_id: str, txn_id: str, reason: str = ""
) -> str:
    key = txn_key(sender, device_id, room_id, f"redact:{event_id}", txn_id)
    known = deps.writer.recent_txns.get(key)
    if known is not None:
        return known

    async def op(batch: Batch) -> str:
        existing = await batch.known_txn(key)
        if existing is not None:
            return existing
        await _check_can_send(deps, batch, sender, room_id, REDACTION, is_state=False)
        target = await batch.tx.entry(event_id)
        if target is None or target["room_id"] != room_id or target["kind"] != "event":
            raise not_found("event not found")
        event = target["event"]
        if event["sender"] != sender:
            pl = await batch.power_levels(room_id)
            if user_level(pl, sender) < action_level(pl, "redact"):
                raise forbidden("you may only redact your own events")
        content: JSON = {"redacts": event_id}
        if reason:
            content["reason"] = reason
        entry = batch.append_event(
            room_id,
            sender,
            REDACTION,
            content,
            redacts=event_id,
            event_id=txn_event_id(key),
            device_id=device_id,
            txn_id=txn_id,
        )
        batch.add_redaction(event, entry["event"])
        batch.record_txn(key, entry["event"]["event_id"])
        return str(entry["event"]["event_id"])

    return await deps.writer.submit(
        op, {room_id}, {state_key_id(room_id, MEMBER, sender), state_key_id(room_id, POWER_LEVELS, "")}
    )


async def perform_receipt(deps: Deps, user_id: str, room_id: str, receipt_type: str, event_id: str) -> None:
    if receipt_type not in RECEIPT_TYPES:
        raise invalid(f"unsupported receipt type {receipt_type!r}")

    async def op(batch: Batch) -> None:
        await batch.existing_room(room_id)
        membership, _ = await batch.membership(room_id, user_id)
        if membership != "join":
            raise forbidden("you are not joined to this room")
        target = await deps.cache.find_entry(room_id, event_id)
        if target is None or target["room_id"] != room_id or target["kind"] != "event":
            raise not_found("event not found")
        if batch.cache_mode:
            view = deps.cache.rooms.get(room_id)
            current = view.receipts.get((user_id, receipt_type)) if view is not None else None
        else:
            current = await batch.tx.receipt(receipt_key(room_id, user_id, receipt_type))
        pending = batch.writes.receipts.get(receipt_key(room_id, user_id, receipt_type))
        for doc in (current, pending):
            if doc is not None and doc["event_pos"] >= target["pos"]:
                return  # receipts only move forward
        batch.add_receipt(room_id, user_id, receipt_type, event_id, target["pos"])

    await deps.writer.submit(op, {room_id}, {state_key_id(room_id, MEMBER, user_id)})


async def perform_typing(deps: Deps, user_id: str, room_id: str, typing: bool, timeout_ms: int) -> None:
    view = await deps.cache.room(room_id)
    if view is None:
        raise not_found("room not found")
    member = view.members.get(user_id)
    if member is None or member.membership != "join":
        raise forbidden("you are not joined to this room")
    timeout_ms = max(1_000, min(timeout_ms or 30_000, 120_000))
    expires = now_ms() + timeout_ms if typing else 0
    serial = deps.typing.set(room_id, user_id, expires)
    if serial is not None:
        await deps.notifier.broadcast_typing(room_id, user_id, expires, serial)
        await _wake_room(deps, view)


async def apply_remote_typing(deps: Deps, room_id: str, user_id: str, expires_at_ms: int, serial: int) -> None:
    if deps.typing.set(room_id, user_id, expires_at_ms, serial) is not None:
        view = deps.cache.rooms.get(room_id)
        if view is not None:
            await _wake_room(deps, view)


async def expire_typing(deps: Deps) -> None:
    for room_id in deps.typing.expire(now_ms()):
        view = deps.cache.rooms.get(room_id)
        if view is not None:
            await _wake_room(deps, view)


async def _wake_room(deps: Deps, view: RoomView) -> None:
    await deps.notifier.wake({u: 0 for u in view.joined()})


async def perform_profile_update(deps: Deps, user_id: str, displayname: str, avatar_url: str) -> int:
    """A changed profile becomes a new m.room.member (join) event in every room the user is joined
    to whose member event does not show it yet; so a redelivered profile event writes nothing.
    Returns how many rooms got one."""
    await deps.writer.store.set_profile(user_id, displayname, avatar_url)
    view = await deps.cache.user(user_id)
    rooms = sorted(r for r, m in view.rooms.items() if m.membership == "join")
    if not rooms:
        return 0
    wanted = {k: v for k, v in (("displayname", displayname), ("avatar_url", avatar_url)) if v}

    async def op(batch: Batch) -> int:
        changed = 0
        for room_id in rooms:
            membership, _ = await batch.membership(room_id, user_id)
            current = await batch.state_entry(room_id, MEMBER, user_id)
            if membership != "join" or current is None:
                continue
            content = current["event"]["content"]
            shown = {k: content[k] for k in ("displayname", "avatar_url") if content.get(k)}
            if shown != wanted:
                batch.append_member(room_id, user_id, user_id, "join", ever_joined=True, extra=wanted)
                changed += 1
        return changed

    return await deps.writer.submit(op, rooms, {state_key_id(r, MEMBER, user_id) for r in rooms})
