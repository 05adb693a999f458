"""The auth core on its real repository (Mongo-wire server) with the outbox relaying to real NATS JetStream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from nats.js import JetStreamContext

from laiwang.events.v1 import auth_events_pb2 as ev
from plumbing import streams
from plumbing.domain_errors import DomainError, Errcode
from plumbing.jetstream import EventPublisher, connect_nats, ensure_stream
from plumbing.mongo import connect_mongo, ensure_indexes
from plumbing.outbox import OUTBOX_INDEXES, Outbox
from services.auth.core import AuthCore
from services.auth.model import AuthSettings
from services.auth.rules import PasswordHasher, digest
from services.auth.store import AuthStore
from tests.unit.auth_fakes import FAST_ARGON2, FakeSms

pytestmark = pytest.mark.integration

PW = "integration password"


@dataclass
class Wiring:
    core: AuthCore
    store: AuthStore
    sms: FakeSms
    js: JetStreamContext
    outbox: Outbox
    db_name: str


@pytest.fixture
async def wiring(mongo_uri: str, nats_url: str, fresh_db_name: str) -> AsyncIterator[Wiring]:
    mongo, db = await connect_mongo(mongo_uri, fresh_db_name)
    nc = await connect_nats(nats_url, "auth-integration-test")
    js = nc.jetstream()
    await ensure_stream(js, streams.AUTH)
    outbox = Outbox(db, EventPublisher(js), poll_seconds=0.2)
    store = AuthStore(mongo, db, outbox)
    await ensure_indexes(db, {**OUTBOX_INDEXES, **store.indexes()})
    outbox.start()
    sms = FakeSms()
    core = AuthCore(
        store,
        AuthSettings(server_name=fresh_db_name + ".test", argon2=FAST_ARGON2),
        sms=sms,
        hasher=PasswordHasher(FAST_ARGON2),
    )
    try:
        yield Wiring(core, store, sms, js, outbox, fresh_db_name)
    finally:
        await outbox.stop()
        await nc.drain()
        await mongo.close()


async def _events(js: JetStreamContext, subject: str, user_id: str, want: int, timeout: float = 10.0) -> list[bytes]:
    """Payloads on `subject` that concern `user_id` (other tests share the stream)."""
    sub = await js.subscribe(subject, ordered_consumer=True)
    found: list[bytes] = []
    deadline = asyncio.get_running_loop().time() + timeout
    try:
        while len(found) < want and asyncio.get_running_loop().time() < deadline:
            try:
                msg = await sub.next_msg(timeout=0.5)
            except Exception:
                continue
            if user_id.encode() in msg.data:
                found.append(msg.data)
    finally:
        await sub.unsubscribe()
    return found


async def test_registration_and_phone_binding_reach_jetstream_through_the_outbox(wiring: Wiring) -> None:
    user_id, _ = await wiring.core.register("ann", PW)
    session = await wiring.core.request_phone_code("CN", "13800138000", "secret", 1)
    await wiring.core.submit_phone_code(session.sid, "secret", wiring.sms.last_code("+8613800138000"))
    await wiring.core.bind_phone(user_id, session.sid, "secret")

    registered = await _events(wiring.js, "laiwang.auth.user_registered", user_id, 1)
    assert ev.UserRegistered.FromString(registered[0]).user_id == user_id
    verified = [
        ev.PhoneVerified.FromString(d) for d in await _events(wiring.js, "laiwang.auth.phone_verified", user_id, 1)
    ]
    assert (verified[0].user_id, verified[0].msisdn) == (user_id, "+8613800138000")
    assert verified[0].verified_at_ms > 0


async def test_one_number_one_account_is_enforced_by_the_database(wiring: Wiring) -> None:
    first, _ = await wiring.core.register("bea", PW)
    second, _ = await wiring.core.register("cid", PW)
    sessions = []
    for secret in ("s1", "s2"):
        s = await wiring.core.request_phone_code("CN", "13900139000", secret, 1)
        await wiring.core.submit_phone_code(s.sid, secret, wiring.sms.last_code("+8613900139000"))
        sessions.append((s.sid, secret))
        await wiring.store.send_slots.delete_many({})  # skip the resend wait for this test
    results = await asyncio.gather(
        wiring.core.bind_phone(first, *sessions[0]),
        wiring.core.bind_phone(second, *sessions[1]),
        return_exceptions=True,
    )
    wins = [r for r in results if r == "+8613900139000"]
    losses = [r for r in results if isinstance(r, DomainError)]
    assert len(wins) == 1 and len(losses) == 1 and losses[0].errcode == Errcode.THREEPID_IN_USE, results
    assert await wiring.store.threepids.count_documents({}) == 1


async def test_parallel_code_guesses_never_exceed_the_attempt_limit(wiring: Wiring) -> None:
    session = await wiring.core.request_phone_code("CN", "13700137000", "secret", 1)
    code = wiring.sms.last_code("+8613700137000")
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"
    results = await asyncio.gather(
        *(wiring.core.submit_phone_code(session.sid, "secret", wrong) for _ in range(20)), return_exceptions=True
    )
    assert all(isinstance(r, DomainError) for r in results)
    stored = await wiring.store.phone_sessions.find_one({"_id": session.sid})
    assert stored["attempts"] == 5
    with pytest.raises(DomainError):
        await wiring.core.submit_phone_code(session.sid, "secret", code)


async def test_resend_slot_is_claimed_atomically(wiring: Wiring) -> None:
    waits = await asyncio.gather(*(wiring.store.claim_send_slot("+8613600136000", 1000.0, 60) for _ in range(10)))
    assert sorted(w == 0 for w in waits) == [False] * 9 + [True]
    assert await wiring.store.claim_send_slot("+8613600136000", 1061.0, 60) == 0


async def test_secrets_are_stored_only_as_digests(wiring: Wiring) -> None:
    _, session = await wiring.core.register("dan", PW)
    refreshable = await wiring.core.login_password(user="dan", password=PW, want_refresh=True)
    phone = await wiring.core.request_phone_code("CN", "13500135000", "client-secret-x", 1)
    code = wiring.sms.last_code(phone.msisdn)
    everything = ""
    for name in await wiring.store._db.list_collection_names():
        everything += str(await wiring.store._db[name].find({}).to_list())
    for secret in (PW, session.access_token, refreshable.refresh_token, "client-secret-x"):
        assert secret not in everything
    assert f"'{code}'" not in everything
    assert await wiring.store.find_access_token(digest(session.access_token)) is not None


async def test_revocation_event_names_the_revoked_tokens(wiring: Wiring) -> None:
    user_id, first = await wiring.core.register("eve", PW, device_id="ONE")
    await wiring.core.logout(user_id, "ONE")
    payloads = await _events(wiring.js, "laiwang.auth.token_revoked", user_id, 1)
    revoked = ev.TokenRevoked.FromString(payloads[0])
    assert first is not None
    assert (revoked.user_id, revoked.device_id, list(revoked.token_ids), revoked.reason) == (
        user_id,
        "ONE",
        [first.token_id],
        "logout",
    )
    assert await wiring.store.devices.count_documents({"user_id": user_id}) == 0


async def test_a_rejected_change_writes_no_event(wiring: Wiring) -> None:
    user_id, _ = await wiring.core.register("fay", PW)
    with pytest.raises(DomainError):
        await wiring.core.unbind_phone(user_id, "+8613800138000")
    await wiring.outbox.relay_once()
    assert await wiring.store._db["outbox"].count_documents({}) == 0
    assert not await _events(wiring.js, "laiwang.auth.phone_unbound", user_id, 1, timeout=1.0)


async def test_concurrent_hits_on_one_rate_counter_are_all_counted(wiring: Wiring) -> None:
    # Many registrations from one address at once hit the same counter document; every hit must be
    # counted and answered (the embedded server can return no document to a contended upsert).
    for trial in range(5):
        counts = await asyncio.gather(*(wiring.store.hit_counter(f"burst{trial}", 60, 1000.0) for _ in range(12)))
        assert all(isinstance(c, int) and 1 <= c <= 12 for c in counts)
        assert max(counts) == 12
        assert await wiring.store.read_counter(f"burst{trial}", 60, 1000.0) == 12
