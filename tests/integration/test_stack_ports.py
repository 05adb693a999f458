"""A test stack whose port was taken before its child bound it is started again on other ports.

Ports are reserved among the processes that use plumbing.ports, but anything else can still bind
one in between; the fixture then retries instead of failing the test (issue 9, the test suite).
"""

from __future__ import annotations

import dataclasses
import socket
from pathlib import Path

import aiohttp
import pytest

import tests.conftest as fixtures
from plumbing.dev.stack import StackConfig

pytestmark = pytest.mark.integration


async def test_a_stack_whose_nats_port_was_taken_starts_again_elsewhere(
    mongo_uri: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))  # bound, not listening: a bind there fails, a connect is refused
        taken = squatter.getsockname()[1]
        chosen: list[StackConfig] = []
        real = fixtures.stack_config

        def first_on_the_taken_port(data_dir: Path, uri: str) -> StackConfig:
            config = real(data_dir, uri)
            if not chosen:
                config = dataclasses.replace(config, ports=dataclasses.replace(config.ports, nats=taken))
            chosen.append(config)
            return config

        monkeypatch.setattr(fixtures, "stack_config", first_on_the_taken_port)
        async with fixtures.launch_stack(mongo_uri, tmp_path / "stack") as running:
            assert [c.ports.nats == taken for c in chosen] == [True, False]
            assert "address already in use" in (tmp_path / "stack" / "stack-attempt-1.log").read_text()
            async with aiohttp.ClientSession() as http, http.get(f"{running.base_url}/healthz") as response:
                assert response.status == 200
