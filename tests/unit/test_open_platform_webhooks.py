"""Webhook delivery rules without a network: Standard Webhooks signatures (every secret in force),
the payload shape, the retry schedule, the SSRF guard on resolved addresses, and what one try does
with the answer (a fake HTTP layer, a fake store)."""

from __future__ import annotations

import ipaddress
import json
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook

from laiwang.events.v1 import open_platform_events_pb2 as pb
from plumbing.url_guard import GuardedResolver, refusal
from services.open_platform.core import App, AppSettings, WebhookSecret, new_webhook_secret, webhook_networks
from services.open_platform.webhook_health import NOTICE_LEASE_MS, Health, OwnerNotice, PausePolicy
from services.open_platform.webhooks import (
    Attempt,
    RetryPolicy,
    WebhookConsumer,
    WebhookDelivery,
    payload,
    signature_header,
)

pytestmark = pytest.mark.unit

OLD, NEW = new_webhook_secret(), new_webhook_secret()
SETTINGS = AppSettings("A", "", "", "", (), "https://partner.example/hook", ())
APP = App("APP1", "@o:x", SETTINGS, False, False, 0, 0, "", (WebhookSecret(NEW), WebhookSecret(OLD, 10**15)), 0)
EVENT = pb.WebhookEvent(
    webhook_id="msg_1", client_id="APP1", user_id="@u:x", type="message.received", data_json=b'{"a":1}', created_at_ms=0
)


def test_both_secrets_of_an_overlap_sign_and_each_verifies() -> None:
    at = datetime.now(UTC)
    body = payload(EVENT)
    header = signature_header(APP.signing_secrets(1), "msg_1", at, body)
    assert header.count("v1,") == 2
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(at.timestamp())), "webhook-signature": header}
    for secret in (OLD, NEW):
        assert Webhook(secret).verify(body, headers) == {
            "type": "message.received",
            "timestamp": "1970-01-01T00:00:00Z",
            "data": {"a": 1},
        }
    with pytest.raises(Exception, match="signature"):
        Webhook(new_webhook_secret()).verify(body, headers)
    assert json.loads(body)["data"] == {"a": 1}


def test_retries_back_off_exponentially_up_to_the_cap() -> None:
    policy = RetryPolicy(base_seconds=5, max_seconds=3600)
    assert [policy.delay(n) for n in (1, 2, 3, 4)] == [5, 10, 20, 40]
    assert policy.delay(30) == 3600


@pytest.mark.parametrize(
    ("address", "allow_loopback", "refused"),
    [
        ("10.1.2.3", False, "private"),
        ("169.254.169.254", False, "link-local"),
        ("::ffff:192.168.0.1", False, "private"),
        ("127.0.0.1", False, "loopback"),
        ("127.0.0.1", True, None),
        ("93.184.216.34", False, None),
    ],
)
def test_resolved_addresses_are_checked(address: str, allow_loopback: bool, refused: str | None) -> None:
    assert refusal(ipaddress.ip_address(address), webhook_networks(allow_loopback)) == refused


async def test_a_host_name_resolving_to_loopback_is_refused_when_connecting() -> None:
    with pytest.raises(OSError, match="loopback"):
        await GuardedResolver(webhook_networks(False)).resolve("localhost", 443)
    assert await GuardedResolver(webhook_networks(True)).resolve("localhost", 443)


class FakeStore:
    def __init__(self) -> None:
        self.attempts: list[Attempt] = []
        self.dead: list[tuple[str, str]] = []
        self.state = Health()
        self.claimed_ms = 0

    async def log_attempt(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)

    async def dead_letter(self, event: pb.WebhookEvent, reason: str, at_ms: int) -> None:
        self.dead.append((event.webhook_id, reason))

    async def health(self, client_id: str) -> Health:
        return self.state

    async def record_failure(self, client_id: str, error: str, at_ms: int) -> Health:
        since, failures = self.state.failing_since_ms or at_ms, self.state.consecutive_failures + 1
        self.state = replace(self.state, consecutive_failures=failures, failing_since_ms=since, last_error=error)
        return self.state

    async def record_success(self, client_id: str) -> None:
        self.state = replace(self.state, consecutive_failures=0, failing_since_ms=0, last_error="")

    async def pause(self, client_id: str, at_ms: int) -> bool:
        if self.state.paused_at_ms:
            return False
        self.state, self.claimed_ms = replace(self.state, paused_at_ms=at_ms, owner_told=False), 0
        return True

    async def claim_notice(self, client_id: str, now_ms: int, lease_ms: int) -> Health | None:
        if not self.state.paused_at_ms or self.state.owner_told or self.claimed_ms >= now_ms - lease_ms:
            return None
        self.claimed_ms = now_ms
        return self.state

    async def release_notice(self, client_id: str) -> None:
        self.claimed_ms = 0

    async def set_notice_room(self, client_id: str, room_id: str) -> None:
        self.state = replace(self.state, notice_room_id=room_id)

    async def owner_told(self, client_id: str, paused_at_ms: int) -> None:
        if self.state.paused_at_ms == paused_at_ms:
            self.state = replace(self.state, owner_told=True)


