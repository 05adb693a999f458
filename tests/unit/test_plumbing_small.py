"""Ids, rate limits and consumer backoff."""

from __future__ import annotations

import time

import pytest

from gateway.matrix import MatrixError
from gateway.ratelimit import RateLimiter
from plumbing.grpc_context import deadline_var, effective_timeout
from plumbing.ids import sortable_id
from plumbing.jetstream import backoff_seconds

pytestmark = pytest.mark.unit


def test_sortable_ids_are_unique_and_ordered_by_time() -> None:
    first = sortable_id()
    time.sleep(0.002)
    later = [sortable_id() for _ in range(1000)]
    assert len(set(later)) == 1000
    assert all(len(i) == 26 for i in later)
    assert all(first < i for i in later)
    assert later == sorted(later)  # in the order they were made, even within one millisecond


def test_rate_limiter_allows_the_burst_then_asks_to_wait() -> None:
    limiter = RateLimiter(per_second=1.0, burst=3)
    for _ in range(3):
        limiter.check("client")
    with pytest.raises(MatrixError) as raised:
        limiter.check("client")
    assert raised.value.status == 429
    assert raised.value.errcode == "M_LIMIT_EXCEEDED"
    assert 0 < raised.value.extra["retry_after_ms"] <= 1001
    limiter.check("someone-else")  # keys are independent


def test_rate_limiter_refills_over_time() -> None:
    limiter = RateLimiter(per_second=100.0, burst=1)
    limiter.check("k")
    assert limiter.retry_after("k") > 0
    time.sleep(0.03)
    assert limiter.retry_after("k") == 0


def test_rate_limiter_wait_looks_without_spending() -> None:
    limiter = RateLimiter(per_second=0.01, burst=2)
    assert limiter.wait("k") == 0  # an unseen key has its whole burst
    for _ in range(5):
        assert limiter.wait("k") == 0  # looking spends nothing
    limiter.retry_after("k")
    limiter.retry_after("k")
    assert 99 < limiter.wait("k") <= 100
    assert limiter.retry_after("k") > 0


def test_rate_limiter_bounds_its_memory() -> None:
    limiter = RateLimiter(per_second=1.0, burst=1, max_keys=10)
    for i in range(50):
        limiter.retry_after(f"k{i}")
    assert len(limiter._buckets) <= 10


def test_backoff_grows_and_is_capped() -> None:
    assert [backoff_seconds(n) for n in (1, 2, 3, 4)] == [0.5, 1.0, 2.0, 4.0]
    assert backoff_seconds(30) == 60.0


def test_downstream_timeout_never_exceeds_what_the_caller_has_left() -> None:
    assert effective_timeout(5.0) == 5.0
    token = deadline_var.set(time.monotonic() + 1.0)
    try:
        assert effective_timeout(5.0) <= 1.0
        assert effective_timeout(0.2) == 0.2
        assert effective_timeout(None) <= 1.0
    finally:
        deadline_var.reset(token)
