"""`make run` with SAMPLE_APP=true also runs the sample partner app, after the gateway, with
webhooks to loopback allowed for it; without it, neither."""

from __future__ import annotations

from pathlib import Path

import pytest

from plumbing.config import Env
from plumbing.dev.stack import StackConfig, required_ports, stack_specs

pytestmark = pytest.mark.unit


def config(tmp_path: Path, **env: str) -> StackConfig:
    return StackConfig.from_env(Env({"LAIWANG_DATA_DIR": str(tmp_path), **env}))


def test_sample_app_is_started_last_with_loopback_webhooks(tmp_path: Path) -> None:
    specs = stack_specs(config(tmp_path, SAMPLE_APP="true", SAMPLE_PORT="18090"))
    names = [s.name for s in specs]
    assert names[-2:] == ["gateway", "sample-app"]
    sample = specs[-1]
    assert sample.argv[-2:] == ["-m", "apps.sample"] and sample.env["SAMPLE_PORT"] == "18090"
    assert sample.env["LAIWANG_URL"] == "http://127.0.0.1:8008"
    [open_platform] = [s for s in specs if s.name == "open_platform"]
    assert open_platform.env["OPEN_PLATFORM_ALLOW_LOOPBACK_WEBHOOKS"] == "true"
    assert (18090, "SAMPLE_PORT") in required_ports(config(tmp_path, SAMPLE_APP="true", SAMPLE_PORT="18090"))


def test_without_it_no_sample_and_no_loopback_webhooks(tmp_path: Path) -> None:
    specs = stack_specs(config(tmp_path))
    assert "sample-app" not in [s.name for s in specs]
    [open_platform] = [s for s in specs if s.name == "open_platform"]
    assert "OPEN_PLATFORM_ALLOW_LOOPBACK_WEBHOOKS" not in open_platform.env
