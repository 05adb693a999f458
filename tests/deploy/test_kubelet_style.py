"""The dev overlay's Deployments, run the way a kubelet runs them (tests/deploy/kubelet.py): every
container's command, env and ports start real processes, and their declared probes pass. Then
the failure the probes are shaped for: messaging goes away, zhadui and the gateway turn unready
but stay live (no restart cascade), and all are ready again once messaging is back."""

from __future__ import annotations

import asyncio
import subprocess
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from plumbing.ports import free_port
from plumbing.process import stop_subprocess, with_parent_death
from tests.deploy.k8s import render
from tests.deploy.kubelet import BIN, Cluster, Pod

pytestmark = pytest.mark.deploy

PROCESSES = ("auth", "contacts", "messaging", "zhadui", "open-platform", "gateway")


@pytest.fixture
def own_nats(tmp_path: Path):
    """A NATS server of this test only: durable consumers never meet another stack's."""
    port = free_port()
    process = subprocess.Popen(
        with_parent_death([str(BIN / "nats-server"), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path)]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield f"127.0.0.1:{port}"
    stop_subprocess(process)


@pytest.fixture
async def cluster(own_nats: str, mongo_uri: str, tmp_path: Path) -> AsyncIterator[tuple[Cluster, dict[str, Pod]]]:
    cluster = Cluster(render("dev"))
    mongo_address = mongo_uri.split("//", 1)[1].split("/", 1)[0]
    # The StatefulSets' DNS names, mapped to this machine's servers.
    cluster.addresses["nats:4222"] = own_nats
    cluster.addresses["mongodb-0.mongodb:27017"] = mongo_address
    suffix = uuid.uuid4().hex[:8]
    pods: dict[str, Pod] = {}
    for name in PROCESSES:
        pod = Pod(cluster, name, tmp_path)
        if "MONGO_DB" in pod.env:  # the shared Mongo-wire server: databases of this test only
            pod.env["MONGO_DB"] = f"{pod.env['MONGO_DB']}_{suffix}"
        pods[name] = pod
    try:
        yield cluster, pods
    finally:
        for pod in pods.values():
            await pod.kill()


async def test_every_deployment_starts_and_passes_its_declared_probes(cluster) -> None:
    _, pods = cluster
    # A kubelet starts the pods of every Deployment at once; start-up order must not matter.
    await asyncio.gather(*(pod.start() for pod in pods.values()))
    await asyncio.gather(*(pod.wait_started_and_ready() for pod in pods.values()))

    gateway = pods["gateway"]
    base = f"http://127.0.0.1:{gateway.local_port('http')}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as response:
            body = await response.json()
        assert response.status == 200 and set(body["services"].values()) == {"SERVING"}, body
        async with http.get(f"{base}/_matrix/client/versions") as response:
            assert response.status == 200
        # What the ServiceMonitor scrapes: the named metrics ports, with the alerts' metric names.
        for name in ("auth", "contacts", "messaging", "zhadui", "open-platform"):
            async with http.get(f"http://127.0.0.1:{pods[name].local_port('metrics')}/metrics") as response:
                text = await response.text()
            assert response.status == 200, name
            assert "outbox_pending_events" in text and "grpc_server_handled_total" in text, name
        async with http.get(f"{base}/metrics") as response:
            assert "http_requests_total" in await response.text()


async def test_a_failing_service_makes_its_dependants_unready_but_never_unlive(cluster, tmp_path: Path) -> None:
    local, pods = cluster
    await asyncio.gather(*(pod.start() for pod in pods.values()))
    await asyncio.gather(*(pod.wait_started_and_ready() for pod in pods.values()))

    # SIGTERM as the kubelet sends it: messaging stops within its grace period, exit code 0.
    assert await pods["messaging"].terminate() == 0
    # zhadui cannot work without messaging and the gateway's /healthz asks every service ...
    await pods["zhadui"].probe_until("readinessProbe", wanted=False)
    await pods["gateway"].probe_until("readinessProbe", wanted=False)
    # ... but their liveness asks nothing downstream: the kubelet would not restart them.
    for name in ("zhadui", "gateway", "contacts", "auth", "open-platform"):
        assert await pods[name].probe_once("livenessProbe"), name

    # A new messaging pod (same Deployment, same env): everything is ready again, without restarts.
    replacement = Pod(local, "messaging", tmp_path)
    replacement.env = dict(pods["messaging"].env)
    pods["messaging"] = replacement
    await replacement.start()
    await replacement.wait_started_and_ready()
    await pods["zhadui"].probe_until("readinessProbe")
    await pods["gateway"].probe_until("readinessProbe")
    assert all(pod.process.returncode is None for pod in pods.values())
