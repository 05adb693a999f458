"""The open platform's OAuth2 authorization server end to end, on the whole stack over real HTTP.

A browser (aiohttp with a cookie jar, reading the HTML forms) signs in on the consent page and
allows or denies; the partner side is Authlib's own OAuth 2 client (requests_client.OAuth2Session)
doing PKCE S256, the code exchange, refresh, RFC 7009 revocation and RFC 7662 introspection. A
second gateway process (another replica on the same NATS and services) shows that revocation and
suspension take effect at every replica, also where the token was cached.
"""

from __future__ import annotations

import asyncio
import os
import re
import secrets
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7636 import create_s256_code_challenge

from plumbing.ports import free_port
from plumbing.process import with_parent_death
from tests.matrix_support import register_user
from tests.open_platform_support import (
    APPS,
    OAUTH,
    REDIRECT,
    Browser,
    Partner,
    authorize,
    call_api,
    oauth_client,
    register_app,
)
from tests.support import eventually, stop_process

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def replica(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A second gateway process on the same NATS and services."""
    port = free_port()
    env = {
        **os.environ,
        "NATS_URL": stack.config.nats_url,
        "SERVER_NAME": stack.config.server_name,
        "GATEWAY_HOST": "127.0.0.1",
        "GATEWAY_PORT": str(port),
        **{f"{s.upper()}_ADDR": stack.grpc_address(s) for s in ("auth", "contacts", "messaging", "zhadui")},
        "OPEN_PLATFORM_ADDR": stack.grpc_address("open_platform"),
    }
    log = open(tmp_path_factory.mktemp("replica") / "gateway.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(with_parent_death([sys.executable, "-m", "gateway"]), env=env, stdout=log, stderr=log)
    yield f"http://127.0.0.1:{port}"
    stop_process(process)
    log.close()


@pytest.fixture(scope="module")
def strict_gateway(stack: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Another gateway replica whose unknown-partner-token budget is 5 per address, hardly refilling."""
    port = free_port()
    env = {
        **os.environ,
        "NATS_URL": stack.config.nats_url,
        "SERVER_NAME": stack.config.server_name,
        "GATEWAY_HOST": "127.0.0.1",  # also reached from 127.0.0.3, another client address on loopback
        "GATEWAY_PORT": str(port),
        "GATEWAY_PARTNER_BAD_TOKEN_BURST": "5",
        "GATEWAY_PARTNER_BAD_TOKEN_RATE_PER_SECOND": "0.01",
        **{f"{s.upper()}_ADDR": stack.grpc_address(s) for s in ("auth", "contacts", "messaging", "zhadui")},
        "OPEN_PLATFORM_ADDR": stack.grpc_address("open_platform"),
    }
    log = open(tmp_path_factory.mktemp("strict") / "gateway.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(with_parent_death([sys.executable, "-m", "gateway"]), env=env, stdout=log, stderr=log)
    yield f"http://127.0.0.1:{port}"
    stop_process(process)
    log.close()


@pytest.fixture
async def world(stack: Any, replica: str) -> AsyncIterator[tuple[aiohttp.ClientSession, Browser, Partner, Any]]:
    async with aiohttp.ClientSession() as http:

        async def replica_ready() -> bool:
            try:
                async with http.get(f"{replica}/healthz") as r:
                    return r.status == 200
            except aiohttp.ClientError:
                return False

        await eventually(replica_ready, timeout=60)
        owner = await register_user(stack.base_url)
        partner = await register_app(http, stack.base_url, owner)
        browser = Browser(stack.base_url)
        try:
            yield http, browser, partner, owner
        finally:
            await browser.close()


async def test_consent_code_pkce_and_refresh_rotation_with_reuse_detection(stack: Any, world) -> None:
    http, browser, partner, _ = world
    base = stack.base_url
    user = await register_user(base)
    client = oauth_client(base, partner, scope="profile:read cards:write", code_challenge_method="S256")
    verifier = secrets.token_urlsafe(48)
    url, _ = client.create_authorization_url(f"{base}{OAUTH}/authorize", code_verifier=verifier)

    # Not signed in: the sign-in form first; then the consent page names the app and each scope in words.
    status, page, headers = await browser.get(url)
    assert status == 200 and "Sign in to Laiwang" in page
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"] and headers["X-Frame-Options"] == "DENY"
    page = await browser.consent(url, user)
    assert "Hotpot &lt;Finder&gt;" in page and "<Finder>" not in page  # escaped
    assert "See your display name and avatar" in page and "Post cards in conversations you share" in page
    assert "never see your phone number" in page and user.user_id in page

    location = await browser.decide(page, "approve")
    code = parse_qs(urlsplit(location).query)["code"][0]
    token = await asyncio.to_thread(
        client.fetch_token, f"{base}{OAUTH}/token", authorization_response=location, code_verifier=verifier
    )
    assert token["token_type"] == "Bearer" and token["scope"] == "profile:read cards:write"
    assert token["access_token"].startswith("lwat_") and token["refresh_token"].startswith("lwrt_")

    status, me = await call_api(http, f"{base}/_laiwang/apps/v1/me", token["access_token"])
    assert status == 200 and me["user_id"] == user.user_id
    assert not {"phone", "phones", "threepids", "contacts", "friends"} & set(me)

    # The code works once; a second exchange also revokes what the first one issued.
    again = OAuth2Session(partner.client_id, partner.client_secret, redirect_uri=REDIRECT)
    with pytest.raises(Exception, match="invalid_grant"):
        await asyncio.to_thread(again.fetch_token, f"{base}{OAUTH}/token", code=code, code_verifier=verifier)
    status, body = await call_api(http, f"{base}/_laiwang/apps/v1/me", token["access_token"])
    assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN"

    # A fresh authorization; its refresh token rotates, and the rotated one coming back ends the grant.
    client, token = await authorize(base, browser, partner, user)
    first_refresh = token["refresh_token"]
    rotated = await asyncio.to_thread(client.refresh_token, f"{base}{OAUTH}/token", refresh_token=first_refresh)
    assert rotated["refresh_token"] != first_refresh and rotated["access_token"] != token["access_token"]
    assert (await call_api(http, f"{base}/_laiwang/apps/v1/me", rotated["access_token"]))[0] == 200
    with pytest.raises(Exception, match="invalid_grant"):
        await asyncio.to_thread(client.refresh_token, f"{base}{OAUTH}/token", refresh_token=first_refresh)
    status, body = await call_api(http, f"{base}/_laiwang/apps/v1/me", rotated["access_token"])
    assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN"
    with pytest.raises(Exception, match="invalid_grant"):
        await asyncio.to_thread(client.refresh_token, f"{base}{OAUTH}/token", refresh_token=rotated["refresh_token"])


async def test_pkce_redirect_uri_and_csrf_are_enforced(stack: Any, world) -> None:
    http, browser, partner, owner = world
    base = stack.base_url
    user = await register_user(base)
    public = await register_app(http, base, owner, public_client=True)

    # A public client without PKCE is sent back with an error; "plain" is refused too.
    client = oauth_client(base, public, scope="profile:read")
    url, _ = client.create_authorization_url(f"{base}{OAUTH}/authorize")
    status, _, headers = await browser.sign_in(url, user)
    assert status == 303 and headers["Location"].startswith(REDIRECT) and "error=invalid_request" in headers["Location"]
    url, _ = client.create_authorization_url(
        f"{base}{OAUTH}/authorize", code_challenge="x" * 43, code_challenge_method="plain"
    )
    status, _, headers = await browser.get(url)
    assert status == 303 and "error=invalid_request" in headers["Location"]

    # The wrong verifier is refused; the right one works, for a public client without a secret.
    verifier = secrets.token_urlsafe(48)
    client = oauth_client(base, public, scope="profile:read", code_challenge_method="S256")
    url, _ = client.create_authorization_url(f"{base}{OAUTH}/authorize", code_verifier=verifier)
    location = await browser.decide(await browser.consent(url, user), "approve")
    with pytest.raises(Exception, match="invalid_grant"):
        await asyncio.to_thread(
            client.fetch_token, f"{base}{OAUTH}/token", authorization_response=location, code_verifier="y" * 50
        )
    url, _ = client.create_authorization_url(f"{base}{OAUTH}/authorize", code_verifier=verifier)
    location = await browser.decide(await browser.consent(url, user), "approve")
    token = await asyncio.to_thread(
        client.fetch_token, f"{base}{OAUTH}/token", authorization_response=location, code_verifier=verifier
    )
    assert (await call_api(http, f"{base}/_laiwang/apps/v1/me", token["access_token"]))[0] == 200

    # redirect_uri must match a registered one exactly: an error page, never a redirect.
    for wrong in (REDIRECT + "/", REDIRECT + "?x=1", "https://evil.example/callback"):
        url, _ = oauth_client(base, partner, scope="profile:read", redirect_uri=wrong).create_authorization_url(
            f"{base}{OAUTH}/authorize",
            code_challenge=create_s256_code_challenge(verifier),
            code_challenge_method="S256",
        )
        status, page, headers = await browser.get(url)
        assert status == 400 and "Location" not in headers and "redirect uri" in page.lower(), (wrong, status)
    # An unknown client too; and without a browser's Accept header, the same is a Matrix error.
    status, page, _ = await browser.get(f"{base}{OAUTH}/authorize?response_type=code&client_id=nope")
    assert status == 400 and "Location" not in page
    async with http.get(f"{base}{OAUTH}/authorize?response_type=code&client_id=nope") as r:
        assert r.status == 200  # no session cookie in this client: the sign-in page

    # Denying sends the browser back with access_denied and issues nothing.
    client = oauth_client(base, partner, scope="profile:read", code_challenge_method="S256")
    url, _ = client.create_authorization_url(f"{base}{OAUTH}/authorize", code_verifier=verifier)
    location = await browser.decide(await browser.consent(url, user), "deny")
    assert "error=access_denied" in location and "code=" not in location

    # A decision whose CSRF token does not match the request (or the session) is refused.
    page = await browser.consent(url, user)
    fields = browser.fields(page)
    status, _, _ = await browser.post(f"{OAUTH}/authorize", {**fields, "csrf": "0" * 64, "decision": "approve"})
    assert status == 403
    tampered = re.sub(r"scope=[^&]*", "scope=profile%3Aread+cards%3Awrite", fields["query"])
    assert tampered != fields["query"]
    status, _, _ = await browser.post(f"{OAUTH}/authorize", {**fields, "query": tampered, "decision": "approve"})
    assert status == 403
    stranger = Browser(base)
    try:
        status, _, _ = await stranger.post(f"{OAUTH}/authorize", {**fields, "decision": "approve"})
        assert status == 401
    finally:
        await stranger.close()


async def test_revocation_and_suspension_stop_tokens_at_every_replica(stack: Any, replica: str, world) -> None:
    http, browser, partner, owner = world
    base = stack.base_url
    user = await register_user(base)
    me = "/_laiwang/apps/v1/me"

    # RFC 7009: the app revokes its refresh token; the grant's access token dies at both replicas,
    # although both had just served (and cached) it.
    client, token = await authorize(base, browser, partner, user)
    for gateway in (base, replica):
        assert (await call_api(http, f"{gateway}{me}", token["access_token"]))[0] == 200
    introspected = await asyncio.to_thread(client.introspect_token, f"{base}{OAUTH}/introspect", token["access_token"])
    body = introspected.json()
    assert body["active"] is True and body["sub"] == user.user_id and body["client_id"] == partner.client_id
    revoked = await asyncio.to_thread(
        client.revoke_token, f"{base}{OAUTH}/revoke", token["refresh_token"], token_type_hint="refresh_token"
    )
    assert revoked.status_code == 200
    for gateway in (replica, base):
        status, body = await call_api(http, f"{gateway}{me}", token["access_token"])
        assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN", gateway
    introspected = await asyncio.to_thread(client.introspect_token, f"{base}{OAUTH}/introspect", token["access_token"])
    assert introspected.json() == {"active": False}

    # The user lists the apps they authorized and revokes this one: every token of it stops at once.
    _, token = await authorize(base, browser, partner, user)
    _, second = await authorize(base, browser, partner, user, scope="profile:read")
    for gateway in (base, replica):
        assert (await call_api(http, f"{gateway}{me}", second["access_token"]))[0] == 200
    async with http.get(f"{base}/_laiwang/client/v1/authorized_apps", headers=user.headers) as r:
        listed = await r.json()
    [app] = listed["apps"]
    assert app["client_id"] == partner.client_id and app["name"] == "Hotpot <Finder>"
    assert {s["scope"] for s in app["scopes"]} == {"profile:read", "cards:write"}
    async with http.delete(f"{base}/_laiwang/client/v1/authorized_apps/{partner.client_id}", headers=user.headers) as r:
        assert r.status == 200
    for gateway in (replica, base):
        for access in (token["access_token"], second["access_token"]):
            assert (await call_api(http, f"{gateway}{me}", access))[0] == 401, gateway
    async with http.get(f"{base}/_laiwang/client/v1/authorized_apps", headers=user.headers) as r:
        assert (await r.json())["apps"] == []
    async with http.delete(f"{base}/_laiwang/client/v1/authorized_apps/{partner.client_id}", headers=user.headers) as r:
        assert r.status == 404

    # Suspending the app stops its tokens (user and app-level) at both replicas; resuming restores them.
    _, token = await authorize(base, browser, partner, user)
    app_client = OAuth2Session(partner.client_id, partner.client_secret, scope="subscribers:message")
    app_token = await asyncio.to_thread(app_client.fetch_token, f"{base}{OAUTH}/token", grant_type="client_credentials")
    assert "refresh_token" not in app_token and app_token["scope"] == "subscribers:message"
    for gateway in (base, replica):
        assert (await call_api(http, f"{gateway}{me}", token["access_token"]))[0] == 200
        status, info = await call_api(http, f"{gateway}/_laiwang/apps/v1/token", app_token["access_token"])
        assert status == 200 and "user_id" not in info and info["client_id"] == partner.client_id
    async with http.post(f"{base}{APPS}/{partner.client_id}/suspend", headers=owner.headers) as r:
        assert r.status == 200
    for gateway in (replica, base):
        assert (await call_api(http, f"{gateway}{me}", token["access_token"]))[0] == 401, gateway
        assert (await call_api(http, f"{gateway}/_laiwang/apps/v1/token", app_token["access_token"]))[0] == 401
    with pytest.raises(Exception, match="invalid_client"):
        await asyncio.to_thread(app_client.fetch_token, f"{base}{OAUTH}/token", grant_type="client_credentials")
    async with http.post(f"{base}{APPS}/{partner.client_id}/resume", headers=owner.headers) as r:
        assert r.status == 200
    assert (await call_api(http, f"{replica}{me}", token["access_token"]))[0] == 200


async def test_scopes_tokens_and_client_authentication_are_checked(stack: Any, world) -> None:
    http, browser, partner, _ = world
    base = stack.base_url
    user = await register_user(base)
    _, token = await authorize(base, browser, partner, user, scope="cards:write")
    status, body = await call_api(http, f"{base}/_laiwang/apps/v1/me", token["access_token"])
    assert status == 403 and body["errcode"] == "M_FORBIDDEN"  # no profile:read
    for bad in ("lwat_" + "x" * 43, "garbage", token["refresh_token"]):
        status, body = await call_api(http, f"{base}/_laiwang/apps/v1/token", bad)
        assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN"
    async with http.get(f"{base}/_laiwang/apps/v1/token") as r:
        assert r.status == 401 and (await r.json())["errcode"] == "M_MISSING_TOKEN"

    # An app-level token has app-level scopes only, and cannot act for a user.
    app_client = OAuth2Session(partner.client_id, partner.client_secret, scope="profile:read")
    with pytest.raises(Exception, match="invalid_scope"):
        await asyncio.to_thread(app_client.fetch_token, f"{base}{OAUTH}/token", grant_type="client_credentials")
    # A wrong client secret: 401 invalid_client, with a Matrix errcode beside the OAuth error.
    async with http.post(
        f"{base}{OAUTH}/token",
        data={"grant_type": "client_credentials"},
        headers={"Authorization": aiohttp.encode_basic_auth(partner.client_id, "lwcs_wrong")},
    ) as r:
        body = await r.json()
        assert r.status == 401 and body["error"] == "invalid_client" and body["errcode"] == "M_UNKNOWN_TOKEN"
        assert "lwcs_wrong" not in await r.text() and r.headers["Cache-Control"] == "no-store"
    async with http.post(f"{base}{OAUTH}/token", json={"grant_type": "client_credentials"}) as r:
        assert r.status == 400 and (await r.json())["error"] == "invalid_request"
    async with http.get(f"{base}/.well-known/oauth-authorization-server") as r:
        meta = await r.json()
        assert meta["code_challenge_methods_supported"] == ["S256"] and meta["token_endpoint"].endswith("/token")
    assert "lwat_" not in stack.log_text() and "lwrt_" not in stack.log_text()


async def test_an_address_that_keeps_presenting_unknown_tokens_is_slowed_down(
    stack: Any, strict_gateway: str, world
) -> None:
    http, browser, partner, _ = world
    user = await register_user(stack.base_url)
    _, token = await authorize(stack.base_url, browser, partner, user, scope="profile:read")

    async def replica_ready() -> bool:
        try:
            async with http.get(f"{strict_gateway}/healthz") as r:
                return r.status == 200
        except aiohttp.ClientError:
            return False

    await eventually(replica_ready, timeout=60)
    me = f"{strict_gateway}/_laiwang/apps/v1/me"
    status, _ = await call_api(http, me, token["access_token"])
    assert status == 200  # checked once, now in this replica's cache
    for attempt in range(5):
        status, body = await call_api(http, me, f"lwat_guess{attempt:038d}")
        assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN", (attempt, body)
    status, body = await call_api(http, me, "lwat_guess" + "9" * 38)
    assert status == 429 and body["errcode"] == "M_LIMIT_EXCEEDED" and body["retry_after_ms"] > 0, body

    # The app whose token this replica already knows keeps working from the same address, and another
    # address still gets a plain 401 for an unknown token.
    status, body = await call_api(http, me, token["access_token"])
    assert status == 200, body
    connector = aiohttp.TCPConnector(local_addr=("127.0.0.3", 0))
    async with aiohttp.ClientSession(connector=connector) as elsewhere:
        status, body = await call_api(elsewhere, me, "lwat_guess" + "8" * 38)
    assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN", body
