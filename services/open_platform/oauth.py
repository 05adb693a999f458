"""The OAuth2 authorization server for partner apps, on Authlib (its grants, PKCE, RFC 7009, RFC 7662).

What is Laiwang's own here is only what Authlib leaves to the integrator: the client model over the
app registry, storage (through `OAuthStore`), and the policies below.

- Authorization code, with PKCE (RFC 7636) S256 only ("plain" is refused); required for public
  clients, optional for confidential ones (if they send a challenge it must verify). Codes live 60 s
  and work once: a second exchange revokes everything the first one issued (RFC 6749 4.1.2).
- Refresh tokens rotate on every use. A rotated refresh token that comes back (a replay, or two
  racing uses) revokes its whole grant: every token issued from that consent.
- Client credentials for confidential clients, limited to app-level scopes (`subscribers:message`).
- Revoking a refresh token revokes its grant; revoking an access token revokes that token.
- Introspection: confidential clients, for their own tokens only.
- A suspended or deleted app is an unknown client: no endpoint serves it, its tokens check inactive.

Authlib is synchronous: every call into it runs in a worker thread (`asyncio.to_thread`), and its
callbacks reach the async store on the service's event loop through `_Bridge`.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar
from urllib.parse import parse_qs, urlencode

from authlib.oauth2 import AuthorizationServer, OAuth2Error, OAuth2Request
from authlib.oauth2.rfc6749 import ClientMixin, TokenMixin, grants
from authlib.oauth2.rfc6749.errors import InvalidGrantError, InvalidRequestError, InvalidScopeError
from authlib.oauth2.rfc6749.requests import BasicOAuth2Payload
from authlib.oauth2.rfc6750 import BearerTokenGenerator
from authlib.oauth2.rfc7009 import RevocationEndpoint
from authlib.oauth2.rfc7636 import CodeChallenge
from authlib.oauth2.rfc7662 import IntrospectionEndpoint

from services.open_platform.core import SCOPES, App, secret_matches
from services.open_platform.oauth_store import CodeRecord, TokenRecord

T = TypeVar("T")

ACCESS_TOKEN_PREFIX = "lwat_"
REFRESH_TOKEN_PREFIX = "lwrt_"
CODE_LIFETIME_MS = 60_000
ACCESS_TOKEN_SECONDS = 3600
REFRESH_TOKEN_SECONDS = 30 * 24 * 3600
APP_LEVEL_SCOPES = ("subscribers:message",)
MAX_FORM_BYTES = 16 * 1024
MAX_PARAM_LEN = 2048


def token_hash(value: str) -> str:
    # Tokens are 256 random bits: a fast hash is enough (there is no dictionary to try).
    return hashlib.sha256(value.encode()).hexdigest()


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class OAuthStore(Protocol):
    async def save_code(self, code: CodeRecord) -> None: ...
    async def claim_code(self, code_hash: str, client_id: str) -> tuple[CodeRecord | None, CodeRecord | None]: ...
    async def save_token(self, token: TokenRecord, authorization_scopes: tuple[str, ...] | None) -> None: ...
    async def token_by_access(self, access_hash: str) -> TokenRecord | None: ...
    async def token_by_refresh(self, refresh_hash: str) -> TokenRecord | None: ...
    async def mark_rotated(self, access_hash: str) -> bool: ...
    async def revoke_token(self, token: TokenRecord, whole_grant: bool, reason: str, at_ms: int) -> None: ...
    async def revoke_grant(self, client_id: str, user_id: str, grant_id: str, reason: str, at_ms: int) -> None: ...


# -- models Authlib works with ------------------------------------------------------------------------


@dataclass(frozen=True)
class User:
    user_id: str

    def get_user_id(self) -> str:
        return self.user_id


class Client(ClientMixin):
    def __init__(self, app: App) -> None:
        self.app = app

    def get_client_id(self) -> str:
        return self.app.client_id

    def get_default_redirect_uri(self) -> str | None:
        uris = self.app.settings.redirect_uris
        return uris[0] if len(uris) == 1 else None  # several registered: the request must name one

    def get_allowed_scope(self, scope: str | None) -> str | None:
        requested = (scope or "").split()
        allowed = [s for s in self.app.settings.scopes if s in requested]
        return " ".join(allowed) if allowed else None

    def check_redirect_uri(self, redirect_uri: str) -> bool:
        return redirect_uri in self.app.settings.redirect_uris  # exact match, nothing else

    def check_client_secret(self, client_secret: str) -> bool:
        return secret_matches(client_secret, self.app.client_secret_hash)

    def check_endpoint_auth_method(self, method: str, endpoint: str) -> bool:
        if self.app.public_client:
            return method == "none"
        return method in ("client_secret_basic", "client_secret_post")

    def check_response_type(self, response_type: str) -> bool:
        return response_type == "code"

    def check_grant_type(self, grant_type: str) -> bool:
        if grant_type == "client_credentials":
            return not self.app.public_client
        return grant_type in ("authorization_code", "refresh_token")


class AuthorizationCode:
    def __init__(self, record: CodeRecord) -> None:
        self.record = record
        self.code_challenge = record.code_challenge
        self.code_challenge_method = record.code_challenge_method

    def get_redirect_uri(self) -> str:
        return self.record.redirect_uri

    def get_scope(self) -> str:
        return self.record.scope


class Token(TokenMixin):
    def __init__(self, record: TokenRecord, as_refresh: bool = False) -> None:
        self.record = record
        self.as_refresh = as_refresh  # found by its refresh token (introspection answers for that one)

    def check_client(self, client: ClientMixin) -> bool:
        return client.get_client_id() == self.record.client_id

    def get_scope(self) -> str:
        return self.record.scope

    def get_expires_in(self) -> int:
        return (self.record.expires_ms - self.record.issued_ms) // 1000

    def is_expired(self) -> bool:
        deadline = self.record.refresh_expires_ms if self.as_refresh else self.record.expires_ms
        return deadline <= _now_ms()

    def is_revoked(self) -> bool:
        return self.record.revoked or (self.as_refresh and self.record.rotated)

    def get_user(self) -> User | None:
        return User(self.record.user_id) if self.record.user_id else None

    def get_client(self) -> ClientMixin:
        raise NotImplementedError  # not used by the grants and endpoints registered here


# -- requests -----------------------------------------------------------------------------------------


class _Request(OAuth2Request):
    """An HTTP exchange the gateway forwarded: query parameters and/or a form body."""

    def __init__(self, method: str, uri: str, params: dict[str, list[str]], headers: dict[str, str]) -> None:
        super().__init__(method=method, uri=uri, headers=headers)
        self._params = params
        first = {key: values[0] for key, values in params.items()}
        self.payload = BasicOAuth2Payload(first)
        self.payload._datalist = params  # several values of one name are refused by Authlib's checks

    @property
    def args(self) -> dict[str, str]:
        return self.payload.data if self.method == "GET" else {}

    @property
    def form(self) -> dict[str, str]:
        return self.payload.data if self.method == "POST" else {}


def parse_params(raw: str) -> dict[str, list[str]]:
    if len(raw) > MAX_FORM_BYTES:
        raise InvalidRequestError("request too large")
    try:
        params = parse_qs(raw, keep_blank_values=False, max_num_fields=64)
    except ValueError:
        raise InvalidRequestError("too many parameters") from None
    if any(len(v) > MAX_PARAM_LEN for values in params.values() for v in values):
        raise InvalidRequestError("a parameter is too long")
    return params


# -- grants -------------------------------------------------------------------------------------------


class _Bridge:
    """Runs the store's coroutines on the service's loop from Authlib's worker thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

    def __call__(self, awaitable: Awaitable[T]) -> T:
        return asyncio.run_coroutine_threadsafe(_awaited(awaitable), self.loop).result(timeout=30)


