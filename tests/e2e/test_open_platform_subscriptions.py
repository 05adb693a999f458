"""Subscriptions (订阅) end to end: a user subscribes to an app through the Laiwang API, a direct room
with the app's bot appears in the user's Matrix view, the app (with an app-level token from the
client credentials grant, through Authlib's client) messages the subscriber, nobody else, within
its budget; unsubscribing stops it at once."""

from __future__ import annotations

import asyncio
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from authlib.integrations.requests_client import OAuth2Session

from tests.matrix_support import register_user
from tests.open_platform_support import OAUTH, register_app

pytestmark = pytest.mark.e2e

SUBS = "/_laiwang/client/v1/subscriptions"
PARTNER = "/_laiwang/apps/v1/subscribers"


async def send(http: aiohttp.ClientSession, base: str, token: str, user_id: str, body: Any) -> tuple[int, Any]:
    async with http.post(
        f"{base}{PARTNER}/{quote(user_id, safe='')}/messages", json=body, headers={"Authorization": f"Bearer {token}"}
    ) as r:
        return r.status, await r.json()


async def test_subscribe_message_budget_and_unsubscribe(stack: Any) -> None:
    base = stack.base_url
    async with aiohttp.ClientSession() as http:
        owner = await register_user(base)
        partner = await register_app(http, base, owner)
        fan, stranger = await register_user(base), await register_user(base)
        client = OAuth2Session(partner.client_id, partner.client_secret, scope="subscribers:message")
        token = (await asyncio.to_thread(client.fetch_token, f"{base}{OAUTH}/token", grant_type="client_credentials"))[
            "access_token"
        ]

        # Subscribing opens a direct room with the app's bot; repeating it changes nothing.
        async with http.put(f"{base}{SUBS}/{partner.client_id}", headers=fan.headers) as r:
            sub = await r.json()
            assert r.status == 200, sub
        assert sub["bot_user_id"].startswith(f"@app_{partner.client_id.lower()}:") and sub["room_id"].startswith("!")
        async with http.put(f"{base}{SUBS}/{partner.client_id}", headers=fan.headers) as r:
            assert (await r.json())["room_id"] == sub["room_id"]
        async with http.get(f"{base}/_matrix/client/v3/joined_rooms", headers=fan.headers) as r:
            assert sub["room_id"] in (await r.json())["joined_rooms"]
        async with http.get(f"{base}{SUBS}", headers=fan.headers) as r:
            assert [s["client_id"] for s in (await r.json())["subscriptions"]] == [partner.client_id]
        async with http.get(f"{base}{PARTNER}", headers={"Authorization": f"Bearer {token}"}) as r:
            assert [s["user_id"] for s in (await r.json())["subscribers"]] == [fan.user_id]

        # The app messages its subscriber: a plain m.room.message from the bot, seen by the user's client.
        status, sent = await send(http, base, token, fan.user_id, {"body": "Hotpot 30% off tonight", "txn_id": "t1"})
        assert status == 200 and sent["room_id"] == sub["room_id"], sent
        again = await send(http, base, token, fan.user_id, {"body": "Hotpot 30% off tonight", "txn_id": "t1"})
        assert again == (200, sent)  # a retried call with the same txn_id is the same message
        async with http.get(
            f"{base}/_matrix/client/v3/rooms/{quote(sub['room_id'])}/messages?dir=b&limit=20", headers=fan.headers
        ) as r:
            chunk = (await r.json())["chunk"]
        texts = [e for e in chunk if e["type"] == "m.room.message"]
        assert [(e["sender"], e["content"]["body"], e["event_id"]) for e in texts] == [
            (sub["bot_user_id"], "Hotpot 30% off tonight", sent["event_id"])
        ]

        # Nobody else: a non-subscriber (or a made-up user) is 403 and gets nothing.
        for other in (stranger.user_id, "@nobody:laiwang.test"):
            status, body = await send(http, base, token, other, {"body": "hello"})
            assert status == 403 and body["errcode"] == "M_FORBIDDEN"
        async with http.get(f"{base}/_matrix/client/v3/joined_rooms", headers=stranger.headers) as r:
            assert (await r.json())["joined_rooms"] == []
        status, body = await send(http, base, token, fan.user_id, {"body": ""})
        assert status == 400

        # The per-subscriber budget (20 an hour by default): then 429 with retry_after_ms.
        results = [await send(http, base, token, fan.user_id, {"body": f"deal {i}"}) for i in range(25)]
        statuses = [s for s, _ in results]
        assert statuses.count(200) == 18 and set(statuses[18:]) == {429}, statuses  # 2 were spent above
        limited = results[-1][1]
        assert limited["errcode"] == "M_LIMIT_EXCEEDED" and 0 < limited["retry_after_ms"] <= 3_600_000

        # Unsubscribing stops delivery at once; the app no longer lists them.
        async with http.delete(f"{base}{SUBS}/{partner.client_id}", headers=fan.headers) as r:
            assert r.status == 200
        status, body = await send(http, base, token, fan.user_id, {"body": "one more?"})
        assert status == 403 and body["errcode"] == "M_FORBIDDEN"
        async with http.get(f"{base}{PARTNER}", headers={"Authorization": f"Bearer {token}"}) as r:
            assert (await r.json())["subscribers"] == []
        async with http.delete(f"{base}{SUBS}/{partner.client_id}", headers=fan.headers) as r:
            assert r.status == 404

        # An app not registered for subscribers:message gets no token to message with; unknown apps
        # cannot be subscribed to; a suspended app's token stops at once.
        quiet = await register_app(http, base, owner, scopes=["profile:read"])
        quiet_client = OAuth2Session(quiet.client_id, quiet.client_secret, scope="subscribers:message")
        with pytest.raises(Exception, match="invalid_scope"):
            await asyncio.to_thread(quiet_client.fetch_token, f"{base}{OAUTH}/token", grant_type="client_credentials")
        async with http.put(f"{base}{SUBS}/NOSUCHAPP", headers=fan.headers) as r:
            assert r.status == 404
        async with http.put(f"{base}{SUBS}/{partner.client_id}", headers=fan.headers) as r:
            assert r.status == 200 and (await r.json())["room_id"] != sub["room_id"]  # a new room
        async with http.post(f"{base}/_laiwang/client/v1/apps/{partner.client_id}/suspend", headers=owner.headers) as r:
            assert r.status == 200
        status, body = await send(http, base, token, fan.user_id, {"body": "still there?"})
        assert status == 401 and body["errcode"] == "M_UNKNOWN_TOKEN"
