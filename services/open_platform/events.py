"""Events the open_platform service produces (NATS JetStream, stream OPEN_PLATFORM).

This module owns the subjects and the encoding; the store writes them through the outbox in the
same transaction as the change they report.

  laiwang.open_platform.app_changed   AppChanged: registered, updated, suspended, resumed, deleted,
                                      secret rotated (never the secret itself)
"""

from __future__ import annotations

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
