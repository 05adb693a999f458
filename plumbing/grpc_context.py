"""Per-call context that crosses process boundaries: request id and deadline.

The server interceptor fills these context variables from the incoming call; the client
interceptor copies them onto outgoing calls, so a request id and the caller's remaining time
follow a request through every service it touches.
"""

from __future__ import annotations

import contextvars
import time

REQUEST_ID_METADATA_KEY = "x-request-id"

# Absolute monotonic time by which the current inbound call must finish, if the caller set one.
deadline_var: contextvars.ContextVar[float | None] = contextvars.ContextVar("deadline", default=None)


def remaining_seconds() -> float | None:
    deadline = deadline_var.get()
    if deadline is None:
        return None
    return max(0.0, deadline - time.monotonic())


def effective_timeout(requested: float | None) -> float | None:
    """The shorter of what the caller of this hop asked for and what our own caller has left."""
    remaining = remaining_seconds()
    if remaining is None:
        return requested
    if requested is None:
        return remaining
    return min(requested, remaining)
