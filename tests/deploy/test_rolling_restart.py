"""Zero-drop rolling restart, proved locally: 2 gateway and 2 messaging replicas (the dev overlay's
Deployments, run as a kubelet would) behind local TCP balancers standing in for their Services,
with a chat load running. Each replica is replaced in turn as a Deployment rollout does it: start
the new pod, wait until its probes say ready, take the old one out of the endpoints, SIGTERM it.
No request may fail, and no message may be lost or delivered twice.

What makes it hold: a stopping service's grpc server sends GOAWAY and drains (plumbing.grpc_server),
callers' channels reconnect through the balancer and resend what a stopping server dropped unstarted
(plumbing.grpc_client); a stopping gateway answers waiting /sync long-polls at once, and clients
resend idempotent requests on a new connection when the server closed an idle keep-alive one."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import time
import uuid
from collections import Counter
from pathlib import Path

import aiohttp
import pytest

from plumbing.ports import free_port
from plumbing.process import stop_subprocess, with_parent_death
from tests.deploy.balancer import Balancer
from tests.deploy.k8s import render
from tests.deploy.kubelet import BIN, Cluster, Pod
from tests.matrix_support import register_user

pytestmark = pytest.mark.deploy

SENDERS = 4
# Each sender sends a message every SEND_INTERVAL seconds at most: a chat load below the gateway's
# per-user send limit (GATEWAY_SEND_RATE_PER_SECOND, 20/s), so no send is refused with 429. This
# shapes the load; nothing waits on it for an outcome.
SEND_INTERVAL = 0.1
# As a client asks (messaging's maximum); a timeline that is still `limited` is back-filled.
SYNC_FILTER = '{"room": {"timeline": {"limit": 200}}}'
V3 = "/_matrix/client/v3"


@pytest.fixture
def own_nats(tmp_path: Path):
    port = free_port()
    process = subprocess.Popen(
        with_parent_death([str(BIN / "nats-server"), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(tmp_path)]),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    yield f"127.0.0.1:{port}"
    stop_subprocess(process)


class Rollout:
    """One Deployment's replicas behind its balancer."""

    def __init__(self, cluster: Cluster, name: str, tmp_path: Path, balancer: Balancer, tweak) -> None:
        self.cluster, self.name, self.tmp_path, self.balancer, self.tweak = cluster, name, tmp_path, balancer, tweak
        self.pods: list[Pod] = []
        self.port_name = "http" if name == "gateway" else "grpc"

    async def scale_up(self) -> Pod:
        pod = Pod(self.cluster, self.name, self.tmp_path, own_ports=True)
        self.tweak(pod)
        await pod.start()
        self.pods.append(pod)
        await pod.wait_started_and_ready()
        self.balancer.add(pod.local_port(self.port_name))  # ready: an endpoint now
        return pod

    async def replace_each(self) -> list[int]:
        codes = []
        for old in list(self.pods):
            await self.scale_up()
            self.balancer.remove(old.local_port(self.port_name))  # terminating: out of the endpoints
            codes.append(await old.terminate())
            self.pods.remove(old)
        return codes


async def test_rolling_restart_of_gateways_and_messaging_under_chat_load_drops_nothing(
    own_nats: str, mongo_uri: str, tmp_path: Path
) -> None:
    cluster = Cluster(render("dev"))
    cluster.addresses["nats:4222"] = own_nats
    cluster.addresses["mongodb-0.mongodb:27017"] = mongo_uri.split("//", 1)[1].split("/", 1)[0]
    gateway_lb, messaging_lb = Balancer(), Balancer()
    await gateway_lb.start()
    await messaging_lb.start()
    cluster.addresses["messaging:50053"] = messaging_lb.address  # the messaging Service
    suffix = uuid.uuid4().hex[:8]

    def tweak(pod: Pod) -> None:
        if "MONGO_DB" in pod.env:
            pod.env["MONGO_DB"] = f"{pod.env['MONGO_DB']}_{suffix}"
        pod.env["MESSAGING_INVITE_POLICY"] = "anyone"  # rooms without setting up friendships first

    singles = []
    for name in ("auth", "contacts", "zhadui", "open-platform"):
        pod = Pod(cluster, name, tmp_path)
        tweak(pod)
        singles.append(pod)
    messaging = Rollout(cluster, "messaging", tmp_path, messaging_lb, tweak)
    gateways = Rollout(cluster, "gateway", tmp_path, gateway_lb, tweak)
    try:
        await asyncio.gather(*(pod.start() for pod in singles))
        await asyncio.gather(messaging.scale_up(), messaging.scale_up())
        await asyncio.gather(*(pod.wait_started_and_ready() for pod in singles))
        await asyncio.gather(gateways.scale_up(), gateways.scale_up())
        figures = await _chat_through_a_rollout(f"http://{gateway_lb.address}", messaging, gateways)
    finally:
        for pod in [*singles, *messaging.pods, *gateways.pods]:
            await pod.kill()
        await gateway_lb.close()
        await messaging_lb.close()

    print(
        f"\nrolling restart: {figures['sent']} messages sent ({figures['sends_during_rollout']} during the "
        f"rollout), {figures['syncs']} /sync answers ({figures['limited']} limited, back-filled), "
        f"{figures['failed']} failed requests, {figures['lost']} lost, {figures['duplicated']} duplicated; "
        f"rollout {figures['rollout_seconds']:.1f} s; {gateway_lb.connections} gateway and "
        f"{messaging_lb.connections} messaging connections balanced"
    )
    assert figures["exit_codes"] == [0, 0, 0, 0]
    assert figures["failures"] == [], Counter(figures["failures"]).most_common(5)
    assert figures["lost"] == 0
    assert figures["duplicated"] == 0
    assert figures["sends_during_rollout"] > 0


