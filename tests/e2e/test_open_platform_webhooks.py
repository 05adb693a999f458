"""Signed webhooks end to end, on a stack of its own (loopback webhooks allowed, short retry base and
give-up time) with a real HTTP receiver verifying each delivery with the `standardwebhooks` library:
retries carry the same webhook-id, a user's reply reaches the app, a delivery survives a kill -9 of
open_platform mid-try, and an event that keeps failing goes to the dead-letter list and is replayed."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from standardwebhooks import Webhook

from plumbing.ports import free_port
from tests.conftest import launch_stack
from tests.matrix_support import RegisteredUser, register_user
from tests.open_platform_support import APPS
from tests.support import eventually

pytestmark = pytest.mark.e2e

SUBS = "/_laiwang/client/v1/subscriptions"


@dataclass
class Receiver:
    """The partner's webhook endpoint: verifies every delivery, answers per `plan`, records it."""

    secret: str = ""
    received: list[dict[str, Any]] = field(default_factory=list)
    unverified: list[str] = field(default_factory=list)
    failures: dict[str, int] = field(default_factory=dict)  # event type -> how many tries to fail
    always_fail: set[str] = field(default_factory=set)
    hang: set[str] = field(default_factory=set)  # event types whose next try never gets an answer
    hanging: asyncio.Event = field(default_factory=asyncio.Event)
    release: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.text()
        try:
            event = Webhook(self.secret).verify(body, dict(request.headers))
        except Exception as exc:
            self.unverified.append(f"{exc}: {body[:200]}")
            return web.Response(status=400)
        self.received.append({"id": request.headers["webhook-id"], "type": event["type"], "event": event})
        kind = event["type"]
        if kind in self.hang:
            self.hang.discard(kind)
            self.hanging.set()
            await self.release.wait()
        if kind in self.always_fail:
            return web.Response(status=500)
        if self.failures.get(kind, 0) > 0:
            self.failures[kind] -= 1
            return web.Response(status=500)
        return web.json_response({})

    def of(self, kind: str) -> list[dict[str, Any]]:
        return [r for r in self.received if r["type"] == kind]


@dataclass
class World:
    stack: Any
    http: aiohttp.ClientSession
    receiver: Receiver
    owner: RegisteredUser
    client_id: str

    async def owner_get(self, path: str) -> Any:
        async with self.http.get(
            f"{self.stack.base_url}{APPS}/{self.client_id}{path}", headers=self.owner.headers
        ) as r:
            assert r.status == 200
            return await r.json()


