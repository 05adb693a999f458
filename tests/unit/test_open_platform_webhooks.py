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

    async def log_attempt(self, attempt: Attempt) -> None:
        self.attempts.append(attempt)

    async def dead_letter(self, event: pb.WebhookEvent, reason: str, at_ms: int) -> None:
        self.dead.append((event.webhook_id, reason))


def delivery(app: App | None, answers: list[tuple[int, str]]) -> tuple[WebhookDelivery, FakeStore, list[dict]]:
    store, sent = FakeStore(), []

    async def apps(client_id: str) -> App | None:
        return app

    d = WebhookDelivery(apps, store, RetryPolicy(base_seconds=1, max_seconds=8, give_up_seconds=100), False)

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
