"""Domain rules of the open_platform service. No gRPC, Mongo or NATS imports here.

The app registry: validation of what an owner sets (names, URLs, scopes, the SSRF guard on the
webhook URL), secrets (client secrets stored only as a hash; webhook signing secrets rotated with an
overlap window) and owner-only authorization.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol
from urllib.parse import urlsplit

from plumbing.domain_errors import Conflict, forbidden, invalid, not_found
from plumbing.url_guard import LOOPBACK, Network, UnsafeUrl, check_url, is_loopback_host

SCOPES: dict[str, str] = {
    "profile:read": "See your display name and avatar",
    "cards:write": "Post cards in conversations you share with the app",
    "subscribers:message": "Send you messages after you subscribe",
    "payments": "Ask you to approve payments",
}
MAX_APPS_PER_OWNER = 20
MAX_REDIRECT_URIS = 10
MAX_URL_LEN = 2048
MAX_NAME_LEN = 64
MAX_DESCRIPTION_LEN = 1000
DEFAULT_WEBHOOK_OVERLAP_MS = 24 * 3600 * 1000
MAX_WEBHOOK_OVERLAP_MS = 7 * 24 * 3600 * 1000
CLIENT_SECRET_PREFIX = "lwcs_"
WEBHOOK_SECRET_PREFIX = "whsec_"  # the Standard Webhooks secret format: whsec_ + base64 key


@dataclass(frozen=True)
class AppSettings:
    name: str
    description: str
    icon_url: str
    homepage_url: str
    redirect_uris: tuple[str, ...]
    webhook_url: str
    scopes: tuple[str, ...]


@dataclass(frozen=True)
class WebhookSecret:
    secret: str
    expires_at_ms: int = 0  # 0: current (never expires by itself)


@dataclass(frozen=True)
class App:
    client_id: str
    owner: str
    settings: AppSettings
    public_client: bool
    suspended: bool
    created_ms: int
    updated_ms: int
    client_secret_hash: str  # empty for public clients
    webhook_secrets: tuple[WebhookSecret, ...]  # current first, then previous ones still signing
    webhook_rotated_ms: int
    version: int = 1  # optimistic concurrency: a write applies only over the version it read

    def signing_secrets(self, now_ms: int) -> list[str]:
        """Secrets a delivery is signed with now: the current one and any still in their overlap."""
        return [s.secret for s in self.webhook_secrets if s.expires_at_ms == 0 or s.expires_at_ms > now_ms]

    def previous_expires_ms(self, now_ms: int) -> int:
        return max((s.expires_at_ms for s in self.webhook_secrets[1:] if s.expires_at_ms > now_ms), default=0)


class AppStore(Protocol):
    """What the registry needs from its repository (Mongo in store.py, a fake in unit tests).

    Each write commits the app document and its AppChanged event together.
    """

    async def insert(self, app: App, max_per_owner: int) -> bool: ...  # False when the owner is at the cap
    async def get(self, client_id: str) -> App | None: ...
    async def list_by_owner(self, owner: str) -> list[App]: ...
    async def replace(self, app: App, change: str) -> bool: ...  # False: not over version - 1 any more
    async def delete(self, app: App) -> None: ...


# -- secrets ----------------------------------------------------------------------------------------


def new_client_secret() -> str:
    return CLIENT_SECRET_PREFIX + secrets.token_urlsafe(32)


def hash_secret(secret: str) -> str:
    # 256 random bits: a fast hash is enough (no dictionary to try), and keeps token checks cheap.
    return hashlib.sha256(secret.encode()).hexdigest()


def secret_matches(secret: str, stored_hash: str) -> bool:
    return bool(stored_hash) and hmac.compare_digest(hash_secret(secret), stored_hash)


def new_webhook_secret() -> str:
    return WEBHOOK_SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


# -- validation -------------------------------------------------------------------------------------


def _check_text(value: str, name: str, max_len: int, *, required: bool) -> str:
    value = value.strip()
    if required and not value:
        raise invalid(f"{name} is required", "M_MISSING_PARAM")
    if len(value) > max_len:
        raise invalid(f"{name} is longer than {max_len} characters")
    if any(ord(c) < 0x20 and c not in "\n\t" for c in value):
        raise invalid(f"{name} contains control characters")
    return value


def check_webhook_url(url: str, *, allow_loopback: bool) -> str:
    """The SSRF guard at registration (plumbing/url_guard.py): https only (plain http only to
    loopback, in development), and no IP literal that is private, link-local or loopback. A host
    name passes here; delivery checks every address it resolves to (url_guard.GuardedResolver)."""
    url = _check_text(url, "webhook_url", MAX_URL_LEN, required=False)
    if not url:
        return ""
    parts = urlsplit(url)
    if parts.fragment:
        raise invalid("webhook_url must be an absolute URL without a fragment")
    try:
        check_url(url, webhook_networks(allow_loopback))
    except UnsafeUrl as error:
        raise invalid(f"webhook_url: {error}") from None
    if parts.scheme != "https" and not (allow_loopback and is_loopback_host((parts.hostname or "").lower())):
        raise invalid("webhook_url must use https")
    return url


def webhook_networks(allow_loopback: bool) -> tuple[Network, ...]:
    """The non-public networks webhooks may reach: loopback in development, else none."""
    return LOOPBACK if allow_loopback else ()


def check_redirect_uri(uri: str) -> str:
    """Absolute https, or http to loopback (RFC 8252 native apps); no fragment (RFC 6749 3.1.2)."""
    uri = _check_text(uri, "redirect_uris", MAX_URL_LEN, required=True)
    parts = urlsplit(uri)
    if parts.fragment or "#" in uri or not parts.hostname or parts.username or parts.password:
        raise invalid("each redirect URI must be absolute, without fragment or credentials")
    if parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(parts.hostname.lower())):
        return uri
    raise invalid("redirect URIs must use https (plain http only to loopback)")


def _check_web_url(url: str, name: str) -> str:
    url = _check_text(url, name, MAX_URL_LEN, required=False)
    if url and (urlsplit(url).scheme != "https" or not urlsplit(url).hostname):
        raise invalid(f"{name} must be an absolute https URL")
    return url


def validate_settings(
    name: str,
    description: str,
    icon_url: str,
    homepage_url: str,
    redirect_uris: Sequence[str],
    webhook_url: str,
    scopes: Sequence[str],
    *,
    allow_loopback_webhooks: bool,
) -> AppSettings:
    if len(redirect_uris) > MAX_REDIRECT_URIS:
        raise invalid(f"at most {MAX_REDIRECT_URIS} redirect URIs")
    unknown = sorted(set(scopes) - SCOPES.keys())
    if unknown:
        raise invalid(f"unknown scopes: {', '.join(unknown)[:200]}")
    return AppSettings(
        name=_check_text(name, "name", MAX_NAME_LEN, required=True),
        description=_check_text(description, "description", MAX_DESCRIPTION_LEN, required=False),
        icon_url=_check_web_url(icon_url, "icon_url"),
        homepage_url=_check_web_url(homepage_url, "homepage_url"),
        redirect_uris=tuple(dict.fromkeys(check_redirect_uri(u) for u in redirect_uris)),
        webhook_url=check_webhook_url(webhook_url, allow_loopback=allow_loopback_webhooks),
        scopes=tuple(s for s in SCOPES if s in set(scopes)),
    )


def bot_user_id(client_id: str, server_name: str) -> str:
    return f"@app_{client_id.lower()}:{server_name}"


# -- the registry -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Created:
    app: App
    client_secret: str
    webhook_secret: str


class AppRegistry:
    def __init__(self, store: AppStore, new_id: Callable[[], str]) -> None:
        self._store = store
        self._new_id = new_id

    async def _owned(self, caller: str, client_id: str) -> App:
        app = await self._store.get(client_id) if client_id else None
        if app is None or app.owner != caller:
            raise not_found("no such app")  # the same answer for someone else's app: ids cannot be probed
        return app

    async def create(self, caller: str, settings: AppSettings, public_client: bool, now_ms: int) -> Created:
        client_secret = "" if public_client else new_client_secret()
        webhook_secret = new_webhook_secret()
        app = App(
            client_id=self._new_id(),
            owner=caller,
            settings=settings,
            public_client=public_client,
            suspended=False,
            created_ms=now_ms,
            updated_ms=now_ms,
            client_secret_hash=hash_secret(client_secret) if client_secret else "",
            webhook_secrets=(WebhookSecret(webhook_secret),),
            webhook_rotated_ms=now_ms,
        )
        if not await self._store.insert(app, MAX_APPS_PER_OWNER):
            raise forbidden(f"at most {MAX_APPS_PER_OWNER} apps per owner")
        return Created(app, client_secret, webhook_secret)

    async def lookup(self, client_id: str) -> App | None:
        """Any app by id (for other parts of this service, never for owner routes)."""
        return await self._store.get(client_id) if client_id else None

    async def list(self, caller: str) -> list[App]:
        return await self._store.list_by_owner(caller)

    async def get(self, caller: str, client_id: str) -> App:
        return await self._owned(caller, client_id)

    async def _modify(self, caller: str, client_id: str, change: str, edit: Callable[[App], App | None]) -> App:
        """Read, edit, write over the version read; a concurrent write (say, a suspension during an
        edit) makes this re-read instead of overwriting it."""
        for _ in range(5):
            app = await self._owned(caller, client_id)
            edited = edit(app)
            if edited is None:
                return app  # nothing to change: no write, no event
            edited = replace(edited, version=app.version + 1)
            if await self._store.replace(edited, change):
                return edited
        raise Conflict("the app is being changed concurrently; retry")

    async def update(self, caller: str, client_id: str, settings: AppSettings, now_ms: int) -> App:
        return await self._modify(
            caller, client_id, "updated", lambda app: replace(app, settings=settings, updated_ms=now_ms)
        )

    async def set_suspended(self, caller: str, client_id: str, suspended: bool, now_ms: int) -> App:
        def edit(app: App) -> App | None:
            return None if app.suspended == suspended else replace(app, suspended=suspended, updated_ms=now_ms)

        return await self._modify(caller, client_id, "suspended" if suspended else "resumed", edit)

    async def delete(self, caller: str, client_id: str) -> None:
        await self._store.delete(await self._owned(caller, client_id))

    async def rotate_client_secret(self, caller: str, client_id: str, now_ms: int) -> tuple[App, str]:
        secret = new_client_secret()

        def edit(app: App) -> App:
            if app.public_client:
                raise invalid("a public client has no client secret")
            return replace(app, client_secret_hash=hash_secret(secret), updated_ms=now_ms)

        return await self._modify(caller, client_id, "client_secret_rotated", edit), secret

    async def rotate_webhook_secret(self, caller: str, client_id: str, overlap_ms: int, now_ms: int) -> tuple[App, str]:
        if overlap_ms < 0 or overlap_ms > MAX_WEBHOOK_OVERLAP_MS:
            raise invalid(f"overlap_seconds must be between 0 and {MAX_WEBHOOK_OVERLAP_MS // 1000}")
        overlap_ms = overlap_ms or DEFAULT_WEBHOOK_OVERLAP_MS
        secret = new_webhook_secret()

        def edit(app: App) -> App:
            # The current secret keeps signing for the overlap; older ones keep their own deadline.
            previous = [replace(s, expires_at_ms=s.expires_at_ms or now_ms + overlap_ms) for s in app.webhook_secrets]
            still_signing = tuple(s for s in previous if s.expires_at_ms > now_ms)
            return replace(
                app,
                webhook_secrets=(WebhookSecret(secret), *still_signing),
                webhook_rotated_ms=now_ms,
                updated_ms=now_ms,
            )

        return await self._modify(caller, client_id, "webhook_secret_rotated", edit), secret