async def _chat_through_a_rollout(base: str, messaging: Rollout, gateways: Rollout) -> dict:
    pairs = []
    async with aiohttp.ClientSession() as http:
        for _ in range(SENDERS):
            sender, receiver = await register_user(base), await register_user(base)
            body = {"invite": [receiver.user_id], "preset": "private_chat"}
            async with http.post(f"{base}{V3}/createRoom", json=body, headers=sender.headers) as r:
                assert r.status == 200, await r.text()
                room = (await r.json())["room_id"]
            async with http.post(f"{base}{V3}/join/{room}", json={}, headers=receiver.headers) as r:
                assert r.status == 200, await r.text()
            pairs.append((sender, receiver, room))

    failures: list[str] = []
    sent: list[str] = []
    received: dict[str, list[tuple[str, str]]] = {room: [] for _, _, room in pairs}
    stop_sending, stop_syncing = asyncio.Event(), asyncio.Event()
    counters = Counter()
    rolling, flowing, all_arrived = asyncio.Event(), asyncio.Event(), asyncio.Event()

    def check_arrivals() -> None:
        got = {body for events in received.values() for _, body in events}
        if stop_sending.is_set() and set(sent) <= got:
            all_arrived.set()

    async def send(index: int, sender, room: str) -> None:
        # One aiohttp session per client, with keep-alive: connections stay on one gateway until it
        # closes them, as a phone's would. PUT is idempotent (the transaction id), so the client
        # library may retry it on a connection the server closed, as aiohttp does.
        async with aiohttp.ClientSession(headers=sender.headers) as http:
            n = 0
            while not stop_sending.is_set():
                text = f"m-{index}-{n}"
                url = f"{base}{V3}/rooms/{room}/send/m.room.message/t{index}-{n}"
                try:
                    async with http.put(url, json={"msgtype": "m.text", "body": text}) as r:
                        if r.status == 200:
                            sent.append(text)
                            if len(sent) >= 20:
                                flowing.set()
                            counters["sends_during_rollout"] += rolling.is_set()
                        else:
                            failures.append(f"PUT send: {r.status} {await r.text()}")
                except aiohttp.ClientError as exc:
                    failures.append(f"PUT send: {exc!r}")
                n += 1
                await asyncio.sleep(SEND_INTERVAL)

    def take(room: str, event: dict) -> None:
        if event.get("type") == "m.room.message":
            received[room].append((event["event_id"], event["content"]["body"]))

    async def backfill(http: aiohttp.ClientSession, room: str, token: str) -> None:
        """A `limited` timeline skipped events: page back with /messages to the ones already seen,
        as a client fills the gap."""
        seen = {event_id for event_id, _ in received[room]}
        while token:
            params = {"dir": "b", "from": token, "limit": "100"}
            async with http.get(f"{base}{V3}/rooms/{room}/messages", params=params) as r:
                if r.status != 200:
                    failures.append(f"GET messages: {r.status} {await r.text()}")
                    return
                page = await r.json()
            for event in page["chunk"]:
                if event["event_id"] in seen:
                    return
                take(room, event)
            token = page.get("end", "")

    async def sync(receiver, room: str) -> None:
        async with aiohttp.ClientSession(headers=receiver.headers) as http:
            since = None
            while not stop_syncing.is_set():
                params = {"timeout": "2000", "filter": SYNC_FILTER, **({"since": since} if since else {})}
                try:
                    async with http.get(f"{base}{V3}/sync", params=params) as r:
                        if r.status != 200:
                            failures.append(f"GET sync: {r.status} {await r.text()}")
                            continue
                        reply = await r.json()
                    counters["syncs"] += 1
                    timeline = reply.get("rooms", {}).get("join", {}).get(room, {}).get("timeline", {})
                    if since and timeline.get("limited"):
                        counters["limited"] += 1
                        await backfill(http, room, timeline["prev_batch"])
                except aiohttp.ClientError as exc:
                    failures.append(f"GET sync: {exc!r}")
                    continue
                since = reply["next_batch"]
                for event in timeline.get("events", []):
                    take(room, event)
                check_arrivals()

    tasks = [asyncio.create_task(sync(receiver, room)) for _, receiver, room in pairs]
    tasks += [asyncio.create_task(send(i, sender, room)) for i, (sender, _, room) in enumerate(pairs)]
    await asyncio.wait_for(flowing.wait(), 60)  # load is flowing before the rollout starts
    started = time.monotonic()
    rolling.set()
    exit_codes = await messaging.replace_each()
    exit_codes += await gateways.replace_each()
    rolling.clear()
    rollout_seconds = time.monotonic() - started
    stop_sending.set()
    await asyncio.gather(*tasks[len(pairs) :])

    # Receivers keep syncing until every sent message has arrived (or the bound says it never will:
    # then the count of lost messages below fails the test).
    check_arrivals()
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_arrived.wait(), 60)
    stop_syncing.set()
    await asyncio.gather(*tasks[: len(pairs)])

    bodies = Counter(body for events in received.values() for _, body in events)
    event_ids = Counter(event_id for events in received.values() for event_id, _ in events)
    return {
        "sent": len(sent),
        "sends_during_rollout": counters["sends_during_rollout"],
        "syncs": counters["syncs"],
        "limited": counters["limited"],
        "failures": failures,
        "failed": len(failures),
        "lost": len(set(sent) - set(bodies)),
        "duplicated": sum(c - 1 for c in bodies.values() if c > 1) + sum(c - 1 for c in event_ids.values() if c > 1),
        "rollout_seconds": rollout_seconds,
        "exit_codes": exit_codes,
    }
