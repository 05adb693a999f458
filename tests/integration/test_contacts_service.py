"""The contacts service as a real process against real NATS and the real Mongo-wire server.

Auth is not involved: the tests publish auth's events (the committed contract) on JetStream
exactly as auth does, and talk to contacts over gRPC.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import nats
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from nats.js import JetStreamContext

from laiwang.contacts.v1 import contacts_pb2 as pb
from laiwang.contacts.v1 import contacts_pb2_grpc
from laiwang.events.v1 import auth_events_pb2, contacts_events_pb2
from plumbing import streams
from plumbing.grpc_errors import ERRCODE_KEY, RETRY_AFTER_KEY
from plumbing.jetstream import ensure_stream
from services.contacts.core import lookup_hash
from services.contacts.events import AUTH_CONSUMER
from tests.support import eventually, free_port, stop_process

pytestmark = pytest.mark.integration

SERVER = "laiwang.test"


@dataclass
class Contacts:
    stub: contacts_pb2_grpc.ContactsServiceStub
    publish: Callable[[str, Any], Awaitable[None]]
    events: list[tuple[str, Any]]
    process: subprocess.Popen[bytes]
    js: JetStreamContext
    last_published_seq: list[int]

    async def settled(self) -> None:
        """Wait until the service has acknowledged every auth event this test published.

        Asked of the durable consumer itself: its ack floor passing the stream sequence of the last
        publish. (Counting the service's acks is not enough: the session's NATS holds auth events
        other tests published before this durable existed, and those are acked too.)"""

        async def done() -> bool:
            info = await self.js.consumer_info(streams.AUTH.name, AUTH_CONSUMER.durable)
            return info.ack_floor.stream_seq >= self.last_published_seq[0]

        await eventually(done)


async def _serving(port: int) -> bool:
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            reply = await health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=1)
            return reply.status == health_pb2.HealthCheckResponse.SERVING
    except grpc.aio.AioRpcError:
        return False


@contextlib.asynccontextmanager
async def start_contacts(
    nats_url: str, mongo_uri: str, log_path: Path, settings: dict[str, str] | None = None
) -> AsyncIterator[Contacts]:
    """One contacts process on its own database, with auth's events published by the test."""
    port, metrics = free_port(), free_port()
    env = {
        **os.environ,
        "GRPC_PORT": str(port),
        "METRICS_PORT": str(metrics),
        "MONGO_URI": mongo_uri,
        "MONGO_DB": f"contacts_{uuid.uuid4().hex[:8]}",
        "NATS_URL": nats_url,
        "SERVER_NAME": SERVER,
        "CONTACTS_BUDGET_INITIAL": "40",
        "CONTACTS_BUDGET_REFILL_PER_HOUR": "1",
        "CONTACTS_HASH_KEY": "integration-test-hash-key-0123456789",
        "CONTACTS_ASK_AUTH_FOR_PHONES": "false",  # no auth here: every uploader's phone arrives as an event
        "CONTACTS_ADDRESS_BUDGET_INITIAL": "60",
        "CONTACTS_ADDRESS_BUDGET_REFILL_PER_HOUR": "1",
        **(settings or {}),
    }
    with open(log_path, "wb") as log:  # noqa: ASYNC230 - once per module
        process = subprocess.Popen(  # noqa: ASYNC220 - a long-lived child, started once per module
            [sys.executable, "-m", "services.contacts"], env=env, stdout=log, stderr=subprocess.STDOUT
        )
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_stream(js, streams.AUTH)
    await ensure_stream(js, streams.CONTACTS)
    seen: list[tuple[str, Any]] = []
    kinds = {
        "friendship_created": contacts_events_pb2.FriendshipCreated,
        "friendship_removed": contacts_events_pb2.FriendshipRemoved,
        "user_blocked": contacts_events_pb2.UserBlocked,
        "user_unblocked": contacts_events_pb2.UserUnblocked,
    }

    async def on_event(msg: Any) -> None:
        name = msg.subject.rsplit(".", 1)[-1]
        seen.append((name, kinds[name].FromString(msg.data)))

    subscription = await nc.subscribe("laiwang.contacts.>", cb=on_event)

    last_published_seq = [0]

    async def publish(name: str, event: Any) -> None:
        ack = await js.publish(
            f"laiwang.auth.{name}", event.SerializeToString(), headers={"Nats-Msg-Id": uuid.uuid4().hex}
        )
        last_published_seq[0] = ack.seq

    try:
        deadline = time.monotonic() + 60
        while not await _serving(port):
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("contacts did not start:\n" + log_path.read_text()[-5000:])  # noqa: ASYNC240
            await asyncio.sleep(0.1)
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            yield Contacts(
                contacts_pb2_grpc.ContactsServiceStub(channel),
                publish,
                seen,
                process,
                js,
                last_published_seq,
            )
    finally:
        await subscription.unsubscribe()
        await nc.close()
        stop_process(process, timeout=20)


