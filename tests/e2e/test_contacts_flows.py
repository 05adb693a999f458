"""Contacts end to end, through the gateway of the whole stack: real accounts whose phones are
verified with SMS codes from auth's dev provider, address books in plain and hashed form,
discoverability, a later registration, friends, direct chats in messaging, blocks, the
enumeration budget and per-entry validation.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import grpc
import pytest

from laiwang.contacts.v1 import contacts_pb2, contacts_pb2_grpc
from services.contacts.core import lookup_hash
from tests.auth_support import unique_cn_mobile
from tests.matrix_support import register_user
from tests.social_support import V1, V3, Client, Person
from tests.support import eventually

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
async def client(stack: Any) -> AsyncIterator[Client]:
    async with aiohttp.ClientSession() as http:
        yield Client(stack, http)


async def test_matching_discoverability_suggestions_friends_chat_and_blocks(client: Client) -> None:
    alice, bob, carol = await client.person("alice"), await client.person("bob"), await client.person("carol")
    later_national, later_msisdn = unique_cn_mobile()

    # --- plain upload; bob is findable by everyone, carol keeps the default (mutual) ---------
    await client.discoverability(bob, "everyone")
    status, body = await client.call("GET", f"{V1}/contacts/discoverability", carol)
    assert (status, body) == (200, {"discoverability": "mutual"})

    # auth's PhoneVerified has reached contacts' index
    await eventually(lambda: client.matches(alice, [bob.msisdn], bob.user_id), interval=0.2)
    book = [bob.national, carol.msisdn, "12345", "call me", later_msisdn]
    reply = await client.upload(alice, book)
    assert [(m["index"], m["user_id"], m["address"]) for m in reply["matches"]] == [(0, bob.user_id, bob.msisdn)]
    assert [(e["index"], e["reason"]) for e in reply["invalid"]] == [(2, "invalid_number"), (3, "not_a_number")]
    assert reply["added"] == 2  # bob's number was already stored by the sync above

    # --- hashed upload (Matrix IS v2) by carol; alice is mutual and has carol's number -----------
    details = await client.ok("GET", f"{V1}/contacts/hash_details", carol)
    assert "sha256" in details["algorithms"]
    pepper = details["lookup_pepper"]
    hashes = [lookup_hash(alice.msisdn, pepper), lookup_hash(bob.msisdn, pepper), "not-a-hash"]

    async def carol_looks_up() -> tuple[int, Any]:
        return await client.call(
            "POST", f"{V1}/contacts/lookup", carol, {"algorithm": "sha256", "pepper": pepper, "addresses": hashes}
        )

    async def carol_indexed() -> bool:
        status, body = await carol_looks_up()
        if status == 429:  # the upload rate limit: not yet
            return False
        assert status == 200, body
        return len(body["mappings"]) == 2

    # Carol's own PhoneVerified may still be on its way; repeating a lookup costs nothing.
    await eventually(carol_indexed, interval=0.2)
    status, body = await carol_looks_up()
    assert body["mappings"] == {hashes[0]: alice.user_id, hashes[1]: bob.user_id}
    assert [(e["index"], e["reason"]) for e in body["invalid"]] == [(2, "bad_hash")]
    # Now carol has alice's number, so carol (mutual) is revealed to alice.
    assert carol.user_id in await client.matched(alice, [carol.msisdn])
    status, body = await client.call(
        "POST", f"{V1}/contacts/lookup", carol, {"algorithm": "sha256", "pepper": "stale", "addresses": hashes[:1]}
    )
    assert status == 400 and body["errcode"] == "M_INVALID_PEPPER" and body["lookup_pepper"] == pepper

    async with grpc.aio.insecure_channel(client.stack.grpc_address("contacts")) as channel:
        rotated = await contacts_pb2_grpc.ContactsServiceStub(channel).RotatePepper(contacts_pb2.RotatePepperRequest())
    status, body = await carol_looks_up()
    assert status == 400 and body["errcode"] == "M_INVALID_PEPPER"
    assert body["lookup_pepper"] == rotated.lookup_pepper != pepper
    status, body = await client.call(
        "POST",
        f"{V1}/contacts/lookup",
        carol,
        {
            "algorithm": "sha256",
            "pepper": rotated.lookup_pepper,
            "addresses": [lookup_hash(alice.msisdn, rotated.lookup_pepper)],
        },
    )
    assert status == 200 and list(body["mappings"].values()) == [alice.user_id] and body["added"] == 0

    # --- "nobody" hides bob from everyone; "everyone" brings him back --------------------------
    await client.discoverability(bob, "nobody")
    assert bob.user_id not in await client.matched(alice, [bob.msisdn])
    await client.discoverability(bob, "everyone")
    assert bob.user_id in await client.matched(alice, [bob.msisdn])
    # carol is "mutual" and her (hashed) book has bob's number: revealed to bob.
    assert carol.user_id in await client.matched(bob, [carol.msisdn])

    # --- a later registration: alice had dave's number before dave joined ------------------
    dave = await client.person("dave", later_national)

    async def dave_indexed() -> bool:
        # dave keeps the default (mutual): once his own book has alice's number, alice is told.
        return await client.matches(dave, [alice.msisdn], alice.user_id)

    await eventually(dave_indexed, interval=0.2)
    suggestions = {s["user_id"] for s in (await client.ok("GET", f"{V1}/suggestions", alice))["suggestions"]}
    # dave joined after alice uploaded his number; carol became visible to alice after alice's
    # upload (when carol's own book got alice's number); bob re-opened from "nobody".
    assert suggestions == {dave.user_id, carol.user_id, bob.user_id}

    # --- friend request from the suggestion -> accept -> a direct chat is allowed ------------
    status, body = await client.call("POST", f"{V1}/friends/requests", bob, {"user_id": dave.user_id})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")  # dave is neither bob's match nor suggestion
    sent = await client.ok("POST", f"{V1}/friends/requests", alice, {"user_id": dave.user_id, "message": "hi!"})
    assert sent == {"state": "pending"}
    requests = await client.ok("GET", f"{V1}/friends/requests", dave)
    assert [(r["from"], r["message"]) for r in requests["incoming"]] == [(alice.user_id, "hi!")]
    await client.ok("POST", f"{V1}/friends/requests/{alice.user_id}/accept", dave)
    friends = await client.ok("GET", f"{V1}/friends", alice)
    assert [f["user_id"] for f in friends["friends"]] == [dave.user_id]
    left = {s["user_id"] for s in (await client.ok("GET", f"{V1}/suggestions", alice))["suggestions"]}
    assert left == {carol.user_id, bob.user_id}

    room_id = ""

    async def direct_chat_allowed() -> bool:
        nonlocal room_id
        status, body = await client.call(
            "POST",
            f"{V3}/createRoom",
            alice,
            {"is_direct": True, "invite": [dave.user_id], "preset": "trusted_private_chat"},
        )
        room_id = body.get("room_id", "")
        return status == 200

    await eventually(direct_chat_allowed)  # messaging learns of the friendship from contacts' event
    await client.ok("POST", f"{V3}/join/{room_id}", dave, {})
    await client.ok("PUT", f"{V3}/rooms/{room_id}/send/m.room.message/t1", alice, {"msgtype": "m.text", "body": "hi"})

    # --- inviting a non-friend is refused --------------------------------------------------
    status, body = await client.call("POST", f"{V3}/createRoom", alice, {"is_direct": True, "invite": [bob.user_id]})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = await client.call("POST", f"{V3}/rooms/{room_id}/invite", alice, {"user_id": bob.user_id})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")

    # --- the Matrix user directory lists only friends and matches --------------------------
    stranger = await client.person("stranger")
    await client.discoverability(stranger, "everyone")
    directory = await client.ok("POST", f"{V3}/user_directory/search", alice, {"search_term": "", "limit": 50})
    found = {r["user_id"] for r in directory["results"]}
    assert {dave.user_id, bob.user_id, carol.user_id} <= found and stranger.user_id not in found
    directory = await client.ok("POST", f"{V3}/user_directory/search", alice, {"search_term": "dave"})
    assert [r["user_id"] for r in directory["results"]] == [dave.user_id]

    # --- a block stops matching and messaging both ways ------------------------------------
    await client.ok("PUT", f"{V1}/blocks/{alice.user_id}", dave)
    assert (await client.ok("GET", f"{V1}/blocks", dave))["user_ids"] == [alice.user_id]
    assert dave.user_id not in await client.matched(alice, [dave.msisdn])
    assert alice.user_id not in await client.matched(dave, [alice.msisdn])
    relationship = await client.ok("GET", f"{V1}/relationship/{dave.user_id}", alice)
    assert relationship["friends"] is False and relationship["blocked_by"] is True

    async def sending_refused(sender: Person, txn: str) -> bool:
        status, body = await client.call(
            "PUT",
            f"{V3}/rooms/{room_id}/send/m.room.message/{txn}",
            sender,
            {"msgtype": "m.text", "body": "still there?"},
        )
        return status == 403 and body["errcode"] == "M_FORBIDDEN"

    await eventually(lambda: sending_refused(alice, f"a{time.monotonic_ns()}"))
    assert await sending_refused(dave, "d1")
    directory = await client.ok("POST", f"{V3}/user_directory/search", alice, {"search_term": "dave"})
    assert directory["results"] == []


async def test_enumeration_budget_trips_on_fresh_numbers_but_not_on_a_re_upload(client: Client) -> None:
    scanner = await client.person("scanner")
    # The default budget is 10,000 numbers never uploaded before; a range scan uses it up.
    start = secrets.randbelow(90_000_000)
    book = [f"+86139{n:08d}" for n in range(start, start + 10_000)]
    first = await client.upload(scanner, book)
    assert (first["added"], first["budget_remaining"]) == (10_000, 0)
    status, body = await client.sync(scanner, ["+8613700000001"])
    assert status == 429 and body["errcode"] == "M_LIMIT_EXCEEDED" and body["retry_after_ms"] > 0
    again = await client.upload(scanner, book)  # the same book again costs nothing
    assert (again["added"], again["removed"]) == (0, 0)


async def test_matching_needs_a_verified_phone(client: Client) -> None:
    account = await register_user(client.stack.base_url, f"nophone{secrets.token_hex(4)}")
    async with client.http.post(
        f"{client.stack.base_url}{V1}/contacts/sync", headers=account.headers, json={"add": ["+8613800138000"]}
    ) as response:
        body = await response.json()
    assert response.status == 403 and body["errcode"] == "M_FORBIDDEN" and "verified phone" in body["error"]


async def test_oversized_and_malformed_uploads(client: Client) -> None:
    someone = await client.person("someone")
    status, body = await client.call("POST", f"{V1}/contacts/upload", someone, {"numbers": ["13800138000"] * 10_001})
    assert (status, body["errcode"]) == (413, "M_TOO_LARGE")
    status, body = await client.call("POST", f"{V1}/contacts/upload", someone, {"numbers": "13800138000"})
    assert (status, body["errcode"]) == (400, "M_BAD_JSON")
    status, body = await client.call("PUT", f"{V1}/contacts/discoverability", someone, {"discoverability": "all"})
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")
    status, body = await client.call("GET", f"{V1}/friends")
    assert status == 401
    status, body = await client.call("GET", f"{V1}/openapi.json")
    assert status == 200 and f"{V1}/contacts/lookup" in body["paths"]
