"""Auth's settings, records, domain events and ports (the Protocols that store.py, sms.py and
oidc.py implement, and the unit tests fake). Data only: no rules and no I/O here.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------
# Settings


@dataclass(frozen=True)
class Argon2Params:
    # OWASP's argon2id minimum (m=19 MiB, t=2, p=1): ~20-40 ms per hash on one core of a small box,
    # which bounds login throughput per core but makes offline guessing expensive.
    time_cost: int = 2
    memory_cost_kib: int = 19 * 1024
    parallelism: int = 1


@dataclass(frozen=True)
class AuthSettings:
    server_name: str = "localhost"
    default_region: str = "CN"
    password_min_length: int = 8
    password_max_length: int = 1024
    argon2: Argon2Params = field(default_factory=Argon2Params)
    # Access tokens of clients that asked for a refresh token expire after this; others do not.
    access_token_ttl_seconds: int = 3600
    refresh_token_ttl_seconds: int = 30 * 24 * 3600
    login_token_ttl_seconds: int = 120
    # SMS verification.
    code_ttl_seconds: int = 300
    code_max_attempts: int = 5
    code_resend_seconds: int = 60
    bind_window_seconds: int = 3600
    sms_per_number_per_hour: int = 5
    sms_per_address_per_hour: int = 20
    code_checks_per_address_per_hour: int = 60
    # Password guessing: failures per window per account and per client address.
    login_failure_window_seconds: int = 900
    login_failures_per_account: int = 10
    # Generous per-address budgets: mobile carriers put many users behind one address (CGNAT).
    login_failures_per_address: int = 100
    registrations_per_address_per_hour: int = 200
    oidc_state_ttl_seconds: int = 600
    # Key for SMS code digests; shared by every replica (AUTH_CODE_PEPPER) so any replica can verify.
    code_pepper: bytes = b"laiwang-dev-pepper"


# ---------------------------------------------------------------------------------------------
# Records


@dataclass
class User:
    user_id: str
    localpart: str
    password_hash: str | None
    display_name: str
    avatar_url: str = ""
    created_at: float = 0.0
    deactivated: bool = False


@dataclass
class Device:
    user_id: str
    device_id: str
    display_name: str
    created_at: float = 0.0
    last_seen_ip: str = ""
    last_seen_at: float = 0.0


@dataclass
class AccessToken:
    token_hash: str
    token_id: str
    user_id: str
    device_id: str
    created_at: float
    expires_at: float | None


@dataclass
class RefreshToken:
    token_hash: str
    user_id: str
    device_id: str
    access_token_id: str
    expires_at: float
    used: bool = False


@dataclass
class Threepid:
    medium: str
    address: str
    user_id: str
    validated_at: float
    added_at: float


@dataclass
class PhoneSession:
    sid: str
    client_secret_hash: str
    msisdn: str
    code_salt: str
    code_hash: str
    send_attempt: int
    created_at: float
    expires_at: float
    attempts: int = 0
    validated_at: float | None = None


@dataclass
class OidcState:
    state_hash: str
    purpose: str
    provider_id: str
    user_id: str
    code_verifier: str
    nonce: str
    callback_url: str
    client_redirect_url: str
    expires_at: float


@dataclass
class ExternalAccount:
    provider_id: str
    subject: str
    user_id: str
    linked_at: float


@dataclass(frozen=True)
class NewSession:
    user_id: str
    device_id: str
    access_token: str
    token_id: str
    refresh_token: str
    expires_in_ms: int


@dataclass(frozen=True)
class Introspection:
    active: bool
    user_id: str = ""
    device_id: str = ""
    token_id: str = ""
    expires_at_ms: int = 0
    inactive_reason: str = ""


# ---------------------------------------------------------------------------------------------
# Domain events (translated to laiwang.events.v1 messages by events.py)


@dataclass(frozen=True)
class UserRegisteredEvent:
    user_id: str
    display_name: str
    registered_at: float


@dataclass(frozen=True)
class PhoneVerifiedEvent:
    user_id: str
    msisdn: str
    verified_at: float


@dataclass(frozen=True)
class PhoneUnboundEvent:
    user_id: str
    msisdn: str
    unbound_at: float


@dataclass(frozen=True)
class ProfileChangedEvent:
    user_id: str
    display_name: str
    avatar_url: str


@dataclass(frozen=True)
class TokenRevokedEvent:
    user_id: str
    device_id: str
    token_ids: tuple[str, ...]
    all_devices: bool
    reason: str


@dataclass(frozen=True)
class AccountDeactivatedEvent:
    user_id: str
    deactivated_at: float


DomainEvent = (
    UserRegisteredEvent
    | PhoneVerifiedEvent
    | PhoneUnboundEvent
    | ProfileChangedEvent
    | TokenRevokedEvent
    | AccountDeactivatedEvent
)


# ---------------------------------------------------------------------------------------------
# Ports (implemented by store.py / sms.py / oidc.py, and by fakes in the unit tests)


class Tx(Protocol):
    """An open transaction; opaque to the core, handed back to the store's write methods."""