@pytest.fixture(scope="module")
async def contacts(nats_url: str, mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Contacts]:
    async with start_contacts(nats_url, mongo_uri, tmp_path_factory.mktemp("contacts") / "contacts.log") as c:
        yield c


_counter = iter(range(10_000_000))


def new_number() -> str:
    """A valid, fresh mainland-China mobile number (138 prefix)."""
    return f"+86138{(os.getpid() * 7919 + next(_counter) * 104729 + int(time.time())) % 100_000_000:08d}"


async def new_user(c: Contacts, name: str, number: str | None = None) -> tuple[str, str]:
    user_id = f"@{name}-{uuid.uuid4().hex[:6]}:{SERVER}"
    await c.publish("user_registered", auth_events_pb2.UserRegistered(user_id=user_id, display_name=name.title()))
    number = number or new_number()
    await c.publish(
        "phone_verified",
        auth_events_pb2.PhoneVerified(user_id=user_id, msisdn=number, verified_at_ms=int(time.time() * 1000)),
    )
    await c.settled()  # matching needs the uploader's verified phone known to contacts
    return user_id, number


async def upload(
    c: Contacts, user: str, numbers: list[str], mode: int = pb.UPLOAD_MODE_REPLACE, remove: list[str] | None = None
) -> pb.UploadContactsResponse:
    return await c.stub.UploadContacts(
        pb.UploadContactsRequest(user_id=user, mode=mode, add=numbers, remove=remove or [])
    )


async def matched(c: Contacts, user: str, numbers: list[str]) -> set[str]:
    reply = await upload(c, user, numbers, mode=pb.UPLOAD_MODE_MERGE)
    return {m.user_id for m in reply.matches}


async def wait_matchable(c: Contacts, viewer: str, number: str, subject: str) -> None:
    await c.settled()
    assert subject in await matched(c, viewer, [number])


def errcode(error: grpc.aio.AioRpcError) -> str:
    return dict(error.trailing_metadata() or ()).get(ERRCODE_KEY, "")


async def test_a_verified_number_is_matchable_and_hidden_by_discoverability(contacts: Contacts) -> None:
    alice, alice_no = await new_user(contacts, "alice")
    bob, bob_no = await new_user(contacts, "bob")
    await contacts.stub.SetDiscoverability(
        pb.SetDiscoverabilityRequest(user_id=bob, discoverability=pb.DISCOVERABILITY_EVERYONE)
    )
    await wait_matchable(contacts, alice, bob_no, bob)

    reply = await upload(contacts, alice, [bob_no, "12345", "not a number", "138 0000"])
    assert [(m.user_id, m.display_name, m.address) for m in reply.matches] == [(bob, "Bob", bob_no)]
    assert [(e.index, e.reason) for e in reply.invalid] == [
        (1, "invalid_number"),
        (2, "not_a_number"),
        (3, "invalid_number"),
    ]

    # Default (mutual): hidden until bob's book has alice's number too.
    await contacts.stub.SetDiscoverability(
        pb.SetDiscoverabilityRequest(user_id=bob, discoverability=pb.DISCOVERABILITY_MUTUAL)
    )
    assert bob not in await matched(contacts, alice, [bob_no])
    # National format with the default region (CN) normalises to the same E.164 number.
    await upload(contacts, bob, [alice_no[3:]])
    assert bob in await matched(contacts, alice, [bob_no])

    await contacts.stub.SetDiscoverability(
        pb.SetDiscoverabilityRequest(user_id=bob, discoverability=pb.DISCOVERABILITY_NOBODY)
    )
    assert bob not in await matched(contacts, alice, [bob_no])
    got = await contacts.stub.GetDiscoverability(pb.GetDiscoverabilityRequest(user_id=bob))
    assert got.discoverability == pb.DISCOVERABILITY_NOBODY


