"""Contacts: match a 2,000-number address book against 1,000,000 registered numbers (plain and
hashed), the service's memory, and how soon a new registration is matchable.

Real processes: embedded NATS, the Mongo-wire server (SecantusDB) and the contacts service,
supervised as `make run` does. The million verified numbers and their profiles are written
straight into the contacts service's own collections in the shapes its store writes (a million
PhoneVerified events through JetStream would take far longer than the benchmark itself), and
the seeded data directory is kept (var/bench-contacts) so later runs skip seeding. The service
then loads them into its in-memory index at start-up, as in production. Registration latency
goes through the real event path: a PhoneVerified event on JetStream, then uploads until the
number matches. Latencies are measured at a gRPC client on loopback, so they are the server's
handling time plus well under a millisecond of transport; the service's own Prometheus
histogram is printed alongside.

    .venv/bin/python -m bench.contacts_bench [--registered 1000000] [--runs 300] [--fresh]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import shutil
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import aiohttp
import grpc
import nats
from pymongo import AsyncMongoClient

from bench.common import percentile, rss_mb
from bench.common import run as bench_run
from laiwang.contacts.v1 import contacts_pb2 as pb
from laiwang.contacts.v1 import contacts_pb2_grpc
from laiwang.events.v1 import auth_events_pb2
from plumbing import streams
from plumbing.dev.stack import StackConfig, stack_specs
from plumbing.dev.supervisor import Supervisor
from plumbing.jetstream import ensure_stream
from services.contacts.core import lookup_hash

SERVER = "laiwang.bench"
DB = "contacts_bench"
DATA_DIR = Path("var/bench-contacts")
BOOK_SIZE = 2_000


def registered_number(i: int) -> str:
    # A bijection of 0..99,999,999 spreads the seeded numbers over the whole 139 range.
    return f"+86139{(i * 7_919_993) % 100_000_000:08d}"


def user_of(i: int) -> str:
    return f"@b{i}:{SERVER}"


async def seed(db, count: int) -> None:
    meta = await db.bench_meta.find_one({"_id": "seed"})
    if meta is not None and meta["count"] == count:
        print(f"  reusing {count:,} seeded numbers in {DATA_DIR}")
        return
    await db.phones.drop()
    await db.profiles.drop()
    started = time.perf_counter()
    now = datetime.now(UTC)
    event_ms = int(now.timestamp() * 1000)
    batch = 10_000
    for start in range(0, count, batch):
        ids = range(start, min(count, start + batch))
        await db.phones.insert_many(
            [
                {"_id": registered_number(i), "user_id": user_of(i), "event_ms": event_ms, "updated_at": now}
                for i in ids
            ],
            ordered=False,
        )
        # Half the users let everyone find them; the rest keep the default (mutual).
        await db.profiles.insert_many(
            [
                {
                    "_id": user_of(i),
                    "display_name": f"Bench User {i}",
                    "updated_at": now,
                    **({"discoverability": "everyone"} if i % 2 == 0 else {}),
                }
                for i in ids
            ],
            ordered=False,
        )
        if start and start % 200_000 == 0:
            print(f"  seeded {start:,} ({time.perf_counter() - started:.0f}s)")
    await db.bench_meta.replace_one({"_id": "seed"}, {"count": count}, upsert=True)
    print(f"  seeded {count:,} numbers + profiles in {time.perf_counter() - started:.0f}s")


def histogram(metrics: str, method: str) -> str:
    pattern = re.compile(
        r'^grpc_server_handling_seconds_bucket\{grpc_method="'
        + method
        + r'",grpc_service="[^"]+",le="([^"]+)"\} (\S+)$',
        re.M,
    )
    buckets = [(le, float(n)) for le, n in pattern.findall(metrics)]
    if not buckets:
        return "n/a"
    total = buckets[-1][1]
    shown = [f"<={float(le) * 1000:g}ms: {n / total:.1%}" for le, n in buckets if le in ("0.025", "0.05", "0.1")]
    return ", ".join(shown)


async def run(args: argparse.Namespace, config: StackConfig, servers_log: TextIO, service_log: TextIO) -> None:
    specs = {s.name: s for s in stack_specs(config)}
    contacts_spec = specs["contacts"]
    contacts_spec.env.update(
        {
            "MONGO_DB": DB,
            "CONTACTS_HASH_KEY": "bench-hash-key-0123456789abcdef",
            # Uploaders get their phones as PhoneVerified events below; no auth here.
            "CONTACTS_ASK_AUTH_FOR_PHONES": "false",
            # The big-book case uploads 20,000 fresh numbers from one account.
            "CONTACTS_BUDGET_INITIAL": "100000",
        }
    )
    contacts_spec.ready_timeout = 600
    supervisor = Supervisor([specs["nats"], specs["mongo"]], out=servers_log)
    print(f"contacts bench: {BOOK_SIZE:,}-number book against {args.registered:,} registered numbers")
    await supervisor.start_all()
    service = Supervisor([contacts_spec], out=service_log)
    mongo = AsyncMongoClient(config.mongo_uri)
    interrupted = True  # Ctrl-C or a failure: stop at once (the seeded data survives a quick stop)
    try:
        await seed(mongo[DB], args.registered)
        started = time.perf_counter()
        await service.start_all()
        pid = service.child("contacts").pid or 0
        print(
            f"  contacts started and loaded its index in {time.perf_counter() - started:.1f}s; RSS {rss_mb(pid):.0f} MB"
        )
        async with grpc.aio.insecure_channel(f"127.0.0.1:{config.ports.grpc('contacts')}") as channel:
            stub = contacts_pb2_grpc.ContactsServiceStub(channel)
            await measure(stub, args, config)
            async with (
                aiohttp.ClientSession() as http,
                http.get(f"http://127.0.0.1:{config.ports.metrics('contacts')}/metrics") as response,
            ):
                metrics = await response.text()
        print(f"  server histogram UploadContacts: {histogram(metrics, 'UploadContacts')}")
        print(f"  server histogram LookupHashes:   {histogram(metrics, 'LookupHashes')}")
        print(f"  contacts RSS after the run: {rss_mb(pid):.0f} MB")
        interrupted = False
    finally:
        await mongo.close()
        await service.stop_all(quick=interrupted)
        await supervisor.stop_all(quick=interrupted)


async def verify(js, stub: contacts_pb2_grpc.ContactsServiceStub, user: str, number: str) -> None:
    """Give `user` a verified phone through JetStream as auth would, and wait until contacts knows it."""
    await js.publish(
        "laiwang.auth.phone_verified",
        auth_events_pb2.PhoneVerified(
            user_id=user, msisdn=number, verified_at_ms=int(time.time() * 1000)
        ).SerializeToString(),
        headers={"Nats-Msg-Id": uuid.uuid4().hex},
    )
    probe = pb.UploadContactsRequest(user_id=user, mode=pb.UPLOAD_MODE_MERGE, add=[])
    deadline = time.perf_counter() + 30
    while True:
        try:
            await stub.UploadContacts(probe)
            return
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.PERMISSION_DENIED or time.perf_counter() > deadline:
                raise
            await asyncio.sleep(0.01)


async def big_books(stub: contacts_pb2_grpc.ContactsServiceStub, js, rng: random.Random) -> None:
    """Replacing a big book (it used to run past the 10 s deadline and stall everyone meanwhile)."""
    owner, bystander = (f"@{name}-{uuid.uuid4().hex[:6]}:{SERVER}" for name in ("bigbook", "bystander"))
    await verify(js, stub, owner, f"+86134{rng.randrange(100_000_000):08d}")
    await verify(js, stub, bystander, f"+86134{rng.randrange(100_000_000):08d}")

    def book(prefix: str, size: int) -> list[str]:
        return [f"+86{prefix}{n:08d}" for n in rng.sample(range(100_000_000), size)]

    async def replace(numbers: list[str]) -> tuple[float, pb.UploadContactsResponse]:
        started = time.perf_counter()
        reply = await stub.UploadContacts(
            pb.UploadContactsRequest(user_id=owner, mode=pb.UPLOAD_MODE_REPLACE, add=numbers), timeout=60
        )
        return (time.perf_counter() - started) * 1000, reply

    async def bystanding(done: asyncio.Event) -> list[float]:
        """Another user syncing one new number every 50 ms (20 calls/s) meanwhile."""
        took = []
        while not done.is_set():
            started = time.perf_counter()
            await stub.UploadContacts(
                pb.UploadContactsRequest(user_id=bystander, mode=pb.UPLOAD_MODE_MERGE, add=book("133", 1)), timeout=60
            )
            took.append((time.perf_counter() - started) * 1000)
            await asyncio.sleep(0.05)
        return took

    ms, reply = await replace(book("158", 5_000))
    print(f"  big book: first upload of 5,000 numbers: {ms:.0f} ms (added {reply.added:,})")
    ms, reply = await replace(book("155", 5_000))
    print(f"  big book: replace 5,000 stored -> 5,000 new, nobody else busy: {ms:.0f} ms")
    for label, numbers, removed in (
        ("5,000 stored -> 5,000 new", book("159", 5_000), 5_000),
        ("5,000 stored -> 10,000 new (the limit)", book("157", 10_000), 5_000),
        ("10,000 stored -> 10,000 new", book("156", 10_000), 10_000),
    ):
        done = asyncio.Event()
        others = asyncio.create_task(bystanding(done))
        ms, reply = await replace(numbers)
        done.set()
        took = await others
        assert (reply.added, reply.removed) == (len(numbers), removed), reply
        print(
            f"  big book: replace {label}: {ms:.0f} ms; another user's uploads meanwhile:"
            f" {len(took)} calls, p50 {percentile(took, 50):.0f} ms, max {max(took):.0f} ms"
        )


async def measure(stub: contacts_pb2_grpc.ContactsServiceStub, args: argparse.Namespace, config: StackConfig) -> None:
    rng = random.Random(5)
    viewer = f"@viewer-{uuid.uuid4().hex[:6]}:{SERVER}"
    nc = await nats.connect(config.nats_url)
    js = nc.jetstream()
    await ensure_stream(js, streams.AUTH)
    await verify(js, stub, viewer, f"+86134{rng.randrange(100_000_000):08d}")
    await big_books(stub, js, rng)
    known = [registered_number(i) for i in rng.sample(range(args.registered), BOOK_SIZE // 2)]
    # Half the registered entries arrive in national format, so both parsing paths are exercised.
    book = [n if k % 2 else f"{n[3:6]} {n[6:10]} {n[10:]}" for k, n in enumerate(known)]
    book += [f"+86137{rng.randrange(100_000_000):08d}" for _ in range(BOOK_SIZE // 2)]
    rng.shuffle(book)
    request = pb.UploadContactsRequest(user_id=viewer, mode=pb.UPLOAD_MODE_REPLACE, add=book, default_region="CN")

    started = time.perf_counter()
    first = await stub.UploadContacts(request)
    print(
        f"  first upload (stores {first.added:,} keyed hashes): {(time.perf_counter() - started) * 1000:.0f} ms,"
        f" {len(first.matches)} matches revealed"
    )
    for _ in range(5):
        await stub.UploadContacts(request)  # warm-up
    times = []
    for _ in range(args.runs):
        started = time.perf_counter()
        reply = await stub.UploadContacts(request)
        times.append((time.perf_counter() - started) * 1000)
    assert reply.added == 0 and len(reply.matches) == len(first.matches)
    print(
        f"  plain upload of {BOOK_SIZE:,} (re-sync), {args.runs} runs: p50 {percentile(times, 50):.1f} ms,"
        f" p99 {percentile(times, 99):.1f} ms, max {max(times):.1f} ms"
    )

    pepper = (await stub.GetHashDetails(pb.GetHashDetailsRequest())).lookup_pepper
    hashed = [lookup_hash(n, pepper) for n in known] + [
        lookup_hash(f"+86136{rng.randrange(100_000_000):08d}", pepper) for _ in range(BOOK_SIZE // 2)
    ]
    lookup = pb.LookupHashesRequest(user_id=viewer, algorithm="sha256", pepper=pepper, addresses=hashed)
    await stub.LookupHashes(lookup)
    times = []
    for _ in range(args.runs):
        started = time.perf_counter()
        reply_h = await stub.LookupHashes(lookup)
        times.append((time.perf_counter() - started) * 1000)
    print(
        f"  hashed lookup of {BOOK_SIZE:,}, {args.runs} runs: p50 {percentile(times, 50):.1f} ms,"
        f" p99 {percentile(times, 99):.1f} ms, max {max(times):.1f} ms ({len(reply_h.matches)} matches)"
    )

    # Registration -> matchable, through JetStream as auth publishes it.
    delays = []
    for round_ in range(args.registrations):
        newcomer = f"@new{round_}-{uuid.uuid4().hex[:6]}:{SERVER}"
        number = f"+86135{rng.randrange(100_000_000):08d}"
        await stub.SetDiscoverability(
            pb.SetDiscoverabilityRequest(user_id=newcomer, discoverability=pb.DISCOVERABILITY_EVERYONE)
        )
        probe = pb.UploadContactsRequest(user_id=viewer, mode=pb.UPLOAD_MODE_MERGE, add=[number])
        started = time.perf_counter()
        await js.publish(
            "laiwang.auth.phone_verified",
            auth_events_pb2.PhoneVerified(
                user_id=newcomer, msisdn=number, verified_at_ms=int(time.time() * 1000)
            ).SerializeToString(),
            headers={"Nats-Msg-Id": uuid.uuid4().hex},
        )
        while not (await stub.UploadContacts(probe)).matches:
            if time.perf_counter() - started > 10:
                raise RuntimeError("a new registration was not matchable within 10 s")
            await asyncio.sleep(0.002)
        delays.append((time.perf_counter() - started) * 1000)
    await nc.close()
    print(
        f"  registration -> matchable, {len(delays)} runs: p50 {percentile(delays, 50):.0f} ms,"
        f" max {max(delays):.0f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--registered", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=300)
    parser.add_argument("--registrations", type=int, default=20)
    parser.add_argument("--fresh", action="store_true", help="discard the cached seeded data first")
    args = parser.parse_args()
    if args.fresh and DATA_DIR.exists():
        shutil.rmtree(DATA_DIR)
    DATA_DIR.mkdir(parents=True, exist_ok=True)
    config = StackConfig.on_free_ports(DATA_DIR.resolve(), server_name=SERVER)
    with open(DATA_DIR / "servers.log", "w") as servers_log, open(DATA_DIR / "contacts.log", "w") as service_log:
        bench_run(run(args, config, servers_log, service_log))


if __name__ == "__main__":
    main()
