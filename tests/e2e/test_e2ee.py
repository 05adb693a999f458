"""End-to-end encryption through the gateway: two matrix-nio clients with their own crypto (vodozemac)
exchange keys, set up Olm and Megolm sessions through keys/claim and sendToDevice, and the receiver
decrypts; the server's database holds only ciphertext. Plus the key endpoints' bad inputs and authz,
and key backup, over raw HTTP.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from nio import (
    AsyncClient,
    AsyncClientConfig,
    JoinResponse,
    KeysUploadResponse,
    MegolmEvent,
    RoomCreateResponse,
    RoomMessageText,
    RoomSendResponse,
    SyncResponse,
)
from pymongo import AsyncMongoClient

from tests.conftest import RunningStack, launch_stack
from tests.matrix_support import RegisteredUser, register_user

pytestmark = pytest.mark.e2e

V3 = "/_matrix/client/v3"
ENCRYPTION = {"type": "m.room.encryption", "state_key": "", "content": {"algorithm": "m.megolm.v1.aes-sha2"}}


@pytest.fixture(scope="module")
async def e2e_stack(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[RunningStack]:
    env = {"MESSAGING_INVITE_POLICY": "anyone", "GATEWAY_SEND_RATE_PER_SECOND": "1000"}
    async with launch_stack(mongo_uri, tmp_path_factory.mktemp("e2ee-stack"), env=env) as running:
        yield running


async def _crypto_client(stack: RunningStack, store: Path) -> tuple[AsyncClient, RegisteredUser]:
    user = await register_user(stack.base_url)
    store.mkdir(parents=True, exist_ok=True)  # noqa: ASYNC240 - a test's temporary folder
    config = AsyncClientConfig(encryption_enabled=True, store_sync_tokens=False)
    client = AsyncClient(stack.base_url, user.user_id, device_id=user.device_id, store_path=str(store), config=config)
    client.restore_login(user.user_id, user.device_id, user.access_token)
    assert client.should_upload_keys
    while client.should_upload_keys:  # device keys first, then one-time keys once a sync gave the counts
        uploaded = await client.keys_upload()
        assert isinstance(uploaded, KeysUploadResponse), uploaded
        assert isinstance(await client.sync(timeout=0, full_state=True), SyncResponse)
    assert uploaded.signed_curve25519_count > 0
    return client, user


async def _sync_until(client: AsyncClient, predicate: Any, rounds: int = 30) -> SyncResponse:
    for _ in range(rounds):
        response = await client.sync(timeout=3000, full_state=client.next_batch is None)
        assert isinstance(response, SyncResponse), response
        if predicate(response):
            return response
    raise AssertionError("condition not reached by sync")


async def test_encrypted_direct_chat_decrypts_on_the_other_side_and_the_server_keeps_ciphertext(
    e2e_stack: RunningStack, tmp_path: Path, mongo_uri: str
) -> None:
    alice, _ = await _crypto_client(e2e_stack, tmp_path / "alice")
    bob, bob_user = await _crypto_client(e2e_stack, tmp_path / "bob")
    try:
        created = await alice.room_create(is_direct=True, invite=[bob_user.user_id], initial_state=[ENCRYPTION])
        assert isinstance(created, RoomCreateResponse), created
        room_id = created.room_id
        await _sync_until(bob, lambda r: room_id in r.rooms.invite)
        assert isinstance(await bob.join(room_id), JoinResponse)
        await _sync_until(bob, lambda r: room_id in r.rooms.join)
        await _sync_until(alice, lambda r: bob_user.user_id in alice.rooms[room_id].users)
        assert alice.rooms[room_id].encrypted

        secret = f"the spare key is under the mat {uuid.uuid4().hex}"
        sent = await alice.room_send(
            room_id, "m.room.message", {"msgtype": "m.text", "body": secret}, ignore_unverified_devices=True
        )
        assert isinstance(sent, RoomSendResponse), sent

        seen: list[str] = []

        def decrypted(response: SyncResponse) -> bool:
            room = response.rooms.join.get(room_id)
            for event in room.timeline.events if room else []:
                if isinstance(event, MegolmEvent):  # the key came in a later to-device message
                    event = bob.decrypt_event(event)
                if isinstance(event, RoomMessageText):
                    seen.append(event.body)
            return secret in seen

        await _sync_until(bob, decrypted)
        assert bob.olm is not None and bob.olm.account.identity_keys  # it really was olm/megolm
    finally:
        await alice.close()
        await bob.close()

    # The server stored the Megolm ciphertext, never the text.
    mongo: AsyncMongoClient = AsyncMongoClient(mongo_uri)
    try:
        found_encrypted = False
        for name in await mongo.list_database_names():
            if not name.startswith("messaging"):
                continue
            async for entry in mongo[name].entries.find({"room_id": room_id, "kind": "event"}):
                assert secret not in str(entry)
                found_encrypted |= entry["event"]["type"] == "m.room.encrypted"
            async for message in mongo[name].e2e_inbox.find({}):
                assert secret not in str(message)
        assert found_encrypted
    finally:
        await mongo.close()


async def _http(
    session: aiohttp.ClientSession, method: str, url: str, user: RegisteredUser, body: Any = None
) -> tuple[int, Any]:
    async with session.request(method, url, json=body, headers=user.headers) as response:
        return response.status, await response.json()


def _device_keys(user: RegisteredUser) -> dict[str, Any]:
    return {
        "user_id": user.user_id,
        "device_id": user.device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {f"curve25519:{user.device_id}": "c" * 43, f"ed25519:{user.device_id}": "e" * 43},
        "signatures": {user.user_id: {f"ed25519:{user.device_id}": "s" * 86}},
    }


async def test_keys_claim_changes_to_device_and_their_bad_inputs(e2e_stack: RunningStack) -> None:
    base = e2e_stack.base_url + V3
    alice = await register_user(e2e_stack.base_url)
    bob = await register_user(e2e_stack.base_url)
    stranger = await register_user(e2e_stack.base_url)
    async with aiohttp.ClientSession() as s:
        status, body = await _http(
            s,
            "POST",
            f"{base}/keys/upload",
            bob,
            {
                "device_keys": _device_keys(bob),
                "one_time_keys": {"signed_curve25519:AAAA": {"key": "k1"}, "signed_curve25519:AAAB": {"key": "k2"}},
                "fallback_keys": {"signed_curve25519:FFFF": {"key": "fb", "fallback": True}},
            },
        )
        assert status == 200 and body == {"one_time_key_counts": {"signed_curve25519": 2}}, body
        # Another user's device keys, bad key ids, not JSON: refused, nothing stored.
        status, body = await _http(s, "POST", f"{base}/keys/upload", alice, {"device_keys": _device_keys(bob)})
        assert status == 400 and body["errcode"] == "M_INVALID_PARAM", body
        status, body = await _http(s, "POST", f"{base}/keys/upload", alice, {"one_time_keys": {"nocolon": "x"}})
        assert status == 400, body
        async with s.post(f"{base}/keys/upload", data=b"{not json", headers=alice.headers) as r:
            assert r.status == 400 and (await r.json())["errcode"] == "M_NOT_JSON"
        async with s.post(f"{base}/keys/query", json={"device_keys": {}}) as r:
            assert r.status == 401 and (await r.json())["errcode"] == "M_MISSING_TOKEN"

        status, body = await _http(s, "POST", f"{base}/keys/query", alice, {"device_keys": {bob.user_id: []}})
        assert status == 200 and body["device_keys"][bob.user_id][bob.device_id] == _device_keys(bob), body
        status, body = await _http(s, "POST", f"{base}/keys/query", alice, {"device_keys": {bob.user_id: "all"}})
        assert status == 400 and body["errcode"] == "M_BAD_JSON", body

        claim = {"one_time_keys": {bob.user_id: {bob.device_id: "signed_curve25519"}}}
        claimed = []
        for _ in range(4):  # two one-time keys, then the fallback key (again and again)
            status, body = await _http(s, "POST", f"{base}/keys/claim", alice, claim)
            assert status == 200, body
            claimed.append(body["one_time_keys"][bob.user_id][bob.device_id])
        assert sorted(k for c in claimed[:2] for k in c) == ["signed_curve25519:AAAA", "signed_curve25519:AAAB"]
        assert claimed[2] == claimed[3] == {"signed_curve25519:FFFF": {"key": "fb", "fallback": True}}

        # To-device: only to users sharing a room (or oneself); a retried txn is delivered once.
        status, body = await _http(s, "POST", f"{base}/createRoom", alice, {"invite": [bob.user_id]})
        assert status == 200, body
        status, body = await _http(s, "GET", f"{base}/sync", bob)
        since = body["next_batch"]
        assert body["device_one_time_keys_count"] == {"signed_curve25519": 0}
        assert body["device_unused_fallback_key_types"] == []
        message = {"messages": {bob.user_id: {bob.device_id: {"ciphertext": "opaque"}}}}
        for _ in range(2):
            status, body = await _http(s, "PUT", f"{base}/sendToDevice/m.room.encrypted/t1", alice, message)
            assert status == 200 and body == {}, body
        status, body = await _http(s, "PUT", f"{base}/sendToDevice/m.room.encrypted/t2", stranger, message)
        assert status == 200, body  # accepted, and dropped: the stranger shares no room with bob
        status, body = await _http(s, "PUT", f"{base}/sendToDevice/m.room.encrypted/t3", alice, {"messages": []})
        assert status == 400 and body["errcode"] == "M_BAD_JSON", body
        status, body = await _http(s, "GET", f"{base}/sync?since={since}&timeout=10000", bob)
        assert status == 200
        assert body["to_device"]["events"] == [
            {"type": "m.room.encrypted", "sender": alice.user_id, "content": {"ciphertext": "opaque"}}
        ]
        after = body["next_batch"]
        status, body = await _http(s, "GET", f"{base}/sync?since={after}", bob)
        assert body["to_device"]["events"] == []  # acknowledged by syncing with the token

        # Bob's new device keys reach Alice, who shares a room with him, as device_lists.changed.
        status, body = await _http(s, "GET", f"{base}/sync", alice)
        alice_since = body["next_batch"]
        keys = _device_keys(bob) | {"algorithms": ["m.megolm.v1.aes-sha2"]}
        status, body = await _http(s, "POST", f"{base}/keys/upload", bob, {"device_keys": keys})
        assert status == 200, body
        status, body = await _http(s, "GET", f"{base}/sync?since={alice_since}&timeout=10000", alice)
        assert bob.user_id in body["device_lists"]["changed"], body
        status, changes = await _http(
            s, "GET", f"{base}/keys/changes?from={alice_since}&to={body['next_batch']}", alice
        )
        assert status == 200 and bob.user_id in changes["changed"], changes
        status, changes = await _http(
            s, "GET", f"{base}/keys/changes?from={alice_since}&to={body['next_batch']}", stranger
        )
        assert status == 200 and changes["changed"] == [], changes
        status, body = await _http(s, "GET", f"{base}/keys/changes?from=x", alice)
        assert status == 400 and body["errcode"] == "M_MISSING_PARAM", body


async def test_key_backup_versions_and_sessions(e2e_stack: RunningStack) -> None:
    base = e2e_stack.base_url + V3
    user = await register_user(e2e_stack.base_url)
    other = await register_user(e2e_stack.base_url)
    session_data = {"first_message_index": 3, "forwarded_count": 0, "is_verified": False, "session_data": {"x": "y"}}
    async with aiohttp.ClientSession() as s:
        status, body = await _http(s, "GET", f"{base}/room_keys/version", user)
        assert status == 404 and body["errcode"] == "M_NOT_FOUND", body
        auth_data = {"public_key": "pk", "signatures": {}}
        status, body = await _http(
            s,
            "POST",
            f"{base}/room_keys/version",
            user,
            {"algorithm": "m.megolm_backup.v1.curve25519-aes-sha2", "auth_data": auth_data},
        )
        assert status == 200, body
        version = body["version"]
        status, body = await _http(s, "GET", f"{base}/room_keys/version", user)
        assert status == 200 and body["version"] == version and body["count"] == 0 and body["auth_data"] == auth_data
        status, body = await _http(s, "GET", f"{base}/room_keys/version", other)
        assert status == 404, body  # each user's backups are their own

        url = f"{base}/room_keys/keys/!r:localhost/sess1?version={version}"
        status, body = await _http(s, "PUT", url, user, session_data)
        assert status == 200 and body["count"] == 1, body
        worse = session_data | {"first_message_index": 9}
        status, body = await _http(s, "PUT", url, user, worse)
        assert status == 200
        status, body = await _http(s, "GET", url, user)
        assert status == 200 and body["first_message_index"] == 3, body  # the better session stays
        status, body = await _http(s, "GET", f"{base}/room_keys/keys?version={version}", user)
        assert body == {"rooms": {"!r:localhost": {"sessions": {"sess1": session_data}}}}
        status, body = await _http(s, "PUT", url, user, {"first_message_index": "3"})
        assert status == 400 and body["errcode"] == "M_BAD_JSON", body
        status, body = await _http(
            s, "PUT", f"{base}/room_keys/keys/!r:localhost/sess1?version=999", user, session_data
        )
        assert status == 404, body
        status, body = await _http(s, "GET", f"{base}/room_keys/keys", user)
        assert status == 400 and body["errcode"] == "M_MISSING_PARAM", body

        status, body = await _http(s, "DELETE", f"{base}/room_keys/version/{version}", user)
        assert status == 200 and body == {}
        status, body = await _http(s, "GET", f"{base}/room_keys/version/{version}", user)
        assert status == 404, body
