"""End-to-end encryption support: the rules for device keys, one-time and fallback keys, to-device
messages and server-side key backup. No gRPC, Mongo or NATS here (the repository is `E2eStore`,
implemented in e2e_store.py).

The server only stores what clients give it: signed public keys, ciphertext to-device payloads
and encrypted backup blobs. It never needs (or sees) a plaintext or a private key, so it checks
shapes and bounds, not cryptography.

Ordering: key changes and to-device messages share one sequence (`e2e` counter), allocated in
the same transaction as the write, so a reader that sees the counter at N sees every write <= N.
The third part of a sync token is that sequence.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from plumbing.domain_errors import DomainError, Errcode, forbidden, invalid, not_found
from services.messaging.rules import JSON, check_canonical, valid_user_id

MAX_KEYS_PER_UPLOAD = 200
MAX_QUERY_USERS = 1000
MAX_CLAIM_DEVICES = 1000
MAX_TO_DEVICE_MESSAGES = 1000
TO_DEVICE_PER_SYNC = 100
MAX_ID = 255
MAX_BACKUP_SESSIONS = 5000


def _obj(value: Any, where: str) -> JSON:
    if not isinstance(value, dict):
        raise invalid(f"{where} must be an object", "M_BAD_JSON")
    return value


def _id(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value or len(value.encode()) > MAX_ID:
        raise invalid(f"{where} must be a non-empty string of at most {MAX_ID} bytes")
    return value


def _key_id(key_id: str, where: str) -> str:
    """`algorithm:id`, as one-time and fallback keys are named."""
    _id(key_id, where)
    algorithm, sep, rest = key_id.partition(":")
    if not sep or not algorithm or not rest:
        raise invalid(f"{where}: key ids are algorithm:id")
    return algorithm


class E2eStore(Protocol):
    async def head(self) -> int: ...
    async def device_keys(self, user_id: str, device_id: str) -> JSON | None: ...
    async def put_device_keys(self, user_id: str, device_id: str, keys: JSON) -> None: ...
    async def add_one_time_keys(self, user_id: str, device_id: str, keys: dict[str, Any]) -> None: ...
    async def put_fallback_keys(self, user_id: str, device_id: str, keys: dict[str, Any]) -> None: ...
    async def key_counts(self, user_id: str, device_id: str) -> tuple[dict[str, int], list[str]]: ...
    async def devices_of(self, user_ids: list[str]) -> list[JSON]: ...
    async def cross_signing(self, user_ids: list[str]) -> list[JSON]: ...
    async def put_cross_signing(self, user_id: str, keys: JSON) -> bool: ...
    async def claim(self, user_id: str, device_id: str, algorithm: str) -> tuple[str, Any] | None: ...
    async def changed_since(self, since: int, upto: int) -> list[str]: ...
    async def send_to_device(self, messages: list[JSON]) -> None: ...
    async def take_to_device(self, user_id: str, device_id: str, since: int, upto: int, limit: int) -> list[JSON]: ...
    async def backup(self, user_id: str, version: str = "") -> JSON | None: ...
    async def create_backup(self, user_id: str, algorithm: str, auth_data: JSON) -> str: ...
    async def update_backup(self, user_id: str, version: str, auth_data: JSON) -> None: ...
    async def delete_backup(self, user_id: str, version: str) -> None: ...
    async def backup_keys(self, user_id: str, version: str, room_id: str, session_id: str) -> list[JSON]: ...
    async def put_backup_keys(self, user_id: str, version: str, keys: list[tuple[str, str, JSON]]) -> None: ...
    async def delete_backup_keys(self, user_id: str, version: str, room_id: str, session_id: str) -> None: ...


SharedUsers = Callable[[str], Awaitable[set[str]]]
Wake = Callable[[set[str]], Awaitable[None]]


class E2e:
    """`shared_users(u)`: users sharing a joined or invited room with u (from the room read model);
    `wake(users)`: wake their waiting /sync requests."""

    def __init__(self, store: E2eStore, server_name: str, shared_users: SharedUsers, wake: Wake) -> None:
        self.store = store
        self.server_name = server_name
        self.shared_users = shared_users
        self.wake = wake

    def _local(self, user_id: str) -> bool:
        return valid_user_id(user_id) and user_id.endswith(":" + self.server_name)

    # -- keys/upload ------------------------------------------------------------------------------

    async def upload(self, user_id: str, device_id: str, body: JSON) -> JSON:
        if not device_id:
            raise invalid("this access token has no device")
        check_canonical(body, "body")
        device_keys = body.get("device_keys")
        one_time = _obj(body.get("one_time_keys", {}), "one_time_keys")
        fallback = _obj(body.get("fallback_keys", body.get("org.matrix.msc2732.fallback_keys", {})), "fallback_keys")
        if len(one_time) + len(fallback) > MAX_KEYS_PER_UPLOAD:
            raise invalid(f"at most {MAX_KEYS_PER_UPLOAD} keys per upload", "M_TOO_LARGE")
        for key_id in [*one_time, *fallback]:
            _key_id(key_id, "one_time_keys/fallback_keys")
        if device_keys is not None:
            keys = _obj(device_keys, "device_keys")
            if keys.get("user_id") != user_id or keys.get("device_id") != device_id:
                raise invalid("device_keys must name your own user_id and device_id")
            if not isinstance(keys.get("algorithms"), list) or not isinstance(keys.get("keys"), dict):
                raise invalid("device_keys needs algorithms and keys")
            _obj(keys.get("signatures", {}), "device_keys.signatures")
            stored = await self.store.device_keys(user_id, device_id)
            if stored != keys:
                await self.store.put_device_keys(user_id, device_id, keys)
                await self.wake(await self.shared_users(user_id) | {user_id})
        if one_time:
            await self.store.add_one_time_keys(user_id, device_id, one_time)
        if fallback:
            await self.store.put_fallback_keys(user_id, device_id, fallback)
        counts, _ = await self.store.key_counts(user_id, device_id)
        return {"one_time_key_counts": counts}

    async def upload_signing(self, user_id: str, body: JSON) -> JSON:
        """Cross-signing keys; accepted without interactive auth only while the user has none (as
        Synapse does for a first upload), so a stolen token cannot replace a user's identity."""
        check_canonical(body, "body")
        keys: JSON = {}
        for kind in ("master_key", "self_signing_key", "user_signing_key"):
            if kind in body:
                key = _obj(body[kind], kind)
                if key.get("user_id") != user_id or not isinstance(key.get("keys"), dict):
                    raise invalid(f"{kind} must name your user_id and carry keys")
                keys[kind] = key
        if not keys:
            raise invalid("no cross-signing keys given")
        if not await self.store.put_cross_signing(user_id, keys):
            raise forbidden("cross-signing keys are already set")
        await self.wake(await self.shared_users(user_id) | {user_id})
        return {}

    # -- keys/query, keys/claim, keys/changes -------------------------------------------------------

    async def query(self, user_id: str, body: JSON) -> JSON:
        wanted = _obj(body.get("device_keys"), "device_keys")
        if len(wanted) > MAX_QUERY_USERS:
            raise invalid(f"at most {MAX_QUERY_USERS} users per query", "M_TOO_LARGE")
        users: dict[str, set[str] | None] = {}
        for target, devices in wanted.items():
            if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices):
                raise invalid("device_keys values must be lists of device ids", "M_BAD_JSON")
            users[_id(target, "user id")] = set(devices) or None
        result: JSON = {target: {} for target in users if self._local(target)}
        local = sorted(result)
        for doc in await self.store.devices_of(local):
            only = users.get(doc["user_id"])
            if only is None or doc["device_id"] in only:
                result[doc["user_id"]][doc["device_id"]] = doc["keys"]
        answer: JSON = {"device_keys": result, "failures": {}}
        master: JSON = {}
        self_signing: JSON = {}
        user_signing: JSON = {}
        for doc in await self.store.cross_signing(local):
            if "master_key" in doc:
                master[doc["user_id"]] = doc["master_key"]
            if "self_signing_key" in doc:
                self_signing[doc["user_id"]] = doc["self_signing_key"]
            if "user_signing_key" in doc and doc["user_id"] == user_id:  # only ever shown to its owner
                user_signing[user_id] = doc["user_signing_key"]
        answer.update(master_keys=master, self_signing_keys=self_signing, user_signing_keys=user_signing)
        return answer

    async def claim(self, body: JSON) -> JSON:
        wanted = _obj(body.get("one_time_keys"), "one_time_keys")
        asked = [
            (_id(target, "user id"), _id(device, "device id"), _id(algorithm, "algorithm"))
            for target, devices in wanted.items()
            for device, algorithm in _obj(devices, "one_time_keys." + str(target)).items()
        ]
        if len(asked) > MAX_CLAIM_DEVICES:
            raise invalid(f"at most {MAX_CLAIM_DEVICES} devices per claim", "M_TOO_LARGE")
        result: JSON = {}
        for target, device, algorithm in asked:
            if not self._local(target):
                continue
            claimed = await self.store.claim(target, device, algorithm)
            if claimed is not None:
                key_id, key = claimed
                result.setdefault(target, {}).setdefault(device, {})[key_id] = key
        return {"one_time_keys": result, "failures": {}}

    async def changes(self, user_id: str, since: int, upto: int) -> JSON:
        if upto <= since:
            return {"changed": [], "left": []}
        interested = await self.shared_users(user_id) | {user_id}
        changed = sorted(u for u in await self.store.changed_since(since, upto) if u in interested)
        return {"changed": changed, "left": []}

    # -- to-device ----------------------------------------------------------------------------------

    async def send_to_device(self, sender: str, sender_device: str, event_type: str, txn_id: str, body: JSON) -> None:
        """Recipients are the sender's own devices and users who share a room with them; messages
        to anyone else are dropped (the spec defines no error here, and the acquaintance network
        gives strangers no channel)."""
        _id(event_type, "event type")
        _id(txn_id, "transaction id")
        check_canonical(body, "body")
        messages = _obj(body.get("messages"), "messages")
        allowed = await self.shared_users(sender) | {sender}
        pending: list[tuple[str, str, JSON]] = []
        for target, devices in messages.items():
            for device, content in _obj(devices, "messages." + str(target)).items():
                pending.append((_id(target, "user id"), _id(device, "device id"), _obj(content, "content")))
        if len(pending) > MAX_TO_DEVICE_MESSAGES:
            raise invalid(f"at most {MAX_TO_DEVICE_MESSAGES} messages per request", "M_TOO_LARGE")
        wildcard = sorted({t for t, d, _ in pending if d == "*" and t in allowed})
        devices_of: dict[str, list[str]] = {}
        for doc in await self.store.devices_of(wildcard):
            devices_of.setdefault(doc["user_id"], []).append(doc["device_id"])
        out: list[JSON] = []
        for target, device, content in pending:
            if target not in allowed:
                continue
            for each in devices_of.get(target, []) if device == "*" else [device]:
                out.append(
                    {
                        "_id": "|".join((target, each, sender, sender_device, txn_id)),
                        "user_id": target,
                        "device_id": each,
                        "event": {"type": event_type, "sender": sender, "content": content},
                    }
                )
        if out:
            await self.store.send_to_device(out)
            await self.wake({m["user_id"] for m in out})

    # -- the /sync part -----------------------------------------------------------------------------

    async def sync_part(self, user_id: str, device_id: str, since: int, initial: bool) -> tuple[JSON, int, bool]:
        """to_device, device_lists and key counts for /sync; the next sequence, and whether it carries news."""
        head = await self.store.head()
        events: list[JSON] = []
        if device_id:
            events = await self.store.take_to_device(user_id, device_id, since, head, TO_DEVICE_PER_SYNC)
        upto = events[-1]["seq"] if len(events) == TO_DEVICE_PER_SYNC else head
        changed: list[str] = []
        if not initial and since < upto:
            changed = (await self.changes(user_id, since, upto))["changed"]
        counts, unused = await self.store.key_counts(user_id, device_id) if device_id else ({}, [])
        part: JSON = {
            "to_device": {"events": [e["event"] for e in events]},
            "device_lists": {"changed": changed, "left": []},
            "device_one_time_keys_count": counts,
            "device_unused_fallback_key_types": unused,
        }
        return part, upto, bool(events or changed)

    # -- key backup (room_keys) -----------------------------------------------------------------------

    async def room_keys(
        self, user_id: str, method: str, resource: str, version: str, room_id: str, session_id: str, body: JSON
    ) -> JSON:
        if resource == "version":
            return await self._backup_version(user_id, method, version, body)
        if resource != "keys":
            raise not_found("unknown room_keys resource")
        if not version:
            raise invalid("the version query parameter is required", "M_MISSING_PARAM")
        backup = await self.store.backup(user_id, version)
        if backup is None:
            raise not_found("no such backup version")
        if method == "GET":
            docs = await self.store.backup_keys(user_id, version, room_id, session_id)
            if session_id:
                if not docs:
                    raise not_found("no such session in the backup")
                return docs[0]["data"]
            rooms: JSON = {}
            for doc in docs:
                rooms.setdefault(doc["room_id"], {"sessions": {}})["sessions"][doc["session_id"]] = doc["data"]
            if room_id:
                return rooms.get(room_id, {"sessions": {}})
            return {"rooms": rooms}
        if method == "PUT":
            latest = await self.store.backup(user_id)
            if latest is None or latest["version"] != version:
                raise DomainError(Errcode.WRONG_ROOM_KEYS_VERSION, "not the current backup version")
            check_canonical(body, "body")
            await self.store.put_backup_keys(user_id, version, _backup_items(body, room_id, session_id))
        elif method == "DELETE":
            await self.store.delete_backup_keys(user_id, version, room_id, session_id)
        else:
            raise invalid("unsupported method", "M_UNRECOGNIZED")
        updated = await self.store.backup(user_id, version) or backup
        return {"etag": str(updated.get("etag", 0)), "count": int(updated.get("count", 0))}

    async def _backup_version(self, user_id: str, method: str, version: str, body: JSON) -> JSON:
        if method == "POST":
            check_canonical(body, "body")
            algorithm = _id(body.get("algorithm"), "algorithm")
            new_version = await self.store.create_backup(user_id, algorithm, _obj(body.get("auth_data"), "auth_data"))
            return {"version": new_version}
        if method == "GET":
            backup = await self.store.backup(user_id, version)
            if backup is None:
                raise not_found("no current backup version" if not version else "unknown backup version")
            return {
                "algorithm": backup["algorithm"],
                "auth_data": backup["auth_data"],
                "version": backup["version"],
                "etag": str(backup.get("etag", 0)),
                "count": int(backup.get("count", 0)),
            }
        if not version:
            raise invalid("a version is required", "M_MISSING_PARAM")
        backup = await self.store.backup(user_id, version)
        if backup is None:
            raise not_found("unknown backup version")
        if method == "PUT":
            check_canonical(body, "body")
            if body.get("algorithm") != backup["algorithm"]:
                raise invalid("the algorithm of a backup cannot change")
            if "version" in body and body["version"] != version:
                raise invalid("the version in the body does not match the path")
            await self.store.update_backup(user_id, version, _obj(body.get("auth_data"), "auth_data"))
            return {}
        if method == "DELETE":
            await self.store.delete_backup(user_id, version)
            return {}
        raise invalid("unsupported method", "M_UNRECOGNIZED")


