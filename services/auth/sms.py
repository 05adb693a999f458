"""SMS providers: how a verification code reaches a phone.

`dev` is the only provider so far: it never contacts a phone. It appends the message to the file
named by AUTH_DEV_SMS_LOG (if set) and prints it on the process's stdout with a `DEV-SMS` marker.
That channel is deliberately separate from the service's structured logs (stderr, JSON), which
never carry a code. Production deployments plug in a real gateway behind `SmsSender`.
"""

from __future__ import annotations

import asyncio
import sys
import time
from pathlib import Path

from prometheus_client import Counter

# Labels name the provider only: never a number or a code.
SMS_SENT = Counter("auth_sms_sent_total", "Verification SMS handed to the SMS provider.", ["provider"])


class DevSmsSender:
    """Development provider: the message goes to a dev-only file and to stdout, marked DEV-SMS."""

    def __init__(self, log_path: Path | None) -> None:
        self._log_path = log_path
        if log_path is not None:
            log_path.parent.mkdir(parents=True, exist_ok=True)

    async def send(self, msisdn: str, text: str) -> None:
        line = f"DEV-SMS {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())} to {msisdn}: {text}\n"
        if self._log_path is not None:
            await asyncio.to_thread(self._append, line)
        sys.stdout.write(line)
        sys.stdout.flush()
        SMS_SENT.labels("dev").inc()

    def _append(self, line: str) -> None:
        assert self._log_path is not None
        with self._log_path.open("a", encoding="utf-8") as sink:
            sink.write(line)
