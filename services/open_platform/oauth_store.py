"""Repository of the OAuth2 authorization server: codes, tokens and users' authorizations.

Collections (raw codes and tokens are never stored, only their SHA-256 hashes):
  oauth_codes     `<code hash>`: one authorization code; `used` is set when it is exchanged (kept, so
                  that a second exchange is recognised as reuse and revokes what the first issued)
  oauth_tokens    `<access token hash>`: one issuance (access token + its refresh token), its grant
                  (`grant_id`: every token issued from one consent, refreshes included), `revoked`,
                  and `rotated` once its refresh token has been exchanged
  authorizations  `<user>\\n<client_id>`: the apps a user authorized and the scopes granted

Every revocation commits with its AuthorizationRevoked event, and the outbox is relayed before the
call returns, so gateways hear of it before the revoking client gets its answer.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from plumbing.ids import sortable_id
from plumbing.mongo import IndexPlan, in_transaction
from plumbing.outbox import Outbox
from services.open_platform import events

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CodeRecord:
    code_hash: str
    client_id: str
    user_id: str
    redirect_uri: str
    scope: str
    code_challenge: str
    code_challenge_method: str
    grant_id: str
    created_ms: int
    expires_ms: int


@dataclass(frozen=True)
class TokenRecord:
    access_hash: str
    refresh_hash: str  # empty: no refresh token (client credentials)
    client_id: str
    user_id: str  # empty: an app-level token
    scope: str
    grant_id: str
    issued_ms: int
    expires_ms: int
    refresh_expires_ms: int
    revoked: bool = False
    rotated: bool = False


@dataclass(frozen=True)
class AuthorizationRecord:
    user_id: str
    client_id: str
    scopes: tuple[str, ...]
    created_ms: int
    updated_ms: int


def _token(doc: dict[str, Any]) -> TokenRecord:
    return TokenRecord(
        access_hash=doc["_id"],
        refresh_hash=doc.get("refresh_hash") or "",
        client_id=doc["client_id"],
        user_id=doc.get("user_id", ""),
        scope=doc.get("scope", ""),
        grant_id=doc["grant_id"],
        issued_ms=doc["issued_ms"],
        expires_ms=doc["expires_ms"],
        refresh_expires_ms=doc.get("refresh_expires_ms", 0),
        revoked=doc.get("revoked", False),
        rotated=doc.get("rotated", False),
    )


def _authorization_id(user_id: str, client_id: str) -> str:
    return f"{user_id}\n{client_id}"


class MongoOAuthStore:
    def __init__(self, db: AsyncDatabase, outbox: Outbox) -> None:
        self._client = db.client
        self._outbox = outbox
        self._codes = db["oauth_codes"]
        self._tokens = db["oauth_tokens"]
        self._authorizations = db["authorizations"]

    @staticmethod
    def indexes() -> IndexPlan:
        return {
            "oauth_tokens": [
                IndexModel([("refresh_hash", ASCENDING)]),
                IndexModel([("grant_id", ASCENDING)]),
                IndexModel([("user_id", ASCENDING), ("client_id", ASCENDING)]),
            ],
            "authorizations": [IndexModel([("user_id", ASCENDING), ("updated_ms", DESCENDING)])],
        }

    # -- codes ------------------------------------------------------------------------------------

    async def save_code(self, code: CodeRecord) -> None:
        await self._codes.insert_one(
            {
                "_id": code.code_hash,
                "client_id": code.client_id,
                "user_id": code.user_id,
                "redirect_uri": code.redirect_uri,
                "scope": code.scope,
                "code_challenge": code.code_challenge,
                "code_challenge_method": code.code_challenge_method,
                "grant_id": code.grant_id,
                "created_ms": code.created_ms,
                "expires_ms": code.expires_ms,
                "used": False,
            }
        )

    async def claim_code(self, code_hash: str, client_id: str) -> tuple[CodeRecord | None, CodeRecord | None]:
        """(the code, now marked used; or None) and, when it had been used already, that code (reuse)."""
        doc = await self._codes.find_one_and_update(
            {"_id": code_hash, "client_id": client_id, "used": False}, {"$set": {"used": True}}
        )
        if doc is None:
            again = await self._codes.find_one({"_id": code_hash, "client_id": client_id, "used": True})
            return None, (_code(again) if again else None)
        return _code(doc), None

    # -- tokens -----------------------------------------------------------------------------------

    async def save_token(self, token: TokenRecord, authorization_scopes: tuple[str, ...] | None) -> None:
        """Store an issuance; with `authorization_scopes`, also record (or widen) the user's
        authorization of the app, in the same transaction."""

        async def write(session: AsyncClientSession) -> None:
            await self._tokens.insert_one(
                {
                    "_id": token.access_hash,
                    "refresh_hash": token.refresh_hash or None,
                    "client_id": token.client_id,
                    "user_id": token.user_id,
                    "scope": token.scope,
                    "grant_id": token.grant_id,
                    "issued_ms": token.issued_ms,
                    "expires_ms": token.expires_ms,
                    "refresh_expires_ms": token.refresh_expires_ms,
                    "revoked": False,
                    "rotated": False,
                },
                session=session,
            )
            if authorization_scopes is not None and token.user_id:
                await self._authorizations.update_one(
                    {"_id": _authorization_id(token.user_id, token.client_id)},
                    {
                        "$set": {"user_id": token.user_id, "client_id": token.client_id, "updated_ms": token.issued_ms},
                        "$setOnInsert": {"created_ms": token.issued_ms},
                        "$addToSet": {"scopes": {"$each": list(authorization_scopes)}},
                    },
                    upsert=True,
                    session=session,
                )

        await in_transaction(self._client, write)

    async def token_by_access(self, access_hash: str) -> TokenRecord | None:
        doc = await self._tokens.find_one({"_id": access_hash})
        return _token(doc) if doc else None

    async def token_by_refresh(self, refresh_hash: str) -> TokenRecord | None:
        doc = await self._tokens.find_one({"refresh_hash": refresh_hash})
        return _token(doc) if doc else None

    async def mark_rotated(self, access_hash: str) -> bool:
        """Mark an issuance's refresh token used; False when it already was (a concurrent reuse)."""
        done = await self._tokens.update_one({"_id": access_hash, "rotated": False}, {"$set": {"rotated": True}})
        return bool(done.modified_count)

    # -- revocation -------------------------------------------------------------------------------

    async def _publish_now(self) -> None:
        # The poll would send it within a second anyway; relaying here makes "at once" literal.
        try:
            await self._outbox.relay_once()
        except Exception:
            log.warning("relaying a revocation failed; the outbox poll will send it", exc_info=True)
            self._outbox.kick()

    async def revoke_token(self, token: TokenRecord, whole_grant: bool, reason: str, at_ms: int) -> None:
        """Revoke one issuance, or every issuance of its grant, with the event."""

        async def write(session: AsyncClientSession) -> None:
            selector = {"grant_id": token.grant_id} if whole_grant else {"_id": token.access_hash}
            await self._tokens.update_many(selector, {"$set": {"revoked": True}}, session=session)
            t = token
            subject, event = events.authorization_revoked(t.client_id, t.user_id, [t.grant_id], reason, at_ms)
            await self._outbox.add(session, subject, event)

        await in_transaction(self._client, write)
        await self._publish_now()

    async def revoke_grant(self, client_id: str, user_id: str, grant_id: str, reason: str, at_ms: int) -> None:
        async def write(session: AsyncClientSession) -> None:
            await self._tokens.update_many({"grant_id": grant_id}, {"$set": {"revoked": True}}, session=session)
            subject, event = events.authorization_revoked(client_id, user_id, [grant_id], reason, at_ms)
            await self._outbox.add(session, subject, event)

        await in_transaction(self._client, write)
        await self._publish_now()

    async def revoke_authorization(self, user_id: str, client_id: str, at_ms: int) -> bool:
        """Forget the user's authorization of the app and revoke every token it holds for them."""

        async def write(session: AsyncClientSession) -> bool:
            deleted = await self._authorizations.delete_one(
                {"_id": _authorization_id(user_id, client_id)}, session=session
            )
            revoked = await self._tokens.update_many(
                {"user_id": user_id, "client_id": client_id, "revoked": False},
                {"$set": {"revoked": True}},
                session=session,
            )
            if not deleted.deleted_count and not revoked.modified_count:
                return False
            subject, event = events.authorization_revoked(client_id, user_id, [], "user", at_ms)
            await self._outbox.add(session, subject, event)
            subject, hook = events.webhook_event(
                f"msg_{sortable_id()}", client_id, user_id, "authorization.revoked", {"user_id": user_id}, at_ms
            )
            await self._outbox.add(session, subject, hook)
            return True

        done = await in_transaction(self._client, write)
        if done:
            await self._publish_now()
        return done

    # -- authorizations ---------------------------------------------------------------------------

    async def authorizations_of(self, user_id: str, limit: int = 200) -> list[AuthorizationRecord]:
        docs = await self._authorizations.find(
            {"user_id": user_id}, sort=[("updated_ms", DESCENDING)], limit=limit
        ).to_list()
        return [
            AuthorizationRecord(
                user_id=d["user_id"],
                client_id=d["client_id"],
                scopes=tuple(d.get("scopes", ())),
                created_ms=d.get("created_ms", 0),
                updated_ms=d.get("updated_ms", 0),
            )
            for d in docs
        ]

    async def has_authorization(self, user_id: str, client_id: str) -> bool:
        return await self._authorizations.find_one({"_id": _authorization_id(user_id, client_id)}) is not None


def _code(doc: dict[str, Any]) -> CodeRecord:
    return CodeRecord(
        code_hash=doc["_id"],
        client_id=doc["client_id"],
        user_id=doc["user_id"],
        redirect_uri=doc.get("redirect_uri", ""),
        scope=doc.get("scope", ""),
        code_challenge=doc.get("code_challenge", ""),
        code_challenge_method=doc.get("code_challenge_method", ""),
        grant_id=doc["grant_id"],
        created_ms=doc["created_ms"],
        expires_ms=doc["expires_ms"],
    )
