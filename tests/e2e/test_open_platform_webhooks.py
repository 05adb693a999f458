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

from tests.matrix_support import RegisteredUser, register_user
from tests.open_platform_support import APPS, REDIRECT, Browser, Partner, app_with_webhook, authorize
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
    client_secret: str
    webhook_url: str

    async def owner_get(self, path: str) -> Any:
        async with self.http.get(
            f"{self.stack.base_url}{APPS}/{self.client_id}{path}", headers=self.owner.headers
        ) as r:
            assert r.status == 200
            return await r.json()


@pytest.fixture(scope="module")
async def world(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    receiver = Receiver()
    env = {
        "OPEN_PLATFORM_WEBHOOK_RETRY_BASE_SECONDS": "0.2",
        "OPEN_PLATFORM_WEBHOOK_RETRY_MAX_SECONDS": "1",
        "OPEN_PLATFORM_WEBHOOK_GIVE_UP_SECONDS": "20",
        "OPEN_PLATFORM_WEBHOOK_ACK_WAIT_SECONDS": "6",
    }
    data_dir = tmp_path_factory.mktemp("webhooks")
    async with app_with_webhook(mongo_uri, data_dir, env, receiver.handle, "Hook Test") as hooked:
        receiver.secret = hooked.created["webhook_secret"]
        try:
            yield World(
                hooked.stack,
                hooked.http,
                receiver,
                hooked.owner,
                hooked.created["client_id"],
                hooked.created["client_secret"],
                hooked.webhook_url,
            )
        finally:
            receiver.release.set()  # before the receiver stops: a held delivery gets its answer


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


async def test_cards_are_validated_pressed_and_updated_by_their_app_only(world: World) -> None:
    base, receiver, http = world.stack.base_url, world.receiver, world.http
    settings = {
        "name": "Hook Test",
        "webhook_url": world.webhook_url,
        "redirect_uris": [REDIRECT],
        "scopes": ["subscribers:message", "cards:write"],
    }
    async with http.put(f"{base}{APPS}/{world.client_id}", json=settings, headers=world.owner.headers) as r:
        assert r.status == 200
    fan = await register_user(base)
    async with http.put(f"{base}{SUBS}/{world.client_id}", headers=fan.headers) as r:
        room_id = (await r.json())["room_id"]
    browser = Browser(base)
    try:
        _, token = await authorize(
            base, browser, Partner(world.client_id, world.client_secret, world.owner), fan, scope="cards:write"
        )
    finally:
        await browser.close()
    auth = {"Authorization": f"Bearer {token['access_token']}"}
    cards = f"{base}/_laiwang/apps/v1/rooms/{quote(room_id)}/cards"
    card = {
        "title": "Spicy hotpot, 2 people",
        "description": "Tonight 30% off",
        "image_url": "https://partner.example/pot.png",
        "link": "https://partner.example/deal/1",
        "buttons": [{"id": "buy", "label": "Buy"}, {"id": "later", "label": "Later"}],
    }

    async def timeline() -> list[dict[str, Any]]:
        url = f"{base}/_matrix/client/v3/rooms/{quote(room_id)}/messages?dir=b&limit=50"
        async with http.get(url, headers=fan.headers) as r:
            return (await r.json())["chunk"]

    # A card that breaks the schema is 400 M_BAD_JSON, and nothing reaches the room.
    for bad in (
        {**card, "buttons": [{"id": f"b{i}", "label": "x"} for i in range(6)]},
        {**card, "link": "javascript:alert(1)"},
        {"description": "no title"},
        {**card, "extra": True},
    ):
        async with http.post(cards, json={"card": bad}, headers=auth) as r:
            assert r.status == 400 and (await r.json())["errcode"] == "M_BAD_JSON", bad
    assert not [e for e in await timeline() if e["type"] == "cn.laiwang.app_card"]

    async with http.post(cards, json={"card": card}, headers=auth) as r:
        posted = await r.json()
        assert r.status == 200, posted
    [shown] = [e for e in await timeline() if e["type"] == "cn.laiwang.app_card"]
    assert shown["event_id"] == posted["event_id"] and shown["content"]["card"] == card
    assert shown["content"]["body"].startswith("Spicy hotpot, 2 people\nTonight 30% off")  # any client shows this

    # The user presses a button: the app hears it (only buttons the card has count).
    for action in ("nope", "buy"):
        async with http.put(
            f"{base}/_matrix/client/v3/rooms/{quote(room_id)}/send/cn.laiwang.card_action/{action}",
            json={"app_id": world.client_id, "card_event_id": posted["event_id"], "action_id": action},
            headers=fan.headers,
        ) as r:
            assert r.status == 200

    async def pressed() -> bool:
        return bool(receiver.of("card.action"))

    await eventually(pressed, timeout=30)
    [press] = receiver.of("card.action")
    assert press["event"]["data"] == {
        "user_id": fan.user_id,
        "room_id": room_id,
        "card_event_id": posted["event_id"],
        "action_id": "buy",
    }

    # The app updates its own card (m.replace), but never someone else's event.
    sold = {**card, "title": "Sold out", "buttons": []}
    async with http.put(f"{cards}/{quote(posted['event_id'])}", json={"card": sold}, headers=auth) as r:
        edit = await r.json()
        assert r.status == 200, edit
    [replacement] = [e for e in await timeline() if e["event_id"] == edit["event_id"]]
    assert replacement["content"]["m.relates_to"] == {"rel_type": "m.replace", "event_id": posted["event_id"]}
    assert replacement["content"]["m.new_content"]["card"] == sold
    async with http.put(
        f"{base}/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.message/mine",
        json={"msgtype": "m.text", "body": "my own words"},
        headers=fan.headers,
    ) as r:
        theirs = (await r.json())["event_id"]
    async with http.put(f"{cards}/{quote(theirs)}", json={"card": sold}, headers=auth) as r:
        assert r.status == 403 and (await r.json())["errcode"] == "M_FORBIDDEN"

    # A room the app is not in: 403, nothing sent.
    async with http.post(
        f"{base}/_matrix/client/v3/createRoom", json={"preset": "private_chat"}, headers=fan.headers
    ) as r:
        private = (await r.json())["room_id"]
    async with http.post(
        f"{base}/_laiwang/apps/v1/rooms/{quote(private)}/cards", json={"card": card}, headers=auth
    ) as r:
        assert r.status == 403 and (await r.json())["errcode"] == "M_FORBIDDEN"
