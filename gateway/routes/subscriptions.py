"""Subscriptions (订阅): users subscribe to apps; apps message their subscribers and nobody else.

User side (a Laiwang access token):
  GET    /_laiwang/client/v1/subscriptions              my subscriptions
  PUT    /_laiwang/client/v1/subscriptions/{client_id}  subscribe: a direct room with the app's bot
  DELETE /_laiwang/client/v1/subscriptions/{client_id}  unsubscribe: the app can no longer message me
Partner side (a partner token with subscribers:message):
  GET  /_laiwang/apps/v1/subscribers?from=&limit=       the app's subscribers, by user id
  POST /_laiwang/apps/v1/subscribers/{user_id}/messages {"body", "txn_id"?}: 403 for a non-subscriber,
                                                        429 + retry_after_ms over a budget
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.app import DEPS_KEY, GatewayDeps
from gateway.fields import body_str, read_json_object
from gateway.matrix import MatrixError, json_response
from gateway.partner_auth import authenticate_partner
from gateway.rpc import call
from gateway.session import authenticate
from laiwang.open_platform.v1 import open_platform_pb2 as pb

USER_PREFIX = "/_laiwang/client/v1/subscriptions"
PARTNER_PREFIX = "/_laiwang/apps/v1/subscribers"


def _json(sub: pb.SubscriptionInfo) -> dict[str, Any]:
    return {
        "client_id": sub.client_id,
        "app_name": sub.app_name,
        "bot_user_id": sub.bot_user_id,
        "room_id": sub.room_id,
        "subscribed_at": sub.subscribed_at_ms,
    }


def _client_id(request: web.Request) -> str:
    client_id = request.match_info["client_id"]
    if len(client_id) > 64:
        raise MatrixError(404, "M_NOT_FOUND", "no such app")
    return client_id


async def _user(request: web.Request) -> str:
    requester = await authenticate(request)
    request.app[DEPS_KEY].limits.apps.check(requester.user_id)
    return requester.user_id


async def list_mine(request: web.Request) -> web.Response:
    user = await _user(request)
    reply = await call(
        request.app[DEPS_KEY].stubs.open_platform.ListSubscriptions, pb.ListSubscriptionsRequest(caller_user_id=user)
    )
    return json_response({"subscriptions": [_json(s) for s in reply.subscriptions]})


async def subscribe(request: web.Request) -> web.Response:
    user = await _user(request)
    reply = await call(
        request.app[DEPS_KEY].stubs.open_platform.Subscribe,
        pb.SubscribeRequest(caller_user_id=user, client_id=_client_id(request)),
    )
    return json_response(_json(reply.subscription))


async def unsubscribe(request: web.Request) -> web.Response:
    user = await _user(request)
    await call(
        request.app[DEPS_KEY].stubs.open_platform.Unsubscribe,
        pb.UnsubscribeRequest(caller_user_id=user, client_id=_client_id(request)),
    )
    return json_response({})


async def list_subscribers(request: web.Request) -> web.Response:
    partner = await authenticate_partner(request, "subscribers:message")
    after = request.query.get("from", "")[:300]
    try:
        limit = int(request.query.get("limit", "100"))
    except ValueError:
        raise MatrixError(400, "M_INVALID_PARAM", "limit must be an integer") from None
    reply = await call(
        request.app[DEPS_KEY].stubs.open_platform.ListSubscribers,
        pb.ListSubscribersRequest(client_id=partner.client_id, after_user_id=after, limit=max(1, min(limit, 500))),
    )
    body: dict[str, Any] = {
        "subscribers": [
            {"user_id": s.user_id, "room_id": s.room_id, "subscribed_at": s.subscribed_at_ms} for s in reply.subscribers
        ]
    }
    if reply.subscribers and len(reply.subscribers) >= max(1, min(limit, 500)):
        body["next_batch"] = reply.subscribers[-1].user_id
    return json_response(body)


async def message_subscriber(request: web.Request) -> web.Response:
    partner = await authenticate_partner(request, "subscribers:message")
    user_id = request.match_info["user_id"]
    if len(user_id) > 255:
        raise MatrixError(403, "M_FORBIDDEN", "this user is not subscribed to the app")
    body = await read_json_object(request)
    reply = await call(
        request.app[DEPS_KEY].stubs.open_platform.MessageSubscriber,
        pb.MessageSubscriberRequest(
            client_id=partner.client_id,
            user_id=user_id,
            body=body_str(body, "body", required=True, max_len=16_000),
            txn_id=body_str(body, "txn_id", max_len=64),
        ),
    )
    return json_response({"room_id": reply.room_id, "event_id": reply.event_id})


def routes(deps: GatewayDeps) -> list[web.RouteDef]:
    return [
        web.get(USER_PREFIX, list_mine),
        web.put(f"{USER_PREFIX}/{{client_id}}", subscribe),
        web.delete(f"{USER_PREFIX}/{{client_id}}", unsubscribe),
        web.get(PARTNER_PREFIX, list_subscribers),
        web.post(f"{PARTNER_PREFIX}/{{user_id}}/messages", message_subscriber),
    ]
