"""Small helpers every benchmark uses: the runner that stops its stack on Ctrl-C, percentiles,
process memory, batched inserts."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from plumbing.dev.supervisor import kill_all_children

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def run(main: Coroutine[Any, Any, None], use_uvloop: bool = False) -> None:
    """`asyncio.run(main)` for a benchmark (on uvloop if `use_uvloop` and it is installed).

    Ctrl-C, SIGTERM or SIGHUP cancel `main`, so its stacks stop at once (`running_stack` and
    `Supervisor.stop_all(quick=True)`: every server together, NATS and Mongo after them) instead of
    draining one by one; a second signal SIGKILLs whatever is left. Either way the process exits
    (with 128 + the signal number) only once its children are gone: none of them lingers after it.
    """
    if use_uvloop:
        with contextlib.suppress(ImportError):
            import uvloop

            asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    received: list[int] = []

    async def guarded() -> None:
        task = asyncio.current_task()
        assert task is not None
        loop = asyncio.get_running_loop()

        def on_signal(signum: int) -> None:
            received.append(signum)
            if len(received) == 1:
                print(f"\nbench: {signal.Signals(signum).name}: stopping its processes", file=sys.stderr, flush=True)
                task.cancel()
            else:
                print("bench: killing its processes", file=sys.stderr, flush=True)
                kill_all_children()

        def quiet_once_interrupted(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
            # Workload tasks left behind by the cancellation fail against the stopped stack: noise.
            if not received:
                loop.default_exception_handler(context)

        loop.set_exception_handler(quiet_once_interrupted)
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, on_signal, signum)
        try:
            await main
        finally:
            if received:
                # Stopped: a late press must not turn the clean exit into a KeyboardInterrupt once the
                # loop's handlers are gone. Blocked, it stays pending until the process exits.
                signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    try:
        asyncio.run(guarded())
    except asyncio.CancelledError:
        if not received:
            raise
    if received:
        print("bench: stopped", file=sys.stderr, flush=True)
        sys.exit(128 + received[0])


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def insert_in_batches(collection: Any, documents: list[dict[str, Any]], batch: int = 10_000) -> None:
    """Seed a collection quickly: unordered insert_many in batches."""
    for start in range(0, len(documents), batch):
        await collection.insert_many(documents[start : start + batch], ordered=False)
