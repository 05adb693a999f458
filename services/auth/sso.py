"""Auth's linked external accounts: OIDC sign-in and linking (the provider adapter is oidc.py)."""

from __future__ import annotations

import secrets

from plumbing.domain_errors import DomainError, Errcode
from services.auth.base import CoreBase
from services.auth.model import ExternalAccount, OidcIdentity, OidcProviders, OidcState
from services.auth.rules import digest, pkce_pair


class SsoFlows(CoreBase):
    """Sign-in and linking through an external OIDC provider."""

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
