"""Helpers of the open platform's e2e tests: registering an app, an app whose webhook endpoint is a
loopback receiver on a stack of its own, a browser on the consent page, and Authlib's OAuth 2 client
doing the code + PKCE flow."""

from __future__ import annotations

import asyncio
import contextlib
import html
import re
import secrets
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
from aiohttp import web
from authlib.integrations.requests_client import OAuth2Session

from plumbing.ports import free_port
from tests.conftest import RunningStack, launch_stack
from tests.matrix_support import DEFAULT_PASSWORD, RegisteredUser, register_user

APPS = "/_laiwang/client/v1/apps"
OAUTH = "/_laiwang/oauth2"
REDIRECT = "http://127.0.0.1:9/callback"


@dataclass
class Partner:
    client_id: str
    client_secret: str
    owner: RegisteredUser


async def register_app(http: aiohttp.ClientSession, base: str, owner: RegisteredUser, **extra: Any) -> Partner:
    settings = {
        "name": "Hotpot <Finder>",
        "description": "Finds the cheapest hotpot near you",
        "icon_url": "https://partner.example/icon.png",
        "redirect_uris": [REDIRECT, "http://127.0.0.1:9/other"],
        "scopes": ["profile:read", "cards:write", "subscribers:message"],
        **extra,
    }
    async with http.post(f"{base}{APPS}", json=settings, headers=owner.headers) as r:
        body = await r.json()
        assert r.status == 200, body
    return Partner(body["client_id"], body.get("client_secret", ""), owner)


@dataclass
class HookedApp:
    stack: RunningStack
    http: aiohttp.ClientSession
    owner: RegisteredUser
    created: dict[str, Any]  # the registration's answer: client_id, client_secret, webhook_secret
    webhook_url: str


@contextlib.asynccontextmanager
async def app_with_webhook(
    mongo_uri: str,
    data_dir: Path,
    env: dict[str, str],
    receive: Callable[[web.Request], Awaitable[web.StreamResponse]],
    name: str,
) -> AsyncIterator[HookedApp]:
    """A stack of its own (loopback webhooks allowed, plus `env`) with one app registered by a new
    owner, whose webhook URL is a loopback HTTP endpoint answered by `receive`."""
    receiver = web.Application()
    receiver.router.add_post("/hook", receive)
    runner = web.AppRunner(receiver)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        async with (
            launch_stack(mongo_uri, data_dir, {"OPEN_PLATFORM_ALLOW_LOOPBACK_WEBHOOKS": "true", **env}) as stack,
            aiohttp.ClientSession() as http,
        ):
            owner = await register_user(stack.base_url)
            url = f"http://127.0.0.1:{port}/hook"
            settings = {"name": name, "webhook_url": url, "scopes": ["subscribers:message"]}
            async with http.post(f"{stack.base_url}{APPS}", json=settings, headers=owner.headers) as r:
                created = await r.json()
                assert r.status == 200, created
            yield HookedApp(stack, http, owner, created, url)
    finally:
        await runner.cleanup()


class Browser:
    """A person's browser: cookies, HTML forms, no JavaScript; redirects to the app are not followed."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.http = aiohttp.ClientSession(
            cookie_jar=aiohttp.CookieJar(unsafe=True), headers={"Accept": "text/html,application/xhtml+xml"}
        )

    async def close(self) -> None:
        await self.http.close()

    @staticmethod
    def fields(page: str) -> dict[str, str]:
        return {
            html.unescape(name): html.unescape(value)
            for name, value in re.findall(r'<input type="hidden" name="(\w+)" value="([^"]*)"', page)
        }

    async def get(self, url: str) -> tuple[int, str, dict[str, str]]:
        async with self.http.get(url, allow_redirects=False) as r:
            return r.status, await r.text(), dict(r.headers)

    async def post(self, path: str, form: dict[str, str]) -> tuple[int, str, dict[str, str]]:
        async with self.http.post(f"{self.base}{path}", data=form, allow_redirects=False) as r:
            return r.status, await r.text(), dict(r.headers)

    async def sign_in(self, url: str, user: RegisteredUser) -> tuple[int, str, dict[str, str]]:
        """Open `url`, sign in on the form it shows if it does, and answer what `url` answers then."""
        status, page, headers = await self.get(url)
        if status == 200 and "Sign in to Laiwang" in page:
            form = {**self.fields(page), "user": user.user_id, "password": DEFAULT_PASSWORD}
            status, _, headers = await self.post(f"{OAUTH}/login", form)
            assert status == 303, status
            status, page, headers = await self.get(f"{self.base}{headers['Location']}")
        return status, page, headers

    async def consent(self, url: str, user: RegisteredUser) -> str:
        """Sign in if asked, and return the consent page."""
        status, page, _ = await self.sign_in(url, user)
        assert status == 200 and "wants to:" in page, (status, page[:500])
        return page

    async def decide(self, page: str, decision: str) -> str:
        status, body, headers = await self.post(f"{OAUTH}/authorize", {**self.fields(page), "decision": decision})
        assert status == 303, (status, body)
        return headers["Location"]


def oauth_client(base: str, partner: Partner, **kwargs: Any) -> OAuth2Session:
    kwargs.setdefault("redirect_uri", REDIRECT)
    return OAuth2Session(
        partner.client_id,
        partner.client_secret or None,
        token_endpoint_auth_method="client_secret_basic" if partner.client_secret else "none",
        **kwargs,
    )


async def authorize(
    base: str, browser: Browser, partner: Partner, user: RegisteredUser, scope: str = "profile:read cards:write"
) -> tuple[OAuth2Session, dict[str, Any]]:
    """The whole code + PKCE flow: Authlib builds the URL, the browser consents, Authlib exchanges."""
    client = oauth_client(base, partner, scope=scope, code_challenge_method="S256")
    verifier = secrets.token_urlsafe(48)
    url, state = client.create_authorization_url(f"{base}{OAUTH}/authorize", code_verifier=verifier)
    page = await browser.consent(url, user)
    location = await browser.decide(page, "approve")
    assert location.startswith(REDIRECT + "?") and parse_qs(urlsplit(location).query)["state"] == [state]
    token = await asyncio.to_thread(
        client.fetch_token, f"{base}{OAUTH}/token", authorization_response=location, code_verifier=verifier
    )
    return client, token


async def call_api(http: aiohttp.ClientSession, url: str, token: str) -> tuple[int, Any]:
    async with http.get(url, headers={"Authorization": f"Bearer {token}"}) as r:
        return r.status, await r.json(content_type=None)