class FakeRooms:
    def __init__(self) -> None:
        self.opened: list[tuple[str, str, str]] = []
        self.sent: list[tuple[str, str, str, dict]] = []
        self.fail_sends = 0

    async def open_direct(self, bot: str, user: str, name: str) -> str:
        self.opened.append((bot, user, name))
        return f"!notices{len(self.opened)}:x"

    async def leave(self, room_id: str, user: str) -> None:
        raise AssertionError("nobody leaves the notice room")

    async def send(self, room_id: str, sender: str, txn_id: str, event_type: str, content: dict) -> str:
        if self.fail_sends:
            self.fail_sends -= 1
            raise ConnectionError("messaging unreachable")
        self.sent.append((room_id, sender, txn_id, content))
        return f"$n{len(self.sent)}"


PAUSE = PausePolicy(after_failures=3, after_seconds=60)


def delivery(
    app: App | None, answers: list[tuple[int, str]], rooms: FakeRooms | None = None
) -> tuple[WebhookDelivery, FakeStore, list[dict]]:
    store, sent = FakeStore(), []

    async def apps(client_id: str) -> App | None:
        return app

    notice = OwnerNotice(store, rooms or FakeRooms(), "x", PAUSE)
    policy = RetryPolicy(base_seconds=1, max_seconds=8, give_up_seconds=100)
    d = WebhookDelivery(apps, store, policy, False, PAUSE, notice)

    async def post(url: str, headers: dict[str, str], body: str) -> tuple[int, str]:
        sent.append(headers)
        return answers.pop(0)

    d._post = post  # type: ignore[method-assign]
    return d, store, sent


async def test_a_failure_retries_with_the_same_id_and_the_deadline_dead_letters() -> None:
    d, store, sent = delivery(APP, [(500, "HTTP 500"), (0, "no answer within 5 s"), (200, ""), (503, "HTTP 503")])
    assert await d.handle(EVENT, 1, 1_000) == 1
    assert await d.handle(EVENT, 2, 2_000) == 2
    assert await d.handle(EVENT, 3, 3_000) is None
    assert {h["webhook-id"] for h in sent} == {"msg_1"}
    assert [(a.attempt, a.status) for a in store.attempts] == [(1, 500), (2, 0), (3, 200)]
    assert await d.handle(EVENT, 9, 101_000) is None  # past the give-up time: dead letter, ack
    assert store.dead == [("msg_1", "HTTP 503")]


async def test_suspended_apps_get_nothing_and_deleted_apps_drop_their_events() -> None:
    d, store, sent = delivery(replace(APP, suspended=True), [])
    assert await d.handle(EVENT, 1, 1_000) == 1 and sent == []
    assert await d.handle(EVENT, 5, 200_000) is None and store.dead == [("msg_1", "suspended")]
    gone, store, sent = delivery(None, [])
    assert await gone.handle(EVENT, 1, 1_000) is None and sent == [] and store.dead == []


class RecordedMsg:
    """What the consumer does with one JetStream message: ack, nak (with its delay) or term."""

    def __init__(self, data: bytes) -> None:
        self.subject, self.data, self.metadata = "laiwang.open_platform.webhook", data, None
        self.done: list[str] = []

    async def ack(self) -> None:
        self.done.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.done.append(f"nak {delay}")

    async def term(self) -> None:
        self.done.append("term")


