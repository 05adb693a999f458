"""Composition root of the open_platform service: builds its parts from the shared runtime and serves them."""

from __future__ import annotations

from laiwang.open_platform.v1 import open_platform_pb2
from plumbing import streams
from plumbing.config import Env, default_address
from plumbing.grpc_client import open_channel
from plumbing.ids import sortable_id
from plumbing.service import Runtime, ServiceParts, run_service
from services.open_platform.api import OpenPlatformApi
from services.open_platform.authorizations import Authorizations
from services.open_platform.cards import Cards
from services.open_platform.clients import MessagingRooms
from services.open_platform.core import AppRegistry
from services.open_platform.oauth import OAuthServer
from services.open_platform.oauth_store import MongoOAuthStore
from services.open_platform.replies import REPLIES, replies_handler
from services.open_platform.store import MongoAppStore
from services.open_platform.subscription_store import MongoSubscriptionStore
from services.open_platform.subscriptions import Budget, Subscriptions
from services.open_platform.webhook_health import OwnerNotice, PausePolicy
from services.open_platform.webhook_store import MongoWebhookStore
from services.open_platform.webhooks import RetryPolicy, WebhookConsumer, WebhookDelivery


async def build(runtime: Runtime) -> ServiceParts:
    env = Env()
    # Development only: lets webhooks reach a partner app on loopback over plain http.
    allow_loopback = env.bool("OPEN_PLATFORM_ALLOW_LOOPBACK_WEBHOOKS", False)
    store = MongoAppStore(runtime.db, runtime.outbox)
    registry = AppRegistry(store, new_id=sortable_id)
    oauth_store = MongoOAuthStore(runtime.db, runtime.outbox)
    # Authlib wants an absolute https URI for every request; nothing is derived from it.
    oauth = OAuthServer(store.get, oauth_store, f"https://{runtime.config.server_name}")
    authorizations = Authorizations(store.get, oauth_store)
    messaging = env.address("MESSAGING_ADDR", default_address("messaging"))
    subscription_store = MongoSubscriptionStore(runtime.db, runtime.outbox)
    rooms = MessagingRooms(open_channel(messaging))
    subscriptions = Subscriptions(
        store.get,
        subscription_store,
        rooms,
        runtime.config.server_name,
        per_subscriber=Budget(env.int("OPEN_PLATFORM_SUBSCRIBER_MESSAGES_PER_HOUR", 20, minimum=1), 3_600_000),
        per_app=Budget(env.int("OPEN_PLATFORM_APP_MESSAGES_PER_MINUTE", 6000, minimum=1), 60_000),
    )
    webhook_store = MongoWebhookStore(runtime.db, runtime.outbox)
    policy = RetryPolicy(
        base_seconds=env.float("OPEN_PLATFORM_WEBHOOK_RETRY_BASE_SECONDS", 5.0, minimum=0.05),
        max_seconds=env.float("OPEN_PLATFORM_WEBHOOK_RETRY_MAX_SECONDS", 3600.0, minimum=0.1),
        give_up_seconds=env.float("OPEN_PLATFORM_WEBHOOK_GIVE_UP_SECONDS", 24 * 3600.0, minimum=1.0),
    )
    pause = PausePolicy(
        after_failures=env.int("OPEN_PLATFORM_WEBHOOK_PAUSE_AFTER_FAILURES", 20, minimum=1),
        after_seconds=env.float("OPEN_PLATFORM_WEBHOOK_PAUSE_AFTER_SECONDS", 12 * 3600.0, minimum=0.0),
    )
    notice = OwnerNotice(webhook_store, rooms, runtime.config.server_name, pause)
    delivery = WebhookDelivery(store.get, webhook_store, policy, allow_loopback, pause, notice)
    # Longer than a try's 5 s timeout: an event is redelivered only when its process died mid-try.
    ack_wait = env.float("OPEN_PLATFORM_WEBHOOK_ACK_WAIT_SECONDS", 30.0, minimum=6.0)
    webhook_consumer = WebhookConsumer(runtime.js, delivery, ack_wait)
    api = OpenPlatformApi(
        registry,
        runtime.config.server_name,
        allow_loopback,
        oauth,
        authorizations,
        subscriptions,
        webhook_store,
        Cards(store.get, rooms, runtime.config.server_name),
    )
    return ServiceParts(
        service_names=[open_platform_pb2.DESCRIPTOR.services_by_name["OpenPlatformService"].full_name],
        registrations=[api.register],
        indexes={
            **store.indexes(),
            **oauth_store.indexes(),
            **subscription_store.indexes(),
            **webhook_store.indexes(),
        },
        produces=[streams.OPEN_PLATFORM],
        consumers=[(REPLIES, replies_handler(subscription_store, rooms, runtime.config.server_name))],
        background=[webhook_consumer.run],
        depends_on={"messaging": messaging},  # each subscription is a messaging room
    )


def main() -> None:
    run_service("open_platform", build)
