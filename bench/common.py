"""Small helpers every benchmark uses: percentiles, process memory, batched inserts."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (nearest rank) of `values`."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def rss_mb(pid: int) -> float:
    """Resident memory of a process, in MiB (Linux)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def insert_in_batches(collection: Any, documents: list[dict[str, Any]], batch: int = 10_000) -> None:
    """Seed a collection quickly: unordered insert_many in batches."""
    for start in range(0, len(documents), batch):
        await collection.insert_many(documents[start : start + batch], ordered=False)
