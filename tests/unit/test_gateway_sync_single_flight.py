"""Identical initial syncs running at once share one computation (gateway.routes.sync.SingleFlight)."""

from __future__ import annotations

import asyncio

import pytest

from gateway.routes.sync import SingleFlight

pytestmark = pytest.mark.unit


async def test_concurrent_identical_requests_share_one_computation_and_later_ones_compute_again() -> None:
    flights = SingleFlight()
    release = asyncio.Event()
    computed: list[str] = []
    both_started = asyncio.Event()

    async def compute(answer: str) -> str:
        computed.append(answer)
        if len(computed) == 2:
            both_started.set()
        await release.wait()
        return answer

    same = [asyncio.ensure_future(flights.run(b"alice", lambda: compute("first"))) for _ in range(8)]
    other = asyncio.ensure_future(flights.run(b"bob", lambda: compute("bob's")))
    await both_started.wait()
    release.set()
    assert await asyncio.gather(*same) == ["first"] * 8
    assert await other == "bob's"
    assert sorted(computed) == ["bob's", "first"] and len(flights) == 0
    # Finished: the next request is computed afresh.
    assert await flights.run(b"alice", lambda: compute("second")) == "second"


async def test_a_caller_going_away_does_not_cancel_the_others_and_errors_reach_everyone() -> None:
    flights = SingleFlight()
    release = asyncio.Event()

    async def compute() -> str:
        await release.wait()
        return "answer"

    leaving = asyncio.ensure_future(flights.run(b"k", compute))
    staying = asyncio.ensure_future(flights.run(b"k", compute))
    await asyncio.sleep(0)
    leaving.cancel()
    release.set()
    assert await staying == "answer"
    with pytest.raises(asyncio.CancelledError):
        await leaving

    async def failing() -> str:
        await asyncio.sleep(0)
        raise RuntimeError("messaging said no")

    results = await asyncio.gather(*(flights.run(b"k", failing) for _ in range(3)), return_exceptions=True)
    assert [str(r) for r in results] == ["messaging said no"] * 3
