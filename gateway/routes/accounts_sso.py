"""Linked external accounts (OIDC, Taobao-style): Matrix SSO login and Laiwang's link endpoints.

Sign in (standard Matrix SSO):
  GET /_matrix/client/v3/login/sso/redirect[/{idpId}]?redirectUrl=...  -> 302 to the provider
  provider -> GET /_laiwang/client/v1/oidc/callback?code&state          -> 302 to redirectUrl?loginToken=...
  client   -> POST /_matrix/client/v3/login {type: m.login.token, token}
Link (signed in):
  POST   /_laiwang/client/v1/account/external/{provider}/link {redirect_url?} -> {authorization_url}
  GET    /_laiwang/client/v1/account/external                              -> {accounts: [...]}
  DELETE /_laiwang/client/v1/account/external/{provider}                   -> {}

Because a login token is appended to `redirectUrl`, only URLs starting with an allowed prefix are
accepted: the gateway's own base URL, loopback addresses (native/dev clients), and
GATEWAY_SSO_REDIRECT_PREFIXES (comma-separated).
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from aiohttp import web

from gateway.app import DEPS_KEY, GatewayDeps
from gateway.fields import body_str, read_json_object
from gateway.matrix import MatrixError, json_response
from gateway.routes.accounts import PREFIX, limit_address, rpc_errors
from gateway.session import auth_stub, authenticate
from laiwang.auth.v1 import auth_pb2 as pb

LAIWANG_PREFIX = "/_laiwang/client/v1"
CALLBACK_PATH = f"{LAIWANG_PREFIX}/oidc/callback"


def callback_url(deps: GatewayDeps) -> str:
    return f"{deps.config.public_base_url}{CALLBACK_PATH}"


def _allowed_redirect(deps: GatewayDeps, url: str) -> bool:
    prefixes = [
        deps.config.public_base_url + "/",
        "http://127.0.0.1:",
        "http://127.0.0.1/",
        "http://localhost:",
        "http://localhost/",
        *deps.config.sso_redirect_prefixes,
    ]
    return any(url.startswith(prefix) for prefix in prefixes)


def _redirect(url: str) -> web.Response:
    # Returned, not raised: the shared middleware turns unexpected exceptions into 500s.
    return web.Response(status=302, headers={"Location": url})


def _with_query(url: str, params: dict[str, str]) -> str:
    return f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"


async def _start(deps: GatewayDeps, provider_id: str, purpose: str, user_id: str, redirect_url: str) -> str:
    if redirect_url and (len(redirect_url) > 2048 or not _allowed_redirect(deps, redirect_url)):
        raise MatrixError(400, "M_INVALID_PARAM", "redirect URL is not allowed")
    async with rpc_errors():
        reply = await auth_stub(deps).StartOidc(
            pb.StartOidcRequest(
                provider_id=provider_id,
                purpose=purpose,
                user_id=user_id,
                callback_url=callback_url(deps),
                client_redirect_url=redirect_url,
            )
        )
    return reply.authorization_url


async def sso_redirect(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    limit_address(request)
    redirect_url = request.query.get("redirectUrl", "")
    if not redirect_url:
        raise MatrixError(400, "M_MISSING_PARAM", "redirectUrl is required")
    provider_id = request.match_info.get("idp_id", "")
    if not provider_id:
        async with rpc_errors():
            providers = (await auth_stub(deps).ListIdentityProviders(pb.ListIdentityProvidersRequest())).providers
        if not providers:
            raise MatrixError(404, "M_NOT_FOUND", "no identity provider is configured")
        provider_id = providers[0].id
    url = await _start(deps, provider_id, "login", "", redirect_url)
    return _redirect(url)


async def oidc_callback(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    limit_address(request)
    async with rpc_errors():
        reply = await auth_stub(deps).CompleteOidc(
            pb.CompleteOidcRequest(
                state=request.query.get("state", "")[:256],
                code=request.query.get("code", "")[:2048],
                error=request.query.get("error", "")[:256],
            )
        )
    if reply.purpose == "login":
        if reply.client_redirect_url:
            return _redirect(_with_query(reply.client_redirect_url, {"loginToken": reply.login_token}))
        return json_response({"login_token": reply.login_token})
    if reply.client_redirect_url:
        return _redirect(_with_query(reply.client_redirect_url, {"laiwang_linked": reply.provider_id}))
    return json_response({"linked": reply.provider_id, "user_id": reply.user_id})


async def link(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    requester = await authenticate(request)
    body = await read_json_object(request, allow_empty=True)
    url = await _start(
        deps, request.match_info["provider_id"], "link", requester.user_id, body_str(body, "redirect_url", max_len=2048)
    )
    return json_response({"authorization_url": url})


async def list_linked(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    requester = await authenticate(request)
    async with rpc_errors():
        reply = await auth_stub(deps).ListExternalAccounts(pb.ListExternalAccountsRequest(user_id=requester.user_id))
    accounts: list[dict[str, Any]] = [
        {"provider_id": a.provider_id, "subject": a.subject, "linked_at": a.linked_at_ms} for a in reply.accounts
    ]
    return json_response({"accounts": accounts})


async def unlink(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    requester = await authenticate(request)
    async with rpc_errors():
        await auth_stub(deps).UnlinkExternalAccount(
            pb.UnlinkExternalAccountRequest(user_id=requester.user_id, provider_id=request.match_info["provider_id"])
        )
    return json_response({})


def routes(deps: GatewayDeps) -> list[web.RouteDef]:
    return [
        web.get(f"{PREFIX}/login/sso/redirect", sso_redirect),
        web.get(f"{PREFIX}/login/sso/redirect/{{idp_id}}", sso_redirect),
        web.get(CALLBACK_PATH, oidc_callback),
        web.post(f"{LAIWANG_PREFIX}/account/external/{{provider_id}}/link", link),
        web.get(f"{LAIWANG_PREFIX}/account/external", list_linked),
        web.delete(f"{LAIWANG_PREFIX}/account/external/{{provider_id}}", unlink),
    ]
