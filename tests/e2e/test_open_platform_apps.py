"""The open platform's app registry end to end through the gateway of the whole stack: an owner
registers, lists, edits, suspends, resumes, rotates secrets of and deletes an app; nobody else can
see or touch it; bad settings are refused with nothing stored; secrets are returned once and never
appear in later answers or in the logs."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.matrix_support import RegisteredUser, register_user

pytestmark = pytest.mark.e2e

APPS = "/_laiwang/client/v1/apps"
SETTINGS = {
    "name": "Hotpot Finder",
    "description": "Finds the cheapest hotpot near you",
    "icon_url": "https://partner.example/icon.png",
    "homepage_url": "https://partner.example/",
    "redirect_uris": ["https://partner.example/oauth/callback", "http://127.0.0.1:9999/cb"],
    "webhook_url": "https://partner.example/webhooks/laiwang",
    "scopes": ["profile:read", "cards:write", "subscribers:message"],
}


class Owner:
    def __init__(self, http: aiohttp.ClientSession, base_url: str, user: RegisteredUser) -> None:
        self.http, self.base_url, self.user = http, base_url, user

    async def call(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, f"{self.base_url}{path}", json=body, headers=self.user.headers) as r:
            return r.status, await r.json(content_type=None)

    async def ok(self, method: str, path: str, body: Any = None) -> Any:
        status, answer = await self.call(method, path, body)
        assert status == 200, (method, path, status, answer)
        return answer


@pytest.fixture(scope="module")
async def owners(stack: Any) -> AsyncIterator[tuple[Owner, Owner]]:
    async with aiohttp.ClientSession() as http:
        alice = Owner(http, stack.base_url, await register_user(stack.base_url))
        bob = Owner(http, stack.base_url, await register_user(stack.base_url))
        yield alice, bob


async def test_an_owner_registers_lists_edits_and_deletes_an_app(stack: Any, owners) -> None:
    alice, _ = owners
    created = await alice.ok("POST", APPS, SETTINGS)
    client_id = created["client_id"]
    assert created["client_secret"].startswith("lwcs_") and created["webhook_secret"].startswith("whsec_")
    assert created["owner"] == alice.user.user_id and not created["suspended"] and not created["public_client"]
    server = alice.user.user_id.split(":", 1)[1]
    assert created["bot_user_id"] == f"@app_{client_id.lower()}:{server}"
    assert {k: created[k] for k in SETTINGS} == SETTINGS

    listed = await alice.ok("GET", APPS)
    assert [app["client_id"] for app in listed["apps"]] == [client_id]
    one = await alice.ok("GET", f"{APPS}/{client_id}")
    assert "client_secret" not in one and "webhook_secret" not in one and one == listed["apps"][0]

    edited = await alice.ok("PUT", f"{APPS}/{client_id}", {**SETTINGS, "name": "Hotpot Finder 2", "scopes": []})
    assert edited["name"] == "Hotpot Finder 2" and edited["scopes"] == [] and edited["client_id"] == client_id
    assert (await alice.ok("POST", f"{APPS}/{client_id}/suspend"))["suspended"] is True
    assert (await alice.ok("GET", f"{APPS}/{client_id}"))["suspended"] is True
    assert (await alice.ok("POST", f"{APPS}/{client_id}/resume"))["suspended"] is False

    rotated = await alice.ok("POST", f"{APPS}/{client_id}/client_secret/rotate")
    assert rotated["client_secret"] != created["client_secret"]
    hooked = await alice.ok("POST", f"{APPS}/{client_id}/webhook_secret/rotate", {"overlap_seconds": 600})
    assert hooked["webhook_secret"] != created["webhook_secret"]
    assert hooked["previous_webhook_secret_expires_at"] > hooked["webhook_secret_rotated_at"]

    assert await alice.ok("DELETE", f"{APPS}/{client_id}") == {}
    status, body = await alice.call("GET", f"{APPS}/{client_id}")
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    assert (await alice.ok("GET", APPS))["apps"] == []

    # Secrets are answered once and never logged.
    logs = stack.log_text()
    for secret in (created["client_secret"], created["webhook_secret"], rotated["client_secret"]):
        assert secret not in logs
    assert hooked["webhook_secret"] not in logs


async def test_nobody_but_the_owner_sees_or_changes_an_app(owners) -> None:
    alice, bob = owners
    client_id = (await alice.ok("POST", APPS, SETTINGS))["client_id"]
    for method, path, body in (
        ("GET", f"{APPS}/{client_id}", None),
        ("PUT", f"{APPS}/{client_id}", {**SETTINGS, "webhook_url": "https://evil.example/hook"}),
        ("POST", f"{APPS}/{client_id}/suspend", None),
        ("POST", f"{APPS}/{client_id}/client_secret/rotate", None),
        ("POST", f"{APPS}/{client_id}/webhook_secret/rotate", {}),
        ("DELETE", f"{APPS}/{client_id}", None),
    ):
        status, answer = await bob.call(method, path, body)
        assert (status, answer["errcode"]) == (404, "M_NOT_FOUND"), (method, path)
    assert (await bob.ok("GET", APPS))["apps"] == []
    app = await alice.ok("GET", f"{APPS}/{client_id}")
    assert app["webhook_url"] == SETTINGS["webhook_url"] and not app["suspended"]

    async with aiohttp.ClientSession() as anonymous:
        async with anonymous.get(f"{alice.base_url}{APPS}") as r:
            assert r.status == 401 and (await r.json())["errcode"] == "M_MISSING_TOKEN"
        async with anonymous.get(f"{alice.base_url}{APPS}", headers={"Authorization": "Bearer nope"}) as r:
            assert r.status == 401 and (await r.json())["errcode"] == "M_UNKNOWN_TOKEN"


@pytest.mark.parametrize(
    "change",
    [
        {"webhook_url": "http://partner.example/hook"},
        {"webhook_url": "https://169.254.169.254/latest/meta-data"},
        {"webhook_url": "https://10.0.0.8/hook"},
        {"webhook_url": "https://127.0.0.1/hook"},
        {"redirect_uris": ["http://partner.example/cb"]},
        {"redirect_uris": ["https://partner.example/cb#x"]},
        {"scopes": ["address_book:read"]},
        {"name": ""},
        {"icon_url": "javascript:alert(1)"},
    ],
)
async def test_bad_settings_are_refused_and_nothing_is_stored(change: dict[str, Any], owners) -> None:
    _, bob = owners
    before = (await bob.ok("GET", APPS))["apps"]
    status, answer = await bob.call("POST", APPS, {**SETTINGS, **change})
    assert status == 400 and answer["errcode"] in ("M_INVALID_PARAM", "M_MISSING_PARAM"), answer
    assert (await bob.ok("GET", APPS))["apps"] == before


async def test_a_public_client_has_no_client_secret(owners) -> None:
    _, bob = owners
    created = await bob.ok("POST", APPS, {**SETTINGS, "public_client": True})
    assert created["public_client"] is True and "client_secret" not in created
    status, answer = await bob.call("POST", f"{APPS}/{created['client_id']}/client_secret/rotate")
    assert status == 400 and answer["errcode"] == "M_INVALID_PARAM"
    await bob.ok("DELETE", f"{APPS}/{created['client_id']}")
