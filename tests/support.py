"""Helpers for tests: free ports, and stack settings on them."""

from __future__ import annotations

from pathlib import Path

from plumbing.ports import free_port, free_port_block
from plumbing.stack import StackConfig

__all__ = ["free_port", "free_port_block", "stack_config"]


def stack_config(data_dir: Path, mongo_uri: str) -> StackConfig:
    """A stack on fresh loopback ports with its own embedded NATS, on the already-running Mongo-wire server."""
    return StackConfig.on_free_ports(data_dir, mongo_uri)
