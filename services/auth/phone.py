"""Auth's phone-number flows: SMS codes, verification sessions, binding and unbinding numbers."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from plumbing.domain_errors import DomainError, Errcode
from plumbing.ids import sortable_id
from services.auth.base import CoreBase
from services.auth.model import PhoneSession, PhoneUnboundEvent, PhoneVerifiedEvent, Threepid, Tx
from services.auth.rules import digest, limit_error, normalise_phone


class PhoneFlows(CoreBase):
    """SMS codes, verification sessions and the numbers bound to accounts."""

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
            raise limit_error("a code was sent to this number recently; wait before asking again", wait)
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
