"""Repository over the auth service's own collections; its indexes are declared here.

Times are stored as epoch seconds (floats) for the rules, plus a `purge_at` datetime on
short-lived documents so a TTL index cleans them up.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any, TypeVar

from pymongo import ASCENDING, AsyncMongoClient, IndexModel, ReturnDocument
from pymongo.asynchronous.client_session import AsyncClientSession
from pymongo.asynchronous.database import AsyncDatabase
from pymongo.errors import DuplicateKeyError

from plumbing.mongo import IndexPlan, in_transaction, upsert_by_id
from plumbing.outbox import Outbox
from services.auth import events
from services.auth.model import (
    AccessToken,
    Device,
    DomainEvent,
    ExternalAccount,
    OidcState,
    PhoneSession,
    RefreshToken,
    Threepid,
    Tx,
    User,
)

T = TypeVar("T")

USERS = "users"
DEVICES = "devices"
ACCESS_TOKENS = "access_tokens"
REFRESH_TOKENS = "refresh_tokens"
LOGIN_TOKENS = "login_tokens"
THREEPIDS = "threepids"
PHONE_SESSIONS = "phone_sessions"
SEND_SLOTS = "sms_send_slots"
COUNTERS = "rate_counters"
OIDC_STATES = "oidc_states"
EXTERNAL_ACCOUNTS = "external_accounts"


def _purge_at(epoch: float) -> datetime:
    return datetime.fromtimestamp(epoch, UTC)


def _session(tx: Tx | None) -> AsyncClientSession | None:
    return tx  # type: ignore[return-value]  # the core's opaque Tx is our client session


def _without_id(doc: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in doc.items() if k not in ("_id", "purge_at")}


class AuthStore:
    def __init__(self, client: AsyncMongoClient, db: AsyncDatabase, outbox: Outbox | None) -> None:
        self._client = client
        self._db = db
        self._outbox = outbox
        self.users = db[USERS]
        self.devices = db[DEVICES]
        self.access_tokens = db[ACCESS_TOKENS]
        self.refresh_tokens = db[REFRESH_TOKENS]
        self.login_tokens = db[LOGIN_TOKENS]
        self.threepids = db[THREEPIDS]
        self.phone_sessions = db[PHONE_SESSIONS]
        self.send_slots = db[SEND_SLOTS]
        self.counters = db[COUNTERS]
        self.oidc_states = db[OIDC_STATES]
        self.external_accounts = db[EXTERNAL_ACCOUNTS]

    def indexes(self) -> IndexPlan:
        ttl = IndexModel([("purge_at", ASCENDING)], expireAfterSeconds=0)
        return {
            DEVICES: [IndexModel([("user_id", ASCENDING), ("device_id", ASCENDING)], unique=True)],
            ACCESS_TOKENS: [
                IndexModel([("token_id", ASCENDING)], unique=True),
                IndexModel([("user_id", ASCENDING), ("device_id", ASCENDING)]),
            ],
            REFRESH_TOKENS: [IndexModel([("user_id", ASCENDING), ("device_id", ASCENDING)]), ttl],
            LOGIN_TOKENS: [ttl],
            THREEPIDS: [IndexModel([("user_id", ASCENDING)])],
            PHONE_SESSIONS: [IndexModel([("client_secret_hash", ASCENDING), ("msisdn", ASCENDING)]), ttl],
            SEND_SLOTS: [ttl],
            COUNTERS: [ttl],
            OIDC_STATES: [ttl],
            EXTERNAL_ACCOUNTS: [IndexModel([("user_id", ASCENDING), ("provider_id", ASCENDING)], unique=True)],
        }

    # --- transactions and events -----------------------------------------------------------------

    async def atomically(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        emitted: list[bool] = []

        async def run(session: AsyncClientSession) -> T:
            emitted.clear()
            return await work(_EmitTracking(session, emitted))

        result = await in_transaction(self._client, run)
        if emitted and self._outbox is not None:
            self._outbox.kick()
        return result

    async def emit(self, tx: Tx, event: DomainEvent) -> None:
        if self._outbox is None:
            return
        subject, message = events.to_message(event)
        tracker: _EmitTracking = tx  # type: ignore[assignment]
        await self._outbox.add(tracker.session, subject, message)
        tracker.emitted.append(True)

    # --- users -------------------------------------------------------------------------------------

    async def get_user(self, user_id: str, tx: Tx | None = None) -> User | None:
        doc = await self.users.find_one({"_id": user_id}, session=_s(tx))
        return User(**_without_id(doc)) if doc else None

    async def insert_user(self, user: User, tx: Tx) -> bool:
        try:
            await self.users.insert_one({"_id": user.user_id, **asdict(user)}, session=_s(tx))
        except DuplicateKeyError:
            return False
        return True

    async def update_user(self, user_id: str, fields: dict[str, Any], tx: Tx | None = None) -> None:
        await self.users.update_one({"_id": user_id}, {"$set": fields}, session=_s(tx))

    # --- devices and tokens --------------------------------------------------------------------------

    async def upsert_device(self, device: Device, tx: Tx) -> None:
        await self.devices.replace_one(
            {"_id": f"{device.user_id}|{device.device_id}"},
            asdict(device),
            upsert=True,
            session=_s(tx),
        )

    async def list_devices(self, user_id: str) -> list[Device]:
        docs = await self.devices.find({"user_id": user_id}, sort=[("created_at", ASCENDING)]).to_list()
        return [Device(**_without_id(d)) for d in docs]

    async def get_device(self, user_id: str, device_id: str) -> Device | None:
        doc = await self.devices.find_one({"_id": f"{user_id}|{device_id}"})
        return Device(**_without_id(doc)) if doc else None

    async def rename_device(self, user_id: str, device_id: str, display_name: str) -> bool:
        result = await self.devices.update_one(
            {"_id": f"{user_id}|{device_id}"}, {"$set": {"display_name": display_name}}
        )
        return result.matched_count == 1

    async def delete_devices(self, user_id: str, device_ids: Sequence[str] | None, tx: Tx) -> None:
        query: dict[str, Any] = {"user_id": user_id}
        if device_ids is not None:
            query["device_id"] = {"$in": list(device_ids)}
        await self.devices.delete_many(query, session=_s(tx))

    async def insert_access_token(self, token: AccessToken, tx: Tx) -> None:
        doc = asdict(token)
        doc["_id"] = doc.pop("token_hash")
        await self.access_tokens.insert_one(doc, session=_s(tx))

    async def find_access_token(self, token_hash: str) -> AccessToken | None:
        doc = await self.access_tokens.find_one({"_id": token_hash})
        if doc is None:
            return None
        return AccessToken(token_hash=doc["_id"], **_without_id(doc))

    async def delete_access_tokens(
        self,
        user_id: str,
        *,
        device_ids: Sequence[str] | None = None,
        except_device: str | None = None,
        token_ids: Sequence[str] | None = None,
        tx: Tx,
    ) -> list[AccessToken]:
        query = _token_query(user_id, device_ids, except_device)
        if token_ids is not None:
            query["token_id"] = {"$in": list(token_ids)}
        docs = await self.access_tokens.find(query, session=_s(tx)).to_list()
        if docs:
            await self.access_tokens.delete_many({"_id": {"$in": [d["_id"] for d in docs]}}, session=_s(tx))
        return [AccessToken(token_hash=d["_id"], **_without_id(d)) for d in docs]

    async def insert_refresh_token(self, token: RefreshToken, tx: Tx) -> None:
        doc = asdict(token)
        doc["_id"] = doc.pop("token_hash")
        doc["purge_at"] = _purge_at(token.expires_at)
        await self.refresh_tokens.insert_one(doc, session=_s(tx))

    async def use_refresh_token(self, token_hash: str, tx: Tx) -> RefreshToken | None:
        doc = await self.refresh_tokens.find_one_and_update(
            {"_id": token_hash}, {"$set": {"used": True}}, return_document=ReturnDocument.BEFORE, session=_s(tx)
        )
        if doc is None:
            return None
        return RefreshToken(token_hash=doc["_id"], **_without_id(doc))

    async def delete_refresh_tokens(
        self, user_id: str, *, device_ids: Sequence[str] | None = None, except_device: str | None = None, tx: Tx
    ) -> None:
        await self.refresh_tokens.delete_many(_token_query(user_id, device_ids, except_device), session=_s(tx))

    async def insert_login_token(self, token_hash: str, user_id: str, expires_at: float) -> None:
        await self.login_tokens.insert_one(
            {"_id": token_hash, "user_id": user_id, "expires_at": expires_at, "purge_at": _purge_at(expires_at)}
        )

    async def take_login_token(self, token_hash: str) -> tuple[str, float] | None:
        doc = await self.login_tokens.find_one_and_delete({"_id": token_hash})
        return (doc["user_id"], doc["expires_at"]) if doc else None

    # --- threepids and phone sessions ---------------------------------------------------------------

    async def insert_threepid(self, threepid: Threepid, tx: Tx) -> str | None:
        key = f"{threepid.medium}|{threepid.address}"
        existing = await self.threepids.find_one({"_id": key}, session=_s(tx))
        if existing is not None:
            return existing["user_id"]
        # The _id is the number itself, so two accounts can never hold it even under a race.
        try:
            await self.threepids.insert_one({"_id": key, **asdict(threepid)}, session=_s(tx))
        except DuplicateKeyError:
            return "(another account)"
        return None

    async def threepid_owner(self, medium: str, address: str) -> str | None:
        doc = await self.threepids.find_one({"_id": f"{medium}|{address}"})
        return doc["user_id"] if doc else None

    async def list_threepids(self, user_id: str) -> list[Threepid]:
        docs = await self.threepids.find({"user_id": user_id}, sort=[("added_at", ASCENDING)]).to_list()
        return [Threepid(**_without_id(d)) for d in docs]

    async def delete_threepids(self, user_id: str, addresses: Sequence[str] | None, tx: Tx) -> list[Threepid]:
        query: dict[str, Any] = {"user_id": user_id}
        if addresses is not None:
            query["address"] = {"$in": list(addresses)}
        docs = await self.threepids.find(query, session=_s(tx)).to_list()
        if docs:
            await self.threepids.delete_many({"_id": {"$in": [d["_id"] for d in docs]}}, session=_s(tx))
        return [Threepid(**_without_id(d)) for d in docs]

    async def insert_phone_session(self, session: PhoneSession) -> None:
        doc = asdict(session)
        doc["_id"] = doc.pop("sid")
        doc["purge_at"] = _purge_at(session.created_at + 86400)
        await self.phone_sessions.insert_one(doc)

    def _phone_session(self, doc: dict[str, Any] | None) -> PhoneSession | None:
        return PhoneSession(sid=doc["_id"], **_without_id(doc)) if doc else None

    async def find_phone_session(self, sid: str) -> PhoneSession | None:
        return self._phone_session(await self.phone_sessions.find_one({"_id": sid}))

    async def find_phone_session_for(self, client_secret_hash: str, msisdn: str) -> PhoneSession | None:
        doc = await self.phone_sessions.find_one(
            {"client_secret_hash": client_secret_hash, "msisdn": msisdn}, sort=[("created_at", -1)]
        )
        return self._phone_session(doc)

    async def count_phone_attempt(self, sid: str, max_attempts: int) -> int | None:
        doc = await self.phone_sessions.find_one_and_update(
            {"_id": sid, "attempts": {"$lt": max_attempts}},
            {"$inc": {"attempts": 1}},
            return_document=ReturnDocument.AFTER,
        )
        return int(doc["attempts"]) if doc else None

    async def mark_phone_session_validated(self, sid: str, at: float) -> None:
        await self.phone_sessions.update_one({"_id": sid}, {"$set": {"validated_at": at}})

    async def delete_phone_session(self, sid: str, tx: Tx | None = None) -> None:
        await self.phone_sessions.delete_one({"_id": sid}, session=_s(tx))

    async def claim_send_slot(self, msisdn: str, now: float, wait_seconds: float) -> float:
        try:
            # Matches only when the last send is old enough; otherwise the upsert collides on _id.
            await self.send_slots.update_one(
                {"_id": msisdn, "sent_at": {"$lte": now - wait_seconds}},
                {"$set": {"sent_at": now, "purge_at": _purge_at(now + wait_seconds + 60)}},
                upsert=True,
            )
        except DuplicateKeyError:
            doc = await self.send_slots.find_one({"_id": msisdn})
            return max(0.001, (doc["sent_at"] + wait_seconds - now) if doc else wait_seconds)
        return 0.0

    # --- rate-limit counters ----------------------------------------------------------------------

    @staticmethod
    def _counter_id(key: str, window_seconds: int, now: float) -> tuple[str, float]:
        window = int(now // window_seconds)
        return f"{key}|{window_seconds}|{window}", (window + 1) * window_seconds

    async def hit_counter(self, key: str, window_seconds: int, now: float) -> int:
        counter_id, window_end = self._counter_id(key, window_seconds, now)
        doc = await upsert_by_id(
            self.counters, counter_id, {"$inc": {"count": 1}, "$setOnInsert": {"purge_at": _purge_at(window_end + 60)}}
        )
        return int(doc["count"])

    async def read_counter(self, key: str, window_seconds: int, now: float) -> int:
        counter_id, _ = self._counter_id(key, window_seconds, now)
        doc = await self.counters.find_one({"_id": counter_id})
        return int(doc["count"]) if doc else 0

    # --- OIDC ----------------------------------------------------------------------------------------

    async def insert_oidc_state(self, state: OidcState) -> None:
        doc = asdict(state)
        doc["_id"] = doc.pop("state_hash")
        doc["purge_at"] = _purge_at(state.expires_at + 60)
        await self.oidc_states.insert_one(doc)

    async def take_oidc_state(self, state_hash: str) -> OidcState | None:
        doc = await self.oidc_states.find_one_and_delete({"_id": state_hash})
        return OidcState(state_hash=doc["_id"], **_without_id(doc)) if doc else None

    async def insert_external_account(self, account: ExternalAccount) -> str | None:
        key = f"{account.provider_id}|{account.subject}"
        existing = await self.external_accounts.find_one({"_id": key})
        if existing is not None:
            return existing["user_id"]
        try:
            await self.external_accounts.insert_one({"_id": key, **asdict(account)})
        except DuplicateKeyError:
            # The user already links another account of this provider, or a racing link won.
            doc = await self.external_accounts.find_one({"_id": key})
            return doc["user_id"] if doc else account.user_id + "#other"
        return None

    async def find_external_account(self, provider_id: str, subject: str) -> ExternalAccount | None:
        doc = await self.external_accounts.find_one({"_id": f"{provider_id}|{subject}"})
        return ExternalAccount(**_without_id(doc)) if doc else None

    async def list_external_accounts(self, user_id: str) -> list[ExternalAccount]:
        docs = await self.external_accounts.find({"user_id": user_id}).to_list()
        return [ExternalAccount(**_without_id(d)) for d in docs]

    async def delete_external_accounts(self, user_id: str, provider_id: str | None, tx: Tx | None = None) -> int:
        query: dict[str, Any] = {"user_id": user_id}
        if provider_id is not None:
            query["provider_id"] = provider_id
        result = await self.external_accounts.delete_many(query, session=_s(tx))
        return result.deleted_count


class _EmitTracking:
    """The Tx handed to the core: the Mongo session, plus whether an event was written."""

    def __init__(self, session: AsyncClientSession, emitted: list[bool]) -> None:
        self.session = session
        self.emitted = emitted


def _s(tx: Tx | None) -> AsyncClientSession | None:
    if tx is None:
        return None
    return tx.session if isinstance(tx, _EmitTracking) else _session(tx)


def _token_query(user_id: str, device_ids: Sequence[str] | None, except_device: str | None) -> dict[str, Any]:
    query: dict[str, Any] = {"user_id": user_id}
    if device_ids is not None:
        query["device_id"] = {"$in": list(device_ids)}
    elif except_device is not None:
        query["device_id"] = {"$ne": except_device}
    return query
