"""The JetStream streams of the system, declared in code.

Stream names and subjects are part of the contract between services (like `protos/`): the
producer owns its stream, and a consumer may declare the same stream so that start-up order does
not matter. Payloads are the messages of `laiwang.events.v1`.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class StreamSpec:
    name: str
    subjects: tuple[str, ...]
    max_age_seconds: int = 7 * 24 * 3600
    duplicate_window_seconds: int = 120


AUTH = StreamSpec("AUTH", ("laiwang.auth.>",))
CONTACTS = StreamSpec("CONTACTS", ("laiwang.contacts.>",))
MESSAGING = StreamSpec("MESSAGING", ("laiwang.messaging.>",))
ZHADUI = StreamSpec("ZHADUI", ("laiwang.zhadui.>",))
OPEN_PLATFORM = StreamSpec("OPEN_PLATFORM", ("laiwang.open_platform.>",))

ALL = (AUTH, CONTACTS, MESSAGING, ZHADUI, OPEN_PLATFORM)
