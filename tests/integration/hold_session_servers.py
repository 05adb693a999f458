"""Not collected by the suite (no test_ prefix): test_interrupted_run.py runs it in a pytest of its
own, which holds the session-wide NATS and Mongo-wire servers until it is interrupted."""

from __future__ import annotations

import os
import threading
from pathlib import Path


def test_hold_the_session_servers(mongo_uri: str, nats_url: str) -> None:
    Path(os.environ["LAIWANG_HOLD_READY"]).write_text(f"{mongo_uri} {nats_url}")
    threading.Event().wait(600)  # until the outer test interrupts this run