def _session_data(value: Any) -> JSON:
    data = _obj(value, "session data")
    for field in ("first_message_index", "forwarded_count"):
        if not isinstance(data.get(field), int) or isinstance(data.get(field), bool):
            raise invalid(f"session data needs an integer {field}", "M_BAD_JSON")
    if not isinstance(data.get("is_verified"), bool) or not isinstance(data.get("session_data"), dict):
        raise invalid("session data needs is_verified and session_data", "M_BAD_JSON")
    return data


def _backup_items(body: JSON, room_id: str, session_id: str) -> list[tuple[str, str, JSON]]:
    if room_id and session_id:
        return [(room_id, session_id, _session_data(body))]
    rooms = {room_id: body} if room_id else _obj(body.get("rooms"), "rooms")
    items = [
        (_id(room, "room id"), _id(session, "session id"), _session_data(data))
        for room, room_body in rooms.items()
        for session, data in _obj(_obj(room_body, "room").get("sessions"), "sessions").items()
    ]
    if len(items) > MAX_BACKUP_SESSIONS:
        raise invalid(f"at most {MAX_BACKUP_SESSIONS} sessions per request", "M_TOO_LARGE")
    return items


def better_session(new: JSON, old: JSON | None) -> bool:
    """The spec's replacement rule: verified beats unverified, then lower first_message_index,
    then lower forwarded_count."""
    if old is None:
        return True
    if new["is_verified"] != old["is_verified"]:
        return bool(new["is_verified"])
    if new["first_message_index"] != old["first_message_index"]:
        return bool(new["first_message_index"] < old["first_message_index"])
    return bool(new["forwarded_count"] < old["forwarded_count"])
