"""Events the open_platform service produces (NATS JetStream, stream OPEN_PLATFORM).

This module owns the subjects and the encoding; the store writes them through the outbox in the
same transaction as the change they report.

  laiwang.open_platform.app_changed   AppChanged: registered, updated, suspended, resumed, deleted,
                                      secret rotated (never the secret itself)
  laiwang.open_platform.authorization_revoked
                                      AuthorizationRevoked: a user revoked an app, an app revoked
                                      a token, or a reused refresh token/code revoked its grant
  laiwang.open_platform.subscription_changed
                                      SubscriptionChanged: a user subscribed to or left an app
  laiwang.open_platform.webhook       WebhookEvent: one delivery for an app's webhook endpoint
"""

from __future__ import annotations

import json

from laiwang.events.v1 import open_platform_events_pb2 as pb

SUBJECT_APP_CHANGED = "laiwang.open_platform.app_changed"

_CHANGES = {
    "registered": pb.APP_CHANGE_REGISTERED,
    "updated": pb.APP_CHANGE_UPDATED,
    "suspended": pb.APP_CHANGE_SUSPENDED,
    "resumed": pb.APP_CHANGE_RESUMED,
    "deleted": pb.APP_CHANGE_DELETED,
    "client_secret_rotated": pb.APP_CHANGE_CLIENT_SECRET_ROTATED,
    "webhook_secret_rotated": pb.APP_CHANGE_WEBHOOK_SECRET_ROTATED,
}
CHANGES = frozenset(_CHANGES)


def app_changed(client_id: str, owner: str, change: str, at_ms: int) -> tuple[str, pb.AppChanged]:
    """(subject, event) for an app-registry change."""
    return SUBJECT_APP_CHANGED, pb.AppChanged(
        client_id=client_id, owner_user_id=owner, change=_CHANGES[change], at_ms=at_ms
    )


SUBJECT_AUTHORIZATION_REVOKED = "laiwang.open_platform.authorization_revoked"

_REASONS = {"user": pb.REVOCATION_REASON_USER, "token": pb.REVOCATION_REASON_TOKEN, "reuse": pb.REVOCATION_REASON_REUSE}


def authorization_revoked(
    client_id: str, user_id: str, grant_ids: list[str], reason: str, at_ms: int
) -> tuple[str, pb.AuthorizationRevoked]:
    """(subject, event) for tokens that stopped working: these grants, or all of the user's with the app."""
    return SUBJECT_AUTHORIZATION_REVOKED, pb.AuthorizationRevoked(
        client_id=client_id, user_id=user_id, grant_ids=grant_ids, reason=_REASONS[reason], at_ms=at_ms
    )


SUBJECT_SUBSCRIPTION_CHANGED = "laiwang.open_platform.subscription_changed"


def subscription_changed(
    client_id: str, user_id: str, room_id: str, subscribed: bool, at_ms: int
) -> tuple[str, pb.SubscriptionChanged]:
    """(subject, event) for a user subscribing to or unsubscribing from an app."""
    return SUBJECT_SUBSCRIPTION_CHANGED, pb.SubscriptionChanged(
        client_id=client_id, user_id=user_id, room_id=room_id, subscribed=subscribed, at_ms=at_ms
    )


SUBJECT_WEBHOOK = "laiwang.open_platform.webhook"


def webhook_event(
    webhook_id: str, client_id: str, user_id: str, kind: str, data: dict, at_ms: int
) -> tuple[str, pb.WebhookEvent]:
    """(subject, event) for one delivery to an app's webhook endpoint."""
    return SUBJECT_WEBHOOK, pb.WebhookEvent(
        webhook_id=webhook_id,
        client_id=client_id,
        user_id=user_id,
        type=kind,
        data_json=json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode(),
        created_at_ms=at_ms,
    )
