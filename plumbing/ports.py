"""Loopback port helpers: is a port free, and finding free ones (tests, benchmarks, `make run`).

A port "found free" is only a promise until its child process binds it. Two things broke that
promise when two test suites ran side by side: the kernel hands the same ephemeral ports to
`bind(0)` callers and to every outgoing connection's source port, so a port chosen by binding 0
was often taken by some connection before the child bound it; and the other suite could choose the
same port at the same moment. So ports are chosen below the ephemeral range (outgoing connections
never use those), from slots of SLOT_SIZE ports that one process at a time holds: a slot is held
by an advisory lock on its file, which the kernel drops when the process dies, however it dies.
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
import tempfile
from pathlib import Path

# Below Linux's default ephemeral range (32768-60999), away from the well-known low ports and from
# the 2xxxx bases developers give their own `make run` stacks.
RANGE_LOW, RANGE_HIGH = 10_000, 20_000
SLOT_SIZE = 100
_LOCK_DIR = Path(tempfile.gettempdir()) / "laiwang-port-slots"


class _Slots:
    """The slots this process holds, and the next port to hand out from the newest one."""

    def __init__(self) -> None:
        self.fds: list[int] = []  # lock files kept open while this process lives
        self.next = 0
        self.end = 0
        self.pid = 0

    def take(self, count: int) -> int:
        """The first of `count` consecutive ports of a held slot, not handed out before here."""
        if self.pid != os.getpid():  # a forked child shares its parent's locks: it takes slots of its own
            self.pid, self.next, self.end = os.getpid(), 0, 0
        if self.next + count > self.end:
            self._new_slot()
        first = self.next
        self.next += count
        return first

    def _new_slot(self) -> None:
        _LOCK_DIR.mkdir(mode=0o1777, exist_ok=True)
        slots = list(range(RANGE_LOW // SLOT_SIZE, RANGE_HIGH // SLOT_SIZE))
        random.shuffle(slots)
        for slot in slots:
            fd = os.open(_LOCK_DIR / str(slot), os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # another process holds it (or this one did already)
                os.close(fd)
                continue
            self.fds.append(fd)
            self.next, self.end = slot * SLOT_SIZE, (slot + 1) * SLOT_SIZE
            return
        raise RuntimeError(f"every port slot between {RANGE_LOW} and {RANGE_HIGH} is held")


_slots = _Slots()


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A free port outside the ephemeral range, which no other process using this module is given."""
    return free_port_block(1, host)


def free_port_block(count: int, host: str = "127.0.0.1") -> int:
    """The first of `count` consecutive free ports, handed out as `free_port` hands out one."""
    if not 0 < count <= SLOT_SIZE:
        raise ValueError(f"a block has 1 to {SLOT_SIZE} ports")
    for _ in range(RANGE_HIGH - RANGE_LOW):
        base = _slots.take(count)
        # A process that does not use this module (a developer's stack, anything else) may hold one.
        if all(port_is_free(host, base + i) for i in range(count)):
            return base
    raise RuntimeError(f"no block of {count} free ports")
