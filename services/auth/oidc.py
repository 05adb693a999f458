"""OpenID Connect client (authorization-code flow with PKCE) for linked external accounts.

One provider (Taobao-style) configured by issuer URL, client id and secret. Discovery is lazy and
cached, so the service starts even while the provider is unreachable.

The ID token is received directly from the token endpoint over the back channel, so per OIDC Core
3.1.3.7 (6) the TLS connection authenticates the issuer and we validate the claims (iss, aud,
azp, exp, nonce) without checking the JWS signature; this avoids a JOSE dependency. Production
issuers must therefore be https:// (enforced unless AUTH_OIDC_ALLOW_HTTP is set for local tests).
"""

from __future__ import annotations

import base64
import hmac
import time
from typing import Any
from urllib.parse import quote_plus, urlencode

import aiohttp
import orjson

from plumbing.domain_errors import DomainError, Errcode, try_again
from services.auth.model import OidcIdentity


def refused(message: str) -> DomainError:
    return DomainError(Errcode.FORBIDDEN, f"external sign-in failed: {message}")


def _claims(id_token: str) -> dict[str, Any]:
    try:
        payload = id_token.split(".")[1]
        claims = orjson.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    except (IndexError, ValueError) as exc:
        raise refused("malformed id_token") from exc
    if not isinstance(claims, dict):
        raise refused("malformed id_token")
    return claims


class OidcClient:
    def __init__(
        self,
        provider_id: str,
        display_name: str,
        issuer: str,
        client_id: str,
        client_secret: str,
        scopes: str = "openid",
        timeout_seconds: float = 10.0,
    ) -> None:
        self.provider_id = provider_id
        self.display_name = display_name
        self.issuer = issuer.rstrip("/")
        self.client_id = client_id
        self._client_secret = client_secret
        self.scopes = scopes
        self._timeout = aiohttp.ClientTimeout(total=timeout_seconds)
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0

    def providers(self) -> list[tuple[str, str]]:
        return [(self.provider_id, self.display_name)]

    async def _discover(self) -> dict[str, Any]:
        if self._metadata is not None and time.monotonic() - self._metadata_at < 3600:
            return self._metadata
        url = f"{self.issuer}/.well-known/openid-configuration"
        try:
            async with aiohttp.ClientSession(timeout=self._timeout) as http, http.get(url) as response:
                if response.status != 200:
                    raise try_again(f"identity provider discovery answered {response.status}")
                metadata = await response.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise try_again(f"identity provider unreachable: {type(exc).__name__}") from None
        if metadata.get("issuer", "").rstrip("/") != self.issuer:
            raise try_again("identity provider metadata names a different issuer")
        self._metadata, self._metadata_at = metadata, time.monotonic()
        return metadata

    def _check(self, provider_id: str) -> None:
        if provider_id != self.provider_id:
            raise DomainError(Errcode.NOT_FOUND, f"unknown identity provider {provider_id!r}")

    async def authorization_url(
        self, provider_id: str, *, state: str, nonce: str, code_challenge: str, redirect_uri: str
    ) -> str:
        self._check(provider_id)
        metadata = await self._discover()
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.client_id,
                "redirect_uri": redirect_uri,
                "scope": self.scopes,
                "state": state,
                "nonce": nonce,
                "code_challenge": code_challenge,
                "code_challenge_method": "S256",
            }
        )
        endpoint = metadata["authorization_endpoint"]
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{query}"

    async def exchange(
        self, provider_id: str, *, code: str, code_verifier: str, redirect_uri: str, nonce: str
    ) -> OidcIdentity:
        self._check(provider_id)
        metadata = await self._discover()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": code_verifier,
        }
        # client_secret_basic; RFC 6749 2.3.1 form-encodes both parts before base64.
        credentials = f"{quote_plus(self.client_id)}:{quote_plus(self._client_secret)}".encode()
        headers = {"Accept": "application/json", "Authorization": "Basic " + base64.b64encode(credentials).decode()}
        try:
            async with (
                aiohttp.ClientSession(timeout=self._timeout) as http,
                http.post(metadata["token_endpoint"], data=form, headers=headers) as response,
            ):
                body = await response.json(content_type=None)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            raise try_again(f"identity provider token call failed: {type(exc).__name__}") from None
        if status != 200 or not isinstance(body, dict) or "id_token" not in body:
            reason = body.get("error", "no id_token") if isinstance(body, dict) else "bad answer"
            raise refused(f"token endpoint refused ({status}: {str(reason)[:80]})")
        claims = _claims(body["id_token"])
        audience = claims.get("aud")
        audiences = audience if isinstance(audience, list) else [audience]
        if claims.get("iss", "").rstrip("/") != self.issuer:
            raise refused("id_token issuer mismatch")
        if self.client_id not in audiences or (len(audiences) > 1 and claims.get("azp") != self.client_id):
            raise refused("id_token audience mismatch")
        if not isinstance(claims.get("exp"), int | float) or claims["exp"] < time.time() - 60:
            raise refused("id_token expired")
        if not hmac.compare_digest(str(claims.get("nonce", "")), nonce):
            raise refused("id_token nonce mismatch")
        subject = claims.get("sub")
        if not isinstance(subject, str) or not subject:
            raise refused("id_token has no subject")
        return OidcIdentity(subject=subject, issuer=self.issuer)
