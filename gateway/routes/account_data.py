"""Matrix account data: `/user/{userId}/account_data/{type}` and
`/user/{userId}/rooms/{roomId}/account_data/{type}` (GET, PUT). Stored by messaging (account.py),
which sends it in /sync."""

from __future__ import annotations

from aiohttp import web

from gateway.app import DEPS_KEY, GatewayDeps
from gateway.fields import path_user_id
from gateway.matrix import MatrixError
from gateway.routes.rooms import PREFIXES, event_content, limit_writes, messaging_stub
from gateway.rpc import call
from gateway.session import authenticate
from laiwang.messaging.v1 import messaging_pb2 as pb


async def _own(request: web.Request) -> tuple[GatewayDeps, pb.Requester, str]:
    who = await authenticate(request)
    if path_user_id(request) != who.user_id:
        raise MatrixError(403, "M_FORBIDDEN", "you can only use your own account data")
    room_id = request.match_info.get("room_id", "")
    if "room_id" in request.match_info and not (room_id.startswith("!") and ":" in room_id):
        raise MatrixError(400, "M_INVALID_PARAM", "expected a room id such as !abc:example.org")
    return request.app[DEPS_KEY], pb.Requester(user_id=who.user_id, device_id=who.device_id), room_id


async def put_account_data(request: web.Request) -> web.Response:
    deps, who, room_id = await _own(request)
    limit_writes(deps, who.user_id)
    raw = await event_content(request, required=True)
    await call(
        messaging_stub(deps).SetAccountData,
        pb.SetAccountDataRequest(requester=who, room_id=room_id, type=request.match_info["type"], content_json=raw),
    )
    return web.Response(body=b"{}", content_type="application/json")


async def get_account_data(request: web.Request) -> web.Response:
    deps, who, room_id = await _own(request)
    reply = await call(
        messaging_stub(deps).GetAccountData,
        pb.GetAccountDataRequest(requester=who, room_id=room_id, type=request.match_info["type"]),
    )
    return web.Response(body=reply.content_json, content_type="application/json")


def routes(_: GatewayDeps) -> list[web.RouteDef]:
    table: list[web.RouteDef] = []
    for prefix in PREFIXES:
        for path in ("/user/{user_id}/account_data/{type}", "/user/{user_id}/rooms/{room_id}/account_data/{type}"):
            table += [web.get(prefix + path, get_account_data), web.put(prefix + path, put_account_data)]
    return table
