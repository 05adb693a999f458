"""The matrix-js-sdk scenario (tests/e2e/js/matrix_sdk_scenario.mjs) against Synapse, the reference
homeserver, installed as the chat benchmark installs it (var/bench/synapse-venv, SQLite).

It proves the scenario, not our reading of it: every step the e2e test runs against Laiwang must
pass here too. `python -m bench.matrix_sdk_synapse` prints each step's report; the e2e module runs
the same against Synapse when the virtualenv exists (tests/e2e/test_matrix_js_sdk.py).
"""

from __future__ import annotations

from bench.chat_bench import synapse_server
from bench.common import run as bench_run
from tests.matrix_sdk_support import LAIWANG_ONLY_STEPS, SCENARIO_STEPS, run_scenario


async def main() -> None:
    async with synapse_server() as (url, version):
        steps = [s for s in SCENARIO_STEPS if s not in LAIWANG_ONLY_STEPS]
        results = await run_scenario(url, steps)
        print(f"Synapse {version}: {len(results)} steps passed")
        for name, report in results.items():
            print(f"  {name}: {report}")


if __name__ == "__main__":
    bench_run(main())
