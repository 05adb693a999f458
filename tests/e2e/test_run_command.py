"""`laiwang run` (what `make run` calls) as a user sees it: the whole stack with embedded NATS and
Mongo-wire server, restarts of a killed service, a clean stop, data that survives, and one-line
errors for the usual mistakes."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from pathlib import Path

import aiohttp
import pytest
from pymongo import AsyncMongoClient

from plumbing.config import SERVICES
from tests.support import free_port, free_port_block

pytestmark = pytest.mark.e2e

LAIWANG = [sys.executable, "-m", "plumbing.cli"]


def stack_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("MONGO_URI", "NATS_URL")}
    env.update(
        LAIWANG_DATA_DIR=str(data_dir),
        GATEWAY_PORT=str(free_port()),
        PUSH_GATEWAY_PORT=str(free_port()),  # not 8009: another suite or a `make run` may hold it
        NATS_PORT=str(free_port()),
        MONGO_PORT=str(free_port()),
        GRPC_PORT_BASE=str(free_port_block(len(SERVICES))),
        METRICS_PORT_BASE=str(free_port_block(len(SERVICES))),
    )
    return env


class RunningCommand:
    """`laiwang run` in a subprocess, with its output collected line by line."""

    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self._new_line = asyncio.Event()
        self._reader = asyncio.create_task(self._read())

    @classmethod
    async def start(cls, env: dict[str, str]) -> RunningCommand:
        process = await asyncio.create_subprocess_exec(
            *LAIWANG, "run", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
        )
        return cls(process)

    async def _read(self) -> None:
        assert self.process.stdout is not None
        while line := await self.process.stdout.readline():
            self.lines.append(line.decode(errors="replace").rstrip())
            self._new_line.set()

    async def wait_for(self, pattern: str, timeout: float = 90.0) -> re.Match[str]:
        regex = re.compile(pattern)
        seen = 0

        async def scan() -> re.Match[str]:
            nonlocal seen
            while True:
                for line in self.lines[seen:]:
                    seen += 1
                    if match := regex.search(line):
                        return match
                if self.process.returncode is not None and self._reader.done():
                    raise AssertionError(f"exited before {pattern!r}:\n" + "\n".join(self.lines[-40:]))
                self._new_line.clear()
                await self._new_line.wait() if not self._reader.done() else await asyncio.sleep(0.05)

        try:
            return await asyncio.wait_for(scan(), timeout)
        except TimeoutError:
            raise AssertionError(f"no {pattern!r} within {timeout}s:\n" + "\n".join(self.lines[-40:])) from None

    def pids(self) -> dict[str, int]:
        table: dict[str, int] = {}
        for line in self.lines:
            parts = line.split()
            if len(parts) >= 3 and parts[0] in ("nats", "mongo", *SERVICES, "gateway") and parts[-1].isdigit():
                table[parts[0]] = int(parts[-1])
        return table

    async def terminate(self, sig: signal.Signals = signal.SIGTERM) -> int:
        self.process.send_signal(sig)
        code = await asyncio.wait_for(self.process.wait(), 60)
        await self._reader
        return code


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def get_json(url: str) -> tuple[int, dict]:
    async with aiohttp.ClientSession() as http, http.get(url) as response:
        return response.status, await response.json()


async def wait_ready(url: str, timeout: float = 30.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    body: dict = {}
    while asyncio.get_running_loop().time() < deadline:
        try:
            status, body = await get_json(url)
            if status == 200:
                return body
        except aiohttp.ClientError:
            pass
        await asyncio.sleep(0.2)
    raise AssertionError(f"{url} not ready within {timeout}s: {body}")


async def test_run_restarts_a_killed_service_stops_cleanly_and_keeps_data(tmp_path: Path) -> None:
    env = stack_env(tmp_path / "data")
    gateway = f"http://127.0.0.1:{env['GATEWAY_PORT']}"
    run = await RunningCommand.start(env)
    try:
        await run.wait_for(r"Laiwang is ready in [\d.]+s")
        pids = run.pids()
        assert set(pids) == {"nats", "mongo", *SERVICES, "gateway"}

        body = await wait_ready(f"{gateway}/healthz")
        assert body["services"] == {name: "SERVING" for name in SERVICES}

        # Every process serves Prometheus metrics; services carry the gRPC server metrics.
        async with aiohttp.ClientSession() as http:
            for index, _ in enumerate(SERVICES):
                port = int(env["METRICS_PORT_BASE"]) + index
                async with http.get(f"http://127.0.0.1:{port}/metrics") as response:
                    text = await response.text()
                assert response.status == 200
                assert "grpc_server_handled_total" in text and "grpc_server_handling_seconds" in text
            async with http.get(f"{gateway}/metrics") as response:
                assert "http_requests_total" in await response.text()

        # Something written to the embedded store must be there after a restart of everything.
        mongo = AsyncMongoClient(f"mongodb://127.0.0.1:{env['MONGO_PORT']}/?directConnection=true")
        await mongo.laiwang_probe.markers.insert_one({"_id": "survives-restart"})
        await mongo.close()

        # kill -9 one service: it is reported, comes back, and nothing else restarts.
        os.kill(pids["messaging"], signal.SIGKILL)
        await run.wait_for(r"messaging \(pid \d+\) exited with code -9; restarting in 0.5s")
        await run.wait_for(r"messaging is back \(pid \d+, restart #1\)")
        body = await wait_ready(f"{gateway}/healthz")
        assert body["services"]["messaging"] == "SERVING"
        for name, pid in pids.items():
            if name != "messaging":
                assert alive(pid), f"{name} should not have been restarted"
        new_pid = int(re.search(r"messaging is back \(pid (\d+)", "\n".join(run.lines)).group(1))
    finally:
        code = await run.terminate()

    assert code == 0
    assert "laiwang: stopped" in run.lines
    for name, pid in {**pids, "messaging": new_pid}.items():
        assert not alive(pid), f"{name} (pid {pid}) survived the stop"

    again = await RunningCommand.start(env)
    try:
        await again.wait_for(r"Laiwang is ready")
        mongo = AsyncMongoClient(f"mongodb://127.0.0.1:{env['MONGO_PORT']}/?directConnection=true")
        assert await mongo.laiwang_probe.markers.find_one({"_id": "survives-restart"}) is not None
        await mongo.close()
    finally:
        # A closing terminal (SIGHUP) stops it as orderly as Ctrl-C does.
        assert await again.terminate(signal.SIGHUP) == 0
    assert "laiwang: stopped" in again.lines


async def test_a_second_ctrl_c_kills_everything_without_waiting_for_a_drain(tmp_path: Path) -> None:
    env = stack_env(tmp_path / "data")
    run = await RunningCommand.start(env)
    try:
        await run.wait_for(r"Laiwang is ready in [\d.]+s")
        pids = run.pids()
        # A stopped process cannot act on SIGTERM, so the orderly stop waits on messaging for its whole
        # stop timeout: the second Ctrl-C surely lands while the first one's stop is under way.
        os.kill(pids["messaging"], signal.SIGSTOP)
        run.process.send_signal(signal.SIGINT)
        await run.wait_for(r"stopping messaging \(pid \d+\)")
        code = await run.terminate(signal.SIGINT)
    finally:
        if run.process.returncode is None:
            run.process.kill()
            await run.process.wait()
    assert code == 128 + signal.SIGINT
    assert run.lines[-1] == "laiwang: killed"
    assert not any("did not stop within" in line for line in run.lines)
    for name, pid in pids.items():
        assert not alive(pid), f"{name} (pid {pid}) survived the kill"


async def run_to_exit(argv: list[str], env: dict[str, str], timeout: float = 60) -> tuple[int, str]:
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    _, stderr = await asyncio.wait_for(process.communicate(), timeout)
    return process.returncode or 0, stderr.decode().strip()


async def test_a_taken_port_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    env = stack_env(tmp_path)
    server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", int(env["GATEWAY_PORT"]))
    try:
        code, stderr = await run_to_exit([*LAIWANG, "run"], env)
    finally:
        server.close()
    assert code == 2
    assert stderr == (
        f"laiwang: port {env['GATEWAY_PORT']} is already in use (GATEWAY_PORT); "
        "stop whatever holds it or set GATEWAY_PORT to another port"
    )


async def test_a_bad_setting_is_one_line_naming_the_setting(tmp_path: Path) -> None:
    env = {**stack_env(tmp_path), "NATS_PORT": "four"}
    code, stderr = await run_to_exit([*LAIWANG, "run"], env)
    assert code == 2
    assert stderr == "laiwang: NATS_PORT='four' is not an integer"


async def test_a_bad_gateway_setting_stops_the_gateway_at_start_not_at_first_use(tmp_path: Path) -> None:
    # The send rate is used only by PUT /send; the gateway must refuse it before serving anything.
    env = {**stack_env(tmp_path), "GATEWAY_SEND_RATE_PER_SECOND": "abc"}
    code, stderr = await run_to_exit([sys.executable, "-m", "gateway"], env)
    assert code == 2
    assert stderr == "laiwang-gateway: GATEWAY_SEND_RATE_PER_SECOND='abc' is not a number"


async def test_a_service_with_unreachable_mongo_exits_with_one_line(tmp_path: Path) -> None:
    closed = free_port()
    env = {
        **os.environ,
        "MONGO_URI": f"mongodb://127.0.0.1:{closed}/?directConnection=true",
        "GRPC_PORT": str(free_port()),
        "METRICS_PORT": str(free_port()),
    }
    code, stderr = await run_to_exit([sys.executable, "-m", "services.auth"], env)
    assert code == 2
    assert "\n" not in stderr
    assert stderr.startswith(f"laiwang-auth: cannot reach MongoDB at mongodb://127.0.0.1:{closed}/")
    assert "(MONGO_URI)" in stderr


async def test_a_service_with_unreachable_nats_exits_with_one_line(mongo_uri: str) -> None:
    closed = free_port()
    env = {
        **os.environ,
        "MONGO_URI": mongo_uri,
        "NATS_URL": f"nats://127.0.0.1:{closed}",
        "GRPC_PORT": str(free_port()),
        "METRICS_PORT": str(free_port()),
    }
    code, stderr = await run_to_exit([sys.executable, "-m", "services.contacts"], env)
    assert code == 2
    assert "\n" not in stderr
    assert stderr.startswith(f"laiwang-contacts: cannot reach NATS at nats://127.0.0.1:{closed} (NATS_URL)")