async def test_hashed_lookup_with_pepper_rotation(contacts: Contacts) -> None:
    carol, _ = await new_user(contacts, "carol")
    dave, dave_no = await new_user(contacts, "dave")
    await contacts.stub.SetDiscoverability(
        pb.SetDiscoverabilityRequest(user_id=dave, discoverability=pb.DISCOVERABILITY_EVERYONE)
    )
    await wait_matchable(contacts, carol, dave_no, dave)

    details = await contacts.stub.GetHashDetails(pb.GetHashDetailsRequest())
    assert "sha256" in details.algorithms
    pepper = details.lookup_pepper
    hashed = lookup_hash(dave_no, pepper)
    reply = await contacts.stub.LookupHashes(
        pb.LookupHashesRequest(
            user_id=carol,
            algorithm="sha256",
            pepper=pepper,
            addresses=[hashed, "bad!", lookup_hash(new_number(), pepper)],
        )
    )
    assert [(m.address, m.user_id) for m in reply.matches] == [(hashed, dave)]
    assert [(e.index, e.reason) for e in reply.invalid] == [(1, "bad_hash")]

    rotated = await contacts.stub.RotatePepper(pb.RotatePepperRequest())
    assert rotated.lookup_pepper != pepper
    with pytest.raises(grpc.aio.AioRpcError) as stale:
        await contacts.stub.LookupHashes(
            pb.LookupHashesRequest(user_id=carol, algorithm="sha256", pepper=pepper, addresses=[hashed])
        )
    assert errcode(stale.value) == "M_INVALID_PEPPER"
    fresh = lookup_hash(dave_no, rotated.lookup_pepper)
    reply = await contacts.stub.LookupHashes(
        pb.LookupHashesRequest(user_id=carol, algorithm="sha256", pepper=rotated.lookup_pepper, addresses=[fresh])
    )
    assert [m.user_id for m in reply.matches] == [dave]
    assert reply.added == 0  # the number is known from the first lookup: no new entry, no charge


async def test_later_registration_produces_a_suggestion_for_plain_and_hashed_books(contacts: Contacts) -> None:
    erin, erin_no = await new_user(contacts, "erin")
    frank, _ = await new_user(contacts, "frank")
    later_no, hashed_later_no = new_number(), new_number()
    await upload(contacts, erin, [later_no])
    pepper = (await contacts.stub.GetHashDetails(pb.GetHashDetailsRequest())).lookup_pepper
    await contacts.stub.LookupHashes(
        pb.LookupHashesRequest(
            user_id=frank, algorithm="sha256", pepper=pepper, addresses=[lookup_hash(hashed_later_no, pepper)]
        )
    )

    # The newcomer chooses "everyone": whoever had the number hears about it.
    gina = f"@gina-{uuid.uuid4().hex[:6]}:{SERVER}"
    await contacts.publish("user_registered", auth_events_pb2.UserRegistered(user_id=gina, display_name="Gina"))
    await contacts.publish(
        "phone_verified",
        auth_events_pb2.PhoneVerified(user_id=gina, msisdn=hashed_later_no, verified_at_ms=int(time.time() * 1000)),
    )

    async def frank_suggested() -> bool:
        reply = await contacts.stub.ListSuggestions(pb.ListSuggestionsRequest(user_id=frank))
        return [s.user_id for s in reply.suggestions] == [gina]

    # Gina is "mutual" by default and has no book yet: no suggestion for frank so far.
    await contacts.settled()
    assert not (await contacts.stub.ListSuggestions(pb.ListSuggestionsRequest(user_id=frank))).suggestions
    await contacts.stub.SetDiscoverability(
        pb.SetDiscoverabilityRequest(user_id=gina, discoverability=pb.DISCOVERABILITY_EVERYONE)
    )
    await eventually(frank_suggested)

    # Default discoverability: the suggestion appears once the newcomer's own book has erin's number.
    henry, _ = await new_user(contacts, "henry", later_no)

    async def erin_suggested() -> bool:
        reply = await contacts.stub.ListSuggestions(pb.ListSuggestionsRequest(user_id=erin))
        return henry in [s.user_id for s in reply.suggestions]

    await contacts.settled()
    assert not await erin_suggested()
    await upload(contacts, henry, [erin_no])
    assert await erin_suggested()

    # A suggestion is a valid origin for a friend request.
    state = await contacts.stub.SendFriendRequest(pb.SendFriendRequestRequest(user_id=erin, other_user_id=henry))
    assert state.state == "pending"
    assert not await erin_suggested()


