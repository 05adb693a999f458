"""Every benchmark runs through bench.common.run, so Ctrl-C stops its stack at once (e2e: test_bench_interrupt)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

BENCH = Path(__file__).resolve().parents[2] / "bench"


def test_every_benchmark_main_uses_the_shared_runner() -> None:
    modules = [*sorted(BENCH.glob("*_bench.py")), BENCH / "matrix_sdk_synapse.py"]
    assert len(modules) >= 5
    bypassing = [p.name for p in modules if "asyncio.run(" in p.read_text() or "bench_run(" not in p.read_text()]
    assert not bypassing, f"run these through bench.common.run, not asyncio.run: {bypassing}"
