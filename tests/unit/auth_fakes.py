"""In-memory fakes for the auth core's ports (store, SMS, clock), for unit tests."""

from __future__ import annotations

import copy
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, TypeVar

from services.auth.core import AuthCore
from services.auth.model import (
    AccessToken,
    Argon2Params,
    AuthSettings,
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
from services.auth.rules import PasswordHasher

T = TypeVar("T")


class FakeClock:
    def __init__(self, now: float = 1_800_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class FakeSms:
    def __init__(self) -> None:
        self.sent: list[tuple[str, str]] = []

    async def send(self, msisdn: str, text: str) -> None:
        self.sent.append((msisdn, text))

    def last_code(self, msisdn: str) -> str:
        text = [t for to, t in self.sent if to == msisdn][-1]
        return text.split("code is ")[1][:6]


class FakeStore:
    """Dicts with the same semantics as services/auth/store.py; a failed unit of work rolls back."""

    def __init__(self) -> None:
        self.users: dict[str, User] = {}
        self.devices: dict[tuple[str, str], Device] = {}
        self.access: dict[str, AccessToken] = {}
        self.refresh: dict[str, RefreshToken] = {}
        self.login_tokens: dict[str, tuple[str, float]] = {}
        self.threepids: dict[str, Threepid] = {}
        self.phone: dict[str, PhoneSession] = {}
        self.slots: dict[str, float] = {}
        self.counters: dict[str, int] = {}
        self.states: dict[str, OidcState] = {}
        self.external: dict[str, ExternalAccount] = {}
        self.events: list[DomainEvent] = []

    async def atomically(self, work: Callable[[Tx], Awaitable[T]]) -> T:
        snapshot = copy.deepcopy(self.__dict__)
        try:
            return await work(object())  # type: ignore[arg-type]
        except BaseException:
            self.__dict__.update(snapshot)
            raise

    async def emit(self, tx: Tx, event: DomainEvent) -> None:
        self.events.append(event)

    async def get_user(self, user_id: str, tx: Tx | None = None) -> User | None:
        user = self.users.get(user_id)
        return replace(user) if user else None

    async def insert_user(self, user: User, tx: Tx) -> bool:
        if user.user_id in self.users:
            return False
        self.users[user.user_id] = replace(user)
        return True

    async def update_user(self, user_id: str, fields: dict[str, Any], tx: Tx | None = None) -> None:
        if user_id in self.users:
            self.users[user_id] = replace(self.users[user_id], **fields)

    async def upsert_device(self, device: Device, tx: Tx) -> None:
        self.devices[(device.user_id, device.device_id)] = replace(device)

    async def list_devices(self, user_id: str) -> list[Device]:
        return [d for (u, _), d in self.devices.items() if u == user_id]

    async def get_device(self, user_id: str, device_id: str) -> Device | None:
        return self.devices.get((user_id, device_id))

    async def rename_device(self, user_id: str, device_id: str, display_name: str) -> bool:
        device = self.devices.get((user_id, device_id))
        if device is None:
            return False
        device.display_name = display_name
        return True

    async def delete_devices(self, user_id: str, device_ids: Sequence[str] | None, tx: Tx) -> None:
        for key in [k for k in self.devices if k[0] == user_id and (device_ids is None or k[1] in device_ids)]:
            del self.devices[key]

    async def insert_access_token(self, token: AccessToken, tx: Tx) -> None:
        self.access[token.token_hash] = token

    async def find_access_token(self, token_hash: str) -> AccessToken | None:
        return self.access.get(token_hash)

    @staticmethod
    def _matches(record: Any, user_id: str, device_ids: Sequence[str] | None, except_device: str | None) -> bool:
        if record.user_id != user_id:
            return False
        if device_ids is not None:
            return record.device_id in device_ids
        return except_device is None or record.device_id != except_device

    async def delete_access_tokens(
        self,
        user_id: str,
        *,
        device_ids: Sequence[str] | None = None,
        except_device: str | None = None,
        token_ids: Sequence[str] | None = None,
        tx: Tx,
    ) -> list[AccessToken]:
        removed = [
            t
            for t in self.access.values()
            if self._matches(t, user_id, device_ids, except_device) and (token_ids is None or t.token_id in token_ids)
        ]
        for token in removed:
            del self.access[token.token_hash]
        return removed

    async def insert_refresh_token(self, token: RefreshToken, tx: Tx) -> None:
        self.refresh[token.token_hash] = token

    async def use_refresh_token(self, token_hash: str, tx: Tx) -> RefreshToken | None:
        token = self.refresh.get(token_hash)
        if token is None:
            return None
        before = replace(token)
        token.used = True
        return before

    async def delete_refresh_tokens(
        self, user_id: str, *, device_ids: Sequence[str] | None = None, except_device: str | None = None, tx: Tx
    ) -> None:
        for key in [k for k, t in self.refresh.items() if self._matches(t, user_id, device_ids, except_device)]:
            del self.refresh[key]

    async def insert_login_token(self, token_hash: str, user_id: str, expires_at: float) -> None:
        self.login_tokens[token_hash] = (user_id, expires_at)

    async def take_login_token(self, token_hash: str) -> tuple[str, float] | None:
        return self.login_tokens.pop(token_hash, None)

    async def insert_threepid(self, threepid: Threepid, tx: Tx) -> str | None:
        existing = self.threepids.get(threepid.address)
        if existing is not None:
            return existing.user_id
        self.threepids[threepid.address] = threepid
        return None

    async def threepid_owner(self, medium: str, address: str) -> str | None:
        threepid = self.threepids.get(address)
        return threepid.user_id if threepid else None

    async def list_threepids(self, user_id: str) -> list[Threepid]:
        return [t for t in self.threepids.values() if t.user_id == user_id]

    async def delete_threepids(self, user_id: str, addresses: Sequence[str] | None, tx: Tx) -> list[Threepid]:
        removed = [
            t for t in self.threepids.values() if t.user_id == user_id and (addresses is None or t.address in addresses)
        ]
        for threepid in removed:
            del self.threepids[threepid.address]
        return removed

    async def insert_phone_session(self, session: PhoneSession) -> None:
        self.phone[session.sid] = session

    async def find_phone_session(self, sid: str) -> PhoneSession | None:
        session = self.phone.get(sid)
        return replace(session) if session else None

    async def find_phone_session_for(self, client_secret_hash: str, msisdn: str) -> PhoneSession | None:
        found = [s for s in self.phone.values() if s.client_secret_hash == client_secret_hash and s.msisdn == msisdn]
        return replace(max(found, key=lambda s: s.created_at)) if found else None

    async def count_phone_attempt(self, sid: str, max_attempts: int) -> int | None:
        session = self.phone.get(sid)
        if session is None or session.attempts >= max_attempts:
            return None
        session.attempts += 1
        return session.attempts

    async def mark_phone_session_validated(self, sid: str, at: float) -> None:
        self.phone[sid].validated_at = at

    async def delete_phone_session(self, sid: str, tx: Tx | None = None) -> None:
        self.phone.pop(sid, None)

    async def claim_send_slot(self, msisdn: str, now: float, wait_seconds: float) -> float:
        last = self.slots.get(msisdn)
        if last is not None and last > now - wait_seconds:
            return last + wait_seconds - now
        self.slots[msisdn] = now
        return 0.0

    async def hit_counter(self, key: str, window_seconds: int, now: float) -> int:
        counter = f"{key}|{window_seconds}|{int(now // window_seconds)}"
        self.counters[counter] = self.counters.get(counter, 0) + 1
        return self.counters[counter]

    async def read_counter(self, key: str, window_seconds: int, now: float) -> int:
        return self.counters.get(f"{key}|{window_seconds}|{int(now // window_seconds)}", 0)

    async def insert_oidc_state(self, state: OidcState) -> None:
        self.states[state.state_hash] = state

    async def take_oidc_state(self, state_hash: str) -> OidcState | None:
        return self.states.pop(state_hash, None)

    async def insert_external_account(self, account: ExternalAccount) -> str | None:
        key = f"{account.provider_id}|{account.subject}"
        if key in self.external:
            return self.external[key].user_id
        self.external[key] = account
        return None

    async def find_external_account(self, provider_id: str, subject: str) -> ExternalAccount | None:
        return self.external.get(f"{provider_id}|{subject}")

    async def list_external_accounts(self, user_id: str) -> list[ExternalAccount]:
        return [a for a in self.external.values() if a.user_id == user_id]

    async def delete_external_accounts(self, user_id: str, provider_id: str | None, tx: Tx | None = None) -> int:
        keys = [
            k
            for k, a in self.external.items()
            if a.user_id == user_id and (provider_id is None or a.provider_id == provider_id)
        ]
        for key in keys:
            del self.external[key]
        return len(keys)


# Cheap argon2 parameters: unit tests check the rules, not the cost.
FAST_ARGON2 = Argon2Params(time_cost=1, memory_cost_kib=8, parallelism=1)


def make_core(**settings: Any) -> tuple[AuthCore, FakeStore, FakeSms, FakeClock]:
    store, sms, clock = FakeStore(), FakeSms(), FakeClock()
    config = AuthSettings(server_name="laiwang.test", argon2=FAST_ARGON2, **settings)
    core = AuthCore(store, config, sms=sms, clock=clock, hasher=PasswordHasher(FAST_ARGON2))
    return core, store, sms, clock
