"""The README's first ten minutes, run as written against a fresh stack with `make run`'s settings.

1. "Two people become friends by hand": the curl + jq block, verbatim, with bash (the stack's URL
   and SMS log given through the LW and SMS_LOG variables the block reads); Bob reads "Hello Bob".
2. "With matrix-nio": the Python block, verbatim but for the URL, logs in as Alice from step 1
   and prints the direct chat.
3. `laiwang demo` as `make demo` runs it, then the same Python block logged in as a printed demo
   user shows the demo conversation.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

from plumbing.dev.demo import CHAT
from plumbing.dev.stack import RunningStack
from tests.conftest import launch_stack

pytestmark = pytest.mark.e2e

README = (Path(__file__).resolve().parents[2] / "README.md").read_text()
LAIWANG = Path(sys.executable).parent / "laiwang"
README_URL = "http://127.0.0.1:8008"
USER_LINE = re.compile(r"^(@\S+)\s+(\S+)\s+(\+\d+)$", re.MULTILINE)


def readme_block(heading: str, language: str) -> str:
    """The first ```language block after `heading` in the README."""
    section = README[README.index(heading) :]
    match = re.search(rf"```{language}\n(.*?)```", section, re.DOTALL)
    assert match, f"the README lost its {language} block after {heading!r}"
    return match.group(1)


async def run(argv: list[str], env: dict[str, str], hang_bound: float = 120) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    try:
        output, _ = await asyncio.wait_for(process.communicate(), hang_bound)
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    text = output.decode()
    assert process.returncode == 0, (argv[:3], text)
    return text


async def matrix_nio_block(stack: RunningStack, user_id: str = "", password: str = "") -> str:
    """The README's matrix-nio example against `stack`, as `user_id` if given (else the block's Alice)."""
    code = readme_block("**With matrix-nio**", "python")
    assert README_URL in code and '"@alice:localhost"' in code and '"alice-password"' in code, code
    code = code.replace(README_URL, stack.base_url)
    if user_id:
        code = code.replace('"@alice:localhost"', repr(user_id)).replace('"alice-password"', repr(password))
    return await run([sys.executable, "-c", code], dict(os.environ))


@pytest.mark.timeout(600)  # a fresh stack, the walkthrough and the demo, on a loaded machine
@pytest.mark.skipif(not shutil.which("jq") or not shutil.which("curl"), reason="the walkthrough uses curl and jq")
async def test_the_readme_first_ten_minutes_as_written(mongo_uri: str, tmp_path: Path) -> None:
    # SERVER_NAME as `make run` has it: the README's user ids end in :localhost.
    async with launch_stack(mongo_uri, tmp_path / "stack", {"SERVER_NAME": "localhost"}) as stack:
        sms_log = stack.config.data_dir / "dev-sms.log"

        curl = await run(
            ["bash", "-euo", "pipefail", "-c", readme_block("**Two people become friends by hand.**", "sh")],
            {**os.environ, "LW": stack.base_url, "SMS_LOG": str(sms_log)},
        )
        assert curl.rstrip().endswith("Hello Bob"), curl  # what Bob reads (curl adds no newlines)

        alice = await matrix_nio_block(stack)
        assert "Logged in as @alice:localhost" in alice and "['Hello Bob']" in alice, alice

        demo = await run(
            [str(LAIWANG), "demo"],
            {
                **{k: v for k, v in os.environ.items() if k != "AUTH_DEV_SMS_LOG"},
                "GATEWAY_PORT": str(stack.config.ports.gateway),
                "LAIWANG_DATA_DIR": str(stack.config.data_dir),
            },
        )
        users = {user_id: password for user_id, password, _ in USER_LINE.findall(demo)}
        assert "@demo_bob:localhost" in users, demo
        bob = await matrix_nio_block(stack, "@demo_bob:localhost", users["@demo_bob:localhost"])
        room_id = re.search(r"direct room \(Alice, Bob\): (!\S+)", demo).group(1)
        room_line = next((line for line in bob.splitlines() if line.startswith(room_id)), "")
        assert all(repr(text) in room_line for _, _, text in CHAT), bob  # the demo chat, as nio prints it
