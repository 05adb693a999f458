"""Matrix push rules, pushers and notifications: `/pushrules/...`, `GET /pushers`, `POST /pushers/set`,
`GET /notifications`.

The rules live in the messaging service (services/messaging/push_rules.py, account.py), which
evaluates them for the unread counts in /sync; this module only translates HTTP <-> gRPC.
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.app import DEPS_KEY, GatewayDeps
from gateway.fields import query_int, query_str, read_json_object
from gateway.matrix import MatrixError, json_response
from gateway.routes.rooms import PREFIXES, limit_writes, messaging_stub
from gateway.rpc import call
from gateway.session import authenticate
from laiwang.messaging.v1 import messaging_pb2 as pb

_EMPTY = b"{}"
_KINDS = ("override", "content", "room", "sender", "underride")


async def _requester(request: web.Request) -> tuple[GatewayDeps, pb.Requester]:
    who = await authenticate(request)
    return request.app[DEPS_KEY], pb.Requester(user_id=who.user_id, device_id=who.device_id)


async def _rules(request: web.Request) -> dict[str, Any]:
    deps, who = await _requester(request)
    reply = await call(messaging_stub(deps).GetPushRules, pb.GetPushRulesRequest(requester=who))
    return orjson.loads(reply.body_json)


def _scope_and_kind(request: web.Request) -> tuple[str, str]:
    scope, kind = request.match_info["scope"], request.match_info.get("kind", "")
    if scope != "global":
        raise MatrixError(400, "M_INVALID_PARAM", "the only push rule scope is 'global'")
    if kind and kind not in _KINDS:
        raise MatrixError(400, "M_INVALID_PARAM", f"unknown push rule kind; one of {', '.join(_KINDS)}")
    return scope, kind


async def get_all(request: web.Request) -> web.Response:
    return json_response(await _rules(request))


async def get_scope(request: web.Request) -> web.Response:
    _scope_and_kind(request)
    return json_response((await _rules(request))["global"])


async def get_kind(request: web.Request) -> web.Response:
    _, kind = _scope_and_kind(request)
    return json_response((await _rules(request))["global"][kind])


async def _one(request: web.Request) -> dict[str, Any]:
    _, kind = _scope_and_kind(request)
    rule_id = request.match_info["rule_id"]
    for rule in (await _rules(request))["global"][kind]:
        if rule["rule_id"] == rule_id:
            return rule
    raise MatrixError(404, "M_NOT_FOUND", "no such push rule")


async def get_rule(request: web.Request) -> web.Response:
    return json_response(await _one(request))


async def get_enabled(request: web.Request) -> web.Response:
    return json_response({"enabled": (await _one(request)).get("enabled", True)})


async def get_actions(request: web.Request) -> web.Response:
    return json_response({"actions": (await _one(request)).get("actions", [])})


def _changer(change: pb.PushRuleChange.ValueType, needs_body: bool):  # noqa: ANN202 - an aiohttp handler factory
    async def handler(request: web.Request) -> web.Response:
        deps, who = await _requester(request)
        limit_writes(deps, who.user_id)
        scope, kind = _scope_and_kind(request)
        body = await read_json_object(request, allow_empty=not needs_body, canonical=True)
        await call(
            messaging_stub(deps).ChangePushRule,
            pb.ChangePushRuleRequest(
                requester=who,
                change=change,
                scope=scope,
                kind=kind,
                rule_id=request.match_info["rule_id"],
                body_json=orjson.dumps(body),
                before=query_str(request, "before", max_len=255),
                after=query_str(request, "after", max_len=255),
            ),
        )
        return web.Response(body=_EMPTY, content_type="application/json")

    return handler


async def get_pushers(request: web.Request) -> web.Response:
    deps, who = await _requester(request)
    reply = await call(messaging_stub(deps).GetPushers, pb.GetPushersRequest(requester=who))
    return web.Response(body=reply.body_json, content_type="application/json")


async def set_pusher(request: web.Request) -> web.Response:
    deps, who = await _requester(request)
    limit_writes(deps, who.user_id)
    body = await read_json_object(request, canonical=True)
    await call(messaging_stub(deps).SetPusher, pb.SetPusherRequest(requester=who, body_json=orjson.dumps(body)))
    return web.Response(body=_EMPTY, content_type="application/json")


async def get_notifications(request: web.Request) -> web.Response:
    deps, who = await _requester(request)
    reply = await call(
        messaging_stub(deps).GetNotifications,
        pb.GetNotificationsRequest(
            requester=who,
            limit=query_int(request, "limit", 20, maximum=1000),
            only=query_str(request, "only", max_len=32),
            **{"from": query_str(request, "from", max_len=32)},
        ),
    )
    return web.Response(body=reply.body_json, content_type="application/json")


def routes(_: GatewayDeps) -> list[web.RouteDef]:
    table: list[web.RouteDef] = []
    for prefix in PREFIXES:
        rule = prefix + "/pushrules/{scope}/{kind}/{rule_id}"
        table += [
            web.get(f"{prefix}/pushrules/", get_all),
            web.get(f"{prefix}/pushrules", get_all),
            web.get(prefix + "/pushrules/{scope}/", get_scope),
            web.get(prefix + "/pushrules/{scope}/{kind}/", get_kind),
            web.get(rule, get_rule),
            web.put(rule, _changer(pb.PUSH_RULE_CHANGE_PUT, True)),
            web.delete(rule, _changer(pb.PUSH_RULE_CHANGE_DELETE, False)),
            web.get(f"{rule}/enabled", get_enabled),
            web.put(f"{rule}/enabled", _changer(pb.PUSH_RULE_CHANGE_ENABLED, True)),
            web.get(f"{rule}/actions", get_actions),
            web.put(f"{rule}/actions", _changer(pb.PUSH_RULE_CHANGE_ACTIONS, True)),
            web.get(f"{prefix}/pushers", get_pushers),
            web.post(f"{prefix}/pushers/set", set_pusher),
            web.get(f"{prefix}/notifications", get_notifications),
        ]
    return table
