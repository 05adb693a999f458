"""`GET /capabilities` and `GET /voip/turnServer`: what this server lets a client do.

Both are answered by the gateway alone: they depend only on what the deployment offers.
"""

from __future__ import annotations

from aiohttp import web

from gateway.app import GatewayDeps
from gateway.matrix import json_response
from gateway.routes.rooms import PREFIXES
from gateway.session import authenticate

# Room versions messaging creates and accepts (services/messaging/rules.py creates "10").
ROOM_VERSIONS = {"default": "10", "available": {"10": "stable"}}
CAPABILITIES = {
    "m.change_password": {"enabled": True},
    "m.room_versions": ROOM_VERSIONS,
    "m.set_displayname": {"enabled": True},
    "m.set_avatar_url": {"enabled": True},
    # Phone numbers are added and removed through /account/3pid/* (msisdn only; no e-mail).
    "m.3pid_changes": {"enabled": True},
    "m.get_login_token": {"enabled": False},
}


async def capabilities(request: web.Request) -> web.Response:
    await authenticate(request)
    return json_response({"capabilities": CAPABILITIES})


async def turn_server(request: web.Request) -> web.Response:
    # No TURN server is configured: an empty object, as Synapse answers; clients then call
    # peer-to-peer (or through STUN only).
    await authenticate(request)
    return json_response({})


def routes(_: GatewayDeps) -> list[web.RouteDef]:
    table: list[web.RouteDef] = []
    for prefix in PREFIXES:
        table += [
            web.get(f"{prefix}/capabilities", capabilities),
            web.get(f"{prefix}/voip/turnServer", turn_server),
        ]
    return table
