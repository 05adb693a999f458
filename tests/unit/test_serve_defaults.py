"""`laiwang serve` defaults: the README table is what the code reads, and `make run` agrees with it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from gateway.config import GatewayConfig
from plumbing.config import (
    DEFAULT_MONGO_URI,
    DEFAULT_NATS_URL,
    SERVICES,
    Env,
    ServiceConfig,
    default_address,
)
from plumbing.dev.stack import StackConfig, stack_specs

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
# `env.address("AUTH_ADDR", ...)`: the other processes a process's code calls.
ADDRESS_READ = re.compile(r'address\(\s*f?"([A-Z_{}().a-z]*_ADDR)"')


def addresses_read(process: str) -> list[str]:
    """The *_ADDR settings a process's own code reads (the gateway reads one per service)."""
    folder = ROOT / ("gateway" if process == "gateway" else f"services/{process}")
    names = {m for path in folder.glob("*.py") for m in ADDRESS_READ.findall(path.read_text())}
    if any("{" in name for name in names):  # f"{name.upper()}_ADDR" for every service
        return [f"{s.upper()}_ADDR" for s in SERVICES]
    return sorted(names)


def calls_cell(process: str) -> str:
    names = addresses_read(process)
    return ", ".join(f"`{name}={default_address(name[: -len('_ADDR')].lower())}`" for name in names) or "none"


def expected_rows() -> list[str]:
    rows = []
    for service in SERVICES:
        config = ServiceConfig.from_env(service, Env({}))
        rows.append(f"| `{service}` | `{config.grpc_port}` | `{config.metrics_port}` | {calls_cell(service)} |")
    gateway = GatewayConfig.from_env(Env({}))
    rows.append(f"| `gateway` | (`GATEWAY_PORT={gateway.port}`, `/metrics` on it) | | {calls_cell('gateway')} |")
    return rows


def test_the_readme_lists_each_process_defaults_as_the_code_reads_them() -> None:
    missing = [row for row in expected_rows() if row not in README]
    assert not missing, "README's `laiwang serve` table should read:\n" + "\n".join(expected_rows())
    for service in SERVICES:
        config = ServiceConfig.from_env(service, Env({}))
        assert (config.nats_url, config.mongo_uri, config.mongo_db) == (
            DEFAULT_NATS_URL,
            DEFAULT_MONGO_URI,
            f"laiwang_{service}",
        )
    assert GatewayConfig.from_env(Env({})).nats_url == DEFAULT_NATS_URL
    assert f"`NATS_URL={DEFAULT_NATS_URL}`" in README and f"`MONGO_URI={DEFAULT_MONGO_URI}`" in README


def test_make_run_starts_each_process_with_its_serve_defaults(tmp_path: Path) -> None:
    """`make run` with no settings passes every process exactly what it would assume alone."""
    specs = {spec.name: spec for spec in stack_specs(StackConfig.from_env(Env({"LAIWANG_DATA_DIR": str(tmp_path)})))}
    for service in SERVICES:
        alone = ServiceConfig.from_env(service, Env({}))
        under_run = ServiceConfig.from_env(service, Env(specs[service].env))
        assert (under_run.grpc_port, under_run.metrics_port, under_run.nats_url, under_run.mongo_uri) == (
            alone.grpc_port,
            alone.metrics_port,
            alone.nats_url,
            alone.mongo_uri,
        ), service
        for name in addresses_read(service):
            assert specs[service].env[name] == default_address(name[: -len("_ADDR")].lower()), (service, name)
    alone, under_run = GatewayConfig.from_env(Env({})), GatewayConfig.from_env(Env(specs["gateway"].env))
    assert (under_run.port, under_run.nats_url, under_run.service_addresses) == (
        alone.port,
        alone.nats_url,
        alone.service_addresses,
    )
    assert set(alone.service_addresses) == set(SERVICES)
