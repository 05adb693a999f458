"""How the supervisor starts children: no fork() in a process holding gRPC state, and no child
outlives its parent."""

from __future__ import annotations

import io
import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from plumbing.dev.supervisor import Child, ChildSpec

pytestmark = pytest.mark.integration

_forks: list[int] = []
os.register_at_fork(before=lambda: _forks.append(os.getpid()))


async def _never_ready() -> bool:
    return False


async def test_children_start_without_fork_so_grpc_atfork_handlers_never_run() -> None:
    """Regression: a `preexec_fn` makes CPython fork(), running gRPC's atfork handlers, which
    once hung a test run for minutes. Python-level at-fork hooks run exactly when it forks."""
    before = len(_forks)
    child = Child(ChildSpec("probe", ["sleep", "30"], _never_ready, "-"), io.StringIO(), 5)
    await child.start()
    try:
        assert child.pid is not None
        assert os.getpgid(child.pid) == child.pid  # its own process group, stopped as a whole
    finally:
        await child.stop()
    assert len(_forks) == before


SPAWN_LOOP = textwrap.dedent(
    """
    import asyncio, io, subprocess
    import grpc
    from grpc_health.v1 import health, health_pb2, health_pb2_grpc
    from plumbing.dev.supervisor import Child, ChildSpec
    from plumbing.process import with_parent_death

    async def never() -> bool:
        return False

    async def main() -> None:
        server = grpc.aio.server()
        health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        stub = health_pb2_grpc.HealthStub(channel)
        busy = True

        async def calls() -> None:  # gRPC threads and polling busy the whole time
            while busy:
                await stub.Check(health_pb2.HealthCheckRequest(), timeout=10)

        caller = asyncio.create_task(calls())
        for _ in range(ROUNDS):
            child = Child(ChildSpec("probe", ["true"], never, "-"), io.StringIO(), 5)
            await child.start()
            await child.process.wait()
            await asyncio.to_thread(lambda: subprocess.Popen(with_parent_death(["true"])).wait())
        busy = False
        await caller
        await channel.close()
        await server.stop(None)
        print("done", flush=True)

    asyncio.run(main())
    """
)


@pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace (.ci/run installs it)")
def test_children_are_vforked_in_a_loop_while_grpc_is_busy(tmp_path: Path) -> None:
    """The hang was gRPC's atfork handler waiting on a lock inside fork(). vfork runs no atfork
    handlers; the trace shows how every child process was made, over many starts under gRPC load."""
    trace = tmp_path / "trace"
    rounds = 40
    run = subprocess.run(
        [
            "strace",
            "-f",
            "-qq",
            "-e",
            "trace=clone,clone3,fork,vfork",
            "-o",
            str(trace),
            sys.executable,
            "-c",
            SPAWN_LOOP.replace("ROUNDS", str(rounds)),
        ],
        capture_output=True,
        text=True,
        timeout=150,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert run.returncode == 0 and run.stdout.strip() == "done", run.stderr[-2000:]
    calls = [line for line in trace.read_text().splitlines() if re.search(r"\b(clone3?|v?fork)\(", line)]
    processes = [line for line in calls if "CLONE_THREAD" not in line]  # threads are not forks
    vforks = [line for line in processes if "vfork(" in line or "CLONE_VFORK" in line]
    # Each round: the supervisor's child and a fixture-style child, each through the launcher (which execs).
    assert len(vforks) >= 2 * rounds and processes == vforks, [p for p in processes if p not in vforks][:5]


def _dead(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except FileNotFoundError:
        return True
    return state == "Z"


def _until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_a_launched_child_dies_with_its_parent() -> None:
    """What keeps the tests' session-wide Mongo-wire server from outliving a killed run."""
    script = (
        "import os, subprocess, sys\n"
        "from plumbing.process import with_parent_death\n"
        "p = subprocess.Popen(with_parent_death(['sleep', '60']))\n"
        "print(p.pid, flush=True)\n"
        "import time; time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE)
    assert parent.stdout is not None
    grandchild = int(parent.stdout.readline())
    _until(lambda: Path(f"/proc/{grandchild}/cmdline").read_bytes().startswith(b"sleep"))
    parent.send_signal(signal.SIGKILL)
    parent.wait()
    _until(lambda: _dead(grandchild))
