"""An interrupted test run leaves no server behind: the session-wide Mongo-wire server and NATS
die with pytest whether it is stopped by Ctrl-C (SIGINT: finalisers run), SIGTERM or SIGKILL
(no finaliser runs: the launcher's parent-death signal stops them) (issue 9, the test suite)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def _processes_mentioning(marker: str) -> dict[int, str]:
    found: dict[int, str] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if marker in cmdline and state != "Z":
            found[int(entry.name)] = cmdline
    return found


def _until(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


@pytest.mark.parametrize("how", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL], ids=lambda s: s.name)
def test_no_server_outlives_an_interrupted_run(tmp_path: Path, how: signal.Signals) -> None:
    basetemp, ready = tmp_path / "inner", tmp_path / "ready"
    inner = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/integration/hold_session_servers.py",
            "-q",
            "-p",
            "no:cacheprovider",
            f"--basetemp={basetemp}",
            "-o",
            "timeout=0",
        ],
        cwd=ROOT,
        env={**os.environ, "LAIWANG_HOLD_READY": str(ready)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        _until(lambda: ready.exists() or inner.poll() is not None, 120, "the inner run never got its servers")
        assert inner.poll() is None
        servers = _processes_mentioning(str(basetemp))
        names = " ".join(servers.values())
        assert "secantusd-py" in names and "nats-server" in names, servers
        inner.send_signal(how)
        inner.wait(60)
        _until(
            lambda: not _processes_mentioning(str(basetemp)), 30, f"left behind: {_processes_mentioning(str(basetemp))}"
        )
    finally:
        if inner.poll() is None:
            inner.kill()
            inner.wait()
