"""Subscription rules with in-memory fakes: only subscribers can be messaged, budgets per subscriber
and per app with retry_after_ms to the end of the window, a repeated subscribe changes nothing,
unsubscribing stops messages and makes the bot leave, a suspended app is unknown."""

from __future__ import annotations

from dataclasses import replace

import pytest

from plumbing.domain_errors import DomainError
from services.open_platform.core import App, AppSettings
from services.open_platform.subscriptions import Budget, Subscription, Subscriptions

pytestmark = pytest.mark.unit

SETTINGS = AppSettings("Hotpot", "", "", "", (), "", ("subscribers:message",))
APP = App("APP1", "@owner:x", SETTINGS, False, False, 0, 0, "", (), 0)


class FakeStore:
    def __init__(self) -> None:
        self.subs: dict[tuple[str, str], Subscription] = {}
        self.counters: dict[str, int] = {}

    async def get_subscription(self, client_id: str, user_id: str) -> Subscription | None:
        return self.subs.get((client_id, user_id))

    async def put_subscription(self, sub: Subscription, expected_active: bool | None) -> bool:
        current = self.subs.get((sub.client_id, sub.user_id))
        if (current.active if current else None) != expected_active:
            return False
        self.subs[(sub.client_id, sub.user_id)] = sub
        return True

    async def subscriptions_of(self, user_id: str) -> list[Subscription]:
        return [s for (_, u), s in self.subs.items() if u == user_id]

    async def subscribers_of(self, client_id: str, after_user: str, limit: int) -> list[Subscription]:
        found = sorted((s for (c, _), s in self.subs.items() if c == client_id and s.active), key=lambda s: s.user_id)
        return [s for s in found if s.user_id > after_user][:limit]

    async def take(self, key: str, window_start_ms: int, window_ms: int) -> int:
        name = f"{key}@{window_start_ms}"
        self.counters[name] = self.counters.get(name, 0) + 1
        return self.counters[name]


class FakeRooms:
    def __init__(self) -> None:
        self.opened: list[tuple[str, str]] = []
        self.left: list[tuple[str, str]] = []
        self.sent: list[tuple[str, str, str]] = []

    async def open_direct(self, bot: str, user: str, name: str) -> str:
        self.opened.append((bot, user))
        return f"!room{len(self.opened)}:x"

    async def leave(self, room_id: str, user: str) -> None:
        self.left.append((room_id, user))

    async def send(self, room_id: str, sender: str, txn_id: str, event_type: str, content: dict) -> str:
        self.sent.append((room_id, sender, content["body"]))
        return f"$e{len(self.sent)}"


def make(app: App = APP, per_subscriber: int = 3, per_app: int = 100) -> tuple[Subscriptions, FakeStore, FakeRooms]:
    store, rooms = FakeStore(), FakeRooms()

    async def apps(client_id: str) -> App | None:
        return app if client_id == app.client_id else None

    subs = Subscriptions(apps, store, rooms, "x", Budget(per_subscriber, 3_600_000), Budget(per_app, 60_000))
    return subs, store, rooms


async def test_only_subscribers_can_be_messaged_and_unsubscribing_stops_it() -> None:
    subs, _, rooms = make()
    with pytest.raises(DomainError) as refused:
        await subs.message("APP1", "@fan:x", "hi", "t", 1000)
    assert refused.value.errcode == "M_FORBIDDEN" and rooms.sent == []
    first = await subs.subscribe("@fan:x", "APP1", 1000)
    assert await subs.subscribe("@fan:x", "APP1", 2000) == first and rooms.opened == [("@app_app1:x", "@fan:x")]
    assert await subs.message("APP1", "@fan:x", "hi", "t", 3000) == (first.room_id, "$e1")
    assert rooms.sent == [(first.room_id, "@app_app1:x", "hi")]
    await subs.unsubscribe("@fan:x", "APP1", 4000)
    assert rooms.left == [(first.room_id, "@app_app1:x")]
    with pytest.raises(DomainError) as refused:
        await subs.message("APP1", "@fan:x", "again", "t2", 5000)
    assert refused.value.errcode == "M_FORBIDDEN" and len(rooms.sent) == 1
    with pytest.raises(DomainError) as missing:
        await subs.unsubscribe("@fan:x", "APP1", 6000)
    assert missing.value.errcode == "M_NOT_FOUND"


async def test_budgets_answer_429_until_the_window_ends() -> None:
    subs, _, rooms = make(per_subscriber=2, per_app=3)
    await subs.subscribe("@a:x", "APP1", 0)
    await subs.subscribe("@b:x", "APP1", 0)
    now = 3_600_000 * 5 + 1_000
    await subs.message("APP1", "@a:x", "1", "t1", now)
    await subs.message("APP1", "@a:x", "2", "t2", now)
    with pytest.raises(DomainError) as limited:
        await subs.message("APP1", "@a:x", "3", "t3", now)
    assert limited.value.errcode == "M_LIMIT_EXCEEDED" and limited.value.retry_after_ms == 3_600_000 - 1_000
    # The app's own budget (3 a minute; the refused message above spent one of it) runs out next.
    with pytest.raises(DomainError) as limited:
        await subs.message("APP1", "@b:x", "4", "t4", now + 58_000)
    assert limited.value.errcode == "M_LIMIT_EXCEEDED" and limited.value.retry_after_ms == 1_000
    assert [body for _, _, body in rooms.sent] == ["1", "2"]


async def test_bad_bodies_and_suspended_or_unknown_apps_are_refused() -> None:
    subs, _, _ = make()
    await subs.subscribe("@fan:x", "APP1", 0)
    for body, txn in (("", "t"), ("x" * 4001, "t"), ("ok", "bad txn!")):
        with pytest.raises(DomainError) as refused:
            await subs.message("APP1", "@fan:x", body, txn, 1)
        assert refused.value.errcode == "M_INVALID_PARAM"
    suspended, _, _ = make(replace(APP, suspended=True))
    for call in (suspended.subscribe("@fan:x", "APP1", 0), subs.subscribe("@fan:x", "NOPE", 0)):
        with pytest.raises(DomainError) as unknown:
            await call
        assert unknown.value.errcode == "M_NOT_FOUND"


async def test_a_store_failure_after_the_room_opened_leaves_no_orphan_room() -> None:
    subs, store, rooms = make()

    async def broken_put(sub: Subscription, expected_active: bool | None) -> bool:
        raise ConnectionError("store unreachable")

    store.put_subscription = broken_put  # type: ignore[method-assign]
    with pytest.raises(ConnectionError):
        await subs.subscribe("@fan:x", "APP1", 1000)
    assert rooms.opened == [("@app_app1:x", "@fan:x")] and rooms.left == [("!room1:x", "@app_app1:x")]


async def test_a_write_that_landed_although_the_store_failed_to_answer_keeps_its_room() -> None:
    subs, store, rooms = make()
    real_put = store.put_subscription

    async def put_then_fail(sub: Subscription, expected_active: bool | None) -> bool:
        await real_put(sub, expected_active)
        raise TimeoutError("the answer was lost")

    store.put_subscription = put_then_fail  # type: ignore[method-assign]
    with pytest.raises(TimeoutError):
        await subs.subscribe("@fan:x", "APP1", 1000)
    assert rooms.left == [] and store.subs[("APP1", "@fan:x")].room_id == "!room1:x"
