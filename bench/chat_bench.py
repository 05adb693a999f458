"""Chat throughput and send-to-delivery latency: the same workload against Laiwang and Synapse, plus idle long-polls.

    .venv/bin/python -m bench.chat_bench            (or `make bench-chat`)

Workload (identical for both servers, driven by this one process over HTTP):
  N pairs of users, each pair in its own direct room; every sender sends M messages one after
  another (each PUT waits for its answer) while every receiver long-polls /sync. Reported:
  messages/s (all messages / time from the first send to the last delivery) and the latency from
  the start of a send to the moment its receiver's /sync answer arrives (p50, p99).

Servers:
  - Laiwang: the whole stack as `make run` starts it (embedded NATS and Mongo-wire store, every
    service and the gateway as separate processes), data in a fresh directory under var/bench/.
  - Synapse: `pip install matrix-synapse` into its own virtualenv (var/bench/synapse-venv), SQLite,
    rate limits lifted, started on a free loopback port.
Then, Laiwang only: K idle /sync long-polls (distinct users) held by the one gateway process; its
memory, and the wake-up latency when messages arrive for some of them.

Registration settings that only make setting up thousands of accounts quicker (argon2 cost, the
per-address registration limit) are lowered for Laiwang; they play no part in the measured workload.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import math
import os
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import orjson

from bench.common import run as bench_run
from plumbing.dev.stack import StackConfig, running_stack
from plumbing.dev.supervisor import Supervisor
from plumbing.ports import free_port
from plumbing.process import stop_subprocess

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = ROOT / "var" / "bench"
SYNAPSE_VENV = BENCH_DIR / "synapse-venv"
SYNAPSE_REQUIREMENT = "matrix-synapse==1.163.*"
PREFIX = "/_matrix/client/v3"
SYNC_FILTER = orjson.dumps({"room": {"timeline": {"limit": 100}}}).decode()
PASSWORD = "bench-password-1234"


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[max(0, math.ceil(fraction * len(ordered)) - 1)]


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# -- a minimal Matrix client (the same code talks to both servers) ----------------------------------


@dataclass
class User:
    user_id: str
    token: str
    since: str = ""

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


class Matrix:
    def __init__(self, base_url: str, http: aiohttp.ClientSession) -> None:
        self.base = base_url
        self.http = http

    async def request(
        self,
        method: str,
        path: str,
        user: User | None = None,
        body: Any = None,
        params: dict[str, str] | None = None,
        ok: tuple[int, ...] = (200,),
    ) -> tuple[int, Any]:
        headers = {"Content-Type": "application/json", **(user.headers if user else {})}
        data = orjson.dumps(body) if body is not None else None
        async with self.http.request(
            method, self.base + PREFIX + path, data=data, headers=headers, params=params
        ) as response:
            payload = await response.read()
            if response.status not in ok:
                raise RuntimeError(f"{method} {path}: {response.status} {payload[:300]!r}")
            return response.status, orjson.loads(payload) if payload else None

    async def register(self, localpart: str) -> User:
        body: dict[str, Any] = {
            "username": localpart,
            "password": PASSWORD,
            "auth": {"type": "m.login.dummy"},
            "inhibit_login": False,
        }
        for attempt in range(5):  # set-up only: ride out a transient server error rather than abort the run
            status, reply = await self.request("POST", "/register", body=body, ok=(200, 401, 500, 503))
            if status < 500:
                break
            print(f"  register {localpart}: HTTP {status} {reply}; retrying", flush=True)
            await asyncio.sleep(0.2 * (attempt + 1))
        else:
            raise RuntimeError(f"register {localpart} kept failing")
        if status == 401:  # servers that want the UIA session id first
            body["auth"]["session"] = reply["session"]
            _, reply = await self.request("POST", "/register", body=body)
        return User(reply["user_id"], reply["access_token"])

    async def create_direct_room(self, creator: User, invitee: User) -> str:
        _, reply = await self.request(
            "POST",
            "/createRoom",
            creator,
            {"is_direct": True, "preset": "trusted_private_chat", "invite": [invitee.user_id]},
        )
        return reply["room_id"]

    async def join(self, user: User, room_id: str) -> None:
        await self.request("POST", f"/join/{room_id}", user, {})

    async def send(self, user: User, room_id: str, txn: str, text: str) -> None:
        await self.request(
            "PUT", f"/rooms/{room_id}/send/m.room.message/{txn}", user, {"msgtype": "m.text", "body": text}
        )

    async def sync(self, user: User, timeout_ms: int) -> dict[str, Any]:
        params = {"timeout": str(timeout_ms), "filter": SYNC_FILTER}
        if user.since:
            params["since"] = user.since
        _, reply = await self.request("GET", "/sync", user, params=params)
        user.since = reply["next_batch"]
        return reply


def message_bodies(sync_reply: dict[str, Any], room_id: str) -> list[str]:
    room = sync_reply.get("rooms", {}).get("join", {}).get(room_id)
    if not room:
        return []
    return [e["content"].get("body", "") for e in room["timeline"]["events"] if e.get("type") == "m.room.message"]


# -- the chat workload ---------------------------------------------------------------------------------


@dataclass
class ChatResult:
    name: str
    messages: int
    seconds: float
    latencies_ms: list[float] = field(default_factory=list)
    send_ms: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.messages / self.seconds

    def line(self) -> str:
        return (
            f"{self.name:<9} {self.rate:>9.1f} msg/s   delivery p50 {percentile(self.latencies_ms, 0.5):7.1f} ms"
            f"   p99 {percentile(self.latencies_ms, 0.99):7.1f} ms   (send PUT p50 "
            f"{percentile(self.send_ms, 0.5):.1f} ms; {self.messages} messages in {self.seconds:.2f} s)"
        )


async def chat_workload(name: str, base_url: str, pairs: int, per_sender: int) -> ChatResult:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as http:
        mx = Matrix(base_url, http)
        tag = secrets.token_hex(3)
        users = await asyncio.gather(*(mx.register(f"bench{tag}{i}") for i in range(2 * pairs)))
        senders, receivers = users[:pairs], users[pairs:]
        rooms = await asyncio.gather(*(mx.create_direct_room(s, r) for s, r in zip(senders, receivers, strict=True)))
        await asyncio.gather(*(mx.join(r, room) for r, room in zip(receivers, rooms, strict=True)))
        await asyncio.gather(*(mx.sync(r, 0) for r in receivers))

        # Warm-up: one message per pair, delivered, before anything is timed.
        async def warm(p: int) -> None:
            await mx.send(senders[p], rooms[p], f"warm-{tag}", "warm-up")
            while "warm-up" not in message_bodies(await mx.sync(receivers[p], 10_000), rooms[p]):
                pass

        await asyncio.gather(*(warm(p) for p in range(pairs)))

        sent_at: dict[str, float] = {}
        latencies: list[float] = []
        send_ms: list[float] = []
        last_delivery = 0.0

        async def receive(p: int) -> None:
            nonlocal last_delivery
            got = 0
            while got < per_sender:
                reply = await mx.sync(receivers[p], 30_000)
                arrived = time.perf_counter()
                for body in message_bodies(reply, rooms[p]):
                    if body in sent_at:
                        latencies.append((arrived - sent_at[body]) * 1000)
                        got += 1
                last_delivery = max(last_delivery, arrived)

        async def send(p: int) -> None:
            for i in range(per_sender):
                body = f"{p}:{i}"
                started = time.perf_counter()
                sent_at[body] = started
                await mx.send(senders[p], rooms[p], f"{tag}-{i}", body)
                send_ms.append((time.perf_counter() - started) * 1000)

        receivers_task = asyncio.gather(*(receive(p) for p in range(pairs)))
        await asyncio.sleep(0.2)  # every receiver is waiting in /sync
        first_send = time.perf_counter()
        await asyncio.gather(*(send(p) for p in range(pairs)))
        await asyncio.wait_for(receivers_task, 120)
        return ChatResult(name, pairs * per_sender, last_delivery - first_send, latencies, send_ms)


# -- Laiwang -----------------------------------------------------------------------------------------

LAIWANG_ENV = {
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


@contextlib.asynccontextmanager
async def laiwang_stack() -> AsyncIterator[tuple[str, Supervisor]]:
    data_dir = BENCH_DIR / "laiwang-run"
    shutil.rmtree(data_dir, ignore_errors=True)
    data_dir.mkdir(parents=True)
    config = StackConfig.on_free_ports(data_dir, server_name="bench.local", log_level="WARNING")
    os.environ["BENCH_METRICS_BASE"] = str(config.ports.metrics_base)
    async with running_stack(config, LAIWANG_ENV) as stack:
        yield config.gateway_url, stack.supervisor


# -- Synapse -----------------------------------------------------------------------------------------

SYNAPSE_LIMITS = {"per_second": 100000, "burst_count": 100000}


def ensure_synapse() -> Path:
    python = SYNAPSE_VENV / "bin" / "python"
    if not python.exists():
        print(f"installing {SYNAPSE_REQUIREMENT} into {SYNAPSE_VENV} ...", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(SYNAPSE_VENV)], check=True)
    probe = subprocess.run(
        [str(python), "-c", "import synapse; print(synapse.__version__)"], capture_output=True, text=True
    )
    if probe.returncode != 0:
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", "pip"], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "--quiet", SYNAPSE_REQUIREMENT], check=True)
    return python


def synapse_version(python: Path) -> str:
    return subprocess.run(
        [str(python), "-c", "import synapse; print(synapse.__version__)"], capture_output=True, text=True, check=True
    ).stdout.strip()


def write_synapse_config(directory: Path, port: int) -> Path:
    limits = SYNAPSE_LIMITS
    config = {
        "server_name": "bench.local",
        "pid_file": str(directory / "homeserver.pid"),
        "listeners": [
            {
                "port": port,
                "bind_addresses": ["127.0.0.1"],
                "type": "http",
                "tls": False,
                "x_forwarded": False,
                "resources": [{"names": ["client"], "compress": False}],
            }
        ],
        "database": {"name": "sqlite3", "args": {"database": str(directory / "homeserver.db")}},
        "log_config": str(directory / "log.yaml"),
        "media_store_path": str(directory / "media"),
        "signing_key_path": str(directory / "signing.key"),
        "report_stats": False,
        "enable_registration": True,
        "enable_registration_without_verification": True,
        "trusted_key_servers": [],
        "suppress_key_server_warning": True,
        "macaroon_secret_key": secrets.token_hex(32),
        "registration_shared_secret": secrets.token_hex(32),
        "form_secret": secrets.token_hex(32),
        "rc_message": limits,
        "rc_registration": limits,
        "rc_registration_token_validity": limits,
        "rc_login": {"address": limits, "account": limits, "failed_attempts": limits},
        "rc_admin_redaction": limits,
        "rc_joins": {"local": limits, "remote": limits},
        "rc_joins_per_room": limits,
        "rc_3pid_validation": limits,
        "rc_invites": {"per_room": limits, "per_user": limits, "per_issuer": limits},
        "rc_third_party_invite": limits,
        "rc_room_creation": limits,
        "rc_presence": {"per_user": limits},
        "rc_delayed_event_mgmt": limits,
        "rc_reports": limits,
    }
    (directory / "log.yaml").write_text(
        "version: 1\nformatters:\n  plain:\n    format: '%(asctime)s %(levelname)s %(name)s %(message)s'\n"
        f"handlers:\n  file:\n    class: logging.FileHandler\n    filename: {directory / 'homeserver.log'}\n"
        "    formatter: plain\nroot:\n  level: WARNING\n  handlers: [file]\ndisable_existing_loggers: false\n"
    )
    path = directory / "homeserver.yaml"
    path.write_text(orjson.dumps(config).decode())  # JSON is YAML
    return path


@contextlib.asynccontextmanager
async def synapse_server() -> AsyncIterator[tuple[str, str]]:
    python = ensure_synapse()
    directory = BENCH_DIR / "synapse-run"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    port = free_port()
    config = write_synapse_config(directory, port)
    keys = await asyncio.create_subprocess_exec(
        str(python), "-m", "synapse.app.homeserver", "-c", str(config), "--generate-keys", stdout=subprocess.DEVNULL
    )
    if await keys.wait() != 0:
        raise RuntimeError("synapse could not generate its signing key")
    log = open(directory / "stdout.log", "wb")  # noqa: SIM115, ASYNC230 - closed below
    process = subprocess.Popen(  # noqa: ASYNC220 - started once; a plain Popen is simplest to stop reliably
        [str(python), "-m", "synapse.app.homeserver", "-c", str(config)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        async with aiohttp.ClientSession() as http:
            for _ in range(600):
                if process.poll() is not None:
                    raise RuntimeError(f"synapse exited: see {directory / 'stdout.log'}")
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"{url}/_matrix/client/versions") as response:
                        if response.status == 200:
                            break
                await asyncio.sleep(0.1)
            else:
                raise RuntimeError("synapse did not start within 60 s")
        yield url, synapse_version(python).split()[0]
    finally:
        stop_subprocess(process, timeout=15)
        log.close()


# -- idle long-polls -----------------------------------------------------------------------------------


async def gateway_gauge(http: aiohttp.ClientSession, base_url: str, name: str) -> float:
    async with http.get(f"{base_url}/metrics") as response:
        for line in (await response.text()).splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


async def idle_long_polls(base_url: str, gateway_pid: int, count: int, probes: int) -> dict[str, float]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=300)) as http:
        mx = Matrix(base_url, http)
        tag = secrets.token_hex(3)
        gate = asyncio.Semaphore(64)

        async def register(i: int) -> User:
            async with gate:
                return await mx.register(f"idle{tag}{i}")

        started = time.perf_counter()
        idle = await asyncio.gather(*(register(i) for i in range(count)))
        senders = await asyncio.gather(*(register(count + i) for i in range(probes)))
        print(f"  registered {count + probes} users in {time.perf_counter() - started:.0f} s", flush=True)
        rooms = await asyncio.gather(*(mx.create_direct_room(s, r) for s, r in zip(senders, idle, strict=False)))
        await asyncio.gather(*(mx.join(r, room) for r, room in zip(idle, rooms, strict=False)))

        async def first_sync(user: User) -> None:
            async with gate:
                await mx.sync(user, 0)

        await asyncio.gather(*(first_sync(u) for u in idle))
        rss_before = rss_mib(gateway_pid)

        delivered: dict[str, float] = {}
        stop = asyncio.Event()
        failures = 0

        async def hold(index: int, user: User) -> None:
            nonlocal failures
            room = rooms[index] if index < probes else None
            while not stop.is_set():
                try:
                    reply = await mx.sync(user, 30_000)
                except Exception:
                    failures += 1
                    await asyncio.sleep(0.5)
                    continue
                if room is not None:
                    for body in message_bodies(reply, room):
                        delivered.setdefault(body, time.perf_counter())

        # Park them all; measure only while every long-poll is parked (well inside its 30 s timeout).
        parking = time.perf_counter()
        holders = []
        for i, user in enumerate(idle):
            holders.append(asyncio.create_task(hold(i, user)))
            if i % 200 == 199:
                # Thousands of simultaneous connects overflow the gateway's listen backlog (128) and
                # wait out TCP SYN retransmits (1 s, 3 s, ...): open them in waves instead.
                await asyncio.sleep(0.05)
        deadline = time.monotonic() + 25
        waiting = 0.0
        while time.monotonic() < deadline:
            waiting = await gateway_gauge(http, base_url, "gateway_sync_long_polls")
            if waiting >= count:
                break
            await asyncio.sleep(0.5)  # rendering /metrics is not free for the gateway
        parked_in = time.perf_counter() - parking
        # This client holds 5,000 requests' worth of objects: keep its own collector out of the timings.
        gc.collect()
        gc.freeze()
        await asyncio.sleep(0.5)
        rss_holding = rss_mib(gateway_pid)

        latencies: list[float] = []
        for p in range(probes):
            body = f"wake-{p}"
            sent = time.perf_counter()
            await mx.send(senders[p], rooms[p], f"w{tag}{p}", body)
            put_ms = (time.perf_counter() - sent) * 1000
            for _ in range(400):
                if body in delivered:
                    break
                await asyncio.sleep(0.005)
            if body in delivered:
                latencies.append((delivered[body] - sent) * 1000)
                if os.environ.get("BENCH_DEBUG"):
                    print(
                        f"    probe {p} at {sent - parking:.2f} s: {latencies[-1]:.1f} ms (PUT {put_ms:.1f} ms)",
                        flush=True,
                    )
            await asyncio.sleep(0.02)
        measured_by = time.perf_counter() - parking
        if os.environ.get("BENCH_DEBUG"):
            metrics_base = int(os.environ["BENCH_METRICS_BASE"])
            for port in (metrics_base, metrics_base + 2):
                async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                    for line in (await response.text()).splitlines():
                        if line.startswith("grpc_server_handling_seconds_") and ("_sum" in line or "_count" in line):
                            print("   ", line)
                        slow_bucket = 'le="0.05"' in line or 'le="+Inf"' in line
                        if (
                            line.startswith("grpc_server_handling_seconds_bucket")
                            and slow_bucket
                            and ("SendEvent" in line or "Introspect" in line)
                        ):
                            print("   ", line)
            async with http.get(f"{base_url}/metrics") as response:
                for line in (await response.text()).splitlines():
                    if line.startswith("http_requests_total") and 'status="200"' not in line:
                        print("   ", line)
                    if line.startswith("http_request_duration_seconds_bucket") and "send" in line:
                        print("   ", line)
        stop.set()
        gc.unfreeze()
        for task in holders:
            task.cancel()
        await asyncio.gather(*holders, return_exceptions=True)
        return {
            "held": waiting,
            "parked_in_s": parked_in,
            "measured_by_s": measured_by,
            "failures": failures,
            "rss_before_mib": rss_before,
            "rss_holding_mib": rss_holding,
            "wake_p50_ms": percentile(latencies, 0.5) if latencies else float("nan"),
            "wake_p99_ms": percentile(latencies, 0.99) if latencies else float("nan"),
            "wake_max_ms": max(latencies) if latencies else float("nan"),
            "probes": len(latencies),
        }


# -- main ----------------------------------------------------------------------------------------------


async def run(args: argparse.Namespace) -> None:
    print(
        f"chat workload: {args.pairs} pairs x {args.messages} messages, receivers long-polling /sync; "
        f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    results: list[ChatResult] = []
    idle: dict[str, float] | None = None
    async with laiwang_stack() as (url, supervisor):
        pids = {c.spec.name: c.pid for c in supervisor.children if c.pid is not None}
        before = {name: cpu_seconds(pid) for name, pid in pids.items()}
        bench_before = time.process_time()
        results.append(await chat_workload("laiwang", url, args.pairs, args.messages))
        print(results[-1].line(), flush=True)
        used = {name: cpu_seconds(pid) - before[name] for name, pid in pids.items()}
        used["bench client"] = time.process_time() - bench_before
        print(
            "  CPU seconds during the workload (incl. set-up): "
            + ", ".join(f"{name} {seconds:.1f}" for name, seconds in used.items() if seconds >= 0.05),
            flush=True,
        )
        if args.idle:
            print(f"idle long-polls: {args.idle} users each holding a /sync on one gateway ...", flush=True)
            gateway_pid = supervisor.child("gateway").pid
            assert gateway_pid is not None
            idle = await idle_long_polls(url, gateway_pid, args.idle, args.probes)
    if not args.skip_synapse:
        async with synapse_server() as (url, version):
            result = await chat_workload("synapse", url, args.pairs, args.messages)
            result.name = "synapse"
            results.append(result)
            print(results[-1].line() + f"   [Synapse {version}, SQLite]", flush=True)

    print("\n=== results (one run) ===")
    for result in results:
        print(result.line())
    if len(results) == 2:
        ours, theirs = results
        print(
            f"throughput ratio laiwang/synapse: {ours.rate / theirs.rate:.1f}x   "
            f"p99 latency ratio laiwang/synapse: "
            f"{percentile(ours.latencies_ms, 0.99) / percentile(theirs.latencies_ms, 0.99):.3f} "
            f"(p50 ratio {percentile(ours.latencies_ms, 0.5) / percentile(theirs.latencies_ms, 0.5):.3f})"
        )
    if idle is not None:
        print(
            f"idle long-polls: {idle['held']:.0f} held by one gateway (all parked {idle['parked_in_s']:.1f} s after "
            f"starting them); gateway RSS {idle['rss_before_mib']:.0f} MiB before, {idle['rss_holding_mib']:.0f} MiB "
            f"while holding them; wake-up latency over {idle['probes']:.0f} messages "
            f"p50 {idle['wake_p50_ms']:.1f} ms, p99 {idle['wake_p99_ms']:.1f} ms, max {idle['wake_max_ms']:.1f} ms "
            f"(measured within "
            f"{idle['measured_by_s']:.1f} s of parking; {idle['failures']:.0f} failed requests)"
        )
    print(f"load average at the end: {os.getloadavg()[0]:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=10)
    parser.add_argument("--messages", type=int, default=100, help="messages per sender")
    parser.add_argument("--idle", type=int, default=5000, help="idle long-polls to hold (0 skips)")
    parser.add_argument("--probes", type=int, default=50, help="messages sent to idle users to time wake-ups")
    parser.add_argument("--skip-synapse", action="store_true")
    args = parser.parse_args()
    bench_run(run(args), use_uvloop=True)


if __name__ == "__main__":
    main()
