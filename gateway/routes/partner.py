"""The partner API: what an app calls with its OAuth2 tokens, under /_laiwang/apps/v1.

GET /_laiwang/apps/v1/token    what the presented token stands for (any live token)
GET /_laiwang/apps/v1/me       the user's public profile (profile:read, a user's token): user id,
                               display name, avatar; never a phone number, address book or friends
POST /_laiwang/apps/v1/rooms/{room_id}/cards             a card into a room the user shares with
                                                         the app (cards:write, a user's token)
PUT  /_laiwang/apps/v1/rooms/{room_id}/cards/{event_id}  update one of the app's own cards (m.replace)

Every call: 401 M_UNKNOWN_TOKEN for a token that is unknown, expired, revoked or whose app is
suspended; 403 M_FORBIDDEN without the scope; 429 over the per-app or per-app-and-user rate
(GATEWAY_PARTNER_APP_*, GATEWAY_PARTNER_USER_*), or from an address that presented too many unknown
tokens (GATEWAY_PARTNER_BAD_TOKEN_*).
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.app import DEPS_KEY, GatewayDeps
from gateway.fields import body_str, read_json_object
from gateway.matrix import MatrixError, json_response
from gateway.partner_auth import authenticate_partner, start_partner_listener, stop_partner_listener
from gateway.rpc import call
from laiwang.auth.v1 import auth_pb2
from laiwang.open_platform.v1 import open_platform_pb2 as pb

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


def _card_fields(body: dict[str, Any]) -> tuple[bytes, str, str]:
    card = body.get("card")
    if not isinstance(card, dict):
        raise MatrixError(400, "M_BAD_JSON", "'card' must be an object (see the AppCard schema)")
    return (
        orjson.dumps(card),
        body_str(body, "body", max_len=4000),
        body_str(body, "txn_id", max_len=64),
    )


def _room_id(request: web.Request) -> str:
    room_id = request.match_info["room_id"]
    if len(room_id) > 255:
        raise MatrixError(403, "M_FORBIDDEN", "cards go only into rooms the user shares with the app")
    return room_id


async def post_card(request: web.Request) -> web.Response:
    partner = await authenticate_partner(request, "cards:write", user=True)
    card, text, txn_id = _card_fields(await read_json_object(request))
    reply = await call(
        request.app[DEPS_KEY].stubs.open_platform.PostCard,
        pb.PostCardRequest(
            client_id=partner.client_id,
            user_id=partner.user_id,
            room_id=_room_id(request),
            card_json=card,
            body=text,
            txn_id=txn_id,
        ),
    )
    return json_response({"event_id": reply.event_id})


async def update_card(request: web.Request) -> web.Response:
    partner = await authenticate_partner(request, "cards:write", user=True)
    event_id = request.match_info["event_id"]
    if len(event_id) > 255:
        raise MatrixError(404, "M_NOT_FOUND", "no such card")
    card, text, txn_id = _card_fields(await read_json_object(request))
    reply = await call(
        request.app[DEPS_KEY].stubs.open_platform.UpdateCard,
        pb.UpdateCardRequest(
            client_id=partner.client_id,
            user_id=partner.user_id,
            room_id=_room_id(request),
            event_id=event_id,
            card_json=card,
            body=text,
            txn_id=txn_id,
        ),
    )
    return json_response({"event_id": reply.event_id})


async def startup(deps: GatewayDeps) -> None:
    await start_partner_listener(deps)


async def cleanup(deps: GatewayDeps) -> None:
    await stop_partner_listener(deps)


def routes(deps: GatewayDeps) -> list[web.RouteDef]:
    return [
        web.get(f"{PREFIX}/token", token_info),
        web.get(f"{PREFIX}/me", me),
        web.post(f"{PREFIX}/rooms/{{room_id}}/cards", post_card),
        web.put(f"{PREFIX}/rooms/{{room_id}}/cards/{{event_id}}", update_card),
    ]
