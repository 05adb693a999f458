"""The messaging service's domain, as one facade for api.py. No gRPC, Mongo or NATS imports here.

Where things are: rules.py (pure rules), ports.py (what the core needs from outside),
timeline.py (the read model), writer.py (group commit), commands.py (what each write request
does), sync.py (what each read answers).

Shape of the data:

- Every change to a room (message, state, membership, redaction) and every read receipt is an
  *entry* in one stream, numbered by `pos`. A writer claims the positions after the last one it
  has seen, under a unique index: if another writer (replica) took them, it catches up and
  retries. So a writer can only store k+1 after it has seen k stored: positions are contiguous
  and become visible in order, and a reader that has every entry up to W never misses one below W.
- Writes are group-committed: concurrent requests queue up and one write carries all of them
  (validation per request against the cache, proved current by the position claim; plain sends
  are one ordered insert, anything touching state one transaction). The stream entries double as
  the outbox that the relay in events.py publishes to JetStream from.
- Each replica keeps a `LogCache`: loaded rooms (state, members, receipts, recent timeline) and
  users (their memberships), advanced strictly in `pos` order from its own commits, from other
  replicas' broadcasts, or by catching up from the database. /sync and history are served from
  it, falling back to the database for what it does not hold.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from plumbing.url_guard import Network
from services.messaging import account, commands
from services.messaging.commands import Deps
from services.messaging.e2e import E2e, E2eStore
from services.messaging.event_reads import EventReads
from services.messaging.ports import Notifier, NullNotifier, Store
from services.messaging.rules import ENCRYPTION, INVITE_POLICIES, JSON, PUSH_RULES, sync_token_e2e
from services.messaging.sync import Reader, SyncResult
from services.messaging.timeline import LogCache, Relations, Typing
from services.messaging.writer import Writer

__all__ = ["Messaging", "Settings", "SyncResult"]


@dataclass(frozen=True)
class Settings:
    server_name: str = "localhost"
    invite_policy: str = "friends"
    max_batch: int = 128
    timeline_cap: int = 256
    max_cached_rooms: int = 20_000
    max_cached_users: int = 50_000
    relations_cache_seconds: float = 5.0
    push_allowed_networks: tuple[Network, ...] = ()  # pusher URLs may point there (dev: loopback)


class Messaging:
    """Composes the read model, the writer, the commands and the reads; its hooks are given here:
    `on_commit` after every commit (the stream relay's kick), `on_applied` for every entry the cache
    applies, in order (the relay keeps recent ones)."""

    def __init__(
        self,
        store: Store,
        notifier: Notifier | None = None,
        settings: Settings | None = None,
        *,
        on_commit: Callable[[], None] = lambda: None,
        on_applied: Callable[[JSON], None] | None = None,
        e2e_store: E2eStore | None = None,
    ) -> None:
        self.store = store
        self.notifier = notifier or NullNotifier()
        self.settings = settings or Settings()
        if self.settings.invite_policy not in INVITE_POLICIES:
            raise ValueError(f"invite policy must be one of {INVITE_POLICIES}")
        self.cache = LogCache(
            store,
            timeline_cap=self.settings.timeline_cap,
            max_rooms=self.settings.max_cached_rooms,
            max_users=self.settings.max_cached_users,
            on_applied=on_applied,
        )
        self.typing = Typing()
        self.relations = Relations(self.settings.relations_cache_seconds)
        self.writer = Writer(
            store, self.cache, self.relations, self.notifier, max_batch=self.settings.max_batch, on_commit=on_commit
        )
        self._recent_txns = self.writer.recent_txns
        self._deps = Deps(
            self.settings.server_name, self.settings.invite_policy, self.cache, self.typing, self.notifier, self.writer
        )
        self._reader = Reader(store, self.cache, self.typing)
        self._event_reads = EventReads(self._reader, store)
        self.e2e = E2e(e2e_store, self.settings.server_name, self.shared_users, self._wake) if e2e_store else None

    async def shared_users(self, user_id: str) -> set[str]:
        """Users joined to or invited into a room the user is joined to or invited into."""
        users: set[str] = set()
        for room_id, member in list((await self.cache.user(user_id)).rooms.items()):
            if member.membership in ("join", "invite"):
                view = await self.cache.room(room_id)
                if view is not None:
                    users.update(u for u, m in view.members.items() if m.membership in ("join", "invite"))
        return users

    async def memberships(self, user_id: str) -> dict[str, tuple[str, bool]]:
        """{room: (membership, ever_joined)} of the user (the media read rule)."""
        return {room: (m.membership, m.ever_joined) for room, m in (await self.cache.user(user_id)).rooms.items()}

    async def is_encrypted(self, room_id: str) -> bool:
        view = await self.cache.room(room_id)
        return view is not None and (ENCRYPTION, "") in view.state

    async def _wake(self, users: set[str]) -> None:
        await self.notifier.wake(dict.fromkeys(users, 0))

    async def start(self) -> None:
        await self.cache.start()
        self.writer.start()

    async def stop(self) -> None:
        await self.writer.stop()

    async def on_remote_entries(self, entries: list[JSON]) -> None:
        await self.cache.apply_committed(entries)

    # -- writes ---------------------------------------------------------------------------------

    async def create_room(self, creator: str, body: JSON, *, bypass_policy: bool = False, service: str = "") -> str:
        return await commands.perform_create_room(
            self._deps, creator, body, bypass_policy=bypass_policy, service=service
        )

    async def change_membership(
        self, sender: str, room_id: str, action: str, target: str = "", reason: str = ""
    ) -> str:
        return await commands.perform_membership(self._deps, sender, room_id, action, target, reason)

    async def service_set_membership(
        self, service: str, room_id: str, user_id: str, membership: str, reason: str = ""
    ) -> str:
        return await commands.perform_service_membership(self._deps, service, room_id, user_id, membership, reason)

    async def send_event(
        self, sender: str, device_id: str, room_id: str, event_type: str, txn_id: str, raw_content: bytes
    ) -> str:
        return await commands.perform_send(self._deps, sender, device_id, room_id, event_type, txn_id, raw_content)

    async def set_state(self, sender: str, room_id: str, event_type: str, state_key: str, raw_content: bytes) -> str:
        return await commands.perform_set_state(self._deps, sender, room_id, event_type, state_key, raw_content)

    async def redact(
        self, sender: str, device_id: str, room_id: str, event_id: str, txn_id: str, reason: str = ""
    ) -> str:
        return await commands.perform_redact(self._deps, sender, device_id, room_id, event_id, txn_id, reason)

    async def send_receipt(self, user_id: str, room_id: str, receipt_type: str, event_id: str) -> None:
        await commands.perform_receipt(self._deps, user_id, room_id, receipt_type, event_id)

    async def set_typing(self, user_id: str, room_id: str, typing: bool, timeout_ms: int) -> None:
        await commands.perform_typing(self._deps, user_id, room_id, typing, timeout_ms)

    async def on_remote_typing(self, room_id: str, user_id: str, expires_at_ms: int, serial: int) -> None:
        await commands.apply_remote_typing(self._deps, room_id, user_id, expires_at_ms, serial)

    async def expire_typing(self) -> None:
        await commands.expire_typing(self._deps)

    # -- reads ----------------------------------------------------------------------------------

    async def joined_rooms(self, user_id: str) -> list[str]:
        return await self._reader.joined_rooms(user_id)

    async def get_members(self, user_id: str, room_id: str) -> JSON:
        return await self._reader.get_members(user_id, room_id)

    async def get_state(
        self, user_id: str, room_id: str, event_type: str = "", state_key: str = "", single: bool = False
    ) -> Any:
        return await self._reader.get_state(user_id, room_id, event_type, state_key, single)

    async def messages(
        self, user_id: str, device_id: str, room_id: str, from_token: str, to_token: str, direction: str, limit: int
    ) -> JSON:
        return await self._reader.messages(user_id, device_id, room_id, from_token, to_token, direction, limit)

    async def get_event(self, user_id: str, device_id: str, room_id: str, event_id: str) -> JSON:
        return await self._event_reads.event(user_id, device_id, room_id, event_id)

    async def event_context(
        self, user_id: str, device_id: str, room_id: str, event_id: str, limit: int, lazy_members: bool
    ) -> JSON:
        return await self._event_reads.context(user_id, device_id, room_id, event_id, limit, lazy_members)

    async def event_relations(
        self,
        user_id: str,
        device_id: str,
        room_id: str,
        event_id: str,
        rel_type: str = "",
        event_type: str = "",
        from_token: str = "",
        to_token: str = "",
        direction: str = "b",
        limit: int = 50,
    ) -> JSON:
        return await self._event_reads.relations(
            user_id, device_id, room_id, event_id, rel_type, event_type, from_token, to_token, direction, limit
        )

    async def profile_changed(self, user_id: str, displayname: str, avatar_url: str) -> int:
        return await commands.perform_profile_update(self._deps, user_id, displayname, avatar_url)

    # -- per-user data (account.py) ---------------------------------------------------------------

    async def push_rules(self, user_id: str) -> JSON:
        return await account.get_account_data(self._deps, user_id, "", PUSH_RULES)

    async def change_push_rule(
        self, user_id: str, change: str, scope: str, kind: str, rule_id: str, body: JSON, before: str, after: str
    ) -> None:
        await account.perform_push_rule(self._deps, user_id, change, scope, kind, rule_id, body, before, after)

    async def set_account_data(self, user_id: str, room_id: str, data_type: str, content: Any) -> None:
        await account.perform_set_account_data(self._deps, user_id, room_id, data_type, content)

    async def get_account_data(self, user_id: str, room_id: str, data_type: str) -> JSON:
        return await account.get_account_data(self._deps, user_id, room_id, data_type)

    async def set_fully_read(self, user_id: str, room_id: str, event_id: str) -> None:
        await account.perform_fully_read(self._deps, user_id, room_id, event_id)

    async def pushers(self, user_id: str) -> JSON:
        return await account.get_pushers(self.store, user_id)

    async def set_pusher(self, user_id: str, body: JSON, device_id: str = "") -> None:
        await account.set_pusher(self.store, user_id, body, device_id, self.settings.push_allowed_networks)

    async def sync(
        self,
        user_id: str,
        device_id: str,
        since: str,
        timeline_limit: int = 0,
        full_state: bool = False,
        min_position: int = 0,
    ) -> SyncResult:
        result = await self._reader.sync(user_id, device_id, since, timeline_limit, full_state, min_position)
        if self.e2e is None:
            return result
        part, seq, news = await self.e2e.sync_part(user_id, device_id, sync_token_e2e(since), not since or full_state)
        result.body.update(part)
        next_batch = f"{result.next_batch}_{seq}"
        result.body["next_batch"] = next_batch
        return SyncResult(result.body, next_batch, result.has_changes or news)