async def _awaited(awaitable: Awaitable[T]) -> T:
    return await awaitable


class S256Challenge(CodeChallenge):
    """PKCE with S256 only, required of public clients."""

    SUPPORTED_CODE_CHALLENGE_METHOD = ["S256"]  # noqa: RUF012 - Authlib's class attribute
    DEFAULT_CODE_CHALLENGE_METHOD = "S256"

    def validate_code_challenge(self, grant: Any, redirect_uri: str) -> None:
        data = grant.request.payload.data
        client: Client = grant.request.client
        if not data.get("code_challenge"):
            if client.app.public_client:
                raise InvalidRequestError("public clients must use PKCE (code_challenge, S256)")
            return
        if data.get("code_challenge_method") != "S256":
            raise InvalidRequestError("code_challenge_method must be S256")
        super().validate_code_challenge(grant, redirect_uri)


class _Server(AuthorizationServer):
    def __init__(self, apps: Callable[[str], Awaitable[App | None]], store: OAuthStore, bridge: _Bridge) -> None:
        super().__init__(scopes_supported=list(SCOPES))
        self.apps = apps
        self.store = store
        self.run = bridge
        self.register_token_generator(
            "default",
            BearerTokenGenerator(
                access_token_generator=lambda **_: ACCESS_TOKEN_PREFIX + secrets.token_urlsafe(32),
                refresh_token_generator=lambda **_: REFRESH_TOKEN_PREFIX + secrets.token_urlsafe(32),
                expires_generator=ACCESS_TOKEN_SECONDS,
            ),
        )

    def query_client(self, client_id: str) -> Client | None:
        if not client_id or len(client_id) > 64:
            return None
        app = self.run(self.apps(client_id))
        return Client(app) if app is not None and not app.suspended else None

    def save_token(self, token: dict[str, Any], request: OAuth2Request) -> None:
        client: Client = request.client
        user: User | None = request.user
        now = _now_ms()
        grant_id = ""
        authorization_scopes: tuple[str, ...] | None = None
        if request.authorization_code is not None:
            grant_id = request.authorization_code.record.grant_id
            authorization_scopes = tuple(token.get("scope", "").split())
        elif request.refresh_token is not None:
            grant_id = request.refresh_token.record.grant_id
        grant_id = grant_id or secrets.token_hex(16)
        refresh = token.get("refresh_token", "")
        record = TokenRecord(
            access_hash=token_hash(token["access_token"]),
            refresh_hash=token_hash(refresh) if refresh else "",
            client_id=client.get_client_id(),
            user_id=user.user_id if user else "",
            scope=token.get("scope", ""),
            grant_id=grant_id,
            issued_ms=now,
            expires_ms=now + token["expires_in"] * 1000,
            refresh_expires_ms=now + REFRESH_TOKEN_SECONDS * 1000 if refresh else 0,
        )
        self.run(self.store.save_token(record, authorization_scopes))

    def create_oauth2_request(self, request: OAuth2Request) -> OAuth2Request:
        return request  # built by OAuthServer from what the gateway forwarded

    def create_json_request(self, request: Any) -> Any:
        raise NotImplementedError  # no JSON endpoints

    def handle_response(self, status: int, body: Any, headers: list[tuple[str, str]]) -> tuple[int, Any, dict]:
        return status, body, dict(headers)

    def send_signal(self, name: str, *args: Any, **kwargs: Any) -> None:
        pass  # no listeners: events are written by the store with each change


