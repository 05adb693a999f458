"""Zhadui end to end through the gateway of the whole stack: real accounts with verified phones,
friendships made through contacts (address-book match, request, accept), topics that spread
one friendship at a time, and the discussion as a Matrix room only participants can use."""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.auth_support import unique_cn_mobile, wait_for_code
from tests.matrix_support import RegisteredUser, register_user

pytestmark = pytest.mark.e2e

V1 = "/_laiwang/client/v1"
V3 = "/_matrix/client/v3"
Z = f"{V1}/zhadui"


@dataclass
class Person:
    name: str
    account: RegisteredUser
    national: str

    @property
    def user_id(self) -> str:
        return self.account.user_id


class Api:
    def __init__(self, base_url: str, http: aiohttp.ClientSession, sms_sink: Any) -> None:
        self.base_url = base_url
        self.http = http
        self.sms_sink = sms_sink

    async def call(self, method: str, path: str, who: Person, json: Any = None) -> tuple[int, Any]:
        async with self.http.request(method, f"{self.base_url}{path}", json=json, headers=who.account.headers) as r:
            return r.status, await r.json(content_type=None)

    async def ok(self, method: str, path: str, who: Person, json: Any = None) -> Any:
        status, body = await self.call(method, path, who, json)
        assert status == 200, (method, path, status, body)
        return body

    async def person(self, name: str) -> Person:
        account = await register_user(self.base_url, f"{name.lower()}{secrets.token_hex(4)}")
        national, msisdn = unique_cn_mobile()
        who = Person(name, account, national)
        secret = secrets.token_hex(8)
        token = await self.ok("POST", f"{V3}/account/3pid/msisdn/requestToken", who,
                              {"client_secret": secret, "country": "CN", "phone_number": national, "send_attempt": 1})
        code = await wait_for_code(self.sms_sink, msisdn)
        await self.ok("POST", f"{V3}/account/3pid/msisdn/submit_token", who,
                      {"sid": token["sid"], "client_secret": secret, "token": code})
        await self.ok("POST", f"{V3}/account/3pid/add", who, {"sid": token["sid"], "client_secret": secret})
        return who

    async def befriend(self, x: Person, y: Person) -> None:
        """Each has the other's number (the default discoverability needs both), then request + accept."""
        for me, other in ((x, y), (y, x)):
            await self.ok("POST", f"{V1}/contacts/sync", me, {"add": [other.national], "region": "CN"})

        async def matched() -> bool:
            status, body = await self.call("POST", f"{V1}/contacts/sync", x, {"add": [y.national], "region": "CN"})
            return status == 200 and y.user_id in {m["user_id"] for m in body["matches"]}

        await eventually(matched)
        await self.ok("POST", f"{V1}/friends/requests", x, {"user_id": y.user_id})
        await self.ok("POST", f"{V1}/friends/requests/{x.user_id}/accept", y)

    async def sees(self, who: Person, zhadui_id: str) -> bool:
        feed = await self.ok("GET", f"{Z}/feed?limit=100", who)
        in_feed = any(item["zhadui_id"] == zhadui_id for item in feed["items"])
        status, _ = await self.call("GET", f"{Z}/{zhadui_id}", who)
        assert status in (200, 404)
        return in_feed and status == 200


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


async def sees_eventually(api: Api, who: Person, zhadui_id: str, expected: bool) -> None:
    async def check() -> bool:
        return await api.sees(who, zhadui_id) is expected

    await eventually(check)


@pytest.fixture(scope="module")
async def people(stack: Any) -> AsyncIterator[tuple[Api, dict[str, Person]]]:
    """A - B - C - D are friends along a chain; E knows nobody."""
    async with aiohttp.ClientSession() as http:
        api = Api(stack.base_url, http, stack.log_path)
        folks = {name: await api.person(name) for name in "ABCDE"}
        for x, y in ("AB", "BC", "CD"):
            await api.befriend(folks[x], folks[y])
        yield api, folks


