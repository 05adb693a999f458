"""Matrix room endpoints: createRoom, membership, send, state, redact, members, history, receipts, typing.

Handlers translate HTTP <-> the messaging service's gRPC API; the rules (membership, power
levels, canonical JSON, the 64 KiB limit, the invite policy) live in services/messaging/ (rules.py, commands.py).
"""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.app import DEPS_KEY, GatewayDeps
from gateway.fields import (
    body_bool,
    body_int,
    body_str,
    body_user_id,
    parse_json_object,
    path_user_id,
    query_int,
    query_str,
    read_json_object,
)
from gateway.matrix import MatrixError, json_response
from gateway.rpc import call
from gateway.session import authenticate
from laiwang.messaging.v1 import messaging_pb2 as pb
from laiwang.messaging.v1 import messaging_pb2_grpc

PREFIXES = ("/_matrix/client/v3", "/_matrix/client/r0")
_EMPTY = b"{}"


def messaging_stub(deps: GatewayDeps) -> messaging_pb2_grpc.MessagingServiceAsyncStub:
    return deps.stubs.messaging


def _raw(body: bytes, status: int = 200) -> web.Response:
    return web.Response(body=body, status=status, content_type="application/json")


async def _requester(request: web.Request) -> tuple[GatewayDeps, pb.Requester]:
    who = await authenticate(request)
    return request.app[DEPS_KEY], pb.Requester(user_id=who.user_id, device_id=who.device_id)


def limit_writes(deps: GatewayDeps, user_id: str) -> None:
    """The per-user write limit (sends, state, redactions, account data, push rules)."""
    deps.limits.send.check(user_id)


async def create_room(request: web.Request) -> web.Response:
    deps, who = await _requester(request)
    raw = await request.read()
    # Checked here (canonical: it holds initial state content); the service interprets it.
    parse_json_object(raw, allow_empty=True, canonical=True)
    reply = await call(
        messaging_stub(deps).CreateRoom, pb.CreateRoomRequest(requester=who, body_json=raw if raw.strip() else _EMPTY)
    )
    return json_response({"room_id": reply.room_id})


def _membership_handler(action: pb.MembershipAction.ValueType, needs_target: bool):  # noqa: ANN202 - an aiohttp handler factory
    async def handler(request: web.Request) -> web.Response:
        deps, who = await _requester(request)
        body = await read_json_object(request, allow_empty=True)
        target = body_user_id(body, "user_id", required=needs_target)
        room_id = request.match_info.get("room_id") or request.match_info["room_id_or_alias"]
        if not room_id.startswith("!"):
            raise MatrixError(404, "M_NOT_FOUND", "room aliases are not supported; join by room id")
        await call(
            messaging_stub(deps).ChangeMembership,
            pb.ChangeMembershipRequest(
                requester=who,
                room_id=room_id,
                action=action,
                target_user_id=target,
                reason=body_str(body, "reason", max_len=65536),
            ),
        )
        if action == pb.MEMBERSHIP_ACTION_JOIN:
            return json_response({"room_id": room_id})
        return _raw(_EMPTY)

    return handler


async def event_content(request: web.Request, *, required: bool = False) -> bytes:
    """The raw body, once checked as canonical JSON (the service parses it again and applies its rules)."""
    raw = await request.read()
    if raw.strip() or required:
        parse_json_object(raw, canonical=True)
    return raw


async def send_event(request: web.Request) -> web.Response:
    deps, who = await _requester(request)
    limit_writes(deps, who.user_id)
    raw = await event_content(request)
    reply = await call(
        messaging_stub(deps).SendEvent,
        pb.SendEventRequest(
            requester=who,
            room_id=request.match_info["room_id"],
            event_type=request.match_info["event_type"],
            txn_id=request.match_info["txn_id"],
            content_json=raw,
        ),
    )
    return json_response({"event_id": reply.event_id})


async def put_state(request: web.Request) -> web.Response:
    deps, who = await _requester(request)
    limit_writes(deps, who.user_id)
    raw = await event_content(request)
    reply = await call(
        messaging_stub(deps).SetState,
        pb.SetStateRequest(
            requester=who,
            room_id=request.match_info["room_id"],
            event_type=request.match_info["event_type"],
            state_key=request.match_info.get("state_key", ""),
            content_json=raw,
        ),
    )
    return json_response({"event_id": reply.event_id})


