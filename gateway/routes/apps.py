"""Partner apps, owner side, under Laiwang's client prefix (the open platform's app registry).

POST   /_laiwang/client/v1/apps                                   register: secrets are returned once
GET    /_laiwang/client/v1/apps                                   my apps
GET    /_laiwang/client/v1/apps/{client_id}                       one of my apps (404 for anyone else's)
PUT    /_laiwang/client/v1/apps/{client_id}                       replace its settings
POST   /_laiwang/client/v1/apps/{client_id}/suspend | /resume
DELETE /_laiwang/client/v1/apps/{client_id}
POST   /_laiwang/client/v1/apps/{client_id}/client_secret/rotate  a new client secret, returned once
POST   /_laiwang/client/v1/apps/{client_id}/webhook_secret/rotate {"overlap_seconds": n}: old and new sign
GET    /_laiwang/client/v1/apps/{client_id}/webhook_deliveries    the delivery log (newest first)
GET    /_laiwang/client/v1/apps/{client_id}/webhook_dead_letters  events not delivered within 24 h
POST   /_laiwang/client/v1/apps/{client_id}/webhook_dead_letters/{webhook_id}/replay   deliver it again
GET    /_laiwang/client/v1/apps/{client_id}/webhook                the endpoint's health: failures, paused
POST   /_laiwang/client/v1/apps/{client_id}/webhook/resume         deliveries start again after a pause
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.app import DEPS_KEY, GatewayDeps
from gateway.fields import body_bool, body_int, body_str, body_strings, read_json_object
from gateway.matrix import MatrixError, json_response
from gateway.rpc import call
from gateway.session import authenticate
from laiwang.open_platform.v1 import open_platform_pb2 as pb
from laiwang.open_platform.v1 import open_platform_pb2_grpc

PREFIX = "/_laiwang/client/v1/apps"
_MAX_CLIENT_ID_LEN = 64


def _stub(request: web.Request) -> open_platform_pb2_grpc.OpenPlatformServiceAsyncStub:
    return request.app[DEPS_KEY].stubs.open_platform


async def _owner(request: web.Request) -> str:
    requester = await authenticate(request)
    request.app[DEPS_KEY].limits.apps.check(requester.user_id)
    return requester.user_id


def _client_id(request: web.Request) -> str:
    client_id = request.match_info["client_id"]
    if len(client_id) > _MAX_CLIENT_ID_LEN:
        raise MatrixError(404, "M_NOT_FOUND", "no such app")
    return client_id


def _settings(body: dict[str, Any]) -> pb.AppSettings:
    return pb.AppSettings(
        name=body_str(body, "name", required=True, max_len=256),
        description=body_str(body, "description", max_len=4096),
        icon_url=body_str(body, "icon_url", max_len=4096),
        homepage_url=body_str(body, "homepage_url", max_len=4096),
        redirect_uris=body_strings(body, "redirect_uris", max_items=10, max_len=4096),
        webhook_url=body_str(body, "webhook_url", max_len=4096),
        scopes=body_strings(body, "scopes", max_items=16, max_len=64),
    )


def app_json(app: pb.App) -> dict[str, Any]:
    s = app.settings
    body: dict[str, Any] = {
        "client_id": app.client_id,
        "owner": app.owner_user_id,
        "name": s.name,
        "description": s.description,
        "icon_url": s.icon_url,
        "homepage_url": s.homepage_url,
        "redirect_uris": list(s.redirect_uris),
        "webhook_url": s.webhook_url,
        "scopes": list(s.scopes),
        "public_client": app.public_client,
        "suspended": app.suspended,
        "bot_user_id": app.bot_user_id,
        "created_at": app.created_at_ms,
        "updated_at": app.updated_at_ms,
        "webhook_secret_rotated_at": app.webhook_secret_rotated_at_ms,
    }
    if app.previous_webhook_secret_expires_at_ms:
        body["previous_webhook_secret_expires_at"] = app.previous_webhook_secret_expires_at_ms
    return body


async def create(request: web.Request) -> web.Response:
    owner = await _owner(request)
    body = await read_json_object(request)
    public_client = body_bool(body, "public_client", default=False)
    reply = await call(
        _stub(request).CreateApp,
        pb.CreateAppRequest(caller_user_id=owner, settings=_settings(body), public_client=public_client),
    )
    answer = {**app_json(reply.app), "webhook_secret": reply.webhook_secret}
    if reply.client_secret:
        answer["client_secret"] = reply.client_secret
    return json_response(answer)


async def list_apps(request: web.Request) -> web.Response:
    owner = await _owner(request)
    reply = await call(_stub(request).ListApps, pb.ListAppsRequest(caller_user_id=owner))
    return json_response({"apps": [app_json(app) for app in reply.apps]})


async def get_app(request: web.Request) -> web.Response:
    owner = await _owner(request)
    reply = await call(_stub(request).GetApp, pb.GetAppRequest(caller_user_id=owner, client_id=_client_id(request)))
    return json_response(app_json(reply.app))


async def update(request: web.Request) -> web.Response:
    owner = await _owner(request)
    client_id = _client_id(request)
    body = await read_json_object(request)
    reply = await call(
        _stub(request).UpdateApp,
        pb.UpdateAppRequest(caller_user_id=owner, client_id=client_id, settings=_settings(body)),
    )
    return json_response(app_json(reply.app))


async def _set_suspended(request: web.Request, suspended: bool) -> web.Response:
    owner = await _owner(request)
    reply = await call(
        _stub(request).SetAppSuspended,
        pb.SetAppSuspendedRequest(caller_user_id=owner, client_id=_client_id(request), suspended=suspended),
    )
    return json_response(app_json(reply.app))


async def suspend(request: web.Request) -> web.Response:
    return await _set_suspended(request, True)


async def resume(request: web.Request) -> web.Response:
    return await _set_suspended(request, False)


async def delete(request: web.Request) -> web.Response:
    owner = await _owner(request)
    await call(_stub(request).DeleteApp, pb.DeleteAppRequest(caller_user_id=owner, client_id=_client_id(request)))
    return json_response({})


async def rotate_client_secret(request: web.Request) -> web.Response:
    owner = await _owner(request)
    reply = await call(
        _stub(request).RotateClientSecret,
        pb.RotateClientSecretRequest(caller_user_id=owner, client_id=_client_id(request)),
    )
    return json_response({**app_json(reply.app), "client_secret": reply.client_secret})


async def rotate_webhook_secret(request: web.Request) -> web.Response:
    owner = await _owner(request)
    client_id = _client_id(request)
    body = await read_json_object(request, allow_empty=True)
    overlap = body_int(body, "overlap_seconds", 0, minimum=0, maximum=7 * 24 * 3600)
    reply = await call(
        _stub(request).RotateWebhookSecret,
        pb.RotateWebhookSecretRequest(caller_user_id=owner, client_id=client_id, overlap_seconds=overlap),
    )
    return json_response({**app_json(reply.app), "webhook_secret": reply.webhook_secret})


async def webhook_deliveries(request: web.Request) -> web.Response:
    owner = await _owner(request)
    reply = await call(
        _stub(request).ListWebhookDeliveries,
        pb.ListWebhookDeliveriesRequest(caller_user_id=owner, client_id=_client_id(request)),
    )
    return json_response(
        {
            "deliveries": [
                {
                    "webhook_id": a.webhook_id,
                    "type": a.type,
                    "attempt": a.attempt,
                    "status": a.status,
                    "latency_ms": a.latency_ms,
                    "error": a.error,
                    "at": a.at_ms,
                }
                for a in reply.attempts
            ]
        }
    )


async def dead_letters(request: web.Request) -> web.Response:
    owner = await _owner(request)
    reply = await call(
        _stub(request).ListDeadLetters, pb.ListDeadLettersRequest(caller_user_id=owner, client_id=_client_id(request))
    )
    return json_response(
        {
            "dead_letters": [
                {"webhook_id": d.webhook_id, "type": d.type, "reason": d.reason, "dead_at": d.dead_at_ms}
                for d in reply.dead_letters
            ]
        }
    )


async def replay_dead_letter(request: web.Request) -> web.Response:
    owner = await _owner(request)
    webhook_id = request.match_info["webhook_id"]
    if len(webhook_id) > 64:
        raise MatrixError(404, "M_NOT_FOUND", "no such dead letter")
    await call(
        _stub(request).ReplayDeadLetter,
        pb.ReplayDeadLetterRequest(caller_user_id=owner, client_id=_client_id(request), webhook_id=webhook_id),
    )
    return json_response({})


def health_json(health: pb.WebhookHealth) -> dict[str, Any]:
    body: dict[str, Any] = {
        "paused": health.paused_at_ms > 0,
        "consecutive_failures": health.consecutive_failures,
    }
    if health.failing_since_ms:
        body["failing_since"] = health.failing_since_ms
        body["last_error"] = health.last_error
    if health.paused_at_ms:
        body["paused_at"] = health.paused_at_ms
        body["owner_told"] = health.owner_told
    return body


async def webhook_health(request: web.Request) -> web.Response:
    owner = await _owner(request)
    reply = await call(
        _stub(request).GetWebhookHealth, pb.GetWebhookHealthRequest(caller_user_id=owner, client_id=_client_id(request))
    )
    return json_response(health_json(reply.health))


async def resume_webhook(request: web.Request) -> web.Response:
    owner = await _owner(request)
    reply = await call(
        _stub(request).ResumeWebhook, pb.ResumeWebhookRequest(caller_user_id=owner, client_id=_client_id(request))
    )
    return json_response(health_json(reply.health))


def routes(deps: GatewayDeps) -> list[web.RouteDef]:
    one = f"{PREFIX}/{{client_id}}"
    return [
        web.post(PREFIX, create),
        web.get(PREFIX, list_apps),
        web.get(one, get_app),
        web.put(one, update),
        web.delete(one, delete),
        web.post(f"{one}/suspend", suspend),
        web.post(f"{one}/resume", resume),
        web.post(f"{one}/client_secret/rotate", rotate_client_secret),
        web.post(f"{one}/webhook_secret/rotate", rotate_webhook_secret),
        web.get(f"{one}/webhook_deliveries", webhook_deliveries),
        web.get(f"{one}/webhook_dead_letters", dead_letters),
        web.post(f"{one}/webhook_dead_letters/{{webhook_id}}/replay", replay_dead_letter),
        web.get(f"{one}/webhook", webhook_health),
        web.post(f"{one}/webhook/resume", resume_webhook),
    ]