async def test_friends_blocks_and_their_events(contacts: Contacts) -> None:
    ivy, ivy_no = await new_user(contacts, "ivy")
    jack, jack_no = await new_user(contacts, "jack")
    kate, kate_no = await new_user(contacts, "kate")
    stranger, _ = await new_user(contacts, "stranger")
    # Everyone has everyone's number (mutual discoverability is satisfied both ways).
    await contacts.settled()
    await upload(contacts, ivy, [jack_no, kate_no])
    await upload(contacts, jack, [ivy_no, kate_no])
    await upload(contacts, kate, [ivy_no, jack_no])

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await contacts.stub.SendFriendRequest(pb.SendFriendRequestRequest(user_id=stranger, other_user_id=ivy))
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED and errcode(refused.value) == "M_FORBIDDEN"

    for a, b in ((ivy, jack), (ivy, kate), (jack, kate)):
        sent = await contacts.stub.SendFriendRequest(
            pb.SendFriendRequestRequest(user_id=a, other_user_id=b, message="hi")
        )
        assert sent.state == "pending"
        requests = await contacts.stub.ListFriendRequests(pb.ListFriendRequestsRequest(user_id=b))
        assert [(r.from_user_id, r.message) for r in requests.incoming] == [(a, "hi")]
        await contacts.stub.AcceptFriendRequest(pb.AcceptFriendRequestRequest(user_id=b, other_user_id=a))

    friends = await contacts.stub.ListFriends(pb.ListFriendsRequest(user_id=ivy))
    assert sorted((f.user_id, f.mutual_friends) for f in friends.friends) == sorted([(jack, 1), (kate, 1)])
    mutual = await contacts.stub.ListMutualFriends(pb.ListMutualFriendsRequest(user_id=ivy, other_user_id=jack))
    assert list(mutual.user_ids) == [kate]
    assert (await contacts.stub.AreFriends(pb.AreFriendsRequest(user_id=jack, other_user_id=ivy))).friends

    await contacts.stub.BlockUser(pb.BlockUserRequest(user_id=ivy, other_user_id=jack))
    relationship = await contacts.stub.GetRelationship(pb.GetRelationshipRequest(user_id=jack, other_user_id=ivy))
    assert (relationship.friends, relationship.blocking, relationship.blocked_by) == (False, False, True)
    assert ivy not in await matched(contacts, jack, [ivy_no])
    assert jack not in await matched(contacts, ivy, [jack_no])
    assert list((await contacts.stub.ListBlocks(pb.ListBlocksRequest(user_id=ivy))).user_ids) == [jack]
    with pytest.raises(grpc.aio.AioRpcError) as blocked:
        await contacts.stub.SendFriendRequest(pb.SendFriendRequestRequest(user_id=jack, other_user_id=ivy))
    assert errcode(blocked.value) == "M_FORBIDDEN"
    await contacts.stub.UnblockUser(pb.UnblockUserRequest(user_id=ivy, other_user_id=jack))
    assert ivy in await matched(contacts, jack, [ivy_no])

    pair = tuple(sorted((ivy, jack)))

    async def all_events() -> bool:
        names = [name for name, e in contacts.events if (e.state.user_a, e.state.user_b) == pair]
        return names == ["friendship_created", "friendship_removed", "user_blocked", "user_unblocked"]

    await eventually(all_events)
    mine = [e for _, e in contacts.events if getattr(e, "state", None) and (e.state.user_a, e.state.user_b) == pair]
    assert [e.version for e in mine] == sorted(e.version for e in mine) and len({e.version for e in mine}) == 4
    blocked_event = next(e for n, e in contacts.events if n == "user_blocked" and e.blocker == ivy)
    assert blocked_event.blocked == jack and not blocked_event.state.friends
    assert blocked_event.state.a_blocks_b if pair[0] == ivy else blocked_event.state.b_blocks_a

    await contacts.stub.RemoveFriend(pb.RemoveFriendRequest(user_id=kate, other_user_id=ivy))
    assert [f.user_id for f in (await contacts.stub.ListFriends(pb.ListFriendsRequest(user_id=ivy))).friends] == []


