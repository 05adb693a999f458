"""A test hung inside C code ends the run with every thread's stack, soon after the per-test timeout.

pytest-timeout's signal method alone never fires there: its handler runs only when the main thread
is back in Python (issue 9, the test suite: the fork() hang stopped a run for minutes).
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_a_hang_in_c_is_stopped_with_the_stacks_of_every_thread() -> None:
    run = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "tests/integration/stuck_in_c.py",
            "-q",
            "-p",
            "no:cacheprovider",
            "-o",
            "timeout=1",
        ],
        cwd=Path(__file__).resolve().parents[2],
        env={**os.environ, "LAIWANG_TEST_HARD_STOP_GRACE_SECONDS": "2"},
        capture_output=True,
        text=True,
        timeout=120,  # without the watchdog the inner run never ends: TimeoutExpired here
    )
    assert run.returncode != 0
    assert "Timeout (0:00:03)!" in run.stderr and "test_stuck_in_a_futex_wait" in run.stderr, run.stderr[-3000:]
