"""The gateway's short-lived cache of token introspection answers.

Keys are SHA-256 digests of access tokens (raw tokens are never kept). An entry lives at most
`ttl` seconds and never past the token's own expiry; it is evicted earlier by a
`laiwang.auth.token_revoked` event (by token id, device, or all of a user's tokens). A revocation
that races with an in-flight introspection is handled by a generation counter: an answer fetched
before an eviction is not cached after it.
"""

from __future__ import annotations

import time
from dataclasses import dataclass


@dataclass(frozen=True)
class Requester:
    """Who is making an authenticated request."""

    user_id: str
    device_id: str
    token_id: str


@dataclass(frozen=True)
class Rejection:
    """A cached negative answer (unknown, revoked or expired token)."""

    soft_logout: bool


@dataclass
class _Entry:
    value: Requester | Rejection
    expires: float  # monotonic


class TokenCache:
    def __init__(self, ttl: float = 30.0, negative_ttl: float = 2.0, max_entries: int = 200_000) -> None:
        self.ttl = ttl
        self.negative_ttl = negative_ttl
        self.max_entries = max_entries
        self.generation = 0
        self._entries: dict[str, _Entry] = {}
        self._by_token_id: dict[str, str] = {}
        self._by_user: dict[str, set[str]] = {}

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: str) -> Requester | Rejection | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.expires <= time.monotonic():
            self._drop(key)
            return None
        return entry.value

    def put(
        self, key: str, value: Requester | Rejection, generation: int, token_expires_in: float | None = None
    ) -> None:
        """Remember `value` unless an eviction happened since `generation` was read."""
        if generation != self.generation:
            return
        lifetime = self.ttl if isinstance(value, Requester) else self.negative_ttl
        if token_expires_in is not None:
            lifetime = min(lifetime, token_expires_in)
        if lifetime <= 0:
            return
        if len(self._entries) >= self.max_entries:
            self._purge()
        self._drop(key)
        self._entries[key] = _Entry(value, time.monotonic() + lifetime)
        if isinstance(value, Requester):
            self._by_token_id[value.token_id] = key
            self._by_user.setdefault(value.user_id, set()).add(key)

    def _drop(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None and isinstance(entry.value, Requester):
            self._by_token_id.pop(entry.value.token_id, None)
            keys = self._by_user.get(entry.value.user_id)
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_user[entry.value.user_id]

    def _purge(self) -> None:
        now = time.monotonic()
        for key in [k for k, e in self._entries.items() if e.expires <= now]:
            self._drop(key)
        if len(self._entries) >= self.max_entries:
            self.clear()

    # --- eviction ------------------------------------------------------------------------------

    def evict_token_ids(self, token_ids: list[str] | tuple[str, ...]) -> None:
        self.generation += 1
        for token_id in token_ids:
            key = self._by_token_id.get(token_id)
            if key is not None:
                self._drop(key)

    def evict_user(self, user_id: str, device_id: str | None = None) -> None:
        self.generation += 1
        for key in list(self._by_user.get(user_id, ())):
            entry = self._entries.get(key)
            if (
                entry is not None
                and isinstance(entry.value, Requester)
                and (device_id is None or entry.value.device_id == device_id)
            ):
                self._drop(key)

    def clear(self) -> None:
        self.generation += 1
        self._entries.clear()
        self._by_token_id.clear()
        self._by_user.clear()
