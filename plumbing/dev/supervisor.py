"""Runs a set of child processes: starts them in order, waits for each to be ready, prefixes
their output with their name, restarts a child that dies (with backoff), and stops them all in
reverse order on request, leaving nothing behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import sys
import time
import weakref
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TextIO

from plumbing.errors import StartupError
from plumbing.process import with_parent_death

log = logging.getLogger(__name__)

Probe = Callable[[], Awaitable[bool]]
# A quick stop (see Supervisor.stop_all) gives each server this long after SIGTERM before SIGKILL.
QUICK_STOP_SECONDS = 2.0


@dataclass
class ChildSpec:
    name: str
    argv: list[str]
    probe: Probe
    address: str
    env: dict[str, str] = field(default_factory=dict)
    ready_timeout: float = 60.0
    stop_timeout: float = 15.0
    # Others depend on it (NATS, the Mongo-wire server): a quick stop stops it after all the rest,
    # gracefully, so no server spends its shutdown reconnecting and no stored data is cut short.
    infrastructure: bool = False


class Child:
    def __init__(self, spec: ChildSpec, out: TextIO, width: int) -> None:
        self.spec = spec
        self._out = out
        self._prefix = f"{spec.name:<{width}} | "
        self.process: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.recent = deque[str](maxlen=20)
        self._pump: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process else None

    async def start(self) -> None:
        env = {**os.environ, **self.spec.env, "PYTHONUNBUFFERED": "1"}
        # Its own process group (stopped as a whole), and SIGTERM if the supervisor dies.
        self.process = await asyncio.create_subprocess_exec(
            *with_parent_death(self.spec.argv),
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        self.started_at = time.monotonic()
        self._pump = asyncio.create_task(self._pump_output(self.process), name=f"pump:{self.spec.name}")

    async def _pump_output(self, process: asyncio.subprocess.Process) -> None:
        assert process.stdout is not None
        while line := await process.stdout.readline():
            text = line.decode(errors="replace").rstrip()
            self.recent.append(text)
            self._out.write(self._prefix + text + "\n")
            self._out.flush()

    async def wait_ready(self) -> None:
        deadline = time.monotonic() + self.spec.ready_timeout
        while time.monotonic() < deadline:
            if self.process is None or self.process.returncode is not None:
                await self._drain_output()
                last = self.recent[-1] if self.recent else "no output"
                raise StartupError(f"{self.spec.name} exited before it was ready: {last}")
            with contextlib.suppress(Exception):
                if await self.spec.probe():
                    return
            await asyncio.sleep(0.1)
        spec = self.spec
        raise StartupError(f"{spec.name} was not ready within {spec.ready_timeout:.0f}s ({spec.address})")

    async def _drain_output(self) -> None:
        if self._pump is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._pump, 2.0)

    async def stop(self, timeout: float | None = None) -> None:
        """SIGTERM the child's process group; SIGKILL it after `timeout` (default: its stop_timeout)."""
        timeout = self.spec.stop_timeout if timeout is None else timeout
        process = self.process
        if process is None or process.returncode is not None:
            await self._drain_output()
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            self._out.write(f"{self._prefix}did not stop within {timeout:.0f}s; killing\n")
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)
            await process.wait()
        # Anything the child left in its process group goes with it.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        await self._drain_output()

    def kill(self) -> None:
        """SIGKILL the child's process group now (a stop in progress then sees it exit)."""
        if self.process is not None and self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)


# Every supervisor of this process with children, for kill_all_children.
_supervisors: weakref.WeakSet[Supervisor] = weakref.WeakSet()


def kill_all_children() -> None:
    """SIGKILL every child of every supervisor in this process: a second Ctrl-C means stop waiting."""
    for supervisor in list(_supervisors):
        supervisor.kill_all()


class Supervisor:
    """Owns the children; `start_all`, then `watch` until `stop_all`."""

    MIN_BACKOFF = 0.5
    MAX_BACKOFF = 30.0
    HEALTHY_AFTER = 30.0  # a child that lived this long restarts with the shortest backoff again

    def __init__(self, specs: list[ChildSpec], out: TextIO = sys.stdout) -> None:
        width = max(len(s.name) for s in specs)
        self.children = [Child(spec, out, width) for spec in specs]
        self._out = out
        self._stopping = False
        self._watchers: list[asyncio.Task[None]] = []

    def child(self, name: str) -> Child:
        return next(c for c in self.children if c.spec.name == name)

    def kill_all(self) -> None:
        """SIGKILL every child now; a stop_all in progress then finishes at once."""
        for child in self.children:
            child.kill()

    def say(self, text: str) -> None:
        self._out.write(f"laiwang: {text}\n")
        self._out.flush()

    async def start_all(self) -> None:
        _supervisors.add(self)
        try:
            for child in self.children:
                await child.start()
                await child.wait_ready()
        except BaseException:
            await self.stop_all(quick=True)  # a failed or interrupted start: nothing to drain
            raise
        self._watchers = [asyncio.create_task(self._watch(c), name=f"watch:{c.spec.name}") for c in self.children]

    async def _watch(self, child: Child) -> None:
        backoff = self.MIN_BACKOFF / 2  # doubled below: the first restart waits MIN_BACKOFF
        while not self._stopping:
            assert child.process is not None
            code = await child.process.wait()
            if self._stopping:
                return
            lived = time.monotonic() - child.started_at
            backoff = self.MIN_BACKOFF if lived >= self.HEALTHY_AFTER else min(self.MAX_BACKOFF, backoff * 2)
            self.say(f"{child.spec.name} (pid {child.pid}) exited with code {code}; restarting in {backoff:.1f}s")
            await asyncio.sleep(backoff)
            if self._stopping:
                return
            child.restarts += 1
            try:
                await child.start()
            except OSError as exc:  # e.g. the executable vanished: keep trying with backoff
                self.say(f"{child.spec.name} could not be started: {exc}")
                await asyncio.sleep(backoff)
                continue
            try:
                await child.wait_ready()
                self.say(f"{child.spec.name} is back (pid {child.pid}, restart #{child.restarts})")
            except StartupError as exc:
                self.say(f"{child.spec.name} failed to come back: {exc}")

    async def stop_all(self, quick: bool = False) -> None:
        """Stop every child; return once all have exited.

        By default one at a time in reverse order, each with its stop_timeout to drain (`make run`'s
        Ctrl-C). `quick` is for when nobody waits for a drain (an interrupted benchmark, a failed
        test or start): every server at once, SIGKILL after QUICK_STOP_SECONDS, then the
        infrastructure together, gracefully.
        """
        self._stopping = True
        for task in self._watchers:
            task.cancel()
        if not quick:
            for child in reversed(self.children):
                self._announce(child)
                await child.stop()
            return
        servers = [c for c in reversed(self.children) if not c.spec.infrastructure]
        infrastructure = [c for c in reversed(self.children) if c.spec.infrastructure]
        for group, timeout in ((servers, QUICK_STOP_SECONDS), (infrastructure, None)):
            for child in group:
                self._announce(child)
            await asyncio.gather(*(child.stop(timeout) for child in group))

    def _announce(self, child: Child) -> None:
        if child.process is not None and child.process.returncode is None:
            self.say(f"stopping {child.spec.name} (pid {child.pid})")
