"""Auth's small pure rules: secret digests, usernames, phone numbers, PKCE, password hashing.

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
import re
import secrets
import string

import phonenumbers
from argon2 import PasswordHasher as _Argon2
from argon2 import Type as _Argon2Type
from argon2.exceptions import InvalidHashError, VerificationError

from plumbing.domain_errors import DomainError, Errcode, rate_limited
from services.auth.model import Argon2Params

# ---------------------------------------------------------------------------------------------
# Errors (the one table: plumbing.domain_errors)


def limit_error(message: str, retry_after_seconds: float) -> DomainError:
    return rate_limited(message, retry_after_ms=max(1, int(retry_after_seconds * 1000)))


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
    if localpart.startswith("app_"):  # partner apps' bots are @app_<client id> (open_platform)
        raise DomainError(Errcode.INVALID_USERNAME, "usernames starting with app_ are reserved for apps")
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
