"""The OAuth2 authorization server's HTTP face (the server itself, on Authlib, is in open_platform).

GET  /.well-known/oauth-authorization-server     RFC 8414 metadata
GET  /_laiwang/oauth2/authorize?...              the consent page (a sign-in form first, if needed)
POST /_laiwang/oauth2/authorize                  the user's decision -> 303 to the app's redirect URI
POST /_laiwang/oauth2/login                      sign in with the Laiwang account (sets the session cookie)
POST /_laiwang/oauth2/token | /revoke | /introspect   RFC 6749 / 7009 / 7662, forwarded to open_platform
GET    /_laiwang/client/v1/authorized_apps               the apps the caller authorized
DELETE /_laiwang/client/v1/authorized_apps/{client_id}   revoke one: its tokens stop working at once

The browser session is the cookie `lw_session`: a Laiwang access token from auth's Login
(HttpOnly, SameSite=Lax, path /_laiwang/oauth2). The decision form carries a CSRF token that is
an HMAC of the authorization request keyed by the session, so another site can neither forge a
decision nor replay one for a different request; the sign-in form uses a double-submit cookie.
Pages are served with a CSP, no framing and no caching. A client that does not ask for HTML gets
Matrix JSON errors instead of error pages; OAuth endpoint errors carry both the OAuth `error`
code and a Matrix `errcode`.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import secrets
from typing import Any

import orjson
from aiohttp import web

from gateway.app import DEPS_KEY, GatewayDeps
from gateway.client_address import client_address
from gateway.matrix import MatrixError, json_response
from gateway.rpc import call
from gateway.session import authenticate, authenticate_token
from laiwang.auth.v1 import auth_pb2
from laiwang.open_platform.v1 import open_platform_pb2 as pb

OAUTH = "/_laiwang/oauth2"
AUTHORIZED = "/_laiwang/client/v1/authorized_apps"
SESSION_COOKIE = "lw_session"
LOGIN_CSRF_COOKIE = "lw_login_csrf"
MAX_QUERY = 4096
MAX_FORM = 16 * 1024
SESSION_SECONDS = 7 * 24 * 3600
_ENDPOINTS = {
    "token": pb.O_AUTH_ENDPOINT_KIND_TOKEN,
    "revoke": pb.O_AUTH_ENDPOINT_KIND_REVOCATION,
    "introspect": pb.O_AUTH_ENDPOINT_KIND_INTROSPECTION,
}
_ERRCODE_OF_STATUS = {400: "M_INVALID_PARAM", 401: "M_UNKNOWN_TOKEN", 403: "M_FORBIDDEN", 429: "M_LIMIT_EXCEEDED"}
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; img-src https:; style-src 'unsafe-inline'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
}
_STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:28rem;margin:3rem auto;padding:0 1rem;color:#222}"
    "button{font-size:1rem;padding:.5rem 1.2rem;margin-right:.5rem}input{font-size:1rem;margin:.2rem 0 .8rem;"
    "width:100%}img{border-radius:12px}li{margin:.3rem 0}.muted{color:#666;font-size:.9rem}"
)


def _page(title: str, body: str, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    document = (
        f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
        f'content="width=device-width"><title>{html.escape(title)}</title><style>{_STYLE}</style></head>'
        f"<body>{body}</body></html>"
    )
    return web.Response(
        text=document, status=status, content_type="text/html", headers={**_PAGE_HEADERS, **(headers or {})}
    )


def _wants_html(request: web.Request) -> bool:
    return "text/html" in request.headers.get("Accept", "")


def _refuse(request: web.Request, status: int, errcode: str, message: str) -> web.Response:
    """An error page for a browser, a Matrix error for anything else."""
    if not _wants_html(request):
        raise MatrixError(status, errcode, message)
    return _page("Cannot continue", f"<h1>Cannot continue</h1><p>{html.escape(message)}</p>", status)


def _csrf(session_token: str, query: str) -> str:
    key = hashlib.sha256(session_token.encode()).digest()
    return hmac.new(key, b"consent\n" + query.encode(), hashlib.sha256).hexdigest()


def _same(given: str, expected: str) -> bool:
    # Bytes: compare_digest refuses non-ASCII str, and forms may carry anything.
    return hmac.compare_digest(given.encode(), expected.encode())


def _limit(request: web.Request) -> None:
    request.app[DEPS_KEY].limits.oauth.check(f"addr:{client_address(request)}")


async def _session_user(request: web.Request) -> tuple[str, str] | None:
    """(user id, session token) of the signed-in browser, or None."""
    token = request.cookies.get(SESSION_COOKIE, "")
    if not token or len(token) > 512:
        return None
    try:
        requester = await authenticate_token(request, token)
    except MatrixError as error:
        if error.status == 401:
            return None
        raise
    return requester.user_id, token


def _query_of(request: web.Request) -> str:
    query = request.query_string
    if len(query) > MAX_QUERY:
        raise MatrixError(400, "M_INVALID_PARAM", "the authorization request is too long")
    return query


def _login_page(request: web.Request, query: str, message: str = "", status: int = 200) -> web.Response:
    csrf = secrets.token_urlsafe(24)
    secure = request.app[DEPS_KEY].config.public_base_url.startswith("https://")
    note = f'<p role="alert">{html.escape(message)}</p>' if message else ""
    body = (
        f"<h1>Sign in to Laiwang</h1>{note}<p>An app asks to connect to your Laiwang account. Sign in first.</p>"
        f'<form method="post" action="{OAUTH}/login">'
        f'<input type="hidden" name="csrf" value="{csrf}">'
        f'<input type="hidden" name="query" value="{html.escape(query)}">'
        '<label>User<input name="user" autocomplete="username" required></label>'
        '<label>Password<input name="password" type="password" autocomplete="current-password" required></label>'
        "<button>Sign in</button></form>"
    )
    response = _page("Sign in", body, status)
    response.set_cookie(
        LOGIN_CSRF_COOKIE, csrf, httponly=True, samesite="Strict", secure=secure, path=f"{OAUTH}/", max_age=3600
    )
    return response


def _consent_page(user_id: str, session_token: str, query: str, page: pb.ConsentPage) -> web.Response:
    e = html.escape
    icon = f'<img src="{e(page.icon_url)}" alt="" width="64" height="64">' if page.icon_url else ""
    home = f' <a href="{e(page.homepage_url)}" rel="noopener noreferrer">{e(page.homepage_url)}</a>'
    scopes = "".join(f"<li>{e(s.description)} <span class='muted'>({e(s.scope)})</span></li>" for s in page.scopes)
    body = (
        f"{icon}<h1>{e(page.app_name)}</h1><p>{e(page.app_description)}</p>"
        f"<p class='muted'>{home if page.homepage_url else ''}</p>"
        f"<p><strong>{e(page.app_name)}</strong> wants to:</p><ul>{scopes}</ul>"
        "<p class='muted'>It will never see your phone number, your address book or your friends.</p>"
        f"<p class='muted'>Signed in as {e(user_id)}. You will be sent back to {e(page.redirect_uri)}.</p>"
        f'<form method="post" action="{OAUTH}/authorize">'
        f'<input type="hidden" name="csrf" value="{_csrf(session_token, query)}">'
        f'<input type="hidden" name="query" value="{e(query)}">'
        '<button name="decision" value="approve">Allow</button>'
        '<button name="decision" value="deny">Deny</button></form>'
    )
    return _page(f"Connect {page.app_name}", body)


async def _form(request: web.Request) -> dict[str, str]:
    if request.content_type != "application/x-www-form-urlencoded":
        raise MatrixError(400, "M_NOT_JSON", "send an HTML form (application/x-www-form-urlencoded)")
    if len(await request.read()) > MAX_FORM:
        raise MatrixError(413, "M_TOO_LARGE", "form too large")
    try:
        form = await request.post()
    except (ValueError, UnicodeDecodeError):
        raise MatrixError(400, "M_NOT_JSON", "unreadable form body") from None
    return {key: value for key, value in form.items() if isinstance(value, str)}


async def authorize_page(request: web.Request) -> web.StreamResponse:
    _limit(request)
    query = _query_of(request)
    session = await _session_user(request)
    if session is None:
        return _login_page(request, query)
    user_id, token = session
    deps = request.app[DEPS_KEY]
    reply = await call(deps.stubs.open_platform.PrepareConsent, pb.PrepareConsentRequest(user_id=user_id, query=query))
    outcome = reply.WhichOneof("outcome")
    if outcome == "page":
        return _consent_page(user_id, token, query, reply.page)
    if outcome == "redirect_to":
        return web.Response(status=303, headers={"Location": reply.redirect_to, **_PAGE_HEADERS})
    return _refuse(request, 400, "M_INVALID_PARAM", f"{reply.error.error}: {reply.error.description}")


async def authorize_decision(request: web.Request) -> web.StreamResponse:
    _limit(request)
    form = await _form(request)
    query = form.get("query", "")[:MAX_QUERY]
    session = await _session_user(request)
    if session is None:
        return _refuse(request, 401, "M_MISSING_TOKEN", "your sign-in expired; start again from the app")
    user_id, token = session
    if not _same(form.get("csrf", ""), _csrf(token, query)):
        return _refuse(request, 403, "M_FORBIDDEN", "this form did not come from the consent page")
    decision = form.get("decision")
    if decision not in ("approve", "deny"):
        return _refuse(request, 400, "M_INVALID_PARAM", "decision must be approve or deny")
    deps = request.app[DEPS_KEY]
    reply = await call(
        deps.stubs.open_platform.CompleteConsent,
        pb.CompleteConsentRequest(user_id=user_id, query=query, approved=decision == "approve"),
    )
    if reply.WhichOneof("outcome") == "redirect_to":
        return web.Response(status=303, headers={"Location": reply.redirect_to, **_PAGE_HEADERS})
    return _refuse(request, 400, "M_INVALID_PARAM", f"{reply.error.error}: {reply.error.description}")


async def login(request: web.Request) -> web.StreamResponse:
    _limit(request)
    request.app[DEPS_KEY].limits.credentials.check(f"addr:{client_address(request)}")
    form = await _form(request)
    query = form.get("query", "")[:MAX_QUERY]
    cookie = request.cookies.get(LOGIN_CSRF_COOKIE, "")
    if not cookie or not _same(form.get("csrf", ""), cookie):
        return _refuse(request, 403, "M_FORBIDDEN", "this form did not come from the sign-in page")
    user, password = form.get("user", "")[:256], form.get("password", "")[:1024]
    if not user or not password:
        return _login_page(request, query, "Enter your user name and password.", 400)
    deps = request.app[DEPS_KEY]
    try:
        reply = await call(
            deps.stubs.auth.Login,
            auth_pb2.LoginRequest(
                user=user,
                password=password,
                initial_device_display_name="Laiwang sign-in (app authorization)",
                client_address=client_address(request),
            ),
        )
    except MatrixError as error:
        if error.status in (400, 401, 403):
            return _login_page(request, query, "Wrong user name or password.", 403)
        raise
    response = web.Response(status=303, headers={"Location": f"{OAUTH}/authorize?{query}", **_PAGE_HEADERS})
    response.set_cookie(
        SESSION_COOKIE,
        reply.session.access_token,
        httponly=True,
        samesite="Lax",
        secure=deps.config.public_base_url.startswith("https://"),
        path=f"{OAUTH}/",
        max_age=SESSION_SECONDS,
    )
    response.del_cookie(LOGIN_CSRF_COOKIE, path=f"{OAUTH}/")
    return response


def _endpoint(kind: str) -> Any:
    async def handle(request: web.Request) -> web.Response:
        _limit(request)
        if request.content_type != "application/x-www-form-urlencoded":
            body: dict[str, Any] = {"error": "invalid_request", "error_description": "send a form body"}
            return _oauth_answer(400, {}, body)
        form = await request.read()
        if len(form) > MAX_FORM:
            return _oauth_answer(413, {}, {"error": "invalid_request", "error_description": "form too large"})
        authorization = request.headers.getall("Authorization", [])
        if len(authorization) > 1:
            return _oauth_answer(400, {}, {"error": "invalid_request", "error_description": "one Authorization"})
        deps = request.app[DEPS_KEY]
        reply = await call(
            deps.stubs.open_platform.OAuthEndpoint,
            pb.OAuthEndpointRequest(
                endpoint=_ENDPOINTS[kind], form=form, authorization=authorization[0] if authorization else ""
            ),
        )
        return _oauth_answer(reply.status, dict(reply.headers), orjson.loads(reply.body) if reply.body else {})

    return handle


def _oauth_answer(status: int, headers: dict[str, str], body: dict[str, Any]) -> web.Response:
    if status >= 400:
        # OAuth clients read `error`; Matrix tooling reads `errcode` (with `error` as its message).
        body.setdefault("errcode", _ERRCODE_OF_STATUS.get(status, "M_UNKNOWN"))
        body.setdefault("error", "invalid_request")
    response = json_response(body, status=status)
    response.headers.update(headers)
    response.headers.setdefault("Cache-Control", "no-store")
    return response


async def metadata(request: web.Request) -> web.Response:
    base = request.app[DEPS_KEY].config.public_base_url
    return json_response(
        {
            "issuer": base,
            "authorization_endpoint": f"{base}{OAUTH}/authorize",
            "token_endpoint": f"{base}{OAUTH}/token",
            "revocation_endpoint": f"{base}{OAUTH}/revoke",
            "introspection_endpoint": f"{base}{OAUTH}/introspect",
            "response_types_supported": ["code"],
            "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
            "code_challenge_methods_supported": ["S256"],
            "token_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "revocation_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post", "none"],
            "introspection_endpoint_auth_methods_supported": ["client_secret_basic", "client_secret_post"],
            "scopes_supported": ["profile:read", "cards:write", "subscribers:message", "payments"],
        }
    )


async def list_authorized(request: web.Request) -> web.Response:
    requester = await authenticate(request)
    deps = request.app[DEPS_KEY]
    deps.limits.apps.check(requester.user_id)
    reply = await call(
        deps.stubs.open_platform.ListAuthorizations, pb.ListAuthorizationsRequest(caller_user_id=requester.user_id)
    )
    return json_response(
        {
            "apps": [
                {
                    "client_id": a.client_id,
                    "name": a.app_name,
                    "icon_url": a.icon_url,
                    "homepage_url": a.homepage_url,
                    "scopes": [{"scope": s.scope, "description": s.description} for s in a.scopes],
                    "authorized_at": a.authorized_at_ms,
                    "updated_at": a.updated_at_ms,
                }
                for a in reply.authorizations
            ]
        }
    )


async def revoke_authorized(request: web.Request) -> web.Response:
    requester = await authenticate(request)
    deps = request.app[DEPS_KEY]
    deps.limits.apps.check(requester.user_id)
    client_id = request.match_info["client_id"]
    if len(client_id) > 64:
        raise MatrixError(404, "M_NOT_FOUND", "you have not authorized this app")
    await call(
        deps.stubs.open_platform.RevokeAuthorization,
        pb.RevokeAuthorizationRequest(caller_user_id=requester.user_id, client_id=client_id),
    )
    return json_response({})


def routes(deps: GatewayDeps) -> list[web.RouteDef]:
    return [
        web.get("/.well-known/oauth-authorization-server", metadata),
        web.get(f"{OAUTH}/authorize", authorize_page),
        web.post(f"{OAUTH}/authorize", authorize_decision),
        web.post(f"{OAUTH}/login", login),
        *(web.post(f"{OAUTH}/{kind}", _endpoint(kind)) for kind in _ENDPOINTS),
        web.get(AUTHORIZED, list_authorized),
        web.delete(f"{AUTHORIZED}/{{client_id}}", revoke_authorized),
    ]
