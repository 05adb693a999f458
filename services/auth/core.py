"""The auth service's use cases: registration, sessions, passwords, devices and profiles.

Phone-number flows live in phone.py and linked external accounts in sso.py; AuthCore combines
them. Records, settings and ports are in model.py, the small pure rules in rules.py. No gRPC,
Mongo or NATS imports here.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

from plumbing.domain_errors import DomainError, Errcode
from plumbing.ids import sortable_id
from services.auth.model import (
    AccessToken,
    AccountDeactivatedEvent,
    Device,
    Introspection,
    NewSession,
    PhoneUnboundEvent,
    ProfileChangedEvent,
    RefreshToken,
    TokenRevokedEvent,
    Tx,
    User,
    UserRegisteredEvent,
)
from services.auth.phone import PhoneFlows
from services.auth.rules import digest, new_device_id, normalise_phone, parse_username
from services.auth.sso import SsoFlows


class AuthCore(PhoneFlows, SsoFlows):
    """Every auth use case; api.py calls it, main.py builds it."""

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
