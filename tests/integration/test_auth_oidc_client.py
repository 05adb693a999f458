"""The OIDC client's ID-token checks, against a scripted token endpoint on loopback.

The happy path runs against the real oidc-provider in tests/e2e/test_auth_flows.py; a real
provider will not mint a token with a wrong nonce or audience, so those refusals are proved here.
"""

from __future__ import annotations

import base64
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlparse

import orjson
import pytest
from aiohttp import web

from plumbing.domain_errors import DomainError, Errcode, ErrorKind
from services.auth.oidc import OidcClient
from tests.support import free_port

pytestmark = pytest.mark.integration


def _jwt(claims: dict[str, Any]) -> str:
    def part(value: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(orjson.dumps(value)).rstrip(b"=").decode()

    return f"{part({'alg': 'RS256'})}.{part(claims)}.c2ln"


class Scripted:
    def __init__(self) -> None:
        self.claims: dict[str, Any] = {}
        self.seen_form: dict[str, str] = {}
        self.seen_auth = ""
        self.issuer = ""


@pytest.fixture
async def provider() -> AsyncIterator[Scripted]:
    scripted = Scripted()
    port = free_port()
    scripted.issuer = f"http://127.0.0.1:{port}"

    async def discovery(_: web.Request) -> web.Response:
        return web.json_response(
            {
                "issuer": scripted.issuer,
                "authorization_endpoint": f"{scripted.issuer}/auth",
                "token_endpoint": f"{scripted.issuer}/token",
            }
        )

    async def token(request: web.Request) -> web.Response:
        scripted.seen_form = dict(await request.post())  # type: ignore[arg-type]
        scripted.seen_auth = request.headers.get("Authorization", "")
        return web.json_response({"access_token": "at", "token_type": "Bearer", "id_token": _jwt(scripted.claims)})

    app = web.Application()
    app.add_routes([web.get("/.well-known/openid-configuration", discovery), web.post("/token", token)])
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    yield scripted
    await runner.cleanup()


def _client(issuer: str) -> OidcClient:
    return OidcClient("taobao", "Taobao", issuer, "laiwang", "s3cret")


async def test_authorization_url_carries_pkce_state_and_nonce(provider: Scripted) -> None:
    url = await _client(provider.issuer).authorization_url(
        "taobao", state="st", nonce="no", code_challenge="ch", redirect_uri="http://127.0.0.1:1/cb"
    )
    query = parse_qs(urlparse(url).query)
    assert url.startswith(f"{provider.issuer}/auth?")
    assert {k: v[0] for k, v in query.items()} == {
        "response_type": "code",
        "client_id": "laiwang",
        "redirect_uri": "http://127.0.0.1:1/cb",
        "scope": "openid",
        "state": "st",
        "nonce": "no",
        "code_challenge": "ch",
        "code_challenge_method": "S256",
    }


async def test_exchange_sends_the_verifier_and_accepts_valid_claims(provider: Scripted) -> None:
    provider.claims = {"iss": provider.issuer, "aud": "laiwang", "exp": time.time() + 60, "nonce": "n1", "sub": "u42"}
    identity = await _client(provider.issuer).exchange(
        "taobao", code="c", code_verifier="v" * 50, redirect_uri="http://127.0.0.1:1/cb", nonce="n1"
    )
    assert identity.subject == "u42"
    assert provider.seen_form["code_verifier"] == "v" * 50 and provider.seen_form["grant_type"] == "authorization_code"
    assert provider.seen_auth == "Basic " + base64.b64encode(b"laiwang:s3cret").decode()


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"nonce": "other"}, "nonce"),
        ({"aud": "someone-else"}, "audience"),
        ({"aud": ["laiwang", "x"], "azp": "x"}, "audience"),
        ({"iss": "https://evil.example"}, "issuer"),
        ({"exp": time.time() - 3600}, "expired"),
        ({"sub": ""}, "subject"),
    ],
)
async def test_bad_id_tokens_are_refused(provider: Scripted, change: dict[str, Any], reason: str) -> None:
    provider.claims = {
        "iss": provider.issuer,
        "aud": "laiwang",
        "exp": time.time() + 60,
        "nonce": "n1",
        "sub": "u",
        **change,
    }
    with pytest.raises(DomainError) as caught:
        await _client(provider.issuer).exchange(
            "taobao", code="c", code_verifier="v", redirect_uri="http://127.0.0.1:1/cb", nonce="n1"
        )
    assert caught.value.errcode == Errcode.FORBIDDEN and reason in caught.value.message


async def test_an_unreachable_provider_is_unavailable_not_a_crash() -> None:
    with pytest.raises(DomainError) as caught:
        await _client(f"http://127.0.0.1:{free_port()}").authorization_url(
            "taobao", state="s", nonce="n", code_challenge="c", redirect_uri="http://127.0.0.1:1/cb"
        )
    assert caught.value.errcode == Errcode.UNKNOWN and caught.value.kind is ErrorKind.UNAVAILABLE
