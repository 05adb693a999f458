"""The gateway's partner token cache: which events evict which entries, and that an answer fetched
before an eviction is not cached after it."""

from __future__ import annotations

import time

import pytest

from gateway.partner_auth import APP_CHANGED_SUBJECT, AUTHORIZATION_REVOKED_SUBJECT, handle_event
from gateway.partner_tokens import PartnerRequester, PartnerTokenCache
from laiwang.events.v1 import open_platform_events_pb2 as pb

pytestmark = pytest.mark.unit


def requester(client_id: str, user_id: str, grant_id: str) -> PartnerRequester:
    return PartnerRequester(
        client_id=client_id,
        user_id=user_id,
        scopes=frozenset({"profile:read"}),
        grant_id=grant_id,
        app_name="A",
        bot_user_id="@app_a:x",
        expires_at_ms=int(time.time() * 1000) + 3_600_000,
    )


def filled() -> PartnerTokenCache:
    cache = PartnerTokenCache()
    cache.put("k1", requester("app1", "@u:x", "g1"), cache.generation)
    cache.put("k2", requester("app1", "@u:x", "g2"), cache.generation)
    cache.put("k3", requester("app1", "@v:x", "g3"), cache.generation)
    cache.put("k4", requester("app2", "@u:x", "g4"), cache.generation)
    cache.put("dead", None, cache.generation)
    return cache


def live(cache: PartnerTokenCache) -> set[str]:
    return {k for k in ("k1", "k2", "k3", "k4", "dead") if cache.get(k) is not None}


def test_a_revoked_grant_evicts_its_tokens_only() -> None:
    cache = filled()
    event = pb.AuthorizationRevoked(client_id="app1", user_id="@u:x", grant_ids=["g1"])
    handle_event(cache, AUTHORIZATION_REVOKED_SUBJECT, event.SerializeToString())
    assert live(cache) == {"k2", "k3", "k4", "dead"}


def test_a_user_revoking_an_app_evicts_every_token_of_that_user_with_that_app() -> None:
    cache = filled()
    event = pb.AuthorizationRevoked(client_id="app1", user_id="@u:x")
    handle_event(cache, AUTHORIZATION_REVOKED_SUBJECT, event.SerializeToString())
    assert live(cache) == {"k3", "k4", "dead"}


@pytest.mark.parametrize("change", [pb.APP_CHANGE_SUSPENDED, pb.APP_CHANGE_DELETED])
def test_a_suspended_or_deleted_app_loses_every_token(change: int) -> None:
    cache = filled()
    handle_event(cache, APP_CHANGED_SUBJECT, pb.AppChanged(client_id="app1", change=change).SerializeToString())
    assert live(cache) == {"k4", "dead"}


def test_resuming_forgets_inactive_answers_and_an_edit_changes_nothing() -> None:
    cache = filled()
    handle_event(
        cache, APP_CHANGED_SUBJECT, pb.AppChanged(client_id="app1", change=pb.APP_CHANGE_UPDATED).SerializeToString()
    )
    assert live(cache) == {"k1", "k2", "k3", "k4", "dead"}
    handle_event(
        cache, APP_CHANGED_SUBJECT, pb.AppChanged(client_id="app1", change=pb.APP_CHANGE_RESUMED).SerializeToString()
    )
    assert live(cache) == {"k1", "k2", "k3", "k4"}


def test_an_answer_fetched_before_an_eviction_is_not_cached() -> None:
    cache = PartnerTokenCache()
    generation = cache.generation
    cache.evict("grant:g1")  # the revocation event arrives while the check is in flight
    cache.put("k1", requester("app1", "@u:x", "g1"), generation)
    assert cache.get("k1") is None


def test_an_entry_never_outlives_its_token() -> None:
    cache = PartnerTokenCache()
    expired = requester("app1", "@u:x", "g1")
    expired = PartnerRequester(**{**expired.__dict__, "expires_at_ms": int(time.time() * 1000) - 1})
    cache.put("k1", expired, cache.generation)
    assert cache.get("k1") is None
