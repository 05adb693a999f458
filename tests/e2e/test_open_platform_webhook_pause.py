"""An endpoint that keeps failing is paused and its owner told, end to end on a stack of its own
(pause after 3 failed tries over at least 1 s) with a real HTTP receiver: while paused nothing is
sent and events are kept as dead letters; the owner reads the app bot's m.notice in a Matrix /sync;
after resuming, a replayed dead letter is delivered. Another user can neither read nor resume it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks import Webhook

from tests.matrix_support import RegisteredUser, register_user
from tests.open_platform_support import APPS, app_with_webhook
from tests.support import eventually

pytestmark = pytest.mark.e2e

SUBS = "/_laiwang/client/v1/subscriptions"


@dataclass
class Endpoint:
    """The partner's webhook endpoint: verifies each delivery, records it, and fails while `down`."""

    secret: str = ""
    down: bool = True
    received: list[tuple[str, str]] = field(default_factory=list)  # (webhook-id, answer)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        Webhook(self.secret).verify(body, dict(request.headers))
        self.received.append((request.headers["webhook-id"], "500" if self.down else "200"))
        return web.Response(status=500) if self.down else web.json_response({})


@dataclass
class World:
    base: str
    http: aiohttp.ClientSession
    endpoint: Endpoint
    owner: RegisteredUser
    client_id: str

    async def owner_call(self, method: str, path: str, user: RegisteredUser | None = None) -> tuple[int, Any]:
        url = f"{self.base}{APPS}/{self.client_id}{path}"
        async with self.http.request(method, url, headers=(user or self.owner).headers) as r:
            return r.status, await r.json()

    async def subscribe(self) -> None:
        fan = await register_user(self.base)
        async with self.http.put(f"{self.base}{SUBS}/{self.client_id}", headers=fan.headers) as r:
            assert r.status == 200, await r.text()


@pytest.fixture(scope="module")
async def world(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    endpoint = Endpoint()
    env = {
        "OPEN_PLATFORM_WEBHOOK_RETRY_BASE_SECONDS": "0.2",
        "OPEN_PLATFORM_WEBHOOK_RETRY_MAX_SECONDS": "0.5",
        "OPEN_PLATFORM_WEBHOOK_PAUSE_AFTER_FAILURES": "3",
        "OPEN_PLATFORM_WEBHOOK_PAUSE_AFTER_SECONDS": "1",
    }
    data_dir = tmp_path_factory.mktemp("webhook-pause")
    async with app_with_webhook(mongo_uri, data_dir, env, endpoint.handle, "Flaky Hook") as hooked:
        endpoint.secret = hooked.created["webhook_secret"]
        yield World(hooked.stack.base_url, hooked.http, endpoint, hooked.owner, hooked.created["client_id"])


async def notices_to(world: World, user: RegisteredUser) -> list[dict[str, Any]]:
    async with world.http.get(f"{world.base}/_matrix/client/v3/sync", headers=user.headers) as r:
        assert r.status == 200
        rooms = (await r.json()).get("rooms", {}).get("join", {})
    return [
        event
        for room in rooms.values()
        for event in room["timeline"]["events"]
        if event["type"] == "m.room.message" and event["content"].get("msgtype") == "m.notice"
    ]


async def test_a_failing_endpoint_is_paused_its_owner_told_and_resumed(world: World) -> None:
    status, health = await world.owner_call("GET", "/webhook")
    assert status == 200 and health == {"paused": False, "consecutive_failures": 0}

    await world.subscribe()

    async def paused_and_told() -> bool:
        _, health = await world.owner_call("GET", "/webhook")
        return health["paused"] and health.get("owner_told", False)

    await eventually(paused_and_told, timeout=30)
    _, health = await world.owner_call("GET", "/webhook")
    assert health["consecutive_failures"] >= 3 and health["last_error"] == "HTTP 500"
    assert health["paused_at"] - health["failing_since"] >= 1000

    # The owner hears it from the app's bot, in a room any Matrix client shows.
    [notice] = await notices_to(world, world.owner)
    assert notice["sender"].startswith("@app_") and "Flaky Hook" in notice["content"]["body"]
    assert f"/apps/{world.client_id}/webhook/resume" in notice["content"]["body"]

    # While paused nothing is sent: a new event goes straight to the dead letters, kept for replay.
    tries = len(world.endpoint.received)
    await world.subscribe()

    async def both_kept() -> bool:
        _, body = await world.owner_call("GET", "/webhook_dead_letters")
        return [d["reason"] for d in body["dead_letters"]] == ["endpoint paused"] * 2

    await eventually(both_kept, timeout=30)
    assert len(world.endpoint.received) == tries
    assert len(await notices_to(world, world.owner)) == 1  # told once per pause

    # Nobody else may look or resume.
    stranger = await register_user(world.base)
    for method, path in (("GET", "/webhook"), ("POST", "/webhook/resume")):
        status, body = await world.owner_call(method, path, stranger)
        assert status == 404 and body["errcode"] == "M_NOT_FOUND", (method, path, body)

    # Fixed and resumed: a replayed dead letter is delivered.
    world.endpoint.down = False
    status, health = await world.owner_call("POST", "/webhook/resume")
    assert status == 200 and health == {"paused": False, "consecutive_failures": 0}
    _, body = await world.owner_call("GET", "/webhook_dead_letters")
    webhook_id = body["dead_letters"][0]["webhook_id"]
    status, _ = await world.owner_call("POST", f"/webhook_dead_letters/{webhook_id}/replay")
    assert status == 200

    async def delivered() -> bool:
        return (webhook_id, "200") in world.endpoint.received

    await eventually(delivered, timeout=30)
    _, health = await world.owner_call("GET", "/webhook")
    assert health == {"paused": False, "consecutive_failures": 0}
