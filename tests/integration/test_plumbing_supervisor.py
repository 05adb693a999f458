"""How the supervisor starts children: no fork() in a process holding gRPC state, and no child
outlives its parent."""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
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
