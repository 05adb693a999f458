"""A stock matrix-js-sdk (37.5.0, the library inside Element) against the real stack.

The scenario is tests/e2e/js/matrix_sdk_scenario.mjs: the SDK is started as an app starts it
(`startClient()`) with nothing answered by hand, and each step reports what it saw. The same
script runs against Synapse in bench/matrix_sdk_synapse.py, which proves the scenario itself.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.conftest import RunningStack, launch_stack
from tests.matrix_sdk_support import LAIWANG_ONLY_STEPS, SCENARIO_STEPS, SYNAPSE_PYTHON, run_scenario

pytestmark = pytest.mark.e2e

DEFAULT_OVERRIDE = [
    ".m.rule.master",
    ".m.rule.suppress_notices",
    ".m.rule.invite_for_me",
    ".m.rule.member_event",
    ".m.rule.is_user_mention",
    ".m.rule.contains_display_name",
    ".m.rule.is_room_mention",
    ".m.rule.roomnotif",
    ".m.rule.tombstone",
    ".m.rule.reaction",
    ".m.rule.room.server_acl",
    ".m.rule.suppress_edits",
]
DEFAULT_UNDERRIDE = [
    ".m.rule.call",
    ".m.rule.encrypted_room_one_to_one",
    ".m.rule.room_one_to_one",
    ".m.rule.message",
    ".m.rule.encrypted",
]


@pytest.fixture(scope="module")
async def sdk_stack(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningStack]:
    env = {"MESSAGING_INVITE_POLICY": "anyone", "GATEWAY_SEND_RATE_PER_SECOND": "1000"}
    async with launch_stack(mongo_uri, tmp_path_factory.mktemp("sdk-stack"), env=env) as running:
        yield running


async def test_start_client_reaches_prepared_and_reads_default_push_rules(sdk_stack: RunningStack) -> None:
    results = await run_scenario(sdk_stack.base_url, ["prepared", "push_rules_read"])
    assert results["prepared"]["alice"].startswith("@alice")
    rules = results["push_rules_read"]
    # The SDK adds a few unstable-prefixed defaults of its own when missing; ours are all there, in order.
    assert [r for r in rules["override"] if r.startswith(".m.")] == DEFAULT_OVERRIDE
    assert [r for r in rules["underride"] if r.startswith(".m.")] == DEFAULT_UNDERRIDE
    assert rules["content"] == [".m.rule.contains_user_name"]


async def test_a_normal_session_between_two_users(sdk_stack: RunningStack) -> None:
    results = await run_scenario(sdk_stack.base_url, SCENARIO_STEPS)
    assert results["message"]["body"] == "hello Bob"
    assert results["edit"]["body"] == "hello Bob!"
    reply = results["reply"]
    assert reply["parent_body"] == "hello Bob"  # the original; the edit is named beside it
    assert reply["edited_by"] == results["edit"]["edit_id"]
    assert reply["edits"] == [results["edit"]["edit_id"]]
    assert results["display_name"]["name"] == "Alice Wang"
    assert results["typing"]["seen"] is True
    assert results["read_marker"]["unread"] == 0
    assert results["push_rule_changed"]["room_rules"] == [results["direct_chat"]["room_id"]]


@pytest.mark.skipif(
    not SYNAPSE_PYTHON.exists(),
    reason="Synapse is not installed (make bench-chat or python -m bench.matrix_sdk_synapse)",
)
async def test_the_same_scenario_passes_against_synapse() -> None:
    """Proves the scenario itself against the reference homeserver, installed as the chat bench does."""
    from bench.chat_bench import synapse_server

    async with synapse_server() as (url, _version):
        results = await run_scenario(url, [s for s in SCENARIO_STEPS if s not in LAIWANG_ONLY_STEPS])
    assert results["edit"]["body"] == "hello Bob!"
    assert results["display_name"]["name"] == "Alice Wang"