async def test_enumeration_budget_charges_only_new_numbers(contacts: Contacts) -> None:
    scanner, _ = await new_user(contacts, "scanner")
    book = [new_number() for _ in range(30)]
    first = await upload(contacts, scanner, book)
    assert (first.added, first.budget_remaining) == (30, 10)
    again = await upload(contacts, scanner, book)  # a re-sync is free
    assert (again.added, again.budget_remaining) == (0, 10)
    with pytest.raises(grpc.aio.AioRpcError) as tripped:
        await upload(contacts, scanner, [new_number() for _ in range(11)], mode=pb.UPLOAD_MODE_MERGE)
    trailers = dict(tripped.value.trailing_metadata() or ())
    assert tripped.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert trailers[ERRCODE_KEY] == "M_LIMIT_EXCEEDED" and int(trailers[RETRY_AFTER_KEY]) > 0
    still = await upload(contacts, scanner, book)  # nothing was half-written by the refused upload
    assert (still.added, still.removed, still.budget_remaining) == (0, 0, 10)
    # Incremental removal frees nothing but costs nothing.
    removed = await upload(contacts, scanner, [], mode=pb.UPLOAD_MODE_MERGE, remove=book[:5])
    assert (removed.added, removed.removed) == (0, 5)
    readded = await upload(contacts, scanner, book[:5], mode=pb.UPLOAD_MODE_MERGE)  # uploaded before: free
    assert (readded.added, readded.budget_remaining) == (5, 10)


async def test_too_large_and_bad_requests(contacts: Contacts) -> None:
    user, _ = await new_user(contacts, "big")
    with pytest.raises(grpc.aio.AioRpcError) as large:
        await upload(contacts, user, ["+8613800000000"] * 10_001)
    assert errcode(large.value) == "M_TOO_LARGE"
    with pytest.raises(grpc.aio.AioRpcError) as bad_region:
        await contacts.stub.UploadContacts(
            pb.UploadContactsRequest(user_id=user, mode=pb.UPLOAD_MODE_REPLACE, add=["1"], default_region="XX")
        )
    assert bad_region.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unbinding_and_stale_redelivery(contacts: Contacts) -> None:
    owner, _ = await new_user(contacts, "owner")
    lee, lee_no = await new_user(contacts, "lee")
    await contacts.stub.SetDiscoverability(
        pb.SetDiscoverabilityRequest(user_id=lee, discoverability=pb.DISCOVERABILITY_EVERYONE)
    )
    await wait_matchable(contacts, owner, lee_no, lee)
    now = int(time.time() * 1000)
    await contacts.publish(
        "phone_unbound", auth_events_pb2.PhoneUnbound(user_id=lee, msisdn=lee_no, unbound_at_ms=now + 1000)
    )

    async def gone() -> bool:
        return lee not in await matched(contacts, owner, [lee_no])

    await eventually(gone)
    # An old PhoneVerified delivered again must not resurrect the binding.
    await contacts.publish(
        "phone_verified", auth_events_pb2.PhoneVerified(user_id=lee, msisdn=lee_no, verified_at_ms=now - 1000)
    )
    await contacts.settled()
    assert await gone()


async def test_profile_changes_replacement_and_deactivation(contacts: Contacts) -> None:
    viewer, _ = await new_user(contacts, "viewer")
    mia, mia_no = await new_user(contacts, "mia")
    ned, ned_no = await new_user(contacts, "ned")
    for user in (mia, ned):
        await contacts.stub.SetDiscoverability(
            pb.SetDiscoverabilityRequest(user_id=user, discoverability=pb.DISCOVERABILITY_EVERYONE)
        )
    await contacts.publish("profile_changed", auth_events_pb2.ProfileChanged(user_id=mia, display_name="Mia Wong"))
    await contacts.settled()

    reply = await upload(contacts, viewer, [mia_no, ned_no])
    assert sorted((m.user_id, m.display_name) for m in reply.matches) == sorted([(mia, "Mia Wong"), (ned, "Ned")])
    listed = await contacts.stub.ListMatches(pb.ListMatchesRequest(user_id=viewer))
    assert {u.user_id for u in listed.users} == {mia, ned}

    # A full upload replaces the book: ned's number is gone, and so is ned from the matches.
    reply = await upload(contacts, viewer, [mia_no])
    assert (reply.added, reply.removed) == (0, 1)
    listed = await contacts.stub.ListMatches(pb.ListMatchesRequest(user_id=viewer))
    assert [u.user_id for u in listed.users] == [mia]

    await contacts.publish(
        "account_deactivated",
        auth_events_pb2.AccountDeactivated(user_id=mia, deactivated_at_ms=int(time.time() * 1000)),
    )
    await contacts.settled()
    assert mia not in await matched(contacts, viewer, [mia_no])
    assert (await contacts.stub.ListMatches(pb.ListMatchesRequest(user_id=viewer))).users == []
    search = await contacts.stub.SearchDirectory(pb.SearchDirectoryRequest(user_id=viewer, search_term="mia"))
    assert not search.results


