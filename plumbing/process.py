"""How a parent keeps its children from outliving it.

Production code (`laiwang serve`, `plumbing.launch`) uses this module; the dev-only stack in
`plumbing/dev/` builds on it.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import subprocess
import sys

_PR_SET_PDEATHSIG = 1


def terminate_with_parent() -> None:
    """Ask Linux to send this process SIGTERM when its parent dies (a no-op elsewhere).

    The supervisor uses it for itself (so SIGTERM to `make`, which does not forward signals,
    still stops the stack) and for every child (so nothing outlives a killed supervisor).
    """
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def with_parent_death(argv: list[str]) -> list[str]:
    """`argv` run through `plumbing.launch`, so it gets SIGTERM if this process dies.

    Start the result without `preexec_fn` (see `plumbing.launch` for why).
    """
    return [sys.executable, "-m", "plumbing.launch", str(os.getpid()), *argv]


def stop_subprocess(process: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM a synchronously started process, then SIGKILL if it has not stopped within `timeout`."""
    process.terminate()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
