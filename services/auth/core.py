"""Domain rules of the auth service. No gRPC, Mongo or NATS imports here.

Secrets (passwords, access/refresh/login tokens, SMS codes, OIDC states) are never stored in
clear: passwords as argon2id hashes, random tokens as SHA-256 digests (a 256-bit random token
needs no salt or slow hash; looking it up by digest also means no secret is ever compared
byte-by-byte), SMS codes as HMAC digests compared with `hmac.compare_digest`.
Nothing here logs a secret.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import secrets
import string
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import phonenumbers
from argon2 import PasswordHasher as _Argon2
from argon2 import Type as _Argon2Type
from argon2.exceptions import InvalidHashError, VerificationError

from plumbing.domain_errors import DomainError, Errcode, rate_limited
from plumbing.ids import sortable_id

T = TypeVar("T")

# ---------------------------------------------------------------------------------------------
# Errors (the one table: plumbing.domain_errors)


def _limit(message: str, retry_after_seconds: float) -> DomainError:
    return rate_limited(message, retry_after_ms=max(1, int(retry_after_seconds * 1000)))


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


# ---------------------------------------------------------------------------------------------
# Small pure helpers


_LOCALPART = re.compile(r"^[a-z0-9._=\-/+]+$")


def digest(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def new_device_id() -> str:
    return "".join(secrets.choice(string.ascii_uppercase) for _ in range(10))


def parse_username(username: str, server_name: str) -> str:
    """A localpart or full user id -> the full user id, or INVALID_USERNAME."""
    localpart = username
    if username.startswith("@"):
        localpart, sep, server = username[1:].partition(":")
        if not sep or server != server_name:
            raise DomainError(Errcode.INVALID_USERNAME, f"user ids on this server end in :{server_name}")
    if not localpart:
        raise DomainError(Errcode.INVALID_USERNAME, "username must not be empty")
    if not _LOCALPART.match(localpart):
        raise DomainError(
            Errcode.INVALID_USERNAME, "username may contain only a-z, 0-9, and the characters . _ = - / +"
        )
    if localpart.startswith("_"):
        raise DomainError(Errcode.INVALID_USERNAME, "usernames starting with _ are reserved")
    user_id = f"@{localpart}:{server_name}"
    if len(user_id.encode()) > 255:
        raise DomainError(Errcode.INVALID_USERNAME, "user id is longer than 255 bytes")
    return user_id


def normalise_phone(number: str, region: str) -> str:
    """E.164 form of a phone number typed nationally (for `region`) or internationally."""
    raw = number.strip()
    if not raw or len(raw) > 32:
        raise DomainError(Errcode.INVALID_PARAM, "phone number is missing or too long")
    # Matrix clients send msisdn without "+" (e.g. "8613800138000"); treat a long digit string
    # that fails as national as international.
    candidates = [raw] if raw.startswith("+") else [raw, "+" + raw]
    for candidate in candidates:
        try:
            parsed = phonenumbers.parse(candidate, region.upper() or None)
        except phonenumbers.NumberParseException:
            continue
        if phonenumbers.is_valid_number(parsed):
            return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
    raise DomainError(Errcode.INVALID_PARAM, "not a valid phone number")


def pkce_pair() -> tuple[str, str]:
    """(code_verifier, S256 code_challenge) per RFC 7636."""
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
    return verifier, challenge


class PasswordHasher:
    """argon2id in a worker thread, so hashing never blocks the event loop."""

    def __init__(self, params: Argon2Params) -> None:
        self._hasher = _Argon2(
            time_cost=params.time_cost,
            memory_cost=params.memory_cost_kib,
            parallelism=params.parallelism,
            type=_Argon2Type.ID,
        )
        # Verified against when the account does not exist, so "no such user" costs the same time.
        self._dummy = self._hasher.hash(secrets.token_urlsafe(16))

    async def hash(self, password: str) -> str:
        return await asyncio.to_thread(self._hasher.hash, password)

    async def verify(self, password_hash: str | None, password: str) -> bool:
        def check() -> bool:
            try:
                return self._hasher.verify(password_hash or self._dummy, password) and password_hash is not None
            except (VerificationError, InvalidHashError):
                return False

        return await asyncio.to_thread(check)

    def needs_rehash(self, password_hash: str) -> bool:
        return self._hasher.check_needs_rehash(password_hash)


# ---------------------------------------------------------------------------------------------
# The service


class AuthCore:
    def __init__(
        self,
        store: Store,
        settings: AuthSettings,
        sms: SmsSender,
        oidc: OidcProviders | None = None,
        clock: Callable[[], float] = time.time,
        hasher: PasswordHasher | None = None,
    ) -> None:
        self.store = store
        self.settings = settings
        self.sms = sms
        self.oidc = oidc
        self.now = clock
        self.hasher = hasher or PasswordHasher(settings.argon2)

    # --- rate limits --------------------------------------------------------------------------

    async def _check_limit(self, key: str, limit: int, window: int, what: str) -> None:
        now = self.now()
        if await self.store.read_counter(key, window, now) >= limit:
            raise _limit(f"too many {what}; try again later", window - (now % window))

    async def _hit_limit(self, key: str, limit: int, window: int, what: str) -> None:
        """Count one event and refuse it when the window's budget is spent."""
        now = self.now()
        if await self.store.hit_counter(key, window, now) > limit:
            raise _limit(f"too many {what}; try again later", window - (now % window))

    # --- usernames and registration -------------------------------------------------------------

    async def check_username(self, username: str) -> tuple[bool, str]:
        user_id = parse_username(username, self.settings.server_name)
        return await self.store.get_user(user_id) is None, user_id

    def _check_password_rules(self, password: str) -> None:
        if len(password) < self.settings.password_min_length:
            raise DomainError(
                Errcode.WEAK_PASSWORD,
                f"password must be at least {self.settings.password_min_length} characters long",
            )
        if len(password) > self.settings.password_max_length:
            raise DomainError(Errcode.WEAK_PASSWORD, "password is too long")

    async def register(
        self,
        username: str,
        password: str,
        *,
        device_id: str = "",
        device_name: str = "",
        inhibit_login: bool = False,
        want_refresh: bool = False,
        client_address: str = "",
    ) -> tuple[str, NewSession | None]:
        s = self.settings
        # No username: the server picks one (Matrix allows it).
        user_id = parse_username(username, s.server_name) if username else f"@u{secrets.token_hex(6)}:{s.server_name}"
        if not password:
            raise DomainError(Errcode.MISSING_PARAM, "password is required")
        self._check_password_rules(password)
        if await self.store.get_user(user_id) is not None:
            raise DomainError(Errcode.USER_IN_USE, "that user id is already taken")
        if client_address:
            await self._hit_limit(
                f"register|addr|{client_address}",
                s.registrations_per_address_per_hour,
                3600,
                "registrations from this address",
            )
        password_hash = await self.hasher.hash(password)
        now = self.now()
        localpart = user_id[1:].split(":", 1)[0]
        user = User(user_id, localpart, password_hash, display_name=localpart, created_at=now)

        async def work(tx: Tx) -> NewSession | None:
            if not await self.store.insert_user(user, tx):
                raise DomainError(Errcode.USER_IN_USE, "that user id is already taken")
            await self.store.emit(tx, UserRegisteredEvent(user_id, user.display_name, now))
            if inhibit_login:
                return None
            return await self._open_session(tx, user_id, device_id, device_name, want_refresh, client_address)

        return user_id, await self.store.atomically(work)

    # --- sessions -------------------------------------------------------------------------------

    async def _open_session(
        self, tx: Tx, user_id: str, device_id: str, device_name: str, want_refresh: bool, client_address: str
    ) -> NewSession:
        """Create (or take over) a device and issue its tokens. Runs inside `tx`."""
        now = self.now()
        device_id = device_id or new_device_id()
        if len(device_id) > 255:
            raise DomainError(Errcode.INVALID_PARAM, "device_id is too long")
        existing = await self.store.get_device(user_id, device_id)
        if existing is not None:
            # Matrix: logging in with an existing device id replaces that device's tokens.
            await self._revoke(tx, user_id, device_ids=[device_id], device_id=device_id, reason="relogin")
        await self.store.upsert_device(
            Device(
                user_id,
                device_id,
                display_name=(device_name or (existing.display_name if existing else ""))[:200],
                created_at=existing.created_at if existing else now,
                last_seen_ip=client_address,
                last_seen_at=now,
            ),
            tx,
        )
        return await self._issue_tokens(tx, user_id, device_id, want_refresh)

    async def _issue_tokens(self, tx: Tx, user_id: str, device_id: str, want_refresh: bool) -> NewSession:
        now = self.now()
        s = self.settings
        access = "lwa_" + secrets.token_urlsafe(32)
        token_id = sortable_id()
        expires_at = now + s.access_token_ttl_seconds if want_refresh else None
        await self.store.insert_access_token(
            AccessToken(digest(access), token_id, user_id, device_id, now, expires_at), tx
        )
        refresh = ""
        if want_refresh:
            refresh = "lwr_" + secrets.token_urlsafe(32)
            await self.store.insert_refresh_token(
                RefreshToken(digest(refresh), user_id, device_id, token_id, now + s.refresh_token_ttl_seconds), tx
            )
        return NewSession(
            user_id, device_id, access, token_id, refresh, s.access_token_ttl_seconds * 1000 if want_refresh else 0
        )

    async def _revoke(
        self,
        tx: Tx,
        user_id: str,
        *,
        device_ids: Sequence[str] | None = None,
        except_device: str | None = None,
        token_ids: Sequence[str] | None = None,
        device_id: str = "",
        reason: str,
    ) -> list[str]:
        """Delete matching access (and refresh) tokens and announce it; returns revoked token ids."""
        removed = await self.store.delete_access_tokens(
            user_id, device_ids=device_ids, except_device=except_device, token_ids=token_ids, tx=tx
        )
        if token_ids is None:
            await self.store.delete_refresh_tokens(user_id, device_ids=device_ids, except_device=except_device, tx=tx)
        ids = tuple(t.token_id for t in removed)
        if ids:
            everything = device_ids is None and except_device is None and token_ids is None
            await self.store.emit(tx, TokenRevokedEvent(user_id, device_id, ids, all_devices=everything, reason=reason))
        return list(ids)

    async def introspect(self, access_token: str) -> Introspection:
        if not access_token:
            return Introspection(False, inactive_reason="unknown")
        token = await self.store.find_access_token(digest(access_token))
        if token is None:
            return Introspection(False, inactive_reason="unknown")
        if token.expires_at is not None and token.expires_at <= self.now():
            return Introspection(
                False,
                user_id=token.user_id,
                device_id=token.device_id,
                token_id=token.token_id,
                inactive_reason="expired",
            )
        return Introspection(
            True,
            user_id=token.user_id,
            device_id=token.device_id,
            token_id=token.token_id,
            expires_at_ms=int(token.expires_at * 1000) if token.expires_at else 0,
        )

    async def _resolve_login_user(self, user: str | None, phone: tuple[str, str] | None) -> tuple[str, str | None]:
        """(rate-limit key, user id if it exists) for a password login identifier."""
        if phone is not None:
            country, number = phone
            msisdn = normalise_phone(number, country or self.settings.default_region)
            return f"msisdn:{msisdn}", await self.store.threepid_owner("msisdn", msisdn)
        if not user:
            raise DomainError(Errcode.MISSING_PARAM, "identifier.user is required")
        candidate = user.strip()
        if not candidate.startswith("@"):
            candidate = candidate.lower()  # Matrix logins are case-insensitive on the localpart
        try:
            user_id = parse_username(candidate, self.settings.server_name)
        except DomainError:
            return f"user:{digest(candidate)}", None
        return f"user:{user_id}", user_id

    async def login_password(
        self,
        *,
        user: str | None = None,
        phone: tuple[str, str] | None = None,
        password: str,
        device_id: str = "",
        device_name: str = "",
        want_refresh: bool = False,
        client_address: str = "",
    ) -> NewSession:
        s = self.settings
        if not password:
            raise DomainError(Errcode.MISSING_PARAM, "password is required")
        key, user_id = await self._resolve_login_user(user, phone)
        account_key = f"loginfail|{user_id or key}"
        address_key = f"loginfail|addr|{client_address}"
        window = s.login_failure_window_seconds
        await self._check_limit(account_key, s.login_failures_per_account, window, "failed logins for this account")
        if client_address:
            await self._check_limit(
                address_key, s.login_failures_per_address, window, "failed logins from this address"
            )
        record = await self.store.get_user(user_id) if user_id else None
        ok = await self.hasher.verify(record.password_hash if record else None, password[: s.password_max_length])
        if not ok or record is None:
            await self.store.hit_counter(account_key, window, self.now())
            if client_address:
                await self.store.hit_counter(address_key, window, self.now())
            raise DomainError(Errcode.FORBIDDEN, "invalid username or password")
        if record.deactivated:
            raise DomainError(Errcode.USER_DEACTIVATED, "this account has been deactivated")
        if record.password_hash and self.hasher.needs_rehash(record.password_hash):
            await self.store.update_user(record.user_id, {"password_hash": await self.hasher.hash(password)})
        return await self.store.atomically(
            lambda tx: self._open_session(tx, record.user_id, device_id, device_name, want_refresh, client_address)
        )

    async def login_with_token(
        self,
        login_token: str,
        *,
        device_id: str = "",
        device_name: str = "",
        want_refresh: bool = False,
        client_address: str = "",
    ) -> NewSession:
        taken = await self.store.take_login_token(digest(login_token)) if login_token else None
        if taken is None or taken[1] <= self.now():
            raise DomainError(Errcode.FORBIDDEN, "invalid or expired login token")
        user = await self.store.get_user(taken[0])
        if user is None or user.deactivated:
            raise DomainError(Errcode.USER_DEACTIVATED, "this account has been deactivated")
        return await self.store.atomically(
            lambda tx: self._open_session(tx, user.user_id, device_id, device_name, want_refresh, client_address)
        )

    async def refresh(self, refresh_token: str) -> NewSession:
        """Rotate: the refresh token and its access token are replaced by a new pair.

        Presenting an already-used refresh token means it was copied; the device is signed out.
        """
        token_hash = digest(refresh_token) if refresh_token else ""

        async def work(tx: Tx) -> NewSession | None:
            record = await self.store.use_refresh_token(token_hash, tx) if token_hash else None
            if record is None or record.expires_at <= self.now():
                return None
            if record.used:
                await self._revoke(
                    tx,
                    record.user_id,
                    device_ids=[record.device_id],
                    device_id=record.device_id,
                    reason="refresh_token_reuse",
                )
                return None
            await self._revoke(
                tx, record.user_id, token_ids=[record.access_token_id], device_id=record.device_id, reason="refreshed"
            )
            return await self._issue_tokens(tx, record.user_id, record.device_id, want_refresh=True)

        session = await self.store.atomically(work)
        if session is None:
            raise DomainError(Errcode.UNKNOWN_TOKEN, "unknown, used or expired refresh token")
        return session

    async def logout(self, user_id: str, device_id: str) -> None:
        """Sign out one device: its tokens are revoked and the device is removed."""

        async def work(tx: Tx) -> None:
            await self._revoke(tx, user_id, device_ids=[device_id], device_id=device_id, reason="logout")
            await self.store.delete_devices(user_id, [device_id], tx)

        await self.store.atomically(work)

    async def logout_all(self, user_id: str) -> None:
        async def work(tx: Tx) -> None:
            await self._revoke(tx, user_id, reason="logout_all")
            await self.store.delete_devices(user_id, None, tx)

        await self.store.atomically(work)

    async def _verify_password_for(self, user_id: str, password: str, client_address: str) -> User:
        """Re-authentication (user-interactive auth) with the account password, rate-limited like login."""
        s = self.settings
        account_key = f"loginfail|{user_id}"
        await self._check_limit(
            account_key,
            s.login_failures_per_account,
            s.login_failure_window_seconds,
            "failed password attempts for this account",
        )
        user = await self.store.get_user(user_id)
        if user is None or user.deactivated:
            raise DomainError(Errcode.FORBIDDEN, "account not found or deactivated")
        if not password or not await self.hasher.verify(user.password_hash, password[: s.password_max_length]):
            await self.store.hit_counter(account_key, s.login_failure_window_seconds, self.now())
            if client_address:
                await self.store.hit_counter(
                    f"loginfail|addr|{client_address}", s.login_failure_window_seconds, self.now()
                )
            raise DomainError(Errcode.FORBIDDEN, "invalid password")
        return user

    async def change_password(
        self,
        user_id: str,
        current_password: str,
        new_password: str,
        *,
        logout_devices: bool,
        keep_device_id: str,
        client_address: str = "",
    ) -> None:
        self._check_password_rules(new_password)
        await self._verify_password_for(user_id, current_password, client_address)
        new_hash = await self.hasher.hash(new_password)

        async def work(tx: Tx) -> None:
            await self.store.update_user(user_id, {"password_hash": new_hash}, tx)
            if logout_devices:
                await self._revoke(tx, user_id, except_device=keep_device_id or None, reason="password_changed")
                others = [d.device_id for d in await self.store.list_devices(user_id) if d.device_id != keep_device_id]
                if others:
                    await self.store.delete_devices(user_id, others, tx)

        await self.store.atomically(work)

    async def deactivate(self, user_id: str, password: str, client_address: str = "") -> None:
        await self._verify_password_for(user_id, password, client_address)
        now = self.now()

        async def work(tx: Tx) -> None:
            await self.store.update_user(
                user_id, {"deactivated": True, "password_hash": None, "display_name": "", "avatar_url": ""}, tx
            )
            await self._revoke(tx, user_id, reason="deactivated")
            await self.store.delete_devices(user_id, None, tx)
            for threepid in await self.store.delete_threepids(user_id, None, tx):
                await self.store.emit(tx, PhoneUnboundEvent(user_id, threepid.address, now))
            await self.store.delete_external_accounts(user_id, None, tx)
            await self.store.emit(tx, AccountDeactivatedEvent(user_id, now))

        await self.store.atomically(work)

    # --- devices --------------------------------------------------------------------------------

    async def list_devices(self, user_id: str) -> list[Device]:
        return await self.store.list_devices(user_id)

    async def get_device(self, user_id: str, device_id: str) -> Device:
        device = await self.store.get_device(user_id, device_id)
        if device is None:
            raise DomainError(Errcode.NOT_FOUND, "no such device")
        return device

    async def rename_device(self, user_id: str, device_id: str, display_name: str) -> None:
        if len(display_name) > 200:
            raise DomainError(Errcode.INVALID_PARAM, "display_name is too long")
        if not await self.store.rename_device(user_id, device_id, display_name):
            raise DomainError(Errcode.NOT_FOUND, "no such device")

    async def delete_devices(
        self, user_id: str, device_ids: Sequence[str], password: str, client_address: str = ""
    ) -> None:
        await self._verify_password_for(user_id, password, client_address)

        async def work(tx: Tx) -> None:
            for device_id in device_ids:
                await self._revoke(tx, user_id, device_ids=[device_id], device_id=device_id, reason="device_deleted")
            await self.store.delete_devices(user_id, list(device_ids), tx)

        await self.store.atomically(work)

    # --- phone numbers --------------------------------------------------------------------------

    def _code_digest(self, salt: str, code: str) -> str:
        return hmac.new(self.settings.code_pepper, f"{salt}:{code}".encode(), hashlib.sha256).hexdigest()

    async def request_phone_code(
        self, country: str, phone_number: str, client_secret: str, send_attempt: int, client_address: str = ""
    ) -> PhoneSession:
        s = self.settings
        if not client_secret or len(client_secret) > 255 or not re.fullmatch(r"[0-9a-zA-Z.=_\-]+", client_secret):
            raise DomainError(Errcode.INVALID_PARAM, "client_secret must be 1-255 characters of [0-9a-zA-Z.=_-]")
        msisdn = normalise_phone(phone_number, country or s.default_region)
        secret_hash = digest(client_secret)
        previous = await self.store.find_phone_session_for(secret_hash, msisdn)
        if previous is not None and previous.send_attempt >= send_attempt and previous.expires_at > self.now():
            return previous  # a retry of the same request: same sid, no new SMS (Matrix semantics)
        if client_address:
            await self._hit_limit(
                f"sms|addr|{client_address}",
                s.sms_per_address_per_hour,
                3600,
                "verification codes requested from this address",
            )
        wait = await self.store.claim_send_slot(msisdn, self.now(), s.code_resend_seconds)
        if wait > 0:
            raise _limit("a code was sent to this number recently; wait before asking again", wait)
        await self._hit_limit(
            f"sms|num|{msisdn}", s.sms_per_number_per_hour, 3600, "verification codes for this number"
        )
        code = f"{secrets.randbelow(10**6):06d}"
        salt = secrets.token_hex(8)
        now = self.now()
        session = PhoneSession(
            sid=sortable_id(),
            client_secret_hash=secret_hash,
            msisdn=msisdn,
            code_salt=salt,
            code_hash=self._code_digest(salt, code),
            send_attempt=send_attempt,
            created_at=now,
            expires_at=now + s.code_ttl_seconds,
        )
        await self.store.insert_phone_session(session)
        await self.sms.send(
            msisdn, f"Your Laiwang verification code is {code}. It expires in {s.code_ttl_seconds // 60} minutes."
        )
        return session

    async def _session_for(self, sid: str, client_secret: str) -> PhoneSession:
        session = await self.store.find_phone_session(sid) if sid else None
        if session is None or not hmac.compare_digest(session.client_secret_hash, digest(client_secret or "")):
            raise DomainError(Errcode.THREEPID_AUTH_FAILED, "unknown verification session")
        return session

    async def submit_phone_code(self, sid: str, client_secret: str, code: str, client_address: str = "") -> None:
        s = self.settings
        if client_address:
            await self._hit_limit(
                f"codecheck|addr|{client_address}",
                s.code_checks_per_address_per_hour,
                3600,
                "verification attempts from this address",
            )
        session = await self._session_for(sid, client_secret)
        if session.validated_at is not None:
            return
        if session.expires_at <= self.now():
            raise DomainError(Errcode.THREEPID_AUTH_FAILED, "the code has expired; request a new one")
        # Count the attempt before comparing, atomically, so parallel guesses cannot exceed the limit.
        attempts = await self.store.count_phone_attempt(sid, s.code_max_attempts)
        if attempts is None:
            raise DomainError(Errcode.THREEPID_AUTH_FAILED, "too many wrong codes; request a new one")
        given = (code or "").strip()
        if not hmac.compare_digest(session.code_hash, self._code_digest(session.code_salt, given)):
            left = s.code_max_attempts - attempts
            raise DomainError(
                Errcode.THREEPID_AUTH_FAILED,
                f"wrong code; {left} attempt{'s' if left != 1 else ''} left"
                if left
                else "wrong code; no attempts left, request a new one",
            )
        await self.store.mark_phone_session_validated(sid, self.now())

    async def bind_phone(self, user_id: str, sid: str, client_secret: str) -> str:
        session = await self._session_for(sid, client_secret)
        if session.validated_at is None:
            raise DomainError(Errcode.THREEPID_AUTH_FAILED, "the phone number has not been verified yet")
        if session.created_at + self.settings.bind_window_seconds <= self.now():
            raise DomainError(Errcode.THREEPID_AUTH_FAILED, "the verification is too old; verify again")
        now = self.now()
        msisdn = session.msisdn

        async def work(tx: Tx) -> None:
            owner = await self.store.insert_threepid(
                Threepid("msisdn", msisdn, user_id, session.validated_at or now, now), tx
            )
            if owner == user_id:
                return  # already bound to this account: nothing changes, nothing to announce
            if owner is not None:
                raise DomainError(Errcode.THREEPID_IN_USE, "this phone number belongs to another account")
            await self.store.emit(tx, PhoneVerifiedEvent(user_id, msisdn, now))
            await self.store.delete_phone_session(sid, tx)

        await self.store.atomically(work)
        return msisdn

    async def unbind_phone(self, user_id: str, msisdn: str) -> None:
        address = normalise_phone(msisdn, self.settings.default_region)
        now = self.now()

        async def work(tx: Tx) -> None:
            removed = await self.store.delete_threepids(user_id, [address], tx)
            if not removed:
                raise DomainError(Errcode.THREEPID_NOT_FOUND, "this phone number is not bound to your account")
            await self.store.emit(tx, PhoneUnboundEvent(user_id, address, now))

        await self.store.atomically(work)

    async def list_threepids(self, user_id: str) -> list[Threepid]:
        return await self.store.list_threepids(user_id)

    # --- profiles -------------------------------------------------------------------------------

    async def get_profile(self, user_id: str) -> User:
        user = await self.store.get_user(user_id)
        if user is None or user.deactivated:
            raise DomainError(Errcode.NOT_FOUND, "profile not found")
        return user

    async def set_profile(self, user_id: str, *, display_name: str | None, avatar_url: str | None) -> None:
        user = await self.get_profile(user_id)
        fields: dict[str, Any] = {}
        if display_name is not None:
            if len(display_name) > 256:
                raise DomainError(Errcode.INVALID_PARAM, "displayname is longer than 256 characters")
            fields["display_name"] = display_name
        if avatar_url is not None:
            if (avatar_url and not avatar_url.startswith(("mxc://", "https://"))) or len(avatar_url) > 1024:
                raise DomainError(Errcode.INVALID_PARAM, "avatar_url must be an mxc:// or https:// URL")
            fields["avatar_url"] = avatar_url
        if not fields:
            return

        async def work(tx: Tx) -> None:
            await self.store.update_user(user_id, fields, tx)
            await self.store.emit(
                tx,
                ProfileChangedEvent(
                    user_id, fields.get("display_name", user.display_name), fields.get("avatar_url", user.avatar_url)
                ),
            )

        await self.store.atomically(work)

    # --- linked external accounts (OIDC) --------------------------------------------------------

    def _providers(self) -> OidcProviders:
        if self.oidc is None or not self.oidc.providers():
            raise DomainError(Errcode.NOT_FOUND, "no external identity provider is configured")
        return self.oidc

    def identity_providers(self) -> list[tuple[str, str]]:
        return self.oidc.providers() if self.oidc is not None else []

    async def start_oidc(
        self, provider_id: str, purpose: str, *, user_id: str, callback_url: str, client_redirect_url: str
    ) -> str:
        oidc = self._providers()
        if provider_id not in {p for p, _ in oidc.providers()}:
            raise DomainError(Errcode.NOT_FOUND, f"unknown identity provider {provider_id!r}")
        if purpose not in ("login", "link"):
            raise DomainError(Errcode.INVALID_PARAM, "purpose must be login or link")
        if purpose == "link" and not user_id:
            raise DomainError(Errcode.FORBIDDEN, "linking needs a signed-in user")
        if not callback_url.startswith(("http://", "https://")):
            raise DomainError(Errcode.INVALID_PARAM, "callback_url must be an http(s) URL")
        state = secrets.token_urlsafe(32)
        nonce = secrets.token_urlsafe(16)
        verifier, challenge = pkce_pair()
        await self.store.insert_oidc_state(
            OidcState(
                digest(state),
                purpose,
                provider_id,
                user_id,
                verifier,
                nonce,
                callback_url,
                client_redirect_url,
                self.now() + self.settings.oidc_state_ttl_seconds,
            )
        )
        return await oidc.authorization_url(
            provider_id, state=state, nonce=nonce, code_challenge=challenge, redirect_uri=callback_url
        )

    async def complete_oidc(self, state: str, code: str, error: str) -> tuple[OidcState, OidcIdentity, str, str]:
        """Finish a flow: (state record, identity, user id, login token for purpose=login)."""
        oidc = self._providers()
        record = await self.store.take_oidc_state(digest(state)) if state else None
        if record is None or record.expires_at <= self.now():
            raise DomainError(Errcode.FORBIDDEN, "unknown or expired sign-in attempt; start again")
        if error or not code:
            raise DomainError(Errcode.FORBIDDEN, f"the identity provider refused: {error[:100] or 'no code'}")
        identity = await oidc.exchange(
            record.provider_id,
            code=code,
            code_verifier=record.code_verifier,
            redirect_uri=record.callback_url,
            nonce=record.nonce,
        )
        if record.purpose == "link":
            owner = await self.store.insert_external_account(
                ExternalAccount(record.provider_id, identity.subject, record.user_id, self.now())
            )
            if owner is not None and owner != record.user_id:
                raise DomainError(Errcode.THREEPID_IN_USE, "that external account is linked to another user")
            return record, identity, record.user_id, ""
        linked = await self.store.find_external_account(record.provider_id, identity.subject)
        if linked is None:
            raise DomainError(Errcode.FORBIDDEN, "no Laiwang account is linked to that external account")
        user = await self.store.get_user(linked.user_id)
        if user is None or user.deactivated:
            raise DomainError(Errcode.USER_DEACTIVATED, "this account has been deactivated")
        login_token = "lwl_" + secrets.token_urlsafe(32)
        await self.store.insert_login_token(
            digest(login_token), linked.user_id, self.now() + self.settings.login_token_ttl_seconds
        )
        return record, identity, linked.user_id, login_token

    async def list_external_accounts(self, user_id: str) -> list[ExternalAccount]:
        return await self.store.list_external_accounts(user_id)

    async def unlink_external_account(self, user_id: str, provider_id: str) -> None:
        if not await self.store.delete_external_accounts(user_id, provider_id):
            raise DomainError(Errcode.NOT_FOUND, "no linked account for that provider")