class _AuthorizationCodeGrant(grants.AuthorizationCodeGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]  # noqa: RUF012
    server: _Server

    def save_authorization_code(self, code: str, request: OAuth2Request) -> None:
        data = request.payload.data
        now = _now_ms()
        self.server.run(
            self.server.store.save_code(
                CodeRecord(
                    code_hash=token_hash(code),
                    client_id=request.client.get_client_id(),
                    user_id=request.user.user_id,
                    redirect_uri=request.payload.redirect_uri or "",
                    scope=request.scope or "",
                    code_challenge=data.get("code_challenge", ""),
                    code_challenge_method=data.get("code_challenge_method", "") if data.get("code_challenge") else "",
                    grant_id=secrets.token_hex(16),
                    created_ms=now,
                    expires_ms=now + CODE_LIFETIME_MS,
                )
            )
        )

    def query_authorization_code(self, code: str, client: Client) -> AuthorizationCode | None:
        claimed, reused = self.server.run(self.server.store.claim_code(token_hash(code), client.get_client_id()))
        if reused is not None:
            # A code used twice was likely stolen: what the first use issued is revoked (RFC 6749 4.1.2).
            self.server.run(
                self.server.store.revoke_grant(reused.client_id, reused.user_id, reused.grant_id, "reuse", _now_ms())
            )
            return None
        if claimed is None or claimed.expires_ms <= _now_ms():
            return None
        return AuthorizationCode(claimed)

    def delete_authorization_code(self, authorization_code: AuthorizationCode) -> None:
        pass  # claimed (marked used) by query_authorization_code; kept to recognise reuse

    def authenticate_user(self, authorization_code: AuthorizationCode) -> User:
        return User(authorization_code.record.user_id)


