"""A benchmark stopped with Ctrl-C stops its whole stack before it exits: no child outlives it.

The benchmark runs as a person starts it (its own process group, SIGINT at its default), with
its real stack; the test interrupts it as a terminal does (SIGINT to the foreground group; the
stack's children sit in their own sessions, so only the benchmark hears it) and then checks that
every process the benchmark had started is gone once the benchmark has exited.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]
# One login at a time for far longer than the test runs: the stack is busy when interrupted.
BENCH = ["-m", "bench.auth_bench", "--clients", "1", "--logins", "1000000"]
# Started with SIGINT at its default even when this test runs where it is ignored (a background job).
TRAMPOLINE = "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); os.execv(sys.argv[1], sys.argv[1:])"


def process_start(pid: int) -> str | None:
    """The start time of a live process (None once it is gone or a zombie), so a reused pid never counts."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


def command_line(pid: int) -> str:
    return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")


def descendants(root: int) -> dict[int, str]:
    """Every live process under `root`, with its start time."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
    found: dict[int, str] = {}
    frontier = [root]
    while frontier:
        parent = frontier.pop()
        for pid, ppid in parents.items():
            if ppid == parent and pid not in found and (start := process_start(pid)) is not None:
                found[pid] = start
                frontier.append(pid)
    return found


@pytest.mark.parametrize("presses", [1, 2], ids=["ctrl-c", "ctrl-c twice"])
async def test_an_interrupted_benchmark_leaves_no_process_behind(presses: int) -> None:
    bench = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        TRAMPOLINE,
        sys.executable,
        *BENCH,
        cwd=ROOT,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        start_new_session=True,
    )
    assert bench.stdout is not None
    seen: list[str] = []
    try:
        async with asyncio.timeout(300):  # a hang bound: the stack starts in well under a minute
            while not any(line.startswith("stack up at ") for line in seen):
                line = (await bench.stdout.readline()).decode()
                assert line, "".join(seen)  # the benchmark ended before its stack was up
                seen.append(line)
        started = descendants(bench.pid)
        names = {command_line(pid) for pid in started}
        # NATS, the Mongo-wire server, five services and the gateway, at least.
        assert len(started) >= 8 and any("gateway" in n for n in names) and any("nats" in n for n in names), names

        os.killpg(bench.pid, signal.SIGINT)
        if presses == 2:  # the impatient second press, once the first has begun the stop
            while not any("stopping its processes" in line for line in seen):
                line = (await bench.stdout.readline()).decode()
                assert line, "".join(seen)
                seen.append(line)
            os.killpg(bench.pid, signal.SIGINT)
        async with asyncio.timeout(120):
            seen.append((await bench.stdout.read()).decode())
            code = await bench.wait()
    finally:
        if bench.returncode is None:
            bench.kill()
            await bench.wait()
    output = "".join(seen)
    left = {pid: start for pid, start in started.items() if process_start(pid) == start}
    assert not left, (left, output)
    assert code == 128 + signal.SIGINT, output
    assert "bench: stopped" in output, output
