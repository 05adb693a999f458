"""Helpers for tests: free ports, and the real servers started on them."""

from __future__ import annotations

import socket
from pathlib import Path

from plumbing.stack import SERVICES, StackConfig, StackPorts


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def free_port_block(count: int) -> int:
    """The first of `count` consecutive free ports."""
    for _ in range(200):
        base = free_port()
        if base + count < 65535 and all(_is_free(base + i) for i in range(count)):
            return base
    raise RuntimeError("no block of free ports")


def _is_free(port: int) -> bool:
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def stack_config(data_dir: Path, mongo_uri: str) -> StackConfig:
    """A stack on fresh loopback ports with its own embedded NATS, on the already-running Mongo-wire server."""
    return StackConfig(
        data_dir=data_dir,
        ports=StackPorts(
            gateway=free_port(),
            nats=free_port(),
            grpc_base=free_port_block(len(SERVICES)),
            metrics_base=free_port_block(len(SERVICES)),
        ),
        server_name="laiwang.test",
        log_level="INFO",
        external_mongo_uri=mongo_uri,
        external_nats_url=None,
    )