async def get_state(request: web.Request) -> web.Response:
    deps, who = await _requester(request)
    event_type = request.match_info.get("event_type", "")
    reply = await call(
        messaging_stub(deps).GetState,
        pb.GetStateRequest(
            requester=who,
            room_id=request.match_info["room_id"],
            event_type=event_type,
            state_key=request.match_info.get("state_key", ""),
            single=bool(event_type),
        ),
    )
    return _raw(reply.body_json)


async def redact(request: web.Request) -> web.Response:
    deps, who = await _requester(request)
    limit_writes(deps, who.user_id)
    body = await read_json_object(request, allow_empty=True)
    reply = await call(
        messaging_stub(deps).Redact,
        pb.RedactRequest(
            requester=who,
            room_id=request.match_info["room_id"],
            event_id=request.match_info["event_id"],
            txn_id=request.match_info["txn_id"],
            reason=body_str(body, "reason", max_len=65536),
        ),
    )
    return json_response({"event_id": reply.event_id})


async def members(request: web.Request) -> web.Response:
    deps, who = await _requester(request)
    reply = await call(
        messaging_stub(deps).GetMembers, pb.GetMembersRequest(requester=who, room_id=request.match_info["room_id"])
    )
    return _raw(reply.body_json)


async def joined_members(request: web.Request) -> web.Response:
    deps, who = await _requester(request)
    reply = await call(
        messaging_stub(deps).GetMembers, pb.GetMembersRequest(requester=who, room_id=request.match_info["room_id"])
    )
    joined = {
        event["state_key"]: {
            "display_name": event["content"].get("displayname"),
            "avatar_url": event["content"].get("avatar_url"),
        }
        for event in orjson.loads(reply.body_json)["chunk"]
        if event["content"].get("membership") == "join"
    }
    return json_response({"joined": joined})


async def joined_rooms(request: web.Request) -> web.Response:
    deps, who = await _requester(request)
    reply = await call(messaging_stub(deps).JoinedRooms, pb.JoinedRoomsRequest(requester=who))
    return json_response({"joined_rooms": list(reply.room_ids)})


async def messages(request: web.Request) -> web.Response:
    deps, who = await _requester(request)
    reply = await call(
        messaging_stub(deps).Messages,
        pb.MessagesRequest(
            requester=who,
            room_id=request.match_info["room_id"],
            to=query_str(request, "to"),
            dir=query_str(request, "dir", "b", max_len=1),
            limit=query_int(request, "limit", 10, maximum=1000),
            **{"from": query_str(request, "from")},
        ),
    )
    return _raw(reply.body_json)


async def get_event(request: web.Request) -> web.Response:
    deps, who = await _requester(request)
    reply = await call(
        messaging_stub(deps).GetEvent,
        pb.GetEventRequest(
            requester=who, room_id=request.match_info["room_id"], event_id=request.match_info["event_id"]
        ),
    )
    return _raw(reply.body_json)


async def event_context(request: web.Request) -> web.Response:
    from gateway.routes.sync import filter_definition  # sync imports this module

    deps, who = await _requester(request)
    definition = filter_definition(query_str(request, "filter", max_len=4096))
    room = found if isinstance(found := definition.get("room"), dict) else {}
    state = found if isinstance(found := room.get("state"), dict) else {}
    reply = await call(
        messaging_stub(deps).GetEventContext,
        pb.GetEventContextRequest(
            requester=who,
            room_id=request.match_info["room_id"],
            event_id=request.match_info["event_id"],
            limit=query_int(request, "limit", 10, maximum=100),
            lazy_load_members=state.get("lazy_load_members") is True,
        ),
    )
    return _raw(reply.body_json)


async def relations(request: web.Request) -> web.Response:
    deps, who = await _requester(request)
    reply = await call(
        messaging_stub(deps).GetRelations,
        pb.GetRelationsRequest(
            requester=who,
            room_id=request.match_info["room_id"],
            event_id=request.match_info["event_id"],
            rel_type=request.match_info.get("rel_type", ""),
            event_type=request.match_info.get("event_type", ""),
            to=query_str(request, "to", max_len=64),
            dir=query_str(request, "dir", "b", max_len=1),
            limit=query_int(request, "limit", 50, maximum=1000),
            **{"from": query_str(request, "from", max_len=64)},
        ),
    )
    return _raw(reply.body_json)