async def test_matching_needs_a_verified_phone(contacts: Contacts) -> None:
    nobody = f"@nophone-{uuid.uuid4().hex[:6]}:{SERVER}"
    await contacts.publish("user_registered", auth_events_pb2.UserRegistered(user_id=nobody, display_name="No"))
    await contacts.settled()
    for call in (
        upload(contacts, nobody, [new_number()]),
        contacts.stub.LookupHashes(
            pb.LookupHashesRequest(
                user_id=nobody,
                algorithm="sha256",
                pepper=(await contacts.stub.GetHashDetails(pb.GetHashDetailsRequest())).lookup_pepper,
                addresses=[lookup_hash(new_number(), "x")],
            )
        ),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert errcode(refused.value) == "M_FORBIDDEN" and "verified phone" in (refused.value.details() or "")


async def test_the_budget_belongs_to_the_number_across_its_accounts(contacts: Contacts) -> None:
    first, number = await new_user(contacts, "first")
    assert (await upload(contacts, first, [new_number() for _ in range(30)])).budget_remaining == 10
    # The number leaves the first account and is verified by a fresh one: the budget stays spent.
    now = int(time.time() * 1000)
    await contacts.publish(
        "phone_unbound", auth_events_pb2.PhoneUnbound(user_id=first, msisdn=number, unbound_at_ms=now)
    )
    second, _ = await new_user(contacts, "second", number)
    with pytest.raises(grpc.aio.AioRpcError) as tripped:
        await upload(contacts, second, [new_number() for _ in range(11)])
    assert errcode(tripped.value) == "M_LIMIT_EXCEEDED"
    assert (await upload(contacts, second, [new_number() for _ in range(10)])).budget_remaining == 0


async def test_one_client_address_has_a_ceiling_over_all_its_numbers(contacts: Contacts) -> None:
    address = f"198.51.100.{secrets.randbelow(250) + 1}"
    users = [(await new_user(contacts, f"addr{i}"))[0] for i in range(2)]

    async def upload_from(user: str, count: int) -> pb.UploadContactsResponse:
        return await contacts.stub.UploadContacts(
            pb.UploadContactsRequest(
                user_id=user,
                mode=pb.UPLOAD_MODE_MERGE,
                add=[new_number() for _ in range(count)],
                client_address=address,
            )
        )

    await upload_from(users[0], 40)  # that number's whole budget; the address (60) has 20 left
    with pytest.raises(grpc.aio.AioRpcError) as tripped:
        await upload_from(users[1], 21)
    assert errcode(tripped.value) == "M_LIMIT_EXCEEDED"
    # Refused as a whole: the second number's own budget was not spent either.
    assert (await upload_from(users[1], 20)).budget_remaining == 20
    # Without an address (an internal caller) only the number's budget applies.
    assert (
        await upload(contacts, users[1], [new_number() for _ in range(20)], mode=pb.UPLOAD_MODE_MERGE)
    ).budget_remaining == 0


async def test_a_hashed_lookup_of_numbers_uploaded_in_plain_is_free(contacts: Contacts) -> None:
    user, _ = await new_user(contacts, "plainfirst")
    unregistered = [new_number() for _ in range(5)]
    assert (await upload(contacts, user, unregistered)).budget_remaining == 35
    pepper = (await contacts.stub.GetHashDetails(pb.GetHashDetailsRequest())).lookup_pepper
    reply = await contacts.stub.LookupHashes(
        pb.LookupHashesRequest(
            user_id=user, algorithm="sha256", pepper=pepper, addresses=[lookup_hash(n, pepper) for n in unregistered]
        )
    )
    assert reply.budget_remaining == 35