async def test_the_consumer_drops_an_undecodable_payload_once_instead_of_retrying_it_forever() -> None:
    d, store, sent = delivery(APP, [(200, "")])
    consumer = WebhookConsumer(None, d, 30.0)  # type: ignore[arg-type]  # _one never touches JetStream
    poison, good = RecordedMsg(b"\xff\xff not protobuf"), RecordedMsg(EVENT.SerializeToString())
    await consumer._one(poison)  # type: ignore[arg-type]
    await consumer._one(good)  # type: ignore[arg-type]
    assert poison.done == ["term"]
    assert good.done == ["ack"] and [a.status for a in store.attempts] == [200] and len(sent) == 1


def event(n: int) -> pb.WebhookEvent:
    return pb.WebhookEvent(webhook_id=f"msg_{n}", client_id="APP1", type="message.received", created_at_ms=0)


async def test_a_burst_of_failures_in_a_short_outage_does_not_pause_and_a_success_ends_the_streak() -> None:
    d, store, _ = delivery(APP, [(500, "HTTP 500")] * 5 + [(200, "")])
    for n in range(5):  # five events fail within 5 s: many failures, but not for long
        assert await d.handle(event(n), 1, 1_000 + n * 1000) == 1
    assert store.state.consecutive_failures == 5 and not store.state.paused_at_ms
    assert await d.handle(event(9), 1, 10_000) is None
    assert store.state == Health() and store.dead == []


async def test_an_endpoint_failing_long_enough_is_paused_its_owner_told_once_and_events_kept() -> None:
    rooms = FakeRooms()
    d, store, sent = delivery(APP, [(503, "HTTP 503")] * 3, rooms)
    assert await d.handle(event(1), 1, 1_000) == 1
    assert await d.handle(event(2), 1, 30_000) == 1
    assert await d.handle(event(3), 1, 61_000) is None  # 3rd failure, 60 s into the streak: paused
    assert store.state.paused_at_ms == 61_000 and store.state.owner_told
    assert store.dead == [("msg_3", "endpoint paused")]
    assert rooms.opened == [("@app_app1:x", "@o:x", "A: webhooks")]
    [(room, sender, txn, content)] = rooms.sent
    assert (room, sender, txn, content["msgtype"]) == ("!notices1:x", "@app_app1:x", "webhook-paused-61000", "m.notice")
    assert "3 tries in a row" in content["body"] and "HTTP 503" in content["body"]
    assert "/_laiwang/client/v1/apps/APP1/webhook/resume" in content["body"]
    # While paused: nothing is sent, every event is kept as a dead letter, the owner is not told again.
    assert await d.handle(event(1), 2, 62_000) is None and await d.handle(event(4), 1, 63_000) is None
    assert len(sent) == 3 and len(rooms.sent) == 1
    assert store.dead[1:] == [("msg_1", "endpoint paused"), ("msg_4", "endpoint paused")]


async def test_the_owner_notice_is_retried_until_sent_and_the_event_waits_for_it() -> None:
    rooms = FakeRooms()
    rooms.fail_sends = 1
    d, store, _ = delivery(APP, [(0, "no answer within 5 s")] * 3, rooms)
    await d.handle(event(1), 1, 1_000)
    await d.handle(event(2), 1, 2_000)
    with pytest.raises(ConnectionError):
        await d.handle(event(3), 1, 61_000)  # paused, but the notice failed: the event is not acked
    assert store.dead == [] and not store.state.owner_told
    assert await d.handle(event(3), 2, 66_000) is None  # the released claim is taken again at once
    assert [s[2] for s in rooms.sent] == ["webhook-paused-61000"] and len(rooms.opened) == 1
    assert store.dead == [("msg_3", "endpoint paused")] and store.state.owner_told


async def test_an_event_that_finds_another_try_telling_the_owner_waits_for_that_claim() -> None:
    d, store, sent = delivery(APP, [])
    store.state = Health(consecutive_failures=3, failing_since_ms=1, paused_at_ms=5_000)
    store.claimed_ms = 9_000  # another try (perhaps one that crashed) holds the claim
    assert await d.handle(event(1), 1, 10_000) == NOTICE_LEASE_MS / 1000
    assert store.dead == [] and sent == []
    assert await d.handle(event(1), 2, 9_000 + NOTICE_LEASE_MS + 1) is None  # its claim lapsed: told now
    assert store.state.owner_told and store.dead == [("msg_1", "endpoint paused")]
