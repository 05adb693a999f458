"""Matrix push rules: `GET /pushrules/` (and `/pushrules/global/`).

The rules live in the messaging service (services/messaging/push_rules.py), which evaluates them
for the unread counts in /sync; this module only translates HTTP <-> gRPC.
"""

from __future__ import annotations

import orjson
from aiohttp import web

from gateway.app import DEPS_KEY, GatewayDeps
from gateway.routes.rooms import PREFIXES, messaging_stub
from gateway.rpc import call
from gateway.session import authenticate
from laiwang.messaging.v1 import messaging_pb2 as pb


async def _rules(request: web.Request) -> bytes:
    who = await authenticate(request)
    deps = request.app[DEPS_KEY]
    reply = await call(
        messaging_stub(deps).GetPushRules,
        pb.GetPushRulesRequest(requester=pb.Requester(user_id=who.user_id, device_id=who.device_id)),
    )
    return reply.body_json


async def get_all(request: web.Request) -> web.Response:
    return web.Response(body=await _rules(request), content_type="application/json")


async def get_global(request: web.Request) -> web.Response:
    body = orjson.loads(await _rules(request))
    return web.Response(body=orjson.dumps(body["global"]), content_type="application/json")


def routes(_: GatewayDeps) -> list[web.RouteDef]:
    table: list[web.RouteDef] = []
    for prefix in PREFIXES:
        table += [
            web.get(f"{prefix}/pushrules/", get_all),
            web.get(f"{prefix}/pushrules", get_all),
            web.get(f"{prefix}/pushrules/global/", get_global),
        ]
    return table