@pytest.fixture(scope="module")
async def world(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    receiver = Receiver()
    app = web.Application()
    app.router.add_post("/hook", receiver.handle)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    env = {
        "OPEN_PLATFORM_ALLOW_LOOPBACK_WEBHOOKS": "true",
        "OPEN_PLATFORM_WEBHOOK_RETRY_BASE_SECONDS": "0.2",
        "OPEN_PLATFORM_WEBHOOK_RETRY_MAX_SECONDS": "1",
        "OPEN_PLATFORM_WEBHOOK_GIVE_UP_SECONDS": "20",
        "OPEN_PLATFORM_WEBHOOK_ACK_WAIT_SECONDS": "6",
    }
    try:
        async with (
            launch_stack(mongo_uri, tmp_path_factory.mktemp("webhooks"), env) as stack,
            aiohttp.ClientSession() as http,
        ):
            owner = await register_user(stack.base_url)
            settings = {
                "name": "Hook Test",
                "webhook_url": f"http://127.0.0.1:{port}/hook",
                "scopes": ["subscribers:message"],
            }
            async with http.post(f"{stack.base_url}{APPS}", json=settings, headers=owner.headers) as r:
                created = await r.json()
                assert r.status == 200, created
            receiver.secret = created["webhook_secret"]
            yield World(stack, http, receiver, owner, created["client_id"])
    finally:
        receiver.release.set()
        await runner.cleanup()


async def test_retries_carry_the_same_webhook_id_and_replies_reach_the_app(world: World) -> None:
    base, receiver = world.stack.base_url, world.receiver
    fan = await register_user(base)
    receiver.failures["subscription.created"] = 2
    async with world.http.put(f"{base}{SUBS}/{world.client_id}", headers=fan.headers) as r:
        room_id = (await r.json())["room_id"]

    async def three_tries() -> bool:
        return len(receiver.of("subscription.created")) >= 3

    await eventually(three_tries, timeout=30)
    assert receiver.unverified == []
    tries = receiver.of("subscription.created")
    assert len({t["id"] for t in tries}) == 1 and tries[0]["id"].startswith("msg_")
    assert tries[0]["event"]["data"] == {"user_id": fan.user_id, "room_id": room_id}

    async def logged() -> bool:
        log = (await world.owner_get("/webhook_deliveries"))["deliveries"]
        return len([d for d in log if d["webhook_id"] == tries[0]["id"]]) == 3

    await eventually(logged, timeout=15, interval=0.3)  # the owner routes are rate-limited
    log = [d for d in (await world.owner_get("/webhook_deliveries"))["deliveries"] if d["webhook_id"] == tries[0]["id"]]
    assert sorted((d["attempt"], d["status"]) for d in log) == [(1, 500), (2, 500), (3, 200)]
    assert all(d["latency_ms"] >= 0 for d in log)

    # The user answers in the room: the app gets it as a signed message.received event.
    async with world.http.put(
        f"{base}/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.message/t1",
        json={"msgtype": "m.text", "body": "where is the nearest one?"},
        headers=fan.headers,
    ) as r:
        event_id = (await r.json())["event_id"]

    async def replied() -> bool:
        return any(m["event"]["data"]["event_id"] == event_id for m in receiver.of("message.received"))

    await eventually(replied, timeout=30)
    [reply] = [m for m in receiver.of("message.received") if m["event"]["data"]["event_id"] == event_id]
    assert reply["event"]["data"]["content"] == {"msgtype": "m.text", "body": "where is the nearest one?"}
    assert reply["event"]["data"]["user_id"] == fan.user_id


async def test_a_delivery_survives_a_kill_9_of_open_platform(world: World) -> None:
    base, receiver = world.stack.base_url, world.receiver
    fan = await register_user(base)
    receiver.hang.add("subscription.created")
    receiver.hanging.clear()
    async with world.http.put(f"{base}{SUBS}/{world.client_id}", headers=fan.headers) as r:
        assert r.status == 200
    await asyncio.wait_for(receiver.hanging.wait(), timeout=30)
    [first] = [m for m in receiver.of("subscription.created") if m["event"]["data"]["user_id"] == fan.user_id]
    child = world.stack.supervisor.child("open_platform")
    pid = child.pid
    os.kill(pid, signal.SIGKILL)  # mid-try: the event was never acked
    receiver.release.set()

    async def redelivered() -> bool:
        mine = [m for m in receiver.of("subscription.created") if m["event"]["data"]["user_id"] == fan.user_id]
        return len(mine) >= 2

    await eventually(redelivered, timeout=90)
    mine = [m for m in receiver.of("subscription.created") if m["event"]["data"]["user_id"] == fan.user_id]
    assert {m["id"] for m in mine} == {first["id"]}  # the same webhook-id: the receiver drops the duplicate
    assert child.pid != pid


async def test_an_event_that_keeps_failing_is_dead_lettered_and_replayed(world: World) -> None:
    base, receiver = world.stack.base_url, world.receiver
    fan = await register_user(base)
    async with world.http.put(f"{base}{SUBS}/{world.client_id}", headers=fan.headers) as r:
        assert r.status == 200
    receiver.always_fail.add("subscription.deleted")
    async with world.http.delete(f"{base}{SUBS}/{world.client_id}", headers=fan.headers) as r:
        assert r.status == 200

    async def dead() -> bool:
        letters = (await world.owner_get("/webhook_dead_letters"))["dead_letters"]
        return any(d["type"] == "subscription.deleted" for d in letters)

    await eventually(dead, timeout=90, interval=0.3)
    [letter] = [d for d in (await world.owner_get("/webhook_dead_letters"))["dead_letters"]]
    assert letter["reason"] == "HTTP 500"
    tried = {m["id"] for m in receiver.of("subscription.deleted")}
    assert tried == {letter["webhook_id"]}
    receiver.always_fail.discard("subscription.deleted")
    count = len(receiver.of("subscription.deleted"))
    async with world.http.post(
        f"{base}{APPS}/{world.client_id}/webhook_dead_letters/{letter['webhook_id']}/replay",
        headers=world.owner.headers,
    ) as r:
        assert r.status == 200

    async def replayed() -> bool:
        return len(receiver.of("subscription.deleted")) > count

    await eventually(replayed, timeout=30)
    assert receiver.of("subscription.deleted")[-1]["id"] == letter["webhook_id"]
    assert (await world.owner_get("/webhook_dead_letters"))["dead_letters"] == []
    async with world.http.post(
        f"{base}{APPS}/{world.client_id}/webhook_dead_letters/{letter['webhook_id']}/replay",
        headers=world.owner.headers,
    ) as r:
        assert r.status == 404
