"""The gateway's short-lived cache of partner token checks (see gateway/partner_auth.py).

Keys are SHA-256 digests of tokens. An entry lives at most `ttl` seconds and never past the token's
expiry, and carries tags (its app, its grant, its app and user) by which events evict it; an
answer fetched before an eviction is not cached after it (generation counter).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field


@dataclass(frozen=True)
class PartnerRequester:
    client_id: str
    user_id: str  # empty for an app-level (client credentials) token
    scopes: frozenset[str]
    grant_id: str
    app_name: str
    bot_user_id: str
    expires_at_ms: int


@dataclass
class _Entry:
    value: PartnerRequester | None  # None: a cached "inactive"
    expires: float  # monotonic
    tags: tuple[str, ...] = ()


@dataclass
class PartnerTokenCache:
    ttl: float = 30.0
    negative_ttl: float = 2.0
    max_entries: int = 100_000
    generation: int = 0
    _entries: dict[str, _Entry] = field(default_factory=dict)
    _tagged: dict[str, set[str]] = field(default_factory=dict)

    def get(self, key: str) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is not None and entry.expires <= time.monotonic():
            self._drop(key)
            return None
        return entry

    def put(self, key: str, value: PartnerRequester | None, generation: int) -> None:
        """Remember `value` unless an eviction happened since `generation` was read."""
        if generation != self.generation:
            return
        lifetime = self.ttl if value is not None else self.negative_ttl
        if value is not None:
            lifetime = min(lifetime, value.expires_at_ms / 1000 - time.time())
        if lifetime <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self.clear()
        tags: tuple[str, ...] = ()
        if value is not None:
            tags = (f"app:{value.client_id}", f"grant:{value.grant_id}", f"user:{value.client_id}\n{value.user_id}")
        self._drop(key)
        self._entries[key] = _Entry(value, time.monotonic() + lifetime, tags)
        for tag in tags:
            self._tagged.setdefault(tag, set()).add(key)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        for tag in entry.tags if entry else ():
            keys = self._tagged.get(tag)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._tagged[tag]

    def evict(self, tag: str) -> None:
        self.generation += 1
        for key in list(self._tagged.get(tag, ())):
            self._drop(key)

    def evict_inactive(self) -> None:
        """Forget cached "inactive" answers (an app was resumed: some of them are live again)."""
        self.generation += 1
        for key in [k for k, e in self._entries.items() if e.value is None]:
            self._drop(key)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._tagged.clear()
