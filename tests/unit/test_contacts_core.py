"""The contacts rules on their own: numbers, hashes, the index, discoverability, budget, pair states."""

from __future__ import annotations

import base64
import hashlib

import pytest

from services.contacts import core
from services.contacts.core import (
    BudgetPolicy,
    Discoverability,
    Keyring,
    Normaliser,
    Pair,
    PairEventKind,
    PhoneIndex,
    may_reveal,
    plan_book_change,
)
from tests.unit.refusals import refused

pytestmark = pytest.mark.unit

ALICE, BOB = "@alice:x", "@bob:x"


# numbers -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("13800138000", "CN", "+8613800138000"),
        ("138-0013-8000", "CN", "+8613800138000"),
        ("+86 138 0013 8000", "US", "+8613800138000"),
        ("(415) 555-2671", "US", "+14155552671"),
        ("0044 7911 123456", "CN", "+447911123456"),  # 00 is China's international prefix
    ],
)
def test_normalises_to_e164_with_the_region(raw: str, region: str, expected: str) -> None:
    assert Normaliser("CN").normalise(raw, region).e164 == expected


@pytest.mark.parametrize(
    ("raw", "reason"),
    [("12345", "invalid_number"), ("hello", "not_a_number"), ("1" * 65, "too_long"), ("", "not_a_number")],
)
def test_invalid_entries_carry_a_reason(raw: str, reason: str) -> None:
    result = Normaliser("CN").normalise(raw, "CN")
    assert (result.e164, result.reason) == (None, reason)


def test_unknown_region_is_refused() -> None:
    with refused("M_INVALID_PARAM"):
        Normaliser("CN").region("ZZ")
    assert Normaliser("cn").region("") == "CN"


def test_lookup_hash_follows_the_matrix_identity_service_scheme() -> None:
    expected = (
        base64.urlsafe_b64encode(hashlib.sha256(b"8613800138000 msisdn matrixrocks").digest()).rstrip(b"=").decode()
    )
    assert core.lookup_hash("+8613800138000", "matrixrocks") == expected
    assert "=" not in expected and len(expected) == 43
    assert core.decode_lookup_hash(expected) == hashlib.sha256(b"8613800138000 msisdn matrixrocks").digest()
    for bad in ("", "abc", expected + "A", expected[:-1] + "+", expected[:-1] + "="):
        assert core.decode_lookup_hash(bad) is None


def test_keyed_hashes_depend_on_the_secret_and_the_kind() -> None:
    one, two = Keyring(b"k" * 32), Keyring(b"j" * 32)
    assert one.number_key("+8613800138000") != two.number_key("+8613800138000")
    assert one.number_key("+8613800138000") == one.number_key("+8613800138000")
    assert len(one.number_key("+8613800138000")) == core.KEY_BYTES
    digest = core.lookup_digest("+8613800138000", "p")
    assert one.hashed_key("p", digest) != one.hashed_key("q", digest)
    with pytest.raises(ValueError):
        Keyring(b"short")


# index ---------------------------------------------------------------------------------------
async def test_index_resolves_numbers_and_hashes_and_follows_rebinding() -> None:
    index = PhoneIndex()
    index.bind("+8613800138000", ALICE)
    await index.use_pepper("pepper-1")
    index.bind("+8613800138001", BOB)  # bound after the map was built
    digest = core.lookup_digest("+8613800138001", "pepper-1")
    assert index.resolve_hash(digest) == "+8613800138001"
    assert index.resolve_hash(core.lookup_digest("+8613800138000", "pepper-1")) == "+8613800138000"
    assert index.resolve_hash(core.lookup_digest("+8613800138000", "other")) is None
    # A wrong digest sharing the 8-byte prefix is not accepted.
    assert index.resolve_hash(digest[:8] + bytes(24)) is None

    index.unbind("+8613800138000", BOB)  # not bob's: ignored
    assert index.owner("+8613800138000") == ALICE
    index.unbind("+8613800138000", ALICE)
    assert index.owner("+8613800138000") is None
    assert index.resolve_hash(core.lookup_digest("+8613800138000", "pepper-1")) is None

    await index.use_pepper("pepper-2")
    assert index.resolve_hash(digest) is None
    assert index.resolve_hash(core.lookup_digest("+8613800138001", "pepper-2")) == "+8613800138001"


def test_profiles_and_defaults() -> None:
    index = PhoneIndex()
    assert index.discoverability(ALICE) is Discoverability.MUTUAL
    assert index.display_name(ALICE) == "alice"
    index.set_profile(ALICE, display_name="Alice", discoverability=Discoverability.EVERYONE)
    assert (index.display_name(ALICE), index.discoverability(ALICE)) == ("Alice", Discoverability.EVERYONE)
    index.set_profile(ALICE, deactivated=True)
    assert index.discoverability(ALICE) is Discoverability.NOBODY and not index.is_active(ALICE)


