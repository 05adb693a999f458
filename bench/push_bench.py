"""Offline push: message-to-push-gateway latency at a steady send rate, and pokes per burst.

Starts the stack (embedded NATS and Mongo-wire server, the services, the gateway) and a loopback
push gateway in this process (plumbing/dev/push_gateway.py's `PushGateway`), registers `--users`
users in direct rooms of two, each with a pusher, then:

1. sends `--rate` messages/s for `--seconds` (open loop: a message is started on schedule whether
   or not the previous ones are answered), each from a random user to their partner, and reports
   p50/p99 of "message sent" (the PUT started) to "a poke for that room carrying this message or a
   later one arrived at the push gateway" (collapsed pokes count for the messages they cover);
2. sends a burst of `--burst` messages into one room as fast as the API answers and reports how
   many pokes that room's pusher received (collapsing makes it a few).

`python -m bench.push_bench [--users 1000] [--rate 200] [--seconds 10] [--burst 50]`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import shutil
import time
import uuid
from collections import defaultdict
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from bench.common import percentile
from bench.common import run as bench_run
from plumbing.dev.push_gateway import PushGateway
from plumbing.dev.stack import StackConfig, running_stack
from plumbing.ports import free_port

BENCH_DIR = Path(os.environ.get("LAIWANG_BENCH_DIR", "var/bench"))
V3 = "/_matrix/client/v3"
ENV = {
    "MESSAGING_INVITE_POLICY": "anyone",
    "GATEWAY_SEND_RATE_PER_SECOND": "100000",
    "GATEWAY_SEND_BURST": "100000",
    "GATEWAY_CREDENTIAL_RATE_PER_SECOND": "100000",
    "GATEWAY_CREDENTIAL_BURST": "100000",
    "AUTH_REGISTRATIONS_PER_ADDRESS_PER_HOUR": "10000000",
    "AUTH_ARGON2_TIME_COST": "1",
    "AUTH_ARGON2_MEMORY_KIB": "8192",
    "LOG_LEVEL": "WARNING",
}


class TimedGateway(PushGateway):
    """Records when each notification arrived (wall clock, like the senders' timestamps)."""

    def __init__(self) -> None:
        super().__init__(reject_prefix="")
        self.arrivals: list[tuple[float, str, str]] = []  # (time, room, event)

    async def notify(self, request: web.Request) -> web.Response:
        response = await super().notify(request)
        last = self.received[-1]
        self.arrivals.append((time.time(), last["room_id"], last["event_id"]))
        return response


async def call(http: aiohttp.ClientSession, method: str, url: str, token: str = "", body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for _ in range(50):
        async with http.request(method, url, json=body, headers=headers) as r:
            if r.status == 200:
                return await r.json()
            if r.status not in (429, 502, 503):
                raise RuntimeError(f"{method} {url}: {r.status} {await r.text()}")
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{method} {url}: no success")


async def setup_pairs(http: aiohttp.ClientSession, base: str, users: int, url: str) -> list[tuple[str, str, str]]:
    """(room, token of user a, token of user b) per pair; every user has a pusher."""
    gate = asyncio.Semaphore(16)

    async def register() -> str:
        async with gate:
            body = {
                "username": f"p{uuid.uuid4().hex[:10]}",
                "password": "bench-password",
                "auth": {"type": "m.login.dummy"},
            }
            token = (await call(http, "POST", f"{base}{V3}/register", body=body))["access_token"]
            pusher = {
                "kind": "http",
                "app_id": "cn.laiwang.bench",
                "pushkey": uuid.uuid4().hex,
                "app_display_name": "bench",
                "device_display_name": "bench",
                "lang": "en",
                "data": {"url": url, "format": "event_id_only"},
            }
            await call(http, "POST", f"{base}{V3}/pushers/set", token, pusher)
            return token

    tokens = await asyncio.gather(*(register() for _ in range(users)))

    async def pair(a: str, b: str) -> tuple[str, str, str]:
        async with gate:
            who = await call(http, "GET", f"{base}{V3}/account/whoami", b)
            room = (
                await call(http, "POST", f"{base}{V3}/createRoom", a, {"invite": [who["user_id"]], "is_direct": True})
            )["room_id"]
            await call(http, "POST", f"{base}{V3}/rooms/{room}/join", b, {})
            return room, a, b

    return await asyncio.gather(*(pair(tokens[i], tokens[i + 1]) for i in range(0, len(tokens) - 1, 2)))


async def send(http: aiohttp.ClientSession, base: str, room: str, token: str, text: str) -> tuple[float, str]:
    started = time.time()
    reply = await call(
        http,
        "PUT",
        f"{base}{V3}/rooms/{room}/send/m.room.message/{uuid.uuid4().hex}",
        token,
        {"msgtype": "m.text", "body": text},
    )
    return started, reply["event_id"]


def covered_latencies(sends: list[tuple[float, str, str]], arrivals: list[tuple[float, str, str]]) -> list[float]:
    """Per message: the first poke of its room, arriving after it was sent, for it or a later message."""
    order: dict[str, int] = {}
    by_room: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for started, room, event in sorted(sends):
        order[event] = len(by_room[room])
        by_room[room].append((started, event))
    pokes: dict[str, list[tuple[float, int]]] = defaultdict(list)
    for arrived, room, event in arrivals:
        if event in order:
            pokes[room].append((arrived, order[event]))
    latencies = []
    for room, messages in by_room.items():
        for index, (started, _) in enumerate(messages):
            arrived = [t for t, covered in pokes[room] if covered >= index and t >= started]
            if arrived:
                latencies.append((min(arrived) - started) * 1000)
    return latencies


async def run(args: argparse.Namespace) -> None:
    data_dir = BENCH_DIR / "push-run"
    shutil.rmtree(data_dir, ignore_errors=True)
    config = StackConfig.on_free_ports(data_dir, server_name="bench.local", log_level="WARNING")
    gateway = TimedGateway()
    port = free_port()
    runner = web.AppRunner(gateway.app())
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}/_matrix/push/v1/notify"
    try:
        async with running_stack(config, ENV) as stack, aiohttp.ClientSession() as http:
            base = stack.base_url
            print(
                f"setting up {args.users} users in {args.users // 2} direct rooms, each with a pusher ...", flush=True
            )
            pairs = await setup_pairs(http, base, args.users, url)
            gateway.arrivals.clear()

            total = args.rate * args.seconds
            print(f"sending {total} messages at {args.rate}/s ...", flush=True)
            tasks, planned = [], []
            rng = random.Random(7)
            begin = time.monotonic()
            for i in range(total):
                room, a, b = rng.choice(pairs)
                planned.append(room)
                tasks.append(asyncio.create_task(send(http, base, room, rng.choice((a, b)), f"m{i}")))
                delay = begin + (i + 1) / args.rate - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)
            results = await asyncio.gather(*tasks)
            achieved = total / (time.monotonic() - begin)
            sends = [(started, room, event) for (started, event), room in zip(results, planned, strict=True)]
            last_by_room: dict[str, str] = {}
            for _, room, event in sorted(sends):
                last_by_room[room] = event
            wanted = set(last_by_room.values())
            with contextlib.suppress(TimeoutError):  # report what arrived within a minute
                await gateway.wait_for(lambda: wanted <= {n["event_id"] for n in gateway.received}, timeout=60)
            latencies = covered_latencies(sends, gateway.arrivals)
            print(
                f"steady: {achieved:.0f} msg/s offered, {len(latencies)}/{total} messages covered by a poke, "
                f"{len(gateway.arrivals)} pokes; message -> push p50 {percentile(latencies, 50):.0f} ms, "
                f"p99 {percentile(latencies, 99):.0f} ms",
                flush=True,
            )

            room, a, _ = pairs[0]
            gateway.arrivals.clear()
            burst = [await send(http, base, room, a, f"burst {i}") for i in range(args.burst)]
            last = burst[-1][1]
            await gateway.wait_for(lambda: any(n["event_id"] == last for n in gateway.received), timeout=60)
            await asyncio.sleep(2.0)  # any straggler of the burst (the collapse delay is 1 s)
            pokes = sum(1 for _, r, _ in gateway.arrivals if r == room)
            print(f"burst: {args.burst} messages in one room -> {pokes} pokes", flush=True)
    finally:
        await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--rate", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=10)
    parser.add_argument("--burst", type=int, default=50)
    bench_run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
