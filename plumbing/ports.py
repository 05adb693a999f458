"""Loopback port helpers: is a port free, and finding free ones (tests, benchmarks, `make run`)."""

from __future__ import annotations

import socket


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def free_port_block(count: int, host: str = "127.0.0.1") -> int:
    """The first of `count` consecutive free ports."""
    for _ in range(200):
        base = free_port(host)
        if base + count < 65535 and all(port_is_free(host, base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no block of {count} free ports")