class Store(Protocol):
    async def atomically(self, work: Callable[[Tx], Awaitable[T]]) -> T: ...
    async def emit(self, tx: Tx, event: DomainEvent) -> None: ...

    # users
    async def get_user(self, user_id: str, tx: Tx | None = None) -> User | None: ...
    async def insert_user(self, user: User, tx: Tx) -> bool: ...  # False when the id is taken
    async def update_user(self, user_id: str, fields: dict[str, Any], tx: Tx | None = None) -> None: ...

    # devices and tokens
    async def upsert_device(self, device: Device, tx: Tx) -> None: ...
    async def list_devices(self, user_id: str) -> list[Device]: ...
    async def get_device(self, user_id: str, device_id: str) -> Device | None: ...
    async def rename_device(self, user_id: str, device_id: str, display_name: str) -> bool: ...
    async def delete_devices(self, user_id: str, device_ids: Sequence[str] | None, tx: Tx) -> None: ...
    async def insert_access_token(self, token: AccessToken, tx: Tx) -> None: ...
    async def find_access_token(self, token_hash: str) -> AccessToken | None: ...
    async def delete_access_tokens(
        self,
        user_id: str,
        *,
        device_ids: Sequence[str] | None = None,
        except_device: str | None = None,
        token_ids: Sequence[str] | None = None,
        tx: Tx,
    ) -> list[AccessToken]: ...
    async def insert_refresh_token(self, token: RefreshToken, tx: Tx) -> None: ...
    async def use_refresh_token(self, token_hash: str, tx: Tx) -> RefreshToken | None: ...

    """Mark unused token used and return it (as it was); a used token is returned with used=True."""

    async def delete_refresh_tokens(
        self,
        user_id: str,
        *,
        device_ids: Sequence[str] | None = None,
        except_device: str | None = None,
        tx: Tx,
    ) -> None: ...
    async def insert_login_token(self, token_hash: str, user_id: str, expires_at: float) -> None: ...
    async def take_login_token(self, token_hash: str) -> tuple[str, float] | None: ...

    # threepids and phone sessions
    async def insert_threepid(self, threepid: Threepid, tx: Tx) -> str | None: ...  # owner if taken
    async def threepid_owner(self, medium: str, address: str) -> str | None: ...
    async def list_threepids(self, user_id: str) -> list[Threepid]: ...
    async def delete_threepids(self, user_id: str, addresses: Sequence[str] | None, tx: Tx) -> list[Threepid]: ...
    async def insert_phone_session(self, session: PhoneSession) -> None: ...
    async def find_phone_session(self, sid: str) -> PhoneSession | None: ...
    async def find_phone_session_for(self, client_secret_hash: str, msisdn: str) -> PhoneSession | None: ...
    async def count_phone_attempt(self, sid: str, max_attempts: int) -> int | None: ...

    """Atomically count one more attempt if fewer than max were made; the new count, or None."""

    async def mark_phone_session_validated(self, sid: str, at: float) -> None: ...
    async def delete_phone_session(self, sid: str, tx: Tx | None = None) -> None: ...
    async def claim_send_slot(self, msisdn: str, now: float, wait_seconds: float) -> float: ...

    """Claim the right to send an SMS to `msisdn` now; 0 if claimed, else seconds to wait."""

    # rate limits: fixed-window counters shared by every replica
    async def hit_counter(self, key: str, window_seconds: int, now: float) -> int: ...
    async def read_counter(self, key: str, window_seconds: int, now: float) -> int: ...

    # OIDC
    async def insert_oidc_state(self, state: OidcState) -> None: ...
    async def take_oidc_state(self, state_hash: str) -> OidcState | None: ...
    async def insert_external_account(self, account: ExternalAccount) -> str | None: ...  # owner if taken
    async def find_external_account(self, provider_id: str, subject: str) -> ExternalAccount | None: ...
    async def list_external_accounts(self, user_id: str) -> list[ExternalAccount]: ...
    async def delete_external_accounts(self, user_id: str, provider_id: str | None, tx: Tx | None = None) -> int: ...


class SmsSender(Protocol):
    async def send(self, msisdn: str, text: str) -> None: ...


@dataclass(frozen=True)
class OidcIdentity:
    subject: str
    issuer: str


class OidcProviders(Protocol):
    def providers(self) -> list[tuple[str, str]]: ...  # (id, display name)
    async def authorization_url(
        self, provider_id: str, *, state: str, nonce: str, code_challenge: str, redirect_uri: str
    ) -> str: ...
    async def exchange(
        self, provider_id: str, *, code: str, code_verifier: str, redirect_uri: str, nonce: str
    ) -> OidcIdentity: ...
