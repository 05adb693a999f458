"""Helpers for tests: free ports, and stack settings on them."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

from plumbing.dev.stack import StackConfig
from plumbing.ports import free_port, free_port_block
from plumbing.process import stop_subprocess as stop_process

__all__ = ["eventually", "free_port", "free_port_block", "stack_config", "stop_process"]


def stack_config(data_dir: Path, mongo_uri: str) -> StackConfig:
    """A stack on fresh loopback ports with its own embedded NATS, on the already-running Mongo-wire server."""
    return StackConfig.on_free_ports(data_dir, mongo_uri)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0, interval: float = 0.05) -> None:
    """Wait until `check()` is true (for effects that travel through events), or fail the test."""
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(interval)
