"""Rooms, send, sync and history through the gateway with a real Matrix client (matrix-nio).

This module starts its own stack with MESSAGING_INVITE_POLICY=anyone, so it does not depend on the
contacts service to make users friends (the friends policy is covered by unit and integration tests).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import aiohttp
import orjson
import pytest
from nio import (
    AsyncClient,
    JoinResponse,
    RoomCreateResponse,
    RoomInviteResponse,
    RoomKickResponse,
    RoomMessagesError,
    RoomMessagesResponse,
    RoomMessageText,
    RoomSendError,
    RoomSendResponse,
    SyncResponse,
)

from tests.conftest import RunningStack, launch_stack
from tests.matrix_support import RegisteredUser, register_user
from tests.support import eventually

pytestmark = pytest.mark.e2e

FILTER = {"room": {"timeline": {"limit": 100}}}


@pytest.fixture(scope="module")
async def chat_stack(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningStack]:
    env = {"MESSAGING_INVITE_POLICY": "anyone", "GATEWAY_SEND_RATE_PER_SECOND": "1000"}
    async with launch_stack(mongo_uri, tmp_path_factory.mktemp("chat-stack"), env=env) as running:
        yield running


async def _client(stack: RunningStack, prefix: str) -> tuple[AsyncClient, RegisteredUser]:
    user = await register_user(stack.base_url)
    client = AsyncClient(stack.base_url, user.user_id, device_id=user.device_id)
    client.access_token = user.access_token
    client.user_id = user.user_id
    return client, user


async def _sync_until(client: AsyncClient, predicate, since: str | None = None, rounds: int = 20) -> SyncResponse:
    for _ in range(rounds):
        response = await client.sync(timeout=5000, since=since, sync_filter=FILTER)
        assert isinstance(response, SyncResponse), response
        since = response.next_batch
        if predicate(response):
            return response
    raise AssertionError("condition not reached by sync")


def _texts(response: SyncResponse, room_id: str) -> list[str]:
    room = response.rooms.join.get(room_id)
    if room is None:
        return []
    return [e.body for e in room.timeline.events if isinstance(e, RoomMessageText)]


async def _direct_room(alice: AsyncClient, bob: AsyncClient, bob_id: str) -> str:
    created = await alice.room_create(is_direct=True, invite=[bob_id])
    assert isinstance(created, RoomCreateResponse), created
    room_id = created.room_id
    await _sync_until(bob, lambda r: room_id in r.rooms.invite)
    joined = await bob.join(room_id)
    assert isinstance(joined, JoinResponse), joined
    return room_id


async def test_direct_chat_fifty_messages_in_order_history_and_retried_txn(chat_stack: RunningStack) -> None:
    alice, _ = await _client(chat_stack, "alice")
    bob, bob_user = await _client(chat_stack, "bob")
    try:
        room_id = await _direct_room(alice, bob, bob_user.user_id)
        start = await bob.sync(timeout=0, sync_filter=FILTER)
        assert isinstance(start, SyncResponse)
        received: list[str] = []

        async def sync_loop(since: str) -> None:
            while len(received) < 50:
                response = await bob.sync(timeout=30000, since=since, sync_filter=FILTER)
                assert isinstance(response, SyncResponse), response
                assert response.next_batch != since or not _texts(response, room_id)
                since = response.next_batch
                received.extend(_texts(response, room_id))

        loop = asyncio.create_task(sync_loop(start.next_batch))
        event_ids = []
        for i in range(50):
            sent = await alice.room_send(
                room_id, "m.room.message", {"msgtype": "m.text", "body": f"msg {i}"}, tx_id=f"txn-{i}"
            )
            assert isinstance(sent, RoomSendResponse), sent
            event_ids.append(sent.event_id)
        # A retransmission (same device, same txnId) answers the original event id and creates nothing.
        again = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "msg 7"}, tx_id="txn-7")
        assert isinstance(again, RoomSendResponse)
        assert again.event_id == event_ids[7]
        await asyncio.wait_for(loop, 60)
        assert received == [f"msg {i}" for i in range(50)]

        # Page the whole history backwards with room_messages.
        history: list[str] = []
        token: str | None = None
        for _ in range(20):
            page = await bob.room_messages(room_id, start=token, limit=15)
            assert isinstance(page, RoomMessagesResponse), page
            history += [e.body for e in page.chunk if isinstance(e, RoomMessageText)]
            if not page.end:
                break
            token = page.end
        assert history == [f"msg {i}" for i in reversed(range(50))]

        # And forwards from the beginning.
        forward: list[str] = []
        token = "t0"
        for _ in range(20):
            page = await bob.room_messages(room_id, start=token, limit=20, direction="f")  # type: ignore[arg-type]
            assert isinstance(page, RoomMessagesResponse), page
            forward += [e.body for e in page.chunk if isinstance(e, RoomMessageText)]
            if not page.chunk:
                break
            token = page.end
        assert forward == [f"msg {i}" for i in range(50)]
    finally:
        await alice.close()
        await bob.close()


async def _raw_send(
    stack: RunningStack, user: RegisteredUser, room_id: str, body: bytes, txn: str, event_type: str = "m.room.message"
) -> tuple[int, dict]:
    url = f"{stack.base_url}/_matrix/client/v3/rooms/{room_id}/send/{event_type}/{txn}"
    headers = {**user.headers, "Content-Type": "application/json"}
    async with aiohttp.ClientSession() as http, http.put(url, data=body, headers=headers) as response:
        return response.status, await response.json()


async def test_refusals_non_member_missing_room_oversized_non_canonical_and_kick(chat_stack: RunningStack) -> None:
    alice, alice_user = await _client(chat_stack, "alice")
    bob, bob_user = await _client(chat_stack, "bob")
    carol, carol_user = await _client(chat_stack, "carol")
    try:
        created = await alice.room_create(name="group", invite=[bob_user.user_id])
        assert isinstance(created, RoomCreateResponse), created
        room_id = created.room_id
        assert isinstance(await bob.join(room_id), JoinResponse)

        # Not joined: 403 for sending and for reading history; unknown room: 404.
        refused = await carol.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "hi"})
        assert isinstance(refused, RoomSendError) and refused.status_code == "M_FORBIDDEN"
        unread = await carol.room_messages(room_id)
        assert isinstance(unread, RoomMessagesError) and unread.status_code == "M_FORBIDDEN"
        missing = await alice.room_send("!missing:laiwang.test", "m.room.message", {"msgtype": "m.text", "body": "x"})
        assert isinstance(missing, RoomSendError) and missing.status_code == "M_NOT_FOUND"

        # Oversized and non-canonical content: 400, and nothing stored.
        status, body = await _raw_send(
            chat_stack, alice_user, room_id, b'{"msgtype":"m.text","body":"' + b"x" * 70_000 + b'"}', "big"
        )
        assert (status, body["errcode"]) == (413, "M_TOO_LARGE")  # one status for M_TOO_LARGE everywhere (issue 10)
        status, body = await _raw_send(
            chat_stack, alice_user, room_id, b'{"msgtype":"m.text","body":"a","n":1.5}', "float"
        )
        assert (status, body["errcode"]) == (400, "M_BAD_JSON")
        status, body = await _raw_send(
            chat_stack, alice_user, room_id, b'{"msgtype":"m.text","body":"a","n":9007199254740993}', "bigint"
        )
        assert (status, body["errcode"]) == (400, "M_BAD_JSON")
        status, body = await _raw_send(chat_stack, carol_user, room_id, b'{"msgtype":"m.text","body":"x"}', "c1")
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
        assert "error" in body

        first = await _sync_until(bob, lambda r: room_id in r.rooms.join)
        before_kick = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "before"})
        assert isinstance(before_kick, RoomSendResponse)
        kicked = await alice.room_kick(room_id, bob_user.user_id, reason="bye")
        assert isinstance(kicked, RoomKickResponse), kicked
        after_kick = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "after"})
        assert isinstance(after_kick, RoomSendResponse)

        # Bob sees the room move to `leave`, with the kick and nothing after it.
        response = await _sync_until(bob, lambda r: room_id in r.rooms.leave, since=first.next_batch)
        left_events = response.rooms.leave[room_id].timeline.events
        assert "after" not in [getattr(e, "body", None) for e in left_events]
        assert room_id not in response.rooms.join
        later = await bob.sync(timeout=0, since=response.next_batch, sync_filter=FILTER)
        assert isinstance(later, SyncResponse) and room_id not in later.rooms.join

        again = await bob.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "let me back"})
        assert isinstance(again, RoomSendError) and again.status_code == "M_FORBIDDEN"
        history = await bob.room_messages(room_id, limit=50)
        assert isinstance(history, RoomMessagesResponse), history
        bodies = [e.body for e in history.chunk if isinstance(e, RoomMessageText)]
        assert "before" in bodies and "after" not in bodies

        # Alice's history holds exactly what was accepted.
        full = await alice.room_messages(room_id, limit=100)
        assert isinstance(full, RoomMessagesResponse)
        assert [e.body for e in full.chunk if isinstance(e, RoomMessageText)] == ["after", "before"]
    finally:
        for client in (alice, bob, carol):
            await client.close()


async def test_invite_answers_exactly_empty_object_and_state_endpoints(chat_stack: RunningStack) -> None:
    alice, alice_user = await _client(chat_stack, "alice")
    bob, bob_user = await _client(chat_stack, "bob")
    try:
        created = await alice.room_create(name="Tea", topic="green or black")
        assert isinstance(created, RoomCreateResponse)
        room_id = created.room_id
        invited = await alice.room_invite(room_id, bob_user.user_id)
        assert isinstance(invited, RoomInviteResponse), invited
        base = f"{chat_stack.base_url}/_matrix/client/v3/rooms/{room_id}"
        async with aiohttp.ClientSession(headers=alice_user.headers) as http:
            async with http.post(f"{base}/invite", json={"user_id": bob_user.user_id}) as r:
                assert r.status == 200 and await r.read() == b"{}"
            async with http.get(f"{base}/state/m.room.name/") as r:
                assert await r.json() == {"name": "Tea"}
            async with http.put(f"{base}/state/m.room.topic/", json={"topic": "oolong"}) as r:
                assert r.status == 200 and (await r.json())["event_id"].startswith("$")
            async with http.get(f"{base}/state") as r:
                state = await r.json()
            assert {e["type"] for e in state} >= {
                "m.room.create",
                "m.room.power_levels",
                "m.room.member",
                "m.room.name",
                "m.room.topic",
            }
            async with http.get(f"{base}/members") as r:
                members = {e["state_key"]: e["content"]["membership"] for e in (await r.json())["chunk"]}
            assert members == {alice_user.user_id: "join", bob_user.user_id: "invite"}
        # Bob, only invited, may not change the topic; after joining he still lacks the power level.
        async with aiohttp.ClientSession(headers=bob_user.headers) as http:
            async with http.post(f"{chat_stack.base_url}/_matrix/client/v3/join/{room_id}") as r:
                assert r.status == 200 and (await r.json())["room_id"] == room_id
            async with http.put(f"{base}/state/m.room.topic/", json={"topic": "mine"}) as r:
                assert r.status == 403 and (await r.json())["errcode"] == "M_FORBIDDEN"
            async with http.get(f"{chat_stack.base_url}/_matrix/client/v3/joined_rooms") as r:
                assert room_id in (await r.json())["joined_rooms"]
    finally:
        await alice.close()
        await bob.close()


async def test_receipts_unread_counts_and_typing_in_sync(chat_stack: RunningStack) -> None:
    alice, alice_user = await _client(chat_stack, "alice")
    bob, bob_user = await _client(chat_stack, "bob")
    try:
        room_id = await _direct_room(alice, bob, bob_user.user_id)
        ids = []
        for i in range(3):
            sent = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": f"u{i}"})
            assert isinstance(sent, RoomSendResponse)
            ids.append(sent.event_id)
        response = await _sync_until(bob, lambda r: len(_texts(r, room_id)) == 3)
        assert response.rooms.join[room_id].unread_notifications.notification_count == 3
        base = f"{chat_stack.base_url}/_matrix/client/v3/rooms/{room_id}"
        async with aiohttp.ClientSession(headers=bob_user.headers) as http:
            async with http.post(f"{base}/receipt/m.read/{ids[1]}", json={}) as r:
                assert r.status == 200
            async with http.put(f"{base}/typing/{bob_user.user_id}", json={"typing": True, "timeout": 5000}) as r:
                assert r.status == 200
        after = await alice.sync(timeout=0, sync_filter=FILTER)
        assert isinstance(after, SyncResponse)
        ephemeral = after.rooms.join[room_id].ephemeral
        typing = [e for e in ephemeral if type(e).__name__ == "TypingNoticeEvent"]
        assert typing and bob_user.user_id in typing[0].users
        receipts = [e for e in ephemeral if type(e).__name__ == "ReceiptEvent"]
        assert receipts and any(r.event_id == ids[1] and r.user_id == bob_user.user_id for r in receipts[0].receipts)
        mine = await bob.sync(timeout=0, sync_filter=FILTER)
        assert isinstance(mine, SyncResponse)
        assert mine.rooms.join[room_id].unread_notifications.notification_count == 1
        del alice_user
    finally:
        await alice.close()
        await bob.close()


async def _long_polls_parked(stack: RunningStack, count: int) -> bool:
    async with aiohttp.ClientSession() as http, http.get(f"{stack.base_url}/metrics") as r:
        text = await r.text()
    parked = [line for line in text.splitlines() if line.startswith("gateway_sync_long_polls ")]
    return bool(parked) and float(parked[0].split()[1]) == count


async def test_every_device_is_woken_from_its_long_poll(chat_stack: RunningStack) -> None:
    from tests.matrix_support import login_user

    alice, _ = await _client(chat_stack, "alice")
    bob, bob_user = await _client(chat_stack, "bob")
    laptop_session = await login_user(chat_stack.base_url, bob_user.user_id)
    laptop = AsyncClient(chat_stack.base_url, bob_user.user_id, device_id=laptop_session.device_id)
    laptop.access_token = laptop_session.access_token
    laptop.user_id = bob_user.user_id
    try:
        room_id = await _direct_room(alice, bob, bob_user.user_id)
        tokens = {}
        for device in (bob, laptop):
            response = await device.sync(timeout=0, sync_filter=FILTER)
            assert isinstance(response, SyncResponse)
            tokens[device] = response.next_batch

        async def wait_for_message(device: AsyncClient) -> tuple[list[str], float]:
            started = asyncio.get_running_loop().time()
            response = await device.sync(timeout=25_000, since=tokens[device], sync_filter=FILTER)
            assert isinstance(response, SyncResponse), response
            return _texts(response, room_id), asyncio.get_running_loop().time() - started

        await eventually(lambda: _long_polls_parked(chat_stack, 0), timeout=40)  # earlier tests' polls ended
        waiting = [asyncio.create_task(wait_for_message(d)) for d in (bob, laptop)]
        await eventually(lambda: _long_polls_parked(chat_stack, 2))  # both are held open in the gateway
        assert not any(task.done() for task in waiting)
        sent = await alice.room_send(room_id, "m.room.message", {"msgtype": "m.text", "body": "to every device"})
        assert isinstance(sent, RoomSendResponse)
        for texts, waited in await asyncio.gather(*waiting):
            assert texts == ["to every device"]
            assert waited < 20  # woken by the message, not by the long-poll timeout
    finally:
        for client in (alice, bob, laptop):
            await client.close()


async def _api(
    http: aiohttp.ClientSession, method: str, url: str, user: RegisteredUser, body: bytes | None = None
) -> tuple[int, dict]:
    async with http.request(method, url, data=body, headers=user.headers) as response:
        return response.status, await response.json(content_type=None)


async def test_bad_sends_get_400_alone_while_others_in_the_same_batches_succeed(chat_stack: RunningStack) -> None:
    """Issue 9: content too deep or with a NUL key failed every send group-committed with it."""
    users = [await register_user(chat_stack.base_url) for _ in range(3)]
    v3 = f"{chat_stack.base_url}/_matrix/client/v3"
    nest = b'{"x":' * 299 + b"{}" + b"}" * 299  # 300 levels; orjson reads it but cannot write it
    deep = b'{"msgtype":"m.text","body":"x","d":' + nest + b"}"
    nul = b'{"msgtype":"m.text","body":"x","a\\u0000b":1}'
    async with aiohttp.ClientSession() as http:
        rooms = []
        for user in users:
            status, reply = await _api(http, "POST", f"{v3}/createRoom", user, b"{}")
            assert status == 200, reply
            rooms.append(reply["room_id"])
        calls, expect_bad = [], []
        for i in range(60):
            user, room = users[i % 3], rooms[i % 3]
            bad = {5: deep, 11: nul}.get(i % 12)
            if i % 12 == 7:  # a bad state event and a bad createRoom initial_state in the same batches
                calls.append(_api(http, "PUT", f"{v3}/rooms/{room}/state/m.x/k{i}", user, deep))
                expect_bad.append(True)
                continue
            if i % 12 == 9:
                body = b'{"initial_state":[{"type":"m.x","content":' + nest + b"}]}"
                calls.append(_api(http, "POST", f"{v3}/createRoom", user, body))
                expect_bad.append(True)
                continue
            body = bad or orjson.dumps({"msgtype": "m.text", "body": f"ok {i}"})
            calls.append(_api(http, "PUT", f"{v3}/rooms/{room}/send/m.room.message/t{i}", user, body))
            expect_bad.append(bad is not None)
        results = await asyncio.gather(*calls)
    for (status, reply), bad in zip(results, expect_bad, strict=True):
        if bad:
            assert (status, reply.get("errcode")) == (400, "M_BAD_JSON"), reply
        else:
            assert status == 200 and reply["event_id"].startswith("$"), reply


async def test_a_kicked_member_reads_nothing_after_the_kick(chat_stack: RunningStack) -> None:
    """Issue 9: A creates, C joins, A kicks C, D joins; C must not see D (nor what A says later)."""
    a, c, d = [await register_user(chat_stack.base_url) for _ in range(3)]
    v3 = f"{chat_stack.base_url}/_matrix/client/v3"
    async with aiohttp.ClientSession() as http:
        status, reply = await _api(http, "POST", f"{v3}/createRoom", a, b'{"preset":"public_chat"}')
        room = reply["room_id"]
        base = f"{v3}/rooms/{room}"
        assert (await _api(http, "POST", f"{base}/join", c, b"{}"))[0] == 200
        hi, later = b'{"msgtype":"m.text","body":"hi"}', b'{"msgtype":"m.text","body":"later"}'
        assert (await _api(http, "PUT", f"{base}/send/m.room.message/1", a, hi))[0] == 200
        assert (await _api(http, "POST", f"{base}/kick", a, orjson.dumps({"user_id": c.user_id})))[0] == 200
        assert (await _api(http, "POST", f"{base}/join", d, b"{}"))[0] == 200
        assert (await _api(http, "PUT", f"{base}/send/m.room.message/2", a, later))[0] == 200
        assert (await _api(http, "POST", f"{base}/ban", a, orjson.dumps({"user_id": c.user_id, "reason": "r"})))[
            0
        ] == 200

        status, joined = await _api(http, "GET", f"{base}/joined_members", c)
        assert status == 200 and set(joined["joined"]) == {a.user_id}, joined
        status, members = await _api(http, "GET", f"{base}/members", c)
        assert status == 200
        assert {e["state_key"]: e["content"]["membership"] for e in members["chunk"]} == {
            a.user_id: "join",
            c.user_id: "leave",
        }
        for path in ("state", "state/m.room.join_rules", "state/m.room.member/" + d.user_id):
            status, reply = await _api(http, "GET", f"{base}/{path}", c)
            assert (status, reply["errcode"]) == (403, "M_FORBIDDEN"), (path, reply)
        status, history = await _api(http, "GET", f"{base}/messages?dir=b&limit=100", c)
        assert status == 200
        bodies = [e["content"].get("body") for e in history["chunk"]]
        assert "hi" in bodies and "later" not in bodies
        assert all(e["sender"] != d.user_id and e.get("state_key") != d.user_id for e in history["chunk"])
        status, synced = await _api(http, "GET", f"{v3}/sync", c)
        assert status == 200 and room not in synced["rooms"]["join"]
        assert d.user_id not in orjson.dumps(synced).decode()
