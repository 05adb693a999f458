"""`laiwang demo` (`make demo`) against the real stack: run twice, then log in as a printed user.

The demo is also the newcomer's smoke test: registration, phone verification through the dev SMS
channel, address-book matching, a friend request accepted, a direct chat and a zhadui joined by a
friend, all through the public HTTP APIs.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
from pathlib import Path

import aiohttp
import pytest
from nio import AsyncClient, LoginResponse, RoomMessageText, SyncResponse

from plumbing.dev.demo import CHAT, DISCUSSION, ROOM_NAME, ZHADUI_TITLE
from plumbing.dev.stack import RunningStack

pytestmark = pytest.mark.e2e

LAIWANG = Path(sys.executable).parent / "laiwang"
USER_LINE = re.compile(r"^(@\S+)\s+(\S+)\s+(\+\d+)$", re.MULTILINE)


async def run_demo(stack: RunningStack) -> str:
    """The console script exactly as `make demo` runs it, told where the stack is as `make run` is."""
    env = {
        **os.environ,
        "GATEWAY_PORT": str(stack.config.ports.gateway),
        "LAIWANG_DATA_DIR": str(stack.config.data_dir),
    }
    env.pop("AUTH_DEV_SMS_LOG", None)
    process = await asyncio.create_subprocess_exec(
        str(LAIWANG), "demo", env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT
    )
    output, _ = await asyncio.wait_for(process.communicate(), 90)
    text = output.decode()
    assert process.returncode == 0, text
    return text


async def get(stack: RunningStack, path: str, token: str) -> dict:
    async with (
        aiohttp.ClientSession() as http,
        http.get(stack.base_url + path, headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        assert response.status == 200, (path, response.status, await response.text())
        return await response.json()


async def test_demo_twice_creates_everything_once_and_matrix_nio_sees_the_chat(stack: RunningStack) -> None:
    first = await run_demo(stack)
    second = await run_demo(stack)
    assert "made now: account @demo_alice:" in first, first
    assert "made now: nothing (everything was there already)" in second, second
    assert stack.base_url in second

    users = {user_id.split(":")[0]: (user_id, password) for user_id, password, _ in USER_LINE.findall(second)}
    assert set(users) == {"@demo_alice", "@demo_bob", "@demo_carol"}, second
    room_id = re.search(r"direct room \(Alice, Bob\): (!\S+)", second).group(1)
    assert room_id in first

    bob_id, bob_password = users["@demo_bob"]
    bob = AsyncClient(stack.base_url, bob_id)
    try:
        login = await bob.login(bob_password, device_name="newcomer's matrix-nio")
        assert isinstance(login, LoginResponse), login
        synced = await bob.sync(timeout=0, full_state=True, sync_filter={"room": {"timeline": {"limit": 50}}})
        assert isinstance(synced, SyncResponse), synced
        demo_rooms = [
            r
            for r, joined in synced.rooms.join.items()
            if any(getattr(e, "name", None) == ROOM_NAME for e in joined.state + joined.timeline.events)
        ]
        assert demo_rooms == [room_id]  # one room, though the demo ran twice
        texts = [e.body for e in synced.rooms.join[room_id].timeline.events if isinstance(e, RoomMessageText)]
        assert texts == [text for _, _, text in CHAT]  # each message once, in order
    finally:
        await bob.close()

    alice_id, alice_password = users["@demo_alice"]
    alice = AsyncClient(stack.base_url, alice_id)
    try:
        assert isinstance(await alice.login(alice_password), LoginResponse)
        friends = await get(stack, "/_laiwang/client/v1/friends", alice.access_token)
        assert sorted(f["user_id"] for f in friends["friends"]) == sorted([bob_id, users["@demo_carol"][0]])
        feed = await get(stack, "/_laiwang/client/v1/zhadui/feed?limit=50", alice.access_token)
        demo = [z for z in feed["items"] if z["title"] == ZHADUI_TITLE]
        assert len(demo) == 1 and demo[0]["participant_count"] == 2, feed
        discussion = await get(
            stack, f"/_laiwang/client/v1/zhadui/{demo[0]['zhadui_id']}/discussion", alice.access_token
        )
        history = await get(
            stack, f"/_matrix/client/v3/rooms/{discussion['room_id']}/messages?dir=b&limit=50", alice.access_token
        )
        posts = [e["content"]["body"] for e in history["chunk"] if e["type"] == "m.room.message"]
        assert posts == [DISCUSSION[2]]
    finally:
        await alice.close()