async def test_a_topic_spreads_through_friends_and_never_reaches_strangers(people) -> None:
    api, p = people
    created = await api.ok("POST", Z, p["A"], {"title": "Hotpot on Friday?", "body": "Chongqing style",
                                                "tags": ["food"], "link_url": "https://example.com/menu"})
    z = created["zhadui_id"]
    assert created["joined"] is True and created["participant_count"] == 1

    await sees_eventually(api, p["B"], z, True)
    for outsider in "CDE":
        assert not await api.sees(p[outsider], z)
    preview = await api.ok("GET", f"{Z}/{z}", p["B"])
    assert preview["friends_in_it"] == [p["A"].user_id]  # why B sees it
    assert preview["joined"] is False
    assert "room_id" not in preview  # non-participants see the preview only

    joined = await api.ok("POST", f"{Z}/{z}/join", p["B"])
    assert joined["participant_count"] == 2
    await sees_eventually(api, p["C"], z, True)  # C is B's friend, not A's
    assert (await api.ok("GET", f"{Z}/{z}", p["C"]))["friends_in_it"] == [p["B"].user_id]
    assert not await api.sees(p["D"], z)

    async def told_that_b_joined() -> bool:  # notices are written by the joined-event consumer
        notices = await api.ok("GET", f"{Z}/notices", p["C"])
        return (z, p["B"].user_id) in {(n["zhadui_id"], n["user_id"]) for n in notices["notices"]}

    await eventually(told_that_b_joined)

    await api.ok("POST", f"{Z}/{z}/join", p["C"])
    await sees_eventually(api, p["D"], z, True)
    assert not await api.sees(p["E"], z)
    status, body = await api.call("GET", f"{Z}/{z}", p["E"])
    assert status == 404 and body["errcode"] == "M_NOT_FOUND"
    status, body = await api.call("POST", f"{Z}/{z}/join", p["E"])
    assert status == 404

    # Only participants reach the discussion: a Matrix room they can read and post in.
    room = (await api.ok("GET", f"{Z}/{z}/discussion", p["C"]))["room_id"]
    await api.ok("PUT", f"{V3}/rooms/{room}/send/m.room.message/t1", p["C"], {"msgtype": "m.text", "body": "in!"})
    history = await api.ok("GET", f"{V3}/rooms/{room}/messages?dir=b&limit=10", p["B"])
    assert any(e.get("content", {}).get("body") == "in!" for e in history["chunk"])
    for outsider in "DE":
        status, body = await api.call("GET", f"{Z}/{z}/discussion", p[outsider])
        assert status == 403 and body["errcode"] == "M_FORBIDDEN"
        status, _ = await api.call("GET", f"{V3}/rooms/{room}/messages?dir=b&limit=10", p[outsider])
        assert status == 403

    # D blocks the creator: the topic disappears for D although D's friend C takes part.
    await api.ok("PUT", f"{V1}/blocks/{p['A'].user_id}", p["D"])
    await sees_eventually(api, p["D"], z, False)
    await api.ok("DELETE", f"{V1}/blocks/{p['A'].user_id}", p["D"])
    await sees_eventually(api, p["D"], z, True)


async def test_leaving_before_a_friend_joins_takes_the_topic_away(people) -> None:
    api, p = people
    z = (await api.ok("POST", Z, p["A"], {"title": "Board games Sunday"}))["zhadui_id"]
    await sees_eventually(api, p["B"], z, True)
    await api.ok("POST", f"{Z}/{z}/join", p["B"])
    await sees_eventually(api, p["C"], z, True)
    await api.ok("POST", f"{Z}/{z}/leave", p["B"])
    await sees_eventually(api, p["C"], z, False)
    status, _ = await api.call("POST", f"{Z}/{z}/join", p["C"])
    assert status == 404
    assert await api.sees(p["B"], z)  # still A's friend


async def test_feed_pages_newest_activity_first(people) -> None:
    api, p = people
    ids = [(await api.ok("POST", Z, p["B"], {"title": f"page test {i}"}))["zhadui_id"] for i in range(3)]
    first = await api.ok("GET", f"{Z}/feed?limit=2", p["C"])
    assert [i["zhadui_id"] for i in first["items"]] == [ids[2], ids[1]]
    second = await api.ok("GET", f"{Z}/feed?limit=2&cursor={first['next_cursor']}", p["C"])
    assert second["items"][0]["zhadui_id"] == ids[0]
    assert all(item["unread"] for item in first["items"])
    await api.ok("GET", f"{Z}/{ids[2]}?mark_seen=true", p["C"])
    assert (await api.ok("GET", f"{Z}/{ids[2]}", p["C"]))["unread"] is False


async def test_bad_input_gets_clear_errors(people) -> None:
    api, p = people
    cases = [
        ({"title": ""}, 400, "M_BAD_JSON"),
        ({"body": "no title"}, 400, "M_BAD_JSON"),
        ({"title": "x" * 101}, 413, "M_TOO_LARGE"),
        ({"title": "card", "card": {"price": 9.5}}, 400, "M_BAD_JSON"),
        ({"title": 42}, 400, "M_BAD_JSON"),
    ]
    for body, status, errcode in cases:
        got, reply = await api.call("POST", Z, p["E"], body)
        assert (got, reply["errcode"]) == (status, errcode), body
        assert reply["error"]
    status, reply = await api.call("GET", f"{Z}/feed?cursor=garbage!", p["E"])
    assert status == 400 and reply["errcode"] == "M_INVALID_PARAM"
    async with api.http.get(f"{api.base_url}{Z}/feed") as response:
        assert response.status == 401 and (await response.json())["errcode"] == "M_MISSING_TOKEN"


async def test_creation_floods_are_limited(people) -> None:
    api, p = people
    statuses = []
    for i in range(25):
        status, body = await api.call("POST", Z, p["E"], {"title": f"flood {i}"})
        statuses.append(status)
        if status == 429:
            assert body["errcode"] == "M_LIMIT_EXCEEDED" and body["retry_after_ms"] > 0
            break
    assert statuses.count(200) == 20 and statuses[-1] == 429