class _RefreshTokenGrant(grants.RefreshTokenGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]  # noqa: RUF012
    INCLUDE_NEW_REFRESH_TOKEN = True  # rotation
    server: _Server

    def authenticate_refresh_token(self, refresh_token: str) -> Token | None:
        record = self.server.run(self.server.store.token_by_refresh(token_hash(refresh_token)))
        if record is None or record.revoked:
            return None
        if record.rotated:
            # Reuse of a rotated refresh token: someone else holds the chain; end it for everyone.
            self.server.run(
                self.server.store.revoke_grant(record.client_id, record.user_id, record.grant_id, "reuse", _now_ms())
            )
            return None
        token = Token(record, as_refresh=True)
        return None if token.is_expired() else token

    def authenticate_user(self, refresh_token: Token) -> User | None:
        return refresh_token.get_user()

    def revoke_old_credential(self, refresh_token: Token) -> None:
        record = refresh_token.record
        if not self.server.run(self.server.store.mark_rotated(record.access_hash)):
            # Two uses raced: one of them is not the app; revoke the grant, the new tokens included.
            self.server.run(
                self.server.store.revoke_grant(record.client_id, record.user_id, record.grant_id, "reuse", _now_ms())
            )
            raise InvalidGrantError("refresh token reused")


class _ClientCredentialsGrant(grants.ClientCredentialsGrant):
    TOKEN_ENDPOINT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]  # noqa: RUF012

    def create_token_response(self) -> tuple[int, Any, list[tuple[str, str]]]:
        client: Client = self.request.client
        requested = (self.request.payload.scope or "").split()
        allowed = [s for s in APP_LEVEL_SCOPES if s in client.app.settings.scopes]
        if any(s not in allowed for s in requested):
            raise InvalidScopeError("client credentials carry app-level scopes only: " + " ".join(allowed))
        token = self.generate_token(scope=" ".join(requested or allowed) or None, include_refresh_token=False)
        self.save_token(token)
        return 200, token, self.TOKEN_RESPONSE_HEADER


def _find_token(server: _Server, value: str, hint: str | None) -> Token | None:
    if not value or len(value) > MAX_PARAM_LEN:
        return None
    digest = token_hash(value)
    if hint != "refresh_token":
        record = server.run(server.store.token_by_access(digest))
        if record is not None:
            return Token(record)
    if hint != "access_token":
        record = server.run(server.store.token_by_refresh(digest))
        if record is not None:
            return Token(record, as_refresh=True)
    return None


class _Revocation(RevocationEndpoint):
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post", "none"]  # noqa: RUF012
    server: _Server

    def query_token(self, token_string: str, token_type_hint: str | None) -> Token | None:
        return _find_token(self.server, token_string, token_type_hint)

    def revoke_token(self, token: Token, request: OAuth2Request) -> None:
        # A refresh token takes its grant's access tokens with it (RFC 7009 2.1).
        self.server.run(self.server.store.revoke_token(token.record, token.as_refresh, "token", _now_ms()))


class _Introspection(IntrospectionEndpoint):
    CLIENT_AUTH_METHODS = ["client_secret_basic", "client_secret_post"]  # noqa: RUF012
    server: _Server

    def query_token(self, token_string: str, token_type_hint: str | None) -> Token | None:
        return _find_token(self.server, token_string, token_type_hint)

    def check_permission(self, token: Token, client: Client, request: OAuth2Request) -> bool:
        return token.check_client(client)  # an app introspects its own tokens only

    def introspect_token(self, token: Token) -> dict[str, Any]:
        r = token.record
        payload: dict[str, Any] = {
            "active": True,
            "client_id": r.client_id,
            "scope": r.scope,
            "token_type": "refresh_token" if token.as_refresh else "Bearer",
            "iat": r.issued_ms // 1000,
            "exp": (r.refresh_expires_ms if token.as_refresh else r.expires_ms) // 1000,
        }
        if r.user_id:
            payload["sub"] = r.user_id
        return payload


