"""Events the auth service produces (NATS JetStream, stream AUTH, via the outbox).

Domain events from core.py become `laiwang.events.v1` messages on `laiwang.auth.<snake_name>`.
The auth service consumes no events.
"""

from __future__ import annotations

from google.protobuf.message import Message

from laiwang.events.v1 import auth_events_pb2 as ev
from services.auth.model import (
    AccountDeactivatedEvent,
    DomainEvent,
    PhoneUnboundEvent,
    PhoneVerifiedEvent,
    ProfileChangedEvent,
    TokenRevokedEvent,
    UserRegisteredEvent,
)

SUBJECT_PREFIX = "laiwang.auth."
USER_REGISTERED = SUBJECT_PREFIX + "user_registered"
PHONE_VERIFIED = SUBJECT_PREFIX + "phone_verified"
PHONE_UNBOUND = SUBJECT_PREFIX + "phone_unbound"
PROFILE_CHANGED = SUBJECT_PREFIX + "profile_changed"
TOKEN_REVOKED = SUBJECT_PREFIX + "token_revoked"
ACCOUNT_DEACTIVATED = SUBJECT_PREFIX + "account_deactivated"


def _ms(seconds: float) -> int:
    return int(seconds * 1000)


def to_message(event: DomainEvent) -> tuple[str, Message]:
    """The subject and protobuf message announcing `event`."""
    match event:
        case UserRegisteredEvent():
            return USER_REGISTERED, ev.UserRegistered(
                user_id=event.user_id, display_name=event.display_name, registered_at_ms=_ms(event.registered_at)
            )
        case PhoneVerifiedEvent():
            return PHONE_VERIFIED, ev.PhoneVerified(
                user_id=event.user_id, msisdn=event.msisdn, verified_at_ms=_ms(event.verified_at)
            )
        case PhoneUnboundEvent():
            return PHONE_UNBOUND, ev.PhoneUnbound(
                user_id=event.user_id, msisdn=event.msisdn, unbound_at_ms=_ms(event.unbound_at)
            )
        case ProfileChangedEvent():
            return PROFILE_CHANGED, ev.ProfileChanged(
                user_id=event.user_id, display_name=event.display_name, avatar_url=event.avatar_url
            )
        case TokenRevokedEvent():
            return TOKEN_REVOKED, ev.TokenRevoked(
                user_id=event.user_id,
                device_id=event.device_id,
                token_ids=list(event.token_ids),
                all_devices=event.all_devices,
                reason=event.reason,
            )
        case AccountDeactivatedEvent():
            return ACCOUNT_DEACTIVATED, ev.AccountDeactivated(
                user_id=event.user_id, deactivated_at_ms=_ms(event.deactivated_at)
            )
    raise TypeError(f"not an auth event: {type(event).__name__}")
