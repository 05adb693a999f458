"""The partner API: what an app calls with its OAuth2 tokens, under /_laiwang/apps/v1.

GET /_laiwang/apps/v1/token    what the presented token stands for (any live token)
GET /_laiwang/apps/v1/me       the user's public profile (profile:read, a user's token): user id,
                               display name, avatar; never a phone number, address book or friends

Every call: 401 M_UNKNOWN_TOKEN for a token that is unknown, expired, revoked or whose app is
suspended; 403 M_FORBIDDEN without the scope; 429 over the per-app or per-app-and-user rate
(GATEWAY_PARTNER_APP_*, GATEWAY_PARTNER_USER_*).
"""

from __future__ import annotations

from aiohttp import web

from gateway.app import DEPS_KEY, GatewayDeps
from gateway.matrix import json_response
from gateway.partner_auth import authenticate_partner, start_partner_listener, stop_partner_listener
from gateway.rpc import call
from laiwang.auth.v1 import auth_pb2

PREFIX = "/_laiwang/apps/v1"


async def token_info(request: web.Request) -> web.Response:
    partner = await authenticate_partner(request)
    body = {
        "client_id": partner.client_id,
        "app_name": partner.app_name,
        "bot_user_id": partner.bot_user_id,
        "scopes": sorted(partner.scopes),
        "expires_at": partner.expires_at_ms,
    }
    if partner.user_id:
        body["user_id"] = partner.user_id
    return json_response(body)


async def me(request: web.Request) -> web.Response:
    partner = await authenticate_partner(request, "profile:read", user=True)
    deps = request.app[DEPS_KEY]
    profile = await call(deps.stubs.auth.GetProfile, auth_pb2.GetProfileRequest(user_id=partner.user_id))
    body = {"user_id": partner.user_id}
    if profile.display_name:
        body["displayname"] = profile.display_name
    if profile.avatar_url:
        body["avatar_url"] = profile.avatar_url
    return json_response(body)


async def startup(deps: GatewayDeps) -> None:
    await start_partner_listener(deps)


async def cleanup(deps: GatewayDeps) -> None:
    await stop_partner_listener(deps)


def routes(deps: GatewayDeps) -> list[web.RouteDef]:
    return [web.get(f"{PREFIX}/token", token_info), web.get(f"{PREFIX}/me", me)]