# discoverability and budget ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("setting", "has_viewer", "blocked", "expected"),
    [
        (Discoverability.EVERYONE, False, False, True),
        (Discoverability.EVERYONE, True, True, False),
        (Discoverability.MUTUAL, False, False, False),
        (Discoverability.MUTUAL, True, False, True),
        (Discoverability.NOBODY, True, False, False),
    ],
)
def test_may_reveal(setting: Discoverability, has_viewer: bool, blocked: bool, expected: bool) -> None:
    assert may_reveal(setting, has_viewer, blocked) is expected
    assert may_reveal(setting, has_viewer, blocked, same_user=True) is False


def test_budget_starts_full_refills_slowly_and_never_exceeds_the_initial_amount() -> None:
    policy = BudgetPolicy(initial=100, refill_per_hour=10)
    assert policy.available(None, None, 0) == 100
    assert policy.available(0, 0, 1_800_000) == pytest.approx(5)
    assert policy.available(90, 0, 10 * 3_600_000) == 100
    assert policy.charge(100, 100) == 0
    with refused("M_LIMIT_EXCEEDED") as error:
        policy.charge(5, 6)
    assert error.value.errcode == "M_LIMIT_EXCEEDED"
    assert error.value.retry_after_ms >= 360_000  # one token takes six minutes


def test_plan_charges_only_new_keys_and_replaces_or_merges() -> None:
    existing = {b"a", b"b", b"c"}
    full = plan_book_change(existing, {b"b": None, b"d": None}, (), replace_all=True)
    assert (set(full.added), full.removed, full.keys_after) == ({b"d"}, {b"a", b"c"}, {b"b", b"d"})
    merge = plan_book_change(existing, {b"d": 3}, [b"a", b"zz"], replace_all=False)
    assert (merge.added, merge.removed, merge.keys_after) == ({b"d": 3}, {b"a"}, {b"b", b"c", b"d"})
    resync = plan_book_change(existing, dict.fromkeys(existing), (), replace_all=True)
    assert not resync.added and not resync.removed


# pair state machine --------------------------------------------------------------------------
def test_request_accept_remove_with_growing_versions() -> None:
    pair = Pair.new(BOB, ALICE)
    assert (pair.a, pair.b) == (ALICE, BOB)
    with refused("M_FORBIDDEN"):
        core.send_request(pair, ALICE, allowed=False, message="", now_ms=1)
    t, state = core.send_request(pair, ALICE, allowed=True, message="hi", now_ms=1)
    assert state == "pending" and not t.events and t.pair.request_to() == BOB
    again, state = core.send_request(t.pair, ALICE, allowed=True, message="hi", now_ms=2)
    assert state == "pending" and not again.changed
    with refused("M_NOT_FOUND"):
        core.accept(t.pair, ALICE, 3)  # one cannot accept one's own request
    accepted = core.accept(t.pair, BOB, 3)
    assert accepted.pair.friends and accepted.pair.request_from is None
    [created] = accepted.events
    assert (created.kind, created.first, created.second) == (PairEventKind.FRIENDSHIP_CREATED, ALICE, BOB)
    assert created.version == accepted.pair.version == 2
    removed = core.remove_friend(accepted.pair, ALICE, 4)
    assert [e.kind for e in removed.events] == [PairEventKind.FRIENDSHIP_REMOVED]
    assert removed.events[0].version == 3 and not removed.pair.friends
    with refused("M_NOT_FOUND"):
        core.remove_friend(removed.pair, ALICE, 5)


def test_crossing_requests_become_a_friendship() -> None:
    t, _ = core.send_request(Pair.new(ALICE, BOB), ALICE, allowed=True, message="", now_ms=1)
    t2, state = core.send_request(t.pair, BOB, allowed=False, message="", now_ms=2)
    assert state == "friends" and [e.kind for e in t2.events] == [PairEventKind.FRIENDSHIP_CREATED]


def test_block_ends_friendship_and_refuses_requests_until_unblocked() -> None:
    t, _ = core.send_request(Pair.new(ALICE, BOB), ALICE, allowed=True, message="", now_ms=1)
    friends = core.accept(t.pair, BOB, 2).pair
    blocked = core.block(friends, BOB, 3)
    assert [e.kind for e in blocked.events] == [PairEventKind.FRIENDSHIP_REMOVED, PairEventKind.USER_BLOCKED]
    assert [e.version for e in blocked.events] == [3, 4]
    block_event = blocked.events[1]
    assert (block_event.first, block_event.second) == (BOB, ALICE)
    assert block_event.state.b_blocks_a and not block_event.state.friends
    assert not core.block(blocked.pair, BOB, 4).changed  # idempotent
    with refused("M_FORBIDDEN"):
        core.send_request(blocked.pair, ALICE, allowed=True, message="", now_ms=5)
    with refused("M_FORBIDDEN"):
        core.send_request(blocked.pair, BOB, allowed=True, message="", now_ms=5)
    unblocked = core.unblock(blocked.pair, BOB, 6)
    assert [e.kind for e in unblocked.events] == [PairEventKind.USER_UNBLOCKED]
    assert not unblocked.pair.blocked and not unblocked.pair.friends
    assert not core.unblock(unblocked.pair, ALICE, 7).changed


def test_a_pair_needs_two_users() -> None:
    with refused("M_INVALID_PARAM"):
        Pair.new(ALICE, ALICE)
