"""Repository over the open_platform service's own collections; its indexes are declared here.

Collections:
  apps    one document per registered app: settings, the client secret's hash (never the secret),
          webhook signing secrets (current first; they must be kept to sign), suspension
  owners  `<user>`: how many apps the user owns, so that the per-owner cap holds under concurrency
          (concurrent creations conflict on this one document and the transaction retries)

Every write commits with its AppChanged event in the outbox.
"""

from __future__ import annotations

import logging
from typing import Any

from pymongo import ASCENDING, DESCENDING, IndexModel
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase

from plumbing.mongo import IndexPlan, in_transaction, upsert_by_id
from plumbing.outbox import Outbox
from services.open_platform import events
from services.open_platform.core import App, AppSettings, WebhookSecret

log = logging.getLogger(__name__)


class _OverCap(Exception):
    pass


def _document(app: App) -> dict[str, Any]:
    s = app.settings
    return {
        "_id": app.client_id,
        "owner": app.owner,
        "settings": {
            "name": s.name,
            "description": s.description,
            "icon_url": s.icon_url,
            "homepage_url": s.homepage_url,
            "redirect_uris": list(s.redirect_uris),
            "webhook_url": s.webhook_url,
            "scopes": list(s.scopes),
        },
        "public_client": app.public_client,
        "suspended": app.suspended,
        "created_ms": app.created_ms,
        "updated_ms": app.updated_ms,
        "client_secret_hash": app.client_secret_hash,
        "webhook_secrets": [{"secret": w.secret, "expires_at_ms": w.expires_at_ms} for w in app.webhook_secrets],
        "webhook_rotated_ms": app.webhook_rotated_ms,
        "version": app.version,
    }


def _app(doc: dict[str, Any]) -> App:
    s = doc["settings"]
    return App(
        client_id=doc["_id"],
        owner=doc["owner"],
        settings=AppSettings(
            name=s["name"],
            description=s.get("description", ""),
            icon_url=s.get("icon_url", ""),
            homepage_url=s.get("homepage_url", ""),
            redirect_uris=tuple(s.get("redirect_uris", ())),
            webhook_url=s.get("webhook_url", ""),
            scopes=tuple(s.get("scopes", ())),
        ),
        public_client=doc.get("public_client", False),
        suspended=doc.get("suspended", False),
        created_ms=doc["created_ms"],
        updated_ms=doc["updated_ms"],
        client_secret_hash=doc.get("client_secret_hash", ""),
        webhook_secrets=tuple(WebhookSecret(w["secret"], w.get("expires_at_ms", 0)) for w in doc["webhook_secrets"]),
        webhook_rotated_ms=doc.get("webhook_rotated_ms", 0),
        version=doc.get("version", 1),
    )


class MongoAppStore:
    def __init__(self, db: AsyncDatabase, outbox: Outbox) -> None:
        self._client = db.client
        self._outbox = outbox
        self._apps = db["apps"]
        self._owners = db["owners"]

    @staticmethod
    def indexes() -> IndexPlan:
        return {"apps": [IndexModel([("owner", ASCENDING), ("created_ms", DESCENDING)])]}

    async def _emit(self, session: AsyncClientSession, app: App, change: str, at_ms: int) -> None:
        subject, event = events.app_changed(app.client_id, app.owner, change, at_ms)
        await self._outbox.add(session, subject, event)

    async def _publish_now(self) -> None:
        # Gateways drop the app's cached tokens on this event: relaying it before the call returns
        # makes a suspension or deletion in force everywhere by the time the owner has the answer.
        try:
            await self._outbox.relay_once()
        except Exception:
            log.warning("relaying an app change failed; the outbox poll will send it", exc_info=True)
            self._outbox.kick()

    async def insert(self, app: App, max_per_owner: int) -> bool:
        async def write(session: AsyncClientSession) -> None:
            owner = await upsert_by_id(self._owners, app.owner, {"$inc": {"apps": 1}}, session=session)
            if owner["apps"] > max_per_owner:
                raise _OverCap
            await self._apps.insert_one(_document(app), session=session)
            await self._emit(session, app, "registered", app.created_ms)

        try:
            await in_transaction(self._client, write)
        except _OverCap:
            return False
        self._outbox.kick()
        return True

    async def get(self, client_id: str) -> App | None:
        doc = await self._apps.find_one({"_id": client_id})
        return _app(doc) if doc else None

    async def list_by_owner(self, owner: str) -> list[App]:
        docs = await self._apps.find({"owner": owner}, sort=[("created_ms", DESCENDING), ("_id", DESCENDING)]).to_list()
        return [_app(doc) for doc in docs]

    async def replace(self, app: App, change: str) -> bool:
        async def write(session: AsyncClientSession) -> bool:
            done = await self._apps.replace_one(
                {"_id": app.client_id, "version": app.version - 1}, _document(app), session=session
            )
            if done.matched_count:
                await self._emit(session, app, change, app.updated_ms)
            return bool(done.matched_count)

        replaced = await in_transaction(self._client, write)
        if replaced and change in ("suspended", "resumed"):
            await self._publish_now()
        else:
            self._outbox.kick()
        return replaced

    async def delete(self, app: App) -> None:
        async def write(session: AsyncClientSession) -> None:
            deleted = await self._apps.delete_one({"_id": app.client_id}, session=session)
            if deleted.deleted_count:
                await self._owners.update_one({"_id": app.owner}, {"$inc": {"apps": -1}}, session=session)
                await self._emit(session, app, "deleted", app.updated_ms)

        await in_transaction(self._client, write)
        await self._publish_now()
