"""The whole Laiwang stack as supervised child processes: embedded NATS and Mongo-wire server
(unless NATS_URL / MONGO_URI point elsewhere), the dev push gateway, the five services, then the gateway.

Used by `laiwang run` (`make run`) and by the end-to-end test fixture, so both start the system
the same way. Dev-only: production runs each process on its own (`laiwang serve`, deploy/k8s).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from plumbing.config import (
    DEFAULT_GATEWAY_PORT,
    DEFAULT_GRPC_PORT_BASE,
    DEFAULT_METRICS_PORT_BASE,
    DEFAULT_MONGO_PORT,
    DEFAULT_NATS_PORT,
    LOCAL_HOST,
    SERVICES,
    Env,
)
from plumbing.dev.supervisor import ChildSpec, Probe, Supervisor
from plumbing.errors import StartupError
from plumbing.ports import free_port, free_port_block, port_is_free

HOST = LOCAL_HOST


@dataclass(frozen=True)
class StackPorts:
    gateway: int = DEFAULT_GATEWAY_PORT
    nats: int = DEFAULT_NATS_PORT
    mongo: int = DEFAULT_MONGO_PORT
    grpc_base: int = DEFAULT_GRPC_PORT_BASE
    metrics_base: int = DEFAULT_METRICS_PORT_BASE
    push_gateway: int = 8009  # the dev push gateway (plumbing/dev/push_gateway.py)

    def grpc(self, service: str) -> int:
        return self.grpc_base + SERVICES.index(service)

    def metrics(self, service: str) -> int:
        return self.metrics_base + SERVICES.index(service)


@dataclass(frozen=True)
class StackConfig:
    data_dir: Path
    ports: StackPorts
    server_name: str
    log_level: str
    external_mongo_uri: str | None
    external_nats_url: str | None
    # SAMPLE_APP=true: also run the sample partner app (apps/sample), webhooks to loopback allowed.
    sample_app: bool = False
    sample_port: int = 8090

    @classmethod
    def from_env(cls, env: Env | None = None) -> StackConfig:
        env = env or Env()
        ports = StackPorts(
            gateway=env.port("GATEWAY_PORT", DEFAULT_GATEWAY_PORT),
            nats=env.port("NATS_PORT", DEFAULT_NATS_PORT),
            mongo=env.port("MONGO_PORT", DEFAULT_MONGO_PORT),
            grpc_base=env.int("GRPC_PORT_BASE", DEFAULT_GRPC_PORT_BASE, minimum=1, maximum=65530),
            metrics_base=env.int("METRICS_PORT_BASE", DEFAULT_METRICS_PORT_BASE, minimum=1, maximum=65530),
            push_gateway=env.port("PUSH_GATEWAY_PORT", 8009),
        )
        external_mongo = env.url("MONGO_URI", "-", ("mongodb", "mongodb+srv")) if env._raw("MONGO_URI") else None
        external_nats = env.url("NATS_URL", "-", ("nats", "tls")) if env._raw("NATS_URL") else None
        return cls(
            data_dir=Path(env.str("LAIWANG_DATA_DIR", "var")).resolve(),
            ports=ports,
            server_name=env.str("SERVER_NAME", "localhost"),
            log_level=env.str("LOG_LEVEL", "INFO"),
            external_mongo_uri=external_mongo,
            external_nats_url=external_nats,
            sample_app=env.bool("SAMPLE_APP", False),
            sample_port=env.port("SAMPLE_PORT", 8090),
        )

    @classmethod
    def on_free_ports(
        cls, data_dir: Path, mongo_uri: str | None = None, server_name: str = "laiwang.test", log_level: str = "INFO"
    ) -> StackConfig:
        """A stack on fresh loopback ports with its own embedded NATS (tests and benchmarks), on an
        existing Mongo-wire server if `mongo_uri` is given, else on its own embedded one."""
        return cls(
            data_dir=data_dir,
            ports=StackPorts(
                gateway=free_port(),
                nats=free_port(),
                mongo=free_port(),
                grpc_base=free_port_block(len(SERVICES)),
                metrics_base=free_port_block(len(SERVICES)),
                push_gateway=free_port(),
            ),
            server_name=server_name,
            log_level=log_level,
            external_mongo_uri=mongo_uri,
            external_nats_url=None,
        )

    @property
    def mongo_uri(self) -> str:
        return self.external_mongo_uri or f"mongodb://{HOST}:{self.ports.mongo}/?directConnection=true"

    @property
    def nats_url(self) -> str:
        return self.external_nats_url or f"nats://{HOST}:{self.ports.nats}"

    @property
    def gateway_url(self) -> str:
        return f"http://{HOST}:{self.ports.gateway}"

    @property
    def push_gateway_url(self) -> str:
        """What a pusher's data.url is on the dev stack."""
        return f"http://{HOST}:{self.ports.push_gateway}/_matrix/push/v1/notify"


