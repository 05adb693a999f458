"""The sample partner app (apps/sample, its own process) driven over real HTTP: it registers itself,
a person connects it through the consent page (code + PKCE), subscribes, writes to it, and it
answers with a card after verifying the webhook's signature."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest

from plumbing.ports import free_port
from plumbing.process import with_parent_death
from tests.conftest import launch_stack
from tests.matrix_support import register_user
from tests.open_platform_support import Browser
from tests.support import eventually, stop_process

pytestmark = pytest.mark.e2e

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
async def sample(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[tuple[Any, str]]:
    data = tmp_path_factory.mktemp("sample")
    async with launch_stack(mongo_uri, data / "stack", {"OPEN_PLATFORM_ALLOW_LOOPBACK_WEBHOOKS": "true"}) as stack:
        port = free_port()
        env = {
            **os.environ,
            "LAIWANG_URL": stack.base_url,
            "SAMPLE_PORT": str(port),
            "SAMPLE_STATE_FILE": str(data / "sample.json"),
        }
        log = open(data / "sample.log", "wb")  # noqa: SIM115, ASYNC230 - once per module, closed below
        process = subprocess.Popen(  # noqa: ASYNC220 - started once; it runs beside the test
            with_parent_death([sys.executable, "-m", "apps.sample"]), env=env, cwd=ROOT, stdout=log, stderr=log
        )
        url = f"http://127.0.0.1:{port}"
        try:
            async with aiohttp.ClientSession() as http:

                async def up() -> bool:
                    try:
                        async with http.get(f"{url}/status") as r:
                            return r.status == 200
                    except aiohttp.ClientError:
                        return False

                await eventually(up, timeout=60)
            yield stack, url
        finally:
            stop_process(process)
            log.close()


async def test_the_sample_app_connects_and_answers_a_message_with_a_card(sample) -> None:
    stack, url = sample
    base = stack.base_url
    person = await register_user(base)
    browser = Browser(base)
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{url}/status") as r:
                client_id = (await r.json())["client_id"]
            # Connect: the app sends the browser to Laiwang's consent page, the person allows.
            async with browser.http.get(f"{url}/connect", allow_redirects=False) as r:
                assert r.status == 303
                authorize_url = r.headers["Location"]
            assert authorize_url.startswith(f"{base}/_laiwang/oauth2/authorize?") and "code_challenge=" in authorize_url
            page = await browser.consent(authorize_url, person)
            assert "Hotpot Finder (sample)" in page
            callback = await browser.decide(page, "approve")
            async with browser.http.get(callback) as r:
                assert r.status == 200 and person.user_id in await r.text()

            # Subscribe, write to the app's bot, and get a card back.
            async with http.put(f"{base}/_laiwang/client/v1/subscriptions/{client_id}", headers=person.headers) as r:
                room_id = (await r.json())["room_id"]
            async with http.put(
                f"{base}/_matrix/client/v3/rooms/{quote(room_id)}/send/m.room.message/q1",
                json={"msgtype": "m.text", "body": "hotpot near me?"},
                headers=person.headers,
            ) as r:
                assert r.status == 200

            async def cards() -> list[dict[str, Any]]:
                async with http.get(
                    f"{base}/_matrix/client/v3/rooms/{quote(room_id)}/messages?dir=b&limit=20", headers=person.headers
                ) as r:
                    return [e for e in (await r.json())["chunk"] if e["type"] == "cn.laiwang.app_card"]

            async def answered() -> bool:
                return bool(await cards())

            await eventually(answered, timeout=60)
            [card] = await cards()
            assert card["content"]["card"]["description"] == "You asked: hotpot near me?"
            assert card["content"]["body"].startswith("Spicy hotpot, 2 people")
            async with http.get(f"{url}/status") as r:
                status = await r.json()
            assert status["users"] == [person.user_id] and status["rejected_deliveries"] == 0
            assert status["answered_with_cards"] == [card["event_id"]]
            assert {"subscription.created", "message.received"} <= {e["type"] for e in status["events"]}
    finally:
        await browser.close()
