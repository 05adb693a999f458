"""Running rendered Deployments the way a kubelet would, as local processes on loopback.

A `Pod` takes a Deployment's first container: the image's ENTRYPOINT (read from the Dockerfile)
with the container's `args`, and its environment from `envFrom` ConfigMaps, `env` values and
`secretKeyRef`s (from a dict standing in for the cluster's Secrets; optional keys may be missing).
Cluster addresses are mapped to loopback: each `<service>:<port>` (and the pod's own container
ports) to a free local port, `0.0.0.0` listeners to 127.0.0.1. Probes are run as the kubelet runs
them: gRPC `grpc.health.v1.Health/Check` on the probe's service name (SERVING succeeds) and
HTTP GET (200-399 succeeds), each within `timeoutSeconds`, every `periodSeconds`, until
`failureThreshold` consecutive failures.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from plumbing.ports import free_port
from plumbing.process import with_parent_death
from tests.deploy.k8s import ROOT, named

BIN = Path(sys.executable).parent
# Probe periods are scaled down (a test need not wait 10 s between liveness checks) and the number
# of failures allowed scaled up by more, so the time budget is the manifest's, times LOAD_FACTOR:
# this machine is shared by several test runs, a cluster node is not.
PERIOD_SCALE = 0.2
LOAD_FACTOR = 3


def image_entrypoint() -> list[str]:
    """The Dockerfile's ENTRYPOINT (exec form): what runs when a container gives only `args`."""
    match = re.search(r"^ENTRYPOINT\s+(\[.*\])\s*$", (ROOT / "Dockerfile").read_text(), re.MULTILINE)
    assert match, "Dockerfile has no exec-form ENTRYPOINT"
    import json

    program, *rest = json.loads(match.group(1))
    return [str(BIN / program), *rest]  # the console script `laiwang`, installed in .venv


@dataclass
class Cluster:
    """What a cluster would provide: Services (name:port -> local address) and Secrets."""

    objects: tuple[dict[str, Any], ...]
    addresses: dict[str, str] = field(default_factory=dict)  # "auth:50051" -> "127.0.0.1:40123"
    secrets: dict[str, dict[str, str]] = field(default_factory=dict)
    local_ports: dict[tuple[str, int], int] = field(default_factory=dict)  # (deployment, containerPort)
    reserved: set[int] = field(default_factory=set)

    def reserve_port(self) -> int:
        """A free port no other pod of this cluster was given: pods bind theirs only once started,
        so until then the kernel may hand the same free port out again."""
        while (port := free_port()) in self.reserved:
            pass
        self.reserved.add(port)
        return port

    def __post_init__(self) -> None:
        # Every Service port targets a named port of the pods it selects: give each a local port.
        for deployment in (o for o in self.objects if o["kind"] == "Deployment"):
            name = deployment["metadata"]["name"]
            for port in deployment["spec"]["template"]["spec"]["containers"][0].get("ports", []):
                self.local_ports[(name, port["containerPort"])] = self.reserve_port()
        for service in (o for o in self.objects if o["kind"] == "Service"):
            name = service["metadata"]["name"]
            if not any(d["metadata"]["name"] == name for d in self.objects if d["kind"] == "Deployment"):
                continue  # NATS and MongoDB: mapped by the test to its own servers
            container = named(self.objects, "Deployment", name)["spec"]["template"]["spec"]["containers"][0]
            by_name = {p["name"]: p["containerPort"] for p in container["ports"]}
            for port in service["spec"]["ports"]:
                target = port.get("targetPort", port["port"])
                target = by_name[target] if isinstance(target, str) else target
                self.addresses[f"{name}:{port['port']}"] = f"127.0.0.1:{self.local_ports[(name, target)]}"

    def localise(self, value: str) -> str:
        for address, local in self.addresses.items():
            value = re.sub(rf"(?<![\w.-]){re.escape(address)}(?!\d)", local, value)
        return value


class ProbeFailed(AssertionError):
    pass