def _venv_tool(name: str) -> str:
    """Console scripts of packages we depend on live beside this interpreter."""
    path = Path(sys.executable).parent / name
    if not path.exists():
        raise StartupError(f"{name} is not installed next to {sys.executable}; run `make install`")
    return str(path)


async def _tcp_open(port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(HOST, port), 1.0)
    except (OSError, TimeoutError):
        return False
    writer.close()
    return True


def _grpc_serving(port: int) -> Probe:
    async def probe() -> bool:
        async with grpc.aio.insecure_channel(f"{HOST}:{port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1.0)
            return reply.status == health_pb2.HealthCheckResponse.SERVING

    return probe


def _http_ok(url: str) -> Probe:
    async def probe() -> bool:
        async with aiohttp.ClientSession() as session, session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as r:
            return r.status == 200

    return probe


def required_ports(config: StackConfig) -> list[tuple[int, str]]:
    ports = config.ports
    needed: list[tuple[int, str]] = []
    if config.external_nats_url is None:
        needed.append((ports.nats, "NATS_PORT"))
    if config.external_mongo_uri is None:
        needed.append((ports.mongo, "MONGO_PORT"))
    for service in SERVICES:
        needed.append((ports.grpc(service), "GRPC_PORT_BASE"))
        needed.append((ports.metrics(service), "METRICS_PORT_BASE"))
    needed.append((ports.gateway, "GATEWAY_PORT"))
    needed.append((ports.push_gateway, "PUSH_GATEWAY_PORT"))
    if config.sample_app:
        needed.append((config.sample_port, "SAMPLE_PORT"))
    return needed


def check_ports_free(config: StackConfig) -> None:
    for port, setting in required_ports(config):
        if not port_is_free(HOST, port):
            raise StartupError(
                f"port {port} is already in use ({setting}); stop whatever holds it or set {setting} to another port"
            )


def stack_specs(config: StackConfig) -> list[ChildSpec]:
    ports = config.ports
    specs: list[ChildSpec] = []
    if config.external_nats_url is None:
        nats_dir = config.data_dir / "nats"
        nats_dir.mkdir(parents=True, exist_ok=True)
        specs.append(
            ChildSpec(
                name="nats",
                argv=[
                    _venv_tool("nats-server"),
                    "-a",
                    HOST,
                    "-p",
                    str(ports.nats),
                    "-js",
                    "-sd",
                    str(nats_dir),
                    "--server_name",
                    "laiwang-dev",
                ],
                probe=lambda: _tcp_open(ports.nats),
                address=config.nats_url,
                infrastructure=True,
            )
        )
    if config.external_mongo_uri is None:
        mongo_dir = config.data_dir / "mongo"
        mongo_dir.mkdir(parents=True, exist_ok=True)
        specs.append(
            ChildSpec(
                name="mongo",
                argv=[
                    _venv_tool("secantusd-py"),
                    "--host",
                    HOST,
                    "--port",
                    str(ports.mongo),
                    "--storage-path",
                    str(mongo_dir),
                    "--log-level",
                    "WARNING",
                ],
                probe=lambda: _tcp_open(ports.mongo),
                address=config.mongo_uri,
                infrastructure=True,
            )
        )
    common = {
        "MONGO_URI": config.mongo_uri,
        "NATS_URL": config.nats_url,
        "SERVER_NAME": config.server_name,
        "LOG_LEVEL": config.log_level,
        **{f"{s.upper()}_ADDR": f"{HOST}:{ports.grpc(s)}" for s in SERVICES},
    }
    # The dev push gateway: a pusher may point at it because loopback is allowed here (docs/push.md).
    specs.append(
        ChildSpec(
            name="push-gateway",
            argv=[sys.executable, "-m", "plumbing.dev.push_gateway", "--host", HOST, "--port", str(ports.push_gateway)],
            probe=_http_ok(f"http://{HOST}:{ports.push_gateway}/healthz"),
            address=config.push_gateway_url,
        )
    )
    # The dev SMS provider also appends the codes it "sends" here (docs/auth.md).
    extra = {
        "auth": {"AUTH_DEV_SMS_LOG": os.environ.get("AUTH_DEV_SMS_LOG", str(config.data_dir / "dev-sms.log"))},
        # Pusher URLs on this machine (the dev push gateway) are allowed only on the dev stack.
        "messaging": {"PUSH_ALLOWED_NETWORKS": os.environ.get("PUSH_ALLOWED_NETWORKS", "127.0.0.0/8,::1/128")},
    }
    if config.sample_app:  # the sample partner app takes its webhooks on loopback
        extra["open_platform"] = {"OPEN_PLATFORM_ALLOW_LOOPBACK_WEBHOOKS": "true"}
    for service in SERVICES:
        specs.append(
            ChildSpec(
                name=service,
                argv=[sys.executable, "-m", f"services.{service}"],
                env={
                    **common,
                    "GRPC_HOST": HOST,
                    "GRPC_PORT": str(ports.grpc(service)),
                    "METRICS_PORT": str(ports.metrics(service)),
                    **extra.get(service, {}),
                },
                probe=_grpc_serving(ports.grpc(service)),
                address=f"grpc {HOST}:{ports.grpc(service)}  metrics :{ports.metrics(service)}",
            )
        )
    specs.append(
        ChildSpec(
            name="gateway",
            argv=[sys.executable, "-m", "gateway"],
            env={**common, "GATEWAY_HOST": HOST, "GATEWAY_PORT": str(ports.gateway)},
            probe=_http_ok(f"{config.gateway_url}/healthz"),
            address=config.gateway_url,
        )
    )
    if config.sample_app:
        sample_url = f"http://{HOST}:{config.sample_port}"
        specs.append(
            ChildSpec(
                name="sample-app",
                argv=[sys.executable, "-m", "apps.sample"],
                env={
                    "LAIWANG_URL": config.gateway_url,
                    "SAMPLE_HOST": HOST,
                    "SAMPLE_PORT": str(config.sample_port),
                    "SAMPLE_STATE_FILE": str(config.data_dir / "sample-app.json"),
                },
                probe=_http_ok(f"{sample_url}/status"),
                address=f"{sample_url} (the sample partner app, docs/open_platform.md)",
            )
        )
    return specs


@dataclass
class RunningStack:
    config: StackConfig
    supervisor: Supervisor
    log_path: Path

    @property
    def base_url(self) -> str:
        return self.config.gateway_url

    def grpc_address(self, service: str) -> str:
        return f"{HOST}:{self.config.ports.grpc(service)}"

    def metrics_url(self, service: str) -> str:
        return f"http://{HOST}:{self.config.ports.metrics(service)}/metrics"

    def log_text(self) -> str:
        """Everything the stack's processes printed so far (each line prefixed with its name)."""
        return self.log_path.read_text(errors="replace")


@contextlib.asynccontextmanager
async def running_stack(
    config: StackConfig, env: dict[str, str] | None = None, database_suffix: str = ""
) -> AsyncIterator[RunningStack]:
    """The stack of `config` under a supervisor, its output in `<data_dir>/stack.log`; stopped on exit,
    quickly (Supervisor.stop_all) when the body raised or was cancelled: a failed test or a benchmark
    stopped with Ctrl-C (bench/common.py) has no use for a graceful drain.

    `database_suffix` gives every service database a distinct name, so stacks sharing one
    Mongo-wire server never see each other's data.
    """
    specs = stack_specs(config)
    for spec in specs:
        if database_suffix:
            spec.env.setdefault("MONGO_DB", f"{spec.name}_{database_suffix}")
        spec.env.update(env or {})
    config.data_dir.mkdir(parents=True, exist_ok=True)
    log_path = config.data_dir / "stack.log"
    with open(log_path, "w", buffering=1) as output:  # noqa: ASYNC230 - once per stack
        supervisor = Supervisor(specs, out=output)
        try:
            await supervisor.start_all()
        except Exception:
            sys.stderr.write(log_path.read_text(errors="replace")[-20000:])
            raise
        interrupted = True
        try:
            yield RunningStack(config, supervisor, log_path)
            interrupted = False
        finally:
            await supervisor.stop_all(quick=interrupted)
