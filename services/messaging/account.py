"""Per-user data kept by messaging: account data (global and per room, m.fully_read among it),
push rules (stored as the user's m.push_rules account data) and pushers. Like commands.py, each
write validates its input completely, then submits an op to the writer; account data travels in
the same stream as room events, so it reaches /sync with the same positions and wake-ups."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any
from urllib.parse import urlsplit

from plumbing.domain_errors import DomainError, bad_json, forbidden, invalid, not_found
from plumbing.url_guard import Network, UnsafeUrl, check_url
from services.messaging import push_rules
from services.messaging.commands import Deps
from services.messaging.ports import Store
from services.messaging.push import NOTIFY_PATH
from services.messaging.rules import (
    FULLY_READ,
    JSON,
    MAX_EVENT_BYTES,
    MEMBER,
    PUSH_RULES,
    canonical_bytes,
    check_canonical,
    check_id_field,
    now_ms,
    state_key_id,
)
from services.messaging.sync import account_data_content
from services.messaging.writer import Batch

MAX_PUSHERS = 20
MAX_PUSHKEY_BYTES = 512
MAX_PUSHER_DATA_BYTES = 2048
PUSH_RULE_CHANGES = ("put", "delete", "enabled", "actions")


async def _check_room(batch: Batch, user_id: str, room_id: str) -> None:
    await batch.existing_room(room_id)
    membership, ever_joined = await batch.membership(room_id, user_id)
    if membership not in ("join", "invite") and not ever_joined:
        raise forbidden("you are not a member of this room")


async def perform_set_account_data(deps: Deps, user_id: str, room_id: str, data_type: str, content: Any) -> None:
    check_id_field(data_type, "type")
    if not data_type:
        raise invalid("type is required")
    if not isinstance(content, dict):
        raise bad_json("account data content must be a JSON object")
    check_canonical(content)
    if len(canonical_bytes(content)) > MAX_EVENT_BYTES:
        raise DomainError("M_TOO_LARGE", f"account data is larger than {MAX_EVENT_BYTES} bytes")
    if data_type == PUSH_RULES and not room_id:
        raise bad_json("m.push_rules is changed through /pushrules, not account data")
    if data_type == FULLY_READ and room_id:
        raise bad_json("m.fully_read is set through /read_markers, not account data")

    async def op(batch: Batch) -> None:
        if room_id:
            await _check_room(batch, user_id, room_id)
        batch.add_account_data(user_id, room_id, data_type, content)

    rooms = {room_id} if room_id else set()
    keys = {state_key_id(room_id, MEMBER, user_id)} if room_id else set()
    await deps.writer.submit(op, rooms, keys)


async def get_account_data(deps: Deps, user_id: str, room_id: str, data_type: str) -> JSON:
    check_id_field(data_type, "type")
    view = await deps.cache.user(user_id)
    content = account_data_content(view, room_id, data_type)
    if content is None:
        raise not_found("no account data of that type")
    return content


async def perform_fully_read(deps: Deps, user_id: str, room_id: str, event_id: str) -> None:
    async def op(batch: Batch) -> None:
        await batch.existing_room(room_id)
        membership, _ = await batch.membership(room_id, user_id)
        if membership != "join":
            raise forbidden("you are not joined to this room")
        target = await deps.cache.find_entry(room_id, event_id)
        if target is None or target["room_id"] != room_id or target["kind"] != "event":
            raise not_found("event not found")
        batch.add_account_data(user_id, room_id, FULLY_READ, {"event_id": event_id}, event_pos=target["pos"])

    await deps.writer.submit(op, {room_id}, {state_key_id(room_id, MEMBER, user_id)})


async def perform_push_rule(
    deps: Deps,
    user_id: str,
    change: str,
    scope: str,
    kind: str,
    rule_id: str,
    body: JSON,
    before: str = "",
    after: str = "",
) -> None:
    if scope != "global":
        raise invalid("the only push rule scope is 'global'")
    if change not in PUSH_RULE_CHANGES:
        raise invalid("unknown push rule change")
    check_canonical(body, "body")
    push_rules.check_change(change, kind, rule_id, body)  # before the batch: most refusals never reach it

    async def op(batch: Batch) -> None:
        stored = await batch.account_data(user_id, "", PUSH_RULES)
        updated = push_rules.change_rule(user_id, stored, change, kind, rule_id, body, before, after)
        if len(canonical_bytes(updated)) > 4 * MAX_EVENT_BYTES:
            raise DomainError("M_TOO_LARGE", "push rules are too large")
        batch.add_account_data(user_id, "", PUSH_RULES, updated)

    await deps.writer.submit(op)


# -- pushers (stored here; delivered to by push_delivery.py) ----------------------------------------


def _str(body: JSON, name: str, max_len: int, *, required: bool = True) -> str:
    value = body.get(name)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or (required and not value):
        raise DomainError("M_MISSING_PARAM" if value is None else "M_BAD_JSON", f"'{name}' must be a string")
    if len(value.encode()) > max_len:
        raise invalid(f"'{name}' is longer than {max_len} bytes")
    return value


def checked_pusher(
    body: JSON, device_id: str = "", allowed_networks: Iterable[Network] = ()
) -> tuple[JSON | None, str, str, bool]:
    """(pusher to store, or None to delete; app_id; pushkey; append) from a /pushers/set body.

    The URL must be one we may call (plumbing/url_guard.py: no loopback or private address unless
    the operator allowed that network); `device_id` is the device that registered it, which gets
    no push while it is syncing."""
    check_canonical(body, "body")
    pushkey = _str(body, "pushkey", MAX_PUSHKEY_BYTES)
    app_id = _str(body, "app_id", 64)
    kind = body.get("kind", "")
    append = body.get("append", False)
    if not isinstance(append, bool):
        raise bad_json("'append' must be a boolean")
    if kind is None:
        return None, app_id, pushkey, append
    if kind != "http":
        raise invalid("only 'http' pushers are supported (kind null removes one)")
    data = body.get("data")
    if not isinstance(data, dict):
        raise DomainError("M_MISSING_PARAM", "'data' is required")
    if len(canonical_bytes(data)) > MAX_PUSHER_DATA_BYTES:
        raise invalid(f"'data' is larger than {MAX_PUSHER_DATA_BYTES} bytes")  # a bad request: 400
    try:
        url = check_url(data.get("url"), allowed_networks)
    except UnsafeUrl as exc:
        raise invalid(f"data.url: {exc}") from None
    if urlsplit(url).path != NOTIFY_PATH:
        raise invalid(f"data.url must end in {NOTIFY_PATH} (the Push Gateway API)")
    if data.get("format") not in (None, "event_id_only"):
        raise invalid("data.format must be 'event_id_only' when given")
    pusher: JSON = {
        "pushkey": pushkey,
        "kind": "http",
        "app_id": app_id,
        "app_display_name": _str(body, "app_display_name", 255),
        "device_display_name": _str(body, "device_display_name", 255),
        "lang": _str(body, "lang", 32),
        "data": data,
        "created_ms": now_ms(),
        "device_id": device_id,
    }
    profile_tag = _str(body, "profile_tag", 255, required=False)
    if profile_tag:
        pusher["profile_tag"] = profile_tag
    return pusher, app_id, pushkey, append


async def set_pusher(
    store: Store, user_id: str, body: JSON, device_id: str = "", allowed_networks: Iterable[Network] = ()
) -> None:
    pusher, app_id, pushkey, append = checked_pusher(body, device_id, allowed_networks)
    if pusher is None:
        await store.delete_pusher(user_id, app_id, pushkey)
        return
    existing = await store.pushers(user_id)
    replacing = any((p["app_id"], p["pushkey"]) == (app_id, pushkey) for p in existing)
    if not replacing and len(existing) >= MAX_PUSHERS:
        raise DomainError("M_LIMIT_EXCEEDED", f"at most {MAX_PUSHERS} pushers per user")
    await store.set_pusher(user_id, pusher, append)


async def get_pushers(store: Store, user_id: str) -> JSON:
    fields = ("pushkey", "kind", "app_id", "app_display_name", "device_display_name", "profile_tag", "lang", "data")
    return {"pushers": [{k: p[k] for k in fields if k in p} for p in await store.pushers(user_id)]}
