"""Offline push end to end (docs/push.md): the whole stack, a real loopback push gateway
(plumbing/dev/push_gateway.py, run in this process so the test sees what it received), pushers
registered over raw HTTP, messages, rules, receipts and redactions through matrix-nio.

Waits are on the thing expected: a notification arriving at the gateway, a counter of the
messaging service's metrics moving, a pusher disappearing. Where a test proves that something
did *not* happen, it waits for the metric of the decision (`push_pokes_total{outcome}`) or for a
later event's poke; the fan-out's workers may take events out of order, so the latter can only
make such a test miss a bug in a rare run, never fail one that works.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import orjson
import pytest
from aiohttp import web
from nio import PushRuleKind

from tests.conftest import RunningStack, launch_stack
from tests.matrix_support import register_user
from tests.push_support import LoopbackGateway, chat, metric, nio_client, request, say, set_pusher
from tests.support import eventually

pytestmark = pytest.mark.e2e

V3 = "/_matrix/client/v3"


@pytest.fixture(scope="module")
async def gateway() -> AsyncIterator[LoopbackGateway]:
    loopback = LoopbackGateway()
    runner = web.AppRunner(loopback.gateway.app(), handler_cancellation=True)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", loopback.port).start()
    yield loopback
    await runner.cleanup()


@pytest.fixture(scope="module")
async def push_stack(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningStack]:
    # A device seen syncing gets 15 s to fetch a message itself before it is poked: on a loaded
    # machine its next /sync may take seconds, and the test must not depend on how many.
    env = {
        "MESSAGING_INVITE_POLICY": "anyone",
        "GATEWAY_SEND_RATE_PER_SECOND": "1000",
        "PUSH_SYNC_GRACE_MS": "15000",
    }
    async with launch_stack(mongo_uri, tmp_path_factory.mktemp("push-stack"), env=env) as running:
        yield running


async def test_a_friends_message_gives_exactly_one_poke_without_content_and_own_messages_none(
    push_stack: RunningStack, gateway: LoopbackGateway
) -> None:
    base = push_stack.base_url
    alice, bob = await register_user(base), await register_user(base)
    room = await chat(base, alice, bob, direct=True)
    bob_key, alice_key = f"bob-{uuid.uuid4().hex}", f"alice-{uuid.uuid4().hex}"
    assert (await set_pusher(base, bob, gateway.url, bob_key)).status == 200
    assert (await set_pusher(base, alice, gateway.url, alice_key)).status == 200
    pushers = await request(base, bob, "GET", "/pushers")
    assert [p["pushkey"] for p in pushers["pushers"]] == [bob_key]

    secret = "the door code is 4711"
    event_id = await say(base, alice, room, secret)
    poke = await gateway.wait_poke(bob_key, event_id)
    # Event-id-only: ids, priority and the badge, never the message, its sender or the room's name.
    assert set(poke) == {"event_id", "room_id", "prio", "counts", "devices"}
    assert poke["room_id"] == room and poke["prio"] == "high"  # a direct chat
    assert poke["counts"] == {"unread": 1}
    assert poke["devices"] == [
        {
            "app_id": "cn.laiwang.test",
            "pushkey": bob_key,
            "pushkey_ts": poke["devices"][0]["pushkey_ts"],
            "data": {"format": "event_id_only"},
        }
    ]
    assert secret not in orjson.dumps(poke).decode() and alice.user_id not in orjson.dumps(poke).decode()

    # Bob answers: Alice gets a poke for his message, and none ever for her own.
    reply = await say(base, bob, room, "ok")
    await gateway.wait_poke(alice_key, reply)
    assert [n["event_id"] for n in gateway.pokes(alice_key)] == [reply]
    assert [n["event_id"] for n in gateway.pokes(bob_key)] == [event_id]  # exactly one, still


async def test_a_muted_room_gives_no_poke_and_no_notification(
    push_stack: RunningStack, gateway: LoopbackGateway
) -> None:
    base = push_stack.base_url
    alice, bob = await register_user(base), await register_user(base)
    muted, other = await chat(base, alice, bob), await chat(base, alice, bob)
    key = f"bob-{uuid.uuid4().hex}"
    assert (await set_pusher(base, bob, gateway.url, key)).status == 200
    client = await nio_client(base, bob)
    try:
        # Element's "mute": a room rule without actions.
        await client.set_pushrule("global", PushRuleKind.room, muted, actions=[])
    finally:
        await client.close()

    quiet = await say(base, alice, muted, "in the muted room")
    loud = await say(base, alice, other, "in the other room")
    await gateway.wait_poke(key, loud)  # by now `quiet` was almost always fanned out too
    assert [n["room_id"] for n in gateway.pokes(key)] == [other]
    listed = await request(base, bob, "GET", "/notifications")
    assert [n["event"]["event_id"] for n in listed["notifications"]] == [loud]
    assert listed["notifications"][0]["read"] is False
    assert quiet not in orjson.dumps(listed).decode()


async def test_muting_a_room_stops_a_poke_that_is_already_waiting(
    push_stack: RunningStack, gateway: LoopbackGateway
) -> None:
    base = push_stack.base_url
    alice, bob = await register_user(base), await register_user(base)
    room = await chat(base, alice, bob)
    key = f"bob-{uuid.uuid4().hex}"
    assert (await set_pusher(base, bob, gateway.url, key)).status == 200
    gateway.gateway.failing.add(key)  # the gateway is in trouble: the poke waits, retried with backoff
    failures = gateway.gateway.failures
    muted_before = await metric(push_stack, "push_pokes_total", 'outcome="muted"')
    await say(base, alice, room, "a poke for this waits for a retry")
    await gateway.gateway.wait_for(lambda: gateway.gateway.failures > failures)
    client = await nio_client(base, bob)
    try:
        await client.set_pushrule("global", PushRuleKind.room, room, actions=[])
    finally:
        await client.close()
    gateway.gateway.failing.discard(key)

    async def dropped() -> bool:
        return await metric(push_stack, "push_pokes_total", 'outcome="muted"') > muted_before

    await eventually(dropped, timeout=60)  # the next retry finds the room muted
    assert gateway.pokes(key) == []


async def test_a_rejected_pushkey_is_removed(push_stack: RunningStack, gateway: LoopbackGateway) -> None:
    base = push_stack.base_url
    alice, bob = await register_user(base), await register_user(base)
    room = await chat(base, alice, bob)
    dead = f"reject-{uuid.uuid4().hex}"
    assert (await set_pusher(base, bob, gateway.url, dead)).status == 200
    event_id = await say(base, alice, room, "hello?")
    await gateway.wait_poke(dead, event_id)

    async def gone() -> bool:
        return (await request(base, bob, "GET", "/pushers"))["pushers"] == []

    await eventually(gone)


async def test_pusher_input_is_checked(push_stack: RunningStack, gateway: LoopbackGateway) -> None:
    base = push_stack.base_url
    bob = await register_user(base)
    for url in (
        "ftp://push.example/_matrix/push/v1/notify",
        "http://169.254.169.254/_matrix/push/v1/notify",  # cloud metadata
        "http://10.1.2.3/_matrix/push/v1/notify",  # a private network
        "http://[::ffff:192.168.0.1]/_matrix/push/v1/notify",
        "https://push.example/some/other/path",
        "https://user:pw@push.example/_matrix/push/v1/notify",
    ):
        response = await set_pusher(base, bob, url, "k1")
        assert response.status == 400, url
    assert (await set_pusher(base, bob, gateway.url, "k" * 513)).status == 400
    big = {"url": gateway.url, "pad": "x" * 4000}
    assert (await set_pusher(base, bob, gateway.url, "k2", data=big)).status == 400
    assert (await request(base, bob, "GET", "/pushers"))["pushers"] == []


async def test_badge_counts_follow_receipts_markers_and_redactions(
    push_stack: RunningStack, gateway: LoopbackGateway
) -> None:
    base = push_stack.base_url
    alice, bob, carol = await register_user(base), await register_user(base), await register_user(base)
    room = await chat(base, alice, bob, carol)
    key = f"bob-{uuid.uuid4().hex}"
    assert (await set_pusher(base, bob, gateway.url, key)).status == 200
    sent = [await say(base, alice, room, f"message {i}") for i in range(4)]
    last = await gateway.wait_poke(key, sent[-1])
    assert last["counts"] == {"unread": 4} and last["prio"] == "low"  # a group message without mention

    client = await nio_client(base, bob)

    async def counts() -> dict[str, int]:
        reply = await request(base, bob, "GET", "/sync")
        return reply["rooms"]["join"][room]["unread_notifications"]

    try:
        assert await counts() == {"notification_count": 4, "highlight_count": 0}
        await client.update_receipt_marker(room, sent[0])
        await eventually(lambda: _equals(counts, 3))
        await client.room_read_markers(room, fully_read_event=sent[1])
        await eventually(lambda: _equals(counts, 2))
        alice_client = await nio_client(base, alice)
        try:
            await alice_client.room_redact(room, sent[3], reason="typo")
        finally:
            await alice_client.close()
        await eventually(lambda: _equals(counts, 1))
        listed = await request(base, bob, "GET", "/notifications?limit=2")
        assert len(listed["notifications"]) == 2 and "next_token" in listed
        more = await request(base, bob, "GET", f"/notifications?from={listed['next_token']}")
        ids = [n["event"]["event_id"] for n in listed["notifications"] + more["notifications"]]
        assert ids == sent[::-1]
        read = {n["event"]["event_id"]: n["read"] for n in listed["notifications"] + more["notifications"]}
        assert read == {sent[0]: True, sent[1]: True, sent[2]: False, sent[3]: False}
    finally:
        await client.close()


async def _equals(counts: Any, expected: int) -> bool:
    return (await counts())["notification_count"] == expected


async def test_a_syncing_device_gets_no_poke(push_stack: RunningStack, gateway: LoopbackGateway) -> None:
    base = push_stack.base_url
    alice, bob = await register_user(base), await register_user(base)
    room = await chat(base, alice, bob, direct=True)
    key = f"bob-{uuid.uuid4().hex}"
    assert (await set_pusher(base, bob, gateway.url, key)).status == 200
    client = await nio_client(base, bob)
    try:
        # Bob's app is open: it syncs in a loop (the gateways tell messaging so).
        since = (await client.sync(timeout=0)).next_batch
        since = (await client.sync(timeout=0, since=since)).next_batch
        before = await metric(push_stack, "push_pokes_total", 'outcome="synced"')
        event_id = await say(base, alice, room, "you are looking at this")
        while True:
            response = await client.sync(timeout=10_000, since=since)
            since = response.next_batch
            joined = response.rooms.join.get(room)
            if joined is not None and any(e.event_id == event_id for e in joined.timeline.events):
                break
        # His next /sync says he has it: when the poke falls due, it is dropped, not sent.
        await client.sync(timeout=0, since=since)

        async def dropped() -> bool:
            return await metric(push_stack, "push_pokes_total", 'outcome="synced"') > before

        await eventually(dropped, timeout=60)
        assert gateway.pokes(key) == []
    finally:
        await client.close()
