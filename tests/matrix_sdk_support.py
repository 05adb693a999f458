"""Running the matrix-js-sdk scenario (tests/e2e/js/matrix_sdk_scenario.mjs) against a homeserver."""

from __future__ import annotations

import asyncio
import os
import shutil
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
SCENARIO = ROOT / "tests" / "e2e" / "js" / "matrix_sdk_scenario.mjs"
# The scenario's steps in order (what the e2e test and the Synapse run both go through).
SCENARIO_STEPS = [
    "prepared",
    "push_rules_read",
    "direct_chat",
    "message",
    "edit",
    "reply",
    "display_name",
    "typing",
    "read_marker",
    "push_rule_changed",
]
# Steps that use Laiwang's own extensions and cannot run on another homeserver (none so far).
LAIWANG_ONLY_STEPS: tuple[str, ...] = ()
SYNAPSE_PYTHON = ROOT / "var" / "bench" / "synapse-venv" / "bin" / "python"


async def run_scenario(base_url: str, steps: list[str], *, timeout: float = 120.0) -> dict[str, dict[str, Any]]:
    """Run the named steps; their reports by step name. Fails with the SDK's output if a step fails."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed; the matrix-js-sdk tests need it (npm ci installs the SDK)")
    process = await asyncio.create_subprocess_exec(
        node,
        str(SCENARIO),
        base_url,
        *steps,
        cwd=ROOT,
        env={**os.environ, "NODE_NO_WARNINGS": "1"},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        stdout, stderr = await asyncio.wait_for(process.communicate(), timeout)
    except TimeoutError:
        process.kill()
        await process.wait()
        raise AssertionError(f"the matrix-js-sdk scenario did not finish within {timeout:g} s") from None
    reports: dict[str, dict[str, Any]] = {}
    for line in stdout.decode().splitlines():
        if line.startswith("@@ "):
            report = orjson.loads(line[3:])
            reports[report.pop("step")] = report
    failed = {name: r for name, r in reports.items() if not r.get("ok")}
    tail = stderr.decode()[-4000:]
    if failed or process.returncode != 0:
        raise AssertionError(f"scenario failed (exit {process.returncode}): {failed}\n--- SDK log (tail) ---\n{tail}")
    missing = [name for name in steps if name not in reports]
    if missing:
        raise AssertionError(f"steps did not run: {missing}\n--- SDK log (tail) ---\n{tail}")
    return reports
