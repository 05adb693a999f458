"""Zhadui end to end through the gateway of the whole stack: real accounts with verified phones,
friendships made through contacts (address-book match, request, accept), topics that spread
one friendship at a time, and the discussion as a Matrix room only participants can use."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from tests.social_support import V1, V3, Client, Person
from tests.support import eventually

pytestmark = pytest.mark.e2e

Z = f"{V1}/zhadui"


class Api(Client):
    async def view(self, who: Person, zhadui_id: str) -> bool | None:
        """True/False when the feed and the preview agree that `who` sees it; None while they differ.

        The two reads are separate requests, so an event landing between them can make them
        disagree for a moment: polls wait for agreement instead of asserting on one snapshot.
        """
        feed = await self.ok("GET", f"{Z}/feed?limit=100", who)
        in_feed = any(item["zhadui_id"] == zhadui_id for item in feed["items"])
        status, _ = await self.call("GET", f"{Z}/{zhadui_id}", who)
        assert status in (200, 404)
        return in_feed if in_feed == (status == 200) else None

    async def sees(self, who: Person, zhadui_id: str) -> bool:
        """In the feed and previewable, in a settled state (the two must agree)."""
        seen = await self.view(who, zhadui_id)
        assert seen is not None, "feed and preview disagree although nothing is changing"
        return seen


async def sees_eventually(api: Api, who: Person, zhadui_id: str, expected: bool) -> None:
    async def check() -> bool:
        return await api.view(who, zhadui_id) is expected

    await eventually(check)


@pytest.fixture(scope="module")
async def people(stack: Any) -> AsyncIterator[tuple[Api, dict[str, Person]]]:
    """A - B - C - D are friends along a chain; E knows nobody."""
    async with aiohttp.ClientSession() as http:
        api = Api(stack, http)
        folks = {name: await api.person(name.lower()) for name in "ABCDE"}
        for x, y in ("AB", "BC", "CD"):
            await api.befriend(folks[x], folks[y])
        yield api, folks


async def test_a_topic_spreads_through_friends_and_never_reaches_strangers(people) -> None:
    api, p = people
    created = await api.ok(
        "POST",
        Z,
        p["A"],
        {
            "title": "Hotpot on Friday?",
            "body": "Chongqing style",
            "tags": ["food"],
            "link_url": "https://example.com/menu",
        },
    )
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
    # Well-formed, but never given out: the unsigned "<activity>:<id>" shape cursors once had.
    forged = base64.urlsafe_b64encode(b"99999999999999:z1").decode().rstrip("=")
    status, reply = await api.call("GET", f"{Z}/feed?cursor={forged}", p["E"])
    assert status == 400 and reply["errcode"] == "M_INVALID_PARAM"
    async with api.http.get(f"{api.stack.base_url}{Z}/feed") as response:
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


async def test_talk_in_the_discussion_counts_as_activity(people) -> None:
    api, p = people
    talk = (await api.ok("POST", Z, p["A"], {"title": "Where to hike?"}))["zhadui_id"]
    await asyncio.sleep(5.5)  # past the activity resolution (5 s) since it was created
    quiet = (await api.ok("POST", Z, p["A"], {"title": "Nobody talks here"}))["zhadui_id"]
    for zhadui_id in (talk, quiet):
        await sees_eventually(api, p["B"], zhadui_id, True)
        await api.ok("GET", f"{Z}/{zhadui_id}?mark_seen=true", p["B"])
    room = (await api.ok("GET", f"{Z}/{talk}/discussion", p["A"]))["room_id"]
    await api.ok(
        "PUT",
        f"{V3}/rooms/{room}/send/m.room.message/hike1",
        p["A"],
        {"msgtype": "m.text", "body": "Xiangshan on Saturday?"},
    )

    async def talk_on_top_and_unread() -> bool:
        feed = await api.ok("GET", f"{Z}/feed?limit=100", p["B"])
        order = [item["zhadui_id"] for item in feed["items"] if item["zhadui_id"] in (talk, quiet)]
        unread = {item["zhadui_id"]: item["unread"] for item in feed["items"]}
        return order == [talk, quiet] and unread[talk] and not unread[quiet]

    await eventually(talk_on_top_and_unread)
