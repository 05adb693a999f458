"""While the Mongo-wire server is down, requests get a retryable 503 (not 500), and the same
request succeeds once the store is back."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from plumbing.dev.stack import StackConfig, running_stack
from plumbing.process import with_parent_death
from tests.conftest import _wait_for_port
from tests.matrix_support import register_user
from tests.support import eventually, free_port, stop_process

pytestmark = pytest.mark.e2e

BIN = Path(sys.executable).parent


class Store:
    """A Mongo-wire server this test may stop and start again on the same port and data."""

    def __init__(self, data: Path) -> None:
        self.port = free_port()
        self.data = data
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}/?directConnection=true"

    def start(self) -> None:
        self.process = subprocess.Popen(
            with_parent_death(
                [
                    str(BIN / "secantusd-py"),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--storage-path",
                    str(self.data),
                    "--log-level",
                    "WARNING",
                ]
            ),
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait_for_port(self.port, self.process, "secantusd-py")

    def stop(self) -> None:
        if self.process is not None:
            stop_process(self.process)
            self.process = None


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "mongo")
    store.start()
    yield store
    store.stop()


async def test_a_send_during_a_store_outage_is_503_with_a_retry_hint_then_succeeds(store, tmp_path) -> None:
    config = StackConfig.on_free_ports(tmp_path / "stack", store.uri)
    async with running_stack(config, {"MONGO_TIMEOUT_MS": "1000"}) as stack:
        user = await register_user(stack.base_url)
        async with aiohttp.ClientSession(headers=user.headers) as http:
            async with http.post(f"{stack.base_url}/_matrix/client/v3/createRoom", json={}) as response:
                assert response.status == 200, await response.text()
                room = (await response.json())["room_id"]
            send = f"{stack.base_url}/_matrix/client/v3/rooms/{room}/send/m.room.message/txn-outage"
            message = {"msgtype": "m.text", "body": "sent while the store was down"}

            store.stop()
            async with http.put(send, json=message) as response:
                body = await response.json()
                assert response.status == 503, body
                assert body["errcode"] == "M_UNAVAILABLE"
                assert body["retry_after_ms"] > 0
                assert int(response.headers["Retry-After"]) >= 1

            store.start()

            async def sent() -> bool:  # what a client does: retry the same request (same txn id)
                async with http.put(send, json=message) as response:
                    return response.status == 200

            await eventually(sent, timeout=20, interval=0.2)
            async with http.get(f"{stack.base_url}/_matrix/client/v3/rooms/{room}/messages?dir=b") as response:
                events = (await response.json())["chunk"]
            bodies = [e["content"].get("body") for e in events if e["type"] == "m.room.message"]
            assert bodies == ["sent while the store was down"]  # stored once, not once per retry
