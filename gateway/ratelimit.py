"""Token-bucket rate limits kept in the gateway process.

Each replica limits on its own, so N replicas allow up to N times the configured rate; that is
accepted for now because abusive clients are sticky to one connection. Limits that must hold
across replicas (login attempts, verification codes) are enforced again inside the services.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from gateway.matrix import MatrixError


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, per_second: float, burst: int, max_keys: int = 100_000) -> None:
        self.per_second = per_second
        self.burst = burst
        self._max_keys = max_keys
        self._buckets: dict[str, _Bucket] = {}

    def retry_after(self, key: str, cost: float = 1.0) -> float:
        """Take `cost` tokens for `key`; 0 when allowed, else seconds until it would be."""
        bucket = self._refilled(key)
        if bucket.tokens >= cost:
            bucket.tokens -= cost
            return 0.0
        return (cost - bucket.tokens) / self.per_second

    def wait(self, key: str, cost: float = 1.0) -> float:
        """Seconds until `key` could spend `cost` tokens (0: now), taking none."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return 0.0
        tokens = min(self.burst, bucket.tokens + (time.monotonic() - bucket.updated) * self.per_second)
        return max(0.0, (cost - tokens) / self.per_second)

    def _refilled(self, key: str) -> _Bucket:
        now = time.monotonic()
        bucket = self._buckets.get(key)
        if bucket is None:
            if len(self._buckets) >= self._max_keys:
                self._evict_full(now)
            bucket = self._buckets[key] = _Bucket(float(self.burst), now)
        bucket.tokens = min(self.burst, bucket.tokens + (now - bucket.updated) * self.per_second)
        bucket.updated = now
        return bucket

    def check(self, key: str, cost: float = 1.0) -> None:
        """Raise 429 M_LIMIT_EXCEEDED with `retry_after_ms` when `key` is over its rate."""
        wait = self.retry_after(key, cost)
        if wait > 0:
            raise MatrixError(429, "M_LIMIT_EXCEEDED", "too many requests", retry_after_ms=int(wait * 1000) + 1)

    def _evict_full(self, now: float) -> None:
        # Buckets that have refilled carry no information; drop them first.
        refilled = [
            key for key, b in self._buckets.items() if b.tokens + (now - b.updated) * self.per_second >= self.burst
        ]
        for key in refilled:
            del self._buckets[key]
        if len(self._buckets) >= self._max_keys:
            self._buckets.clear()
