"""Helpers for the push tests: a loopback push gateway and the Matrix calls they make (real HTTP)."""

from __future__ import annotations

import re
import uuid
from typing import Any

import aiohttp
from nio import AsyncClient

from plumbing.dev.push_gateway import PushGateway
from plumbing.dev.stack import RunningStack
from tests.matrix_support import RegisteredUser
from tests.support import free_port

V3 = "/_matrix/client/v3"


class LoopbackGateway:
    def __init__(self) -> None:
        self.gateway = PushGateway(reject_prefix="reject-")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/_matrix/push/v1/notify"

    def pokes(self, pushkey: str) -> list[dict[str, Any]]:
        return [n for n in self.gateway.received if any(d["pushkey"] == pushkey for d in n["devices"])]

    async def wait_poke(self, pushkey: str, event_id: str) -> dict[str, Any]:
        def arrived() -> bool:
            return any(n["event_id"] == event_id for n in self.pokes(pushkey))

        await self.gateway.wait_for(arrived)
        return next(n for n in self.pokes(pushkey) if n["event_id"] == event_id)


async def set_pusher(base: str, user: RegisteredUser, url: str, pushkey: str, **extra: Any) -> aiohttp.ClientResponse:
    body = {
        "pushkey": pushkey,
        "kind": "http",
        "app_id": "cn.laiwang.test",
        "app_display_name": "Laiwang",
        "device_display_name": "phone",
        "lang": "zh-CN",
        "data": {"url": url, "format": "event_id_only"},
        **extra,
    }
    async with (
        aiohttp.ClientSession(headers=user.headers) as http,
        http.post(f"{base}{V3}/pushers/set", json=body) as r,
    ):
        await r.read()
        return r


async def request(base: str, user: RegisteredUser, method: str, path: str, body: Any = None) -> Any:
    async with (
        aiohttp.ClientSession(headers=user.headers) as http,
        http.request(method, f"{base}{V3}{path}", json=body) as r,
    ):
        reply = await r.json()
        assert r.status == 200, (path, r.status, reply)
        return reply


async def nio_client(base: str, user: RegisteredUser) -> AsyncClient:
    client = AsyncClient(base, user.user_id, device_id=user.device_id)
    client.access_token = user.access_token
    client.user_id = user.user_id
    return client


async def chat(base: str, inviter: RegisteredUser, *others: RegisteredUser, direct: bool = False) -> str:
    body: dict[str, Any] = {"invite": [o.user_id for o in others], "preset": "trusted_private_chat"}
    if direct:
        body["is_direct"] = True
    room = (await request(base, inviter, "POST", "/createRoom", body))["room_id"]
    for other in others:
        await request(base, other, "POST", f"/rooms/{room}/join", {})
    return room


async def say(base: str, user: RegisteredUser, room: str, text: str) -> str:
    txn = uuid.uuid4().hex
    body = {"msgtype": "m.text", "body": text}
    return (await request(base, user, "PUT", f"/rooms/{room}/send/m.room.message/{txn}", body))["event_id"]


async def metric(stack: RunningStack, name: str, labels: str) -> float:
    async with aiohttp.ClientSession() as http, http.get(stack.metrics_url("messaging")) as r:
        text = await r.text()
    found = re.search(rf"^{re.escape(name)}{{{re.escape(labels)}}} ([0-9.e+]+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0
