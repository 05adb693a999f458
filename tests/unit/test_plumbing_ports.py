"""Free ports for test stacks: outside the ephemeral range, and never handed to two processes at once.

Two suites side by side hit both failure modes: a port chosen by binding 0 is an ephemeral port,
which any outgoing connection could take as its source port before the child bound it, and the
other suite could choose the very same port a moment later.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from plumbing import ports

pytestmark = pytest.mark.unit

HOLDER = textwrap.dedent(
    """
    import sys
    from plumbing.ports import free_port, free_port_block
    held = [free_port() for _ in range(300)] + [free_port_block(5) + i for i in range(5)]
    print(" ".join(map(str, held)), flush=True)
    sys.stdin.read()  # holds its reservations until the test closes stdin
    """
)
TAKER = textwrap.dedent(
    """
    import sys
    from plumbing.ports import free_port, free_port_block
    held = set(map(int, sys.argv[1:]))
    got = [free_port() for _ in range(3000)] + [free_port_block(5) + i for _ in range(40) for i in range(5)]
    print(len(held & set(got)), len(got), len(set(got)))
    """
)


def test_ports_are_outside_the_ephemeral_range() -> None:
    low, high = (int(v) for v in Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
    chosen = [ports.free_port() for _ in range(5)]
    base = ports.free_port_block(5)
    for port in [*chosen, *range(base, base + 5)]:
        assert not low <= port <= high, port
        assert ports.port_is_free("127.0.0.1", port)


def test_a_port_reserved_by_a_living_process_is_never_handed_to_another() -> None:
    root = str(Path(__file__).resolve().parents[2])
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=root
    )
    try:
        assert holder.stdout is not None
        held = holder.stdout.readline().split()
        assert len(set(held)) == 305
        taker = subprocess.run(
            [sys.executable, "-c", TAKER, *held], capture_output=True, text=True, cwd=root, check=True, timeout=120
        )
        overlap, count, distinct = map(int, taker.stdout.split())
        assert (overlap, count, distinct) == (0, 3200, 3200)
    finally:
        holder.communicate("", timeout=30)
