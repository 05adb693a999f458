"""Not collected by the suite (no test_ prefix): test_hang_in_c.py runs it in a pytest of its own."""

from __future__ import annotations

import ctypes


def test_stuck_in_a_futex_wait() -> None:
    libc = ctypes.CDLL(None)
    mutex = ctypes.create_string_buffer(64)  # all zero bytes: PTHREAD_MUTEX_INITIALIZER
    libc.pthread_mutex_lock(mutex)
    libc.pthread_mutex_lock(mutex)  # a deadlock in C, as in fork(): signals do not end the wait