class Pod:
    def __init__(
        self,
        cluster: Cluster,
        deployment: str,
        log_dir: Path,
        overrides: dict[str, str] | None = None,
        own_ports: bool = False,
    ):
        """`own_ports`: another replica of the Deployment (its own pod IP, here its own local ports)."""
        self.cluster = cluster
        self.name = deployment
        spec = named(cluster.objects, "Deployment", deployment)["spec"]["template"]["spec"]
        self.spec = spec
        self.container = spec["containers"][0]
        self.ports = {p["name"]: p["containerPort"] for p in self.container.get("ports", [])}
        self.local_ports = {
            number: cluster.reserve_port() if own_ports else cluster.local_ports[(deployment, number)]
            for number in self.ports.values()
        }
        self.env = self._environment(overrides or {})
        self.log_path = log_dir / f"{deployment}-{os.getpid()}-{id(self)}.log"
        self.process: asyncio.subprocess.Process | None = None

    def _environment(self, overrides: dict[str, str]) -> dict[str, str]:
        env: dict[str, str] = {}
        for source in self.container.get("envFrom", []):
            env.update(named(self.cluster.objects, "ConfigMap", source["configMapRef"]["name"]).get("data", {}))
        for item in self.container.get("env", []):
            if "value" in item:
                env[item["name"]] = item["value"]
                continue
            ref = item["valueFrom"]["secretKeyRef"]
            secret = self.cluster.secrets.get(ref["name"], {})
            if ref["key"] in secret:
                env[item["name"]] = secret[ref["key"]]
            elif not ref.get("optional"):
                raise AssertionError(
                    f"{self.name}: Secret {ref['name']} has no key {ref['key']} (the pod would not start)"
                )
        own = {str(port): str(self.local_port(port)) for port in self.ports.values()}
        for key, value in env.items():
            value = own.get(value, value)  # GRPC_PORT=50051 -> this pod's local port
            value = "127.0.0.1" if value == "0.0.0.0" else value  # tests listen on loopback only
            env[key] = self.cluster.localise(value)
        env.update(overrides)
        return env

    def local_port(self, port: int | str) -> int:
        number = self.ports[port] if isinstance(port, str) else port
        return self.local_ports[number]

    @property
    def argv(self) -> list[str]:
        assert "command" not in self.container, "the manifests rely on the image's ENTRYPOINT"
        return [*image_entrypoint(), *self.container.get("args", [])]

    async def start(self) -> None:
        env = {"PATH": f"{BIN}:{os.environ.get('PATH', '')}", "HOME": str(self.log_path.parent), **self.env}
        log = self.log_path.open("ab")
        try:
            self.process = await asyncio.create_subprocess_exec(
                *with_parent_death(self.argv), env=env, stdout=log, stderr=asyncio.subprocess.STDOUT
            )
        finally:
            log.close()

    def log_tail(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:] if self.log_path.exists() else ""

    async def terminate(self) -> int:
        """SIGTERM, as the kubelet sends after preStop; SIGKILL after terminationGracePeriodSeconds."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
        grace = self.spec.get("terminationGracePeriodSeconds", 30)
        try:
            return await asyncio.wait_for(self.process.wait(), grace)
        except TimeoutError:
            self.process.kill()
            await self.process.wait()
            raise AssertionError(f"{self.name} ignored SIGTERM for {grace}s:\n{self.log_tail()}") from None

    async def kill(self) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.kill()
            await self.process.wait()

    # Probes ---------------------------------------------------------------------------------

    async def probe_once(self, kind: str) -> bool:
        probe = self.container[kind]
        timeout = probe.get("timeoutSeconds", 1) * LOAD_FACTOR
        if "grpc" in probe:
            target = f"127.0.0.1:{self.local_port(probe['grpc']['port'])}"
            async with grpc.aio.insecure_channel(target) as channel:
                try:
                    reply = await health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(service=probe["grpc"].get("service", "")), timeout=timeout
                    )
                except grpc.aio.AioRpcError:
                    return False
            return reply.status == health_pb2.HealthCheckResponse.SERVING
        if "httpGet" in probe:
            get = probe["httpGet"]
            url = f"http://127.0.0.1:{self.local_port(get['port'])}{get['path']}"
            try:
                async with (
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=timeout)) as http,
                    http.get(url) as response,
                ):
                    return 200 <= response.status < 400
            except (aiohttp.ClientError, TimeoutError):
                return False
        raise AssertionError(f"{self.name} {kind}: probe type not supported here: {sorted(probe)}")

    async def probe_until(self, kind: str, wanted: bool = True) -> int:
        """Probe every (scaled) period until the result is `wanted`; fail after the (scaled)
        failureThreshold. Returns the number of attempts."""
        probe = self.container[kind]
        period = probe.get("periodSeconds", 10) * PERIOD_SCALE
        allowed = round(probe.get("failureThreshold", 3) / PERIOD_SCALE * LOAD_FACTOR)
        for attempt in range(1, allowed + 1):
            if self.process is not None and self.process.returncode is not None:
                raise ProbeFailed(f"{self.name} exited with {self.process.returncode}:\n{self.log_tail()}")
            if await self.probe_once(kind) == wanted:
                return attempt
            await asyncio.sleep(period)  # the probe period, as a kubelet waits it
        state = "succeed" if wanted else "fail"
        raise ProbeFailed(f"{self.name} {kind} did not {state} in {allowed} tries:\n{self.log_tail()}")

    async def wait_started_and_ready(self) -> None:
        """What the kubelet does after starting a container: startup probe, then readiness."""
        await self.probe_until("startupProbe")
        await self.probe_until("readinessProbe")
        assert await self.probe_once("livenessProbe"), f"{self.name}: ready but not live"
        assert self.process is not None and self.process.returncode is None, (
            f"{self.name} exited although something answered its probes:\n{self.log_tail()}"
        )
