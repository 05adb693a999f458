"""Users' authorizations of apps and the partner token check the gateway asks for (no I/O here
beyond the injected store and registry lookups)."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from plumbing.domain_errors import not_found
from services.open_platform.core import App
from services.open_platform.oauth import ACCESS_TOKEN_PREFIX, MAX_PARAM_LEN, token_hash
from services.open_platform.oauth_store import AuthorizationRecord, TokenRecord


class AuthorizationStore(Protocol):
    async def token_by_access(self, access_hash: str) -> TokenRecord | None: ...
    async def authorizations_of(self, user_id: str, limit: int = 200) -> list[AuthorizationRecord]: ...
    async def revoke_authorization(self, user_id: str, client_id: str, at_ms: int) -> bool: ...


@dataclass(frozen=True)
class PartnerToken:
    token: TokenRecord
    app: App


class Authorizations:
    def __init__(self, apps: Callable[[str], Awaitable[App | None]], store: AuthorizationStore) -> None:
        self._apps = apps
        self._store = store

    async def check(self, access_token: str, now_ms: int | None = None) -> PartnerToken | None:
        """The live token behind `access_token`, or None (unknown, expired, revoked, app suspended)."""
        if not access_token.startswith(ACCESS_TOKEN_PREFIX) or len(access_token) > MAX_PARAM_LEN:
            return None
        token = await self._store.token_by_access(token_hash(access_token))
        now_ms = now_ms if now_ms is not None else time.time_ns() // 1_000_000
        if token is None or token.revoked or token.expires_ms <= now_ms:
            return None
        app = await self._apps(token.client_id)
        if app is None or app.suspended:
            return None
        return PartnerToken(token, app)

    async def list(self, user_id: str) -> list[tuple[AuthorizationRecord, App]]:
        found = []
        for record in await self._store.authorizations_of(user_id):
            app = await self._apps(record.client_id)
            if app is not None:  # a deleted app's authorizations are gone with it
                found.append((record, app))
        return found

    async def revoke(self, user_id: str, client_id: str, now_ms: int) -> None:
        if not client_id or not await self._store.revoke_authorization(user_id, client_id, now_ms):
            raise not_found("you have not authorized this app")
