"""Auth: login throughput and the gateway's authenticated-request overhead (cached introspection).

Starts its own stack exactly as `make run` does (embedded NATS + Mongo-wire server, five services,
the gateway) on free loopback ports, then over real HTTP with keep-alive connections:

1. Login throughput: `--clients` concurrent clients log in (m.login.password, argon2id verify)
   for `--logins` logins in total; logins/s and latency median / p99.
2. Authenticated overhead: the same client alternates GET /account/whoami (authenticated: token
   digest + cache lookup at the gateway, no RPC) and GET /_matrix/client/versions (no auth), one
   request at a time; median / p99 of each and the difference. Cold introspection (the first use
   of a fresh token: one IntrospectToken RPC) is reported too, as is concurrent throughput of both.

    .venv/bin/python -m bench.auth_bench [--logins 300] [--clients 8] [--requests 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp

from bench.common import percentile
from bench.common import run as bench_run
from plumbing.dev.stack import StackConfig, running_stack

V3 = "/_matrix/client/v3"
PASSWORD = "benchmark password 1"


def _ms(seconds: list[float], q: float) -> str:
    return f"{percentile(seconds, q) * 1000:7.2f} ms"


async def _register(http: aiohttp.ClientSession, base: str, localpart: str) -> str:
    body = {"username": localpart, "password": PASSWORD, "auth": {"type": "m.login.dummy"}}
    async with http.post(f"{base}{V3}/register", json=body) as r:
        reply = await r.json()
        if r.status != 200:
            raise RuntimeError(f"register failed: {r.status} {reply}")
        return reply["user_id"]


async def _login(http: aiohttp.ClientSession, base: str, user_id: str) -> tuple[float, str]:
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user_id}, "password": PASSWORD}
    started = time.perf_counter()
    async with http.post(f"{base}{V3}/login", json=body) as r:
        reply = await r.json()
    elapsed = time.perf_counter() - started
    if r.status != 200:
        raise RuntimeError(f"login failed: {r.status} {reply}")
    return elapsed, reply["access_token"]


async def _timed_get(http: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None) -> float:
    started = time.perf_counter()
    async with http.get(url, headers=headers) as r:
        await r.read()
        if r.status != 200:
            raise RuntimeError(f"GET {url} -> {r.status}")
    return time.perf_counter() - started


async def run(args: argparse.Namespace) -> None:
    data_dir = Path(tempfile.mkdtemp(prefix="laiwang-auth-bench-"))
    config = StackConfig.on_free_ports(data_dir, server_name="laiwang.bench", log_level="WARNING")
    # The benchmark logs in from one address far faster than a person would.
    env = {"GATEWAY_CREDENTIAL_RATE_PER_SECOND": "100000", "GATEWAY_CREDENTIAL_BURST": "100000"}
    try:
        async with running_stack(config, env):
            await measure(args, config)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)  # throwaway accounts; the stack has stopped


async def measure(args: argparse.Namespace, config: StackConfig) -> None:
    base = config.gateway_url
    print(f"stack up at {base} ({os.cpu_count()} CPUs; argon2id t=2 m=19 MiB p=1)", flush=True)
    connector = aiohttp.TCPConnector(limit=args.clients * 2)
    async with aiohttp.ClientSession(connector=connector) as http:
        users = [await _register(http, base, f"bench{i}x{os.getpid()}") for i in range(args.clients)]
        for user in users:  # warm-up: connections, code paths
            await _login(http, base, user)

        # 1. Login throughput.
        latencies: list[float] = []
        tokens: list[str] = []
        per_client = args.logins // args.clients

        async def client(user: str) -> None:
            for _ in range(per_client):
                elapsed, token = await _login(http, base, user)
                latencies.append(elapsed)
                tokens.append(token)

        started = time.perf_counter()
        await asyncio.gather(*(client(u) for u in users))
        wall = time.perf_counter() - started
        print(f"\nlogin (m.login.password, {args.clients} concurrent clients, {len(latencies)} logins)")
        print(f"  throughput      {len(latencies) / wall:8.1f} logins/s")
        print(f"  latency median  {_ms(latencies, 50)}   p99 {_ms(latencies, 99)}")

        # 2a. Cold introspection: the first request with each fresh token.
        whoami = f"{base}{V3}/account/whoami"
        versions = f"{base}/_matrix/client/versions"
        cold = [await _timed_get(http, whoami, {"Authorization": f"Bearer {t}"}) for t in tokens[:200]]

        # 2b. Cached: alternate authenticated and unauthenticated requests, one at a time.
        headers = {"Authorization": f"Bearer {tokens[0]}"}
        for _ in range(200):
            await _timed_get(http, whoami, headers)
            await _timed_get(http, versions)
        auth_times: list[float] = []
        plain_times: list[float] = []
        for _ in range(args.requests):
            auth_times.append(await _timed_get(http, whoami, headers))
            plain_times.append(await _timed_get(http, versions))
        print(f"\nauthenticated-request overhead at the gateway ({args.requests} sequential requests each)")
        print(f"  GET /versions (no auth)        median {_ms(plain_times, 50)}   p99 {_ms(plain_times, 99)}")
        print(f"  GET /account/whoami (cached)   median {_ms(auth_times, 50)}   p99 {_ms(auth_times, 99)}")
        overhead = statistics.median(auth_times) - statistics.median(plain_times)
        print(f"  overhead of authentication     median {overhead * 1000:7.3f} ms")
        print(
            f"  whoami, first use of a token   median {_ms(cold, 50)}   p99 {_ms(cold, 99)}"
            f"   (cache miss: one IntrospectToken RPC, {len(cold)} tokens)"
        )

        # 2c. Concurrent throughput of both endpoints.
        for label, url, hdrs in (("versions (no auth)", versions, None), ("whoami (cached)", whoami, headers)):
            count = 0
            stop_at = time.perf_counter() + args.seconds

            async def hammer(u: str = url, h: dict[str, str] | None = hdrs, until: float = stop_at) -> None:
                nonlocal count
                while time.perf_counter() < until:
                    await _timed_get(http, u, h)
                    count += 1

            await asyncio.gather(*(hammer() for _ in range(16)))
            print(f"  {label:<28} {count / args.seconds:8.0f} req/s (16 concurrent, {args.seconds:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--logins", type=int, default=300)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--seconds", type=float, default=5.0)
    args = parser.parse_args()
    bench_run(run(args), use_uvloop=True)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