async def receipt(request: web.Request) -> web.Response:
    deps, who = await _requester(request)
    await read_json_object(request, allow_empty=True)
    await call(
        messaging_stub(deps).SendReceipt,
        pb.SendReceiptRequest(
            requester=who,
            room_id=request.match_info["room_id"],
            receipt_type=request.match_info["receipt_type"],
            event_id=request.match_info["event_id"],
        ),
    )
    return _raw(_EMPTY)


async def read_markers(request: web.Request) -> web.Response:
    deps, who = await _requester(request)
    body = await read_json_object(request, allow_empty=True)
    fully_read = body_str(body, "m.fully_read", max_len=255)
    if fully_read:  # stored as the room's m.fully_read account data
        await call(
            messaging_stub(deps).SetFullyRead,
            pb.SetFullyReadRequest(requester=who, room_id=request.match_info["room_id"], event_id=fully_read),
        )
    for receipt_type in ("m.read", "m.read.private"):
        event_id = body_str(body, receipt_type, max_len=255)
        if event_id:
            await call(
                messaging_stub(deps).SendReceipt,
                pb.SendReceiptRequest(
                    requester=who, room_id=request.match_info["room_id"], receipt_type=receipt_type, event_id=event_id
                ),
            )
    return _raw(_EMPTY)


async def typing(request: web.Request) -> web.Response:
    deps, who = await _requester(request)
    if path_user_id(request) != who.user_id:
        raise MatrixError(403, "M_FORBIDDEN", "you can only set your own typing state")
    body = await read_json_object(request)
    await call(
        messaging_stub(deps).SetTyping,
        pb.SetTypingRequest(
            requester=who,
            room_id=request.match_info["room_id"],
            typing=body_bool(body, "typing"),
            timeout_ms=body_int(body, "timeout", 30_000, maximum=120_000, clamp=True),
        ),
    )
    return _raw(_EMPTY)


def routes(deps: GatewayDeps) -> list[web.RouteDef]:
    table: list[web.RouteDef] = []
    room = "/rooms/{room_id}"
    for prefix in PREFIXES:
        table += [
            web.post(f"{prefix}/createRoom", create_room),
            web.post(f"{prefix}{room}/invite", _membership_handler(pb.MEMBERSHIP_ACTION_INVITE, True)),
            web.post(f"{prefix}{room}/join", _membership_handler(pb.MEMBERSHIP_ACTION_JOIN, False)),
            web.post(prefix + "/join/{room_id_or_alias}", _membership_handler(pb.MEMBERSHIP_ACTION_JOIN, False)),
            web.post(f"{prefix}{room}/leave", _membership_handler(pb.MEMBERSHIP_ACTION_LEAVE, False)),
            web.post(f"{prefix}{room}/kick", _membership_handler(pb.MEMBERSHIP_ACTION_KICK, True)),
            web.post(f"{prefix}{room}/ban", _membership_handler(pb.MEMBERSHIP_ACTION_BAN, True)),
            web.post(f"{prefix}{room}/unban", _membership_handler(pb.MEMBERSHIP_ACTION_UNBAN, True)),
            web.put(prefix + room + "/send/{event_type}/{txn_id}", send_event),
            web.put(prefix + room + "/state/{event_type}", put_state),
            web.put(prefix + room + "/state/{event_type}/{state_key:[^/]*}", put_state),
            web.get(f"{prefix}{room}/state", get_state),
            web.get(prefix + room + "/state/{event_type}", get_state),
            web.get(prefix + room + "/state/{event_type}/{state_key:[^/]*}", get_state),
            web.put(prefix + room + "/redact/{event_id}/{txn_id}", redact),
            web.get(f"{prefix}{room}/members", members),
            web.get(f"{prefix}{room}/joined_members", joined_members),
            web.get(f"{prefix}/joined_rooms", joined_rooms),
            web.get(f"{prefix}{room}/messages", messages),
            web.get(prefix + room + "/event/{event_id}", get_event),
            web.get(prefix + room + "/context/{event_id}", event_context),
            web.post(prefix + room + "/receipt/{receipt_type}/{event_id}", receipt),
            web.post(f"{prefix}{room}/read_markers", read_markers),
            web.put(prefix + room + "/typing/{user_id}", typing),
        ]
    # /relations is a v1 endpoint in the spec.
    relations_base = "/_matrix/client/v1/rooms/{room_id}/relations/{event_id}"
    table += [
        web.get(relations_base, relations),
        web.get(relations_base + "/{rel_type}", relations),
        web.get(relations_base + "/{rel_type}/{event_type}", relations),
    ]
    return table
