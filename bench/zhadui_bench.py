"""Zhadui: feed query latency with 10,000 users (~200 friends each) and 100,000 zhaduis, and how
long until all 500 friends of a user see a zhadui after that user joins it.

The whole stack runs as separate processes on embedded NATS and a Mongo-wire server. The social
graph and the zhaduis are written straight into the zhadui service's own collections in the
shapes its store writes (seeding 1.4M documents through the API would take hours on this
store), then the zhadui service is restarted so it loads them the way it does in production.
Everything measured afterwards goes through the real service: gRPC for the feed latency
(server-side view), HTTP through the gateway for a sample of real accounts.

    .venv/bin/python -m bench.zhadui_bench [--users 10000] [--friends 200] [--zhaduis 100000]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import time
from pathlib import Path

import aiohttp
import grpc
from pymongo import AsyncMongoClient

from bench.common import insert_in_batches, percentile, rss_mb
from bench.common import run as bench_run
from laiwang.zhadui.v1 import zhadui_pb2 as pb
from laiwang.zhadui.v1 import zhadui_pb2_grpc
from plumbing.dev.stack import RunningStack, StackConfig, running_stack
from tests.matrix_support import register_user

SERVER = "laiwang.bench"


def pair_doc(x: str, y: str) -> dict:
    a, b = sorted((x, y))
    return {"_id": f"{a}|{b}", "a": a, "b": b, "friends": True, "a_blocks_b": False, "b_blocks_a": False, "version": 1}


async def seed(
    db,
    users: list[str],
    friends_each: int,
    zhaduis: int,
    hub: str,
    hub_friends: int,
    also_friends: tuple[str, str],
    rng: random.Random,
) -> dict[str, set[str]]:
    adjacency: dict[str, set[str]] = {u: set() for u in users}
    x, y = also_friends
    adjacency[x].add(y)
    adjacency[y].add(x)
    # Each user befriends friends_each/2 random others: ~friends_each friends on average. The hub
    # stays out of that, so it has exactly hub_friends friends (plus the one creator).
    others = [u for u in users if u != hub]
    for user in others:
        for other in rng.sample(others, friends_each // 2):
            if other != user:
                adjacency[user].add(other)
                adjacency[other].add(user)
    for other in rng.sample([u for u in others if u != y and u != x], hub_friends):
        adjacency[hub].add(other)
        adjacency[other].add(hub)
    pairs = {}
    for user, friends in adjacency.items():
        for friend in friends:
            doc = pair_doc(user, friend)
            pairs[doc["_id"]] = doc
    await insert_in_batches(db.pairs, list(pairs.values()))

    now = time.time_ns() // 1_000_000
    zhadui_docs, participant_docs = [], []
    for n in range(zhaduis):
        creator = rng.choice(users)
        created = now - rng.randrange(6 * 24 * 3600 * 1000)
        zid = f"Z{n:07d}"
        members = [creator, *rng.sample(sorted(adjacency[creator]), min(len(adjacency[creator]), rng.randrange(4)))]
        zhadui_docs.append(
            {
                "_id": zid,
                "creator": creator,
                "title": f"topic {n}",
                "body": "",
                "link_url": "",
                "card_json": "",
                "tags": [],
                "status": "open",
                "created_ms": created,
                "last_activity_ms": created + len(members),
                "participant_count": len(members),
                "room_id": "",
            }
        )
        participant_docs += [
            {"_id": f"{zid}|{m}", "zid": zid, "user": m, "state": "joined", "changed_ms": created} for m in members
        ]
    await insert_in_batches(db.zhaduis, zhadui_docs)
    await insert_in_batches(db.participants, participant_docs)
    return adjacency


async def timed(coro) -> tuple[float, object]:
    started = time.perf_counter()
    result = await coro
    return (time.perf_counter() - started) * 1000, result


async def run(args: argparse.Namespace, data_dir: Path) -> None:
    rng = random.Random(7)
    config = StackConfig.on_free_ports(data_dir, server_name=SERVER)
    print(f"zhadui bench: {args.users} users x ~{args.friends} friends, {args.zhaduis} zhaduis")
    async with running_stack(
        config, env={"GATEWAY_ZHADUI_RATE_PER_SECOND": "100000", "GATEWAY_ZHADUI_BURST": "100000"}
    ) as stack:
        # Real accounts for the HTTP sample, the hub (500 friends) and a creator.
        accounts = [await register_user(stack.base_url, f"bench{i}") for i in range(args.accounts)]
        hub, creator = accounts[0], accounts[1]
        synthetic = [f"@s{i:05d}:{SERVER}" for i in range(args.users - len(accounts))]
        users = [a.user_id for a in accounts] + synthetic

        mongo = AsyncMongoClient(config.mongo_uri)
        started = time.perf_counter()
        adjacency = await seed(
            mongo["laiwang_zhadui"],
            users,
            args.friends,
            args.zhaduis,
            hub.user_id,
            args.hub_friends,
            (hub.user_id, creator.user_id),
            rng,
        )
        print(f"  seeded in {time.perf_counter() - started:.1f}s")

        started = time.perf_counter()
        await restart(stack, "zhadui")
        print(
            f"  zhadui service restarted and loaded its index in {time.perf_counter() - started:.1f}s;"
            f" RSS {rss_mb(stack.supervisor.child('zhadui').pid or 0):.0f} MB"
        )

        channel = grpc.aio.insecure_channel(stack.grpc_address("zhadui"))
        stub = zhadui_pb2_grpc.ZhaduiServiceStub(channel)
        await feed_latency(stub, stack, users, accounts, args.queries, rng)
        await fan_out(stub, stack, hub, creator, adjacency, mongo["laiwang_zhadui"])
        print(f"  zhadui service RSS after the run: {rss_mb(stack.supervisor.child('zhadui').pid or 0):.0f} MB")
        await channel.close()
        await mongo.close()


async def restart(stack: RunningStack, name: str) -> None:
    child = stack.supervisor.child(name)
    old_pid = child.pid
    await child.stop()  # the supervisor notices and starts it again, which reloads the index
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if child.pid != old_pid and child.process and child.process.returncode is None:
            try:
                await child.wait_ready()
                return
            except Exception:
                pass
        await asyncio.sleep(0.2)
    raise RuntimeError(f"{name} did not come back")


async def feed_latency(stub, stack, users, accounts, queries: int, rng: random.Random) -> None:
    sample = rng.sample(users, min(len(users), 1000))
    grpc_ms, sizes = [], []
    for i in range(queries):
        ms, reply = await timed(stub.ListFeed(pb.ListFeedRequest(viewer_user_id=sample[i % len(sample)], limit=20)))
        grpc_ms.append(ms)
        sizes.append(len(reply.items))
    print(
        f"  feed via gRPC ({queries} queries, 20 per page, median {statistics.median(sizes):.0f} items):"
        f" p50 {percentile(grpc_ms, 50):.1f} ms  p99 {percentile(grpc_ms, 99):.1f} ms"
    )
    http_ms = []
    async with aiohttp.ClientSession() as http:
        for i in range(queries // 4):
            account = accounts[i % len(accounts)]
            started = time.perf_counter()
            async with http.get(
                f"{stack.base_url}/_laiwang/client/v1/zhadui/feed?limit=20", headers=account.headers
            ) as response:
                await response.read()
                assert response.status == 200, response.status
            http_ms.append((time.perf_counter() - started) * 1000)
    print(
        f"  feed via the gateway over HTTP ({len(http_ms)} queries): p50 {percentile(http_ms, 50):.1f} ms"
        f"  p99 {percentile(http_ms, 99):.1f} ms"
    )


async def fan_out(stub, stack, hub, creator, adjacency, db) -> None:
    headers = creator.headers
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{stack.base_url}/_laiwang/client/v1/zhadui", json={"title": "hotpot tonight?"}, headers=headers
        ) as response:
            zhadui_id = (await response.json())["zhadui_id"]
        friends = sorted(adjacency[hub.user_id] - {creator.user_id})
        sent = time.perf_counter()
        async with http.post(
            f"{stack.base_url}/_laiwang/client/v1/zhadui/{zhadui_id}/join", headers=hub.headers
        ) as response:
            assert response.status == 200, await response.text()
        join_ms = (time.perf_counter() - sent) * 1000

        pending = set(friends)
        seen_at: dict[str, float] = {}
        while pending and time.perf_counter() - sent < 30:

            async def sees(user: str) -> tuple[str, bool]:
                try:
                    await stub.GetZhadui(pb.GetZhaduiRequest(viewer_user_id=user, zhadui_id=zhadui_id))
                    return user, True
                except grpc.aio.AioRpcError:
                    return user, False

            for user, ok in await asyncio.gather(*(sees(u) for u in pending)):
                if ok:
                    seen_at[user] = (time.perf_counter() - sent) * 1000
                    pending.discard(user)
        first_round = len(seen_at) == len(friends) and not pending
        while await db.notices.count_documents({"zid": zhadui_id, "actor": hub.user_id}) < len(friends):
            if time.perf_counter() - sent > 30:
                break
            await asyncio.sleep(0.01)
        notices_ms = (time.perf_counter() - sent) * 1000
    print(
        f"  fan-out: the hub has {len(friends)} friends besides the creator; join answered in {join_ms:.1f} ms;"
        f" all {len(seen_at)} saw the zhadui within {max(seen_at.values()):.1f} ms of the join being sent"
        f" ({'on the first check of each' if first_round else 'after retries'}; {len(pending)} never did);"
        f" their {len(friends)} 'joined' notices were all written {notices_ms:.0f} ms after it"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=10_000)
    parser.add_argument("--friends", type=int, default=200)
    parser.add_argument("--zhaduis", type=int, default=100_000)
    parser.add_argument("--hub-friends", type=int, default=500)
    parser.add_argument("--accounts", type=int, default=20, help="real accounts for the HTTP sample")
    parser.add_argument("--queries", type=int, default=2000)
    data_dir = Path("var/bench/zhadui").resolve()
    shutil.rmtree(data_dir, ignore_errors=True)
    bench_run(run(parser.parse_args(), data_dir))


if __name__ == "__main__":
    main()