# -- the service's face -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Consent:
    """What the consent page shows (the request was valid)."""

    app: App
    scopes: tuple[str, ...]
    redirect_uri: str


@dataclass(frozen=True)
class Refusal:
    """An invalid authorization request: redirect the browser, or (no trusted redirect) show the error."""

    redirect_to: str
    error: str
    description: str


class OAuthServer:
    """Authlib's server over the app registry and the OAuth store; async methods for the gRPC layer."""

    def __init__(self, apps: Callable[[str], Awaitable[App | None]], store: OAuthStore, base_url: str) -> None:
        self._apps = apps
        self._store = store
        self._base_url = base_url.rstrip("/")
        self._server: _Server | None = None

    def _authlib(self) -> _Server:
        if self._server is None:
            server = _Server(self._apps, self._store, _Bridge(asyncio.get_running_loop()))
            server.register_grant(_AuthorizationCodeGrant, [S256Challenge(required=True)])
            server.register_grant(_RefreshTokenGrant)
            server.register_grant(_ClientCredentialsGrant)
            server.register_endpoint(_Revocation)
            server.register_endpoint(_Introspection)
            self._server = server
        return self._server

    def _authorize_request(self, query: str, user_id: str) -> _Request:
        request = _Request("GET", f"{self._base_url}/_laiwang/oauth2/authorize?{query}", parse_params(query), {})
        request.user = User(user_id)
        return request

    @staticmethod
    def _refusal(error: OAuth2Error) -> Refusal:
        if error.redirect_uri:
            _, _, headers = error()
            return Refusal(dict(headers)["Location"], error.error, error.description or "")
        return Refusal("", error.error, error.description or "")

    async def prepare_consent(self, query: str, user_id: str) -> Consent | Refusal:
        server = self._authlib()

        def work() -> Consent | Refusal:
            try:
                request = self._authorize_request(query, user_id)
                grant = server.get_consent_grant(request, end_user=request.user)
            except OAuth2Error as error:
                return self._refusal(error)
            client: Client = grant.request.client
            return Consent(client.app, tuple((grant.request.scope or "").split()), grant.redirect_uri)

        return await asyncio.to_thread(work)

    async def complete_consent(self, query: str, user_id: str, approved: bool) -> Refusal | str:
        """The redirect after the user's decision (a code, or access_denied), or a refusal to show."""
        server = self._authlib()

        def work() -> Refusal | str:
            try:
                request = self._authorize_request(query, user_id)
                grant = server.get_consent_grant(request, end_user=request.user)
            except OAuth2Error as error:
                return self._refusal(error)
            _, _, headers = server.create_authorization_response(
                request, grant_user=request.user if approved else None, grant=grant
            )
            location = headers.get("Location")
            return location if location else Refusal("", "server_error", "no redirect")

        return await asyncio.to_thread(work)

    async def endpoint(self, kind: str, form: bytes, authorization: str) -> tuple[int, dict[str, str], bytes]:
        """The token, revocation or introspection endpoint: (status, headers, JSON body)."""
        server = self._authlib()
        path = {"token": "token", "revocation": "revoke", "introspection": "introspect"}[kind]

        def work() -> tuple[int, Any, dict[str, str]]:
            headers = {"Content-Type": "application/x-www-form-urlencoded"}
            if authorization:
                headers["Authorization"] = authorization
            try:
                params: dict[str, list[str]] | None = parse_params(form.decode("utf-8", errors="strict"))
            except (UnicodeDecodeError, OAuth2Error):
                params = None
            if params is None:
                return 400, {"error": "invalid_request", "error_description": "unreadable form body"}, {}
            request = _Request("POST", f"{self._base_url}/_laiwang/oauth2/{path}", params, headers)
            if kind == "token":
                return server.create_token_response(request)
            return server.create_endpoint_response(kind, request)

        status, body, headers = await asyncio.to_thread(work)
        payload = body if isinstance(body, bytes | str) else json.dumps(body)
        headers = {k: v for k, v in headers.items() if k.lower() in ("cache-control", "pragma", "www-authenticate")}
        headers.setdefault("Cache-Control", "no-store")
        return status, headers, payload.encode() if isinstance(payload, str) else payload


def authorize_query(params: dict[str, str]) -> str:
    """An authorization request's query string (for tests and the sample app)."""
    return urlencode(params)
