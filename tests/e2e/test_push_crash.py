"""A `kill -9` of the pushing process (messaging) in the middle of a burst loses no poke and
repeats none (docs/push.md, "Collapsing, retries and idempotency").

The loopback push gateway first answers, then *holds* requests (reads them, never answers), the
state in which a crash leaves the pusher not knowing whether its poke arrived. Messaging is
killed while every room's request is held and more messages are still being sent; the supervisor restarts
it. In the end, every room's newest message has been delivered to the gateway (answered), and no
event id was delivered twice.
"""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import uuid
from collections.abc import AsyncIterator

import aiohttp
import pytest
from aiohttp import web

from plumbing.dev.push_gateway import PushGateway
from tests.conftest import RunningStack, launch_stack
from tests.matrix_support import RegisteredUser, register_user
from tests.push_support import chat, metric, request, set_pusher
from tests.support import eventually, free_port

pytestmark = pytest.mark.e2e

V3 = "/_matrix/client/v3"


@pytest.fixture
async def crash_stack(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningStack]:
    env = {
        "MESSAGING_INVITE_POLICY": "anyone",
        "GATEWAY_SEND_RATE_PER_SECOND": "1000",
        # A held request is retried only after this timeout: far longer than holding one per room takes.
        "PUSH_TIMEOUT_SECONDS": "10",
        "PUSH_LEASE_SECONDS": "11",
        "PUSH_COLLAPSE_MS": "200",
    }
    async with launch_stack(mongo_uri, tmp_path_factory.mktemp("push-crash"), env=env) as running:
        yield running


async def send_until_stored(base: str, user: RegisteredUser, room: str, text: str) -> str:
    """PUT /send with one txn id, repeated while messaging is down (the retry creates nothing new)."""
    txn = uuid.uuid4().hex
    url = f"{base}{V3}/rooms/{room}/send/m.room.message/{txn}"
    async with aiohttp.ClientSession(headers=user.headers) as http:
        for _ in range(600):
            try:
                async with http.put(url, json={"msgtype": "m.text", "body": text}) as r:
                    if r.status == 200:
                        return (await r.json())["event_id"]
                    assert r.status >= 500, (r.status, await r.text())
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.1)  # a retry interval, as a client's; nothing is timed on it
    raise AssertionError("the message was never stored")


async def test_kill_9_mid_burst_loses_no_poke_and_repeats_none(crash_stack: RunningStack) -> None:
    gateway = PushGateway()
    port = free_port()
    runner = web.AppRunner(gateway.app(), handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}/_matrix/push/v1/notify"
    base = crash_stack.base_url
    try:
        alice, bob = await register_user(base), await register_user(base)
        rooms = [await chat(base, alice, bob) for _ in range(4)]
        key = f"bob-{uuid.uuid4().hex}"
        assert (await set_pusher(base, bob, url, key)).status == 200

        # Before the crash: a poke delivered and recorded as delivered.
        first = await send_until_stored(base, alice, rooms[0], "before")
        await gateway.wait_for(lambda: any(n["event_id"] == first for n in gateway.received))
        await eventually(lambda: _sent_at_least(crash_stack, 1))

        # The burst: the gateway stops answering; messaging dies with a request in flight.
        gateway.hold = True
        newest: dict[str, str] = {}
        for i in range(4):
            room = rooms[i % len(rooms)]
            newest[room] = await send_until_stored(base, alice, room, f"burst {i}")
        # Killed only once every room's poke is held: then no request is on its way that the
        # gateway would take (and count as delivered) after the kill, which a real gateway would
        # deliver too, and the restarted sender repeat (docs/push.md).
        await gateway.wait_for(lambda: {n["room_id"] for n in gateway.held} == set(rooms))
        held = [(n["room_id"], n["event_id"]) for n in gateway.held]
        assert len(held) == len(rooms), f"a poke was retried before every room's was held: {held}"
        messaging = crash_stack.supervisor.child("messaging")
        old_pid = messaging.pid
        assert old_pid is not None
        os.kill(old_pid, signal.SIGKILL)
        gateway.hold = False
        for i in range(4, 12):  # the rest of the burst, sent while messaging restarts
            room = rooms[i % len(rooms)]
            newest[room] = await send_until_stored(base, alice, room, f"burst {i}")
        assert messaging.pid != old_pid

        # Every room's newest message reaches the gateway (answered), none twice.
        def delivered() -> set[str]:
            return {n["event_id"] for n in gateway.received}

        await gateway.wait_for(lambda: set(newest.values()) <= delivered(), timeout=120)
        counts = collections.Counter(n["event_id"] for n in gateway.received)
        assert [e for e, c in counts.items() if c > 1] == []
        assert all(n["devices"][0]["pushkey"] == key for n in gateway.received)
        # The last poke of each room carries the room's newest event: nothing collapsed away for good.
        last_by_room = {n["room_id"]: n["event_id"] for n in gateway.received}
        assert {r: last_by_room[r] for r in newest} == newest
        assert (await request(base, bob, "GET", "/pushers"))["pushers"][0]["pushkey"] == key
    finally:
        await runner.cleanup()


async def _sent_at_least(stack: RunningStack, count: int) -> bool:
    return await metric(stack, "push_pokes_total", 'outcome="sent"') >= count
