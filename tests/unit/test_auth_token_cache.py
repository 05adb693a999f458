"""The gateway's introspection cache: lifetimes, eviction by revocation events, and the race guard."""

from __future__ import annotations

import time

import pytest

from gateway.session import ACCOUNT_DEACTIVATED_SUBJECT, TOKEN_REVOKED_SUBJECT, handle_revocation, token_key
from gateway.token_cache import Rejection, Requester, TokenCache
from laiwang.events.v1 import auth_events_pb2 as ev

pytestmark = pytest.mark.unit

ALICE_PHONE = Requester("@alice:t", "PHONE", "T1")
ALICE_LAPTOP = Requester("@alice:t", "LAPTOP", "T2")
BOB = Requester("@bob:t", "PHONE", "T3")


def _filled() -> TokenCache:
    cache = TokenCache(ttl=30)
    for key, who in (("k1", ALICE_PHONE), ("k2", ALICE_LAPTOP), ("k3", BOB)):
        cache.put(key, who, cache.generation)
    return cache


def test_hits_until_ttl_or_token_expiry() -> None:
    cache = TokenCache(ttl=30)
    cache.put("k", ALICE_PHONE, cache.generation)
    assert cache.get("k") == ALICE_PHONE
    cache.put("short", BOB, cache.generation, token_expires_in=0.01)
    time.sleep(0.02)
    assert cache.get("short") is None
    cache.put("gone", BOB, cache.generation, token_expires_in=-1)
    assert cache.get("gone") is None


def test_negative_answers_are_cached_briefly() -> None:
    cache = TokenCache(ttl=30, negative_ttl=0.01)
    cache.put("bad", Rejection(soft_logout=True), cache.generation)
    assert cache.get("bad") == Rejection(True)
    time.sleep(0.02)
    assert cache.get("bad") is None


def test_token_revoked_event_evicts_by_token_id_device_or_user() -> None:
    cache = _filled()
    handle_revocation(
        cache,
        TOKEN_REVOKED_SUBJECT,
        ev.TokenRevoked(user_id="@alice:t", device_id="PHONE", token_ids=["T1"]).SerializeToString(),
    )
    assert cache.get("k1") is None and cache.get("k2") == ALICE_LAPTOP
    handle_revocation(
        cache, TOKEN_REVOKED_SUBJECT, ev.TokenRevoked(user_id="@alice:t", all_devices=True).SerializeToString()
    )
    assert cache.get("k2") is None and cache.get("k3") == BOB
    handle_revocation(cache, ACCOUNT_DEACTIVATED_SUBJECT, ev.AccountDeactivated(user_id="@bob:t").SerializeToString())
    assert len(cache) == 0


def test_device_eviction_spares_other_devices() -> None:
    cache = _filled()
    handle_revocation(
        cache, TOKEN_REVOKED_SUBJECT, ev.TokenRevoked(user_id="@alice:t", device_id="LAPTOP").SerializeToString()
    )
    assert cache.get("k1") == ALICE_PHONE and cache.get("k2") is None


def test_an_answer_fetched_before_an_eviction_is_not_cached_after_it() -> None:
    cache = TokenCache()
    generation = cache.generation  # an introspection starts...
    cache.evict_token_ids(["T1"])  # ...the token is revoked meanwhile...
    cache.put("k1", ALICE_PHONE, generation)  # ...and the stale "active" answer arrives
    assert cache.get("k1") is None


def test_the_cache_is_bounded_and_keys_are_digests() -> None:
    cache = TokenCache(max_entries=10)
    for i in range(25):
        cache.put(f"k{i}", Requester(f"@u{i}:t", "D", f"T{i}"), cache.generation)
    assert len(cache) <= 10
    assert token_key("secret-token") != "secret-token" and len(token_key("secret-token")) == 64
