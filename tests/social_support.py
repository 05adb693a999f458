"""People for end-to-end tests: real accounts with verified phones (codes from auth's dev SMS
channel), address books, and friendships made the way users make them (match, request, accept)."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import aiohttp

from tests.auth_support import unique_cn_mobile, wait_for_code
from tests.matrix_support import RegisteredUser, register_user
from tests.support import eventually

V1 = "/_laiwang/client/v1"
V3 = "/_matrix/client/v3"


@dataclass
class Person:
    account: RegisteredUser
    national: str
    msisdn: str

    @property
    def user_id(self) -> str:
        return self.account.user_id


class Client:
    def __init__(self, stack: Any, http: aiohttp.ClientSession) -> None:
        self.stack = stack
        self.http = http

    async def call(self, method: str, path: str, who: Person | None = None, json: Any = None) -> tuple[int, Any]:
        headers = who.account.headers if who else {}
        async with self.http.request(method, f"{self.stack.base_url}{path}", json=json, headers=headers) as r:
            return r.status, await r.json(content_type=None)

    async def ok(self, method: str, path: str, who: Person | None = None, json: Any = None) -> Any:
        status, body = await self.call(method, path, who, json)
        assert status == 200, (method, path, status, body)
        return body

    async def person(self, name: str, national: str | None = None) -> Person:
        """Register through /register and verify a phone through auth's msisdn endpoints."""
        account = await register_user(self.stack.base_url, f"{name}{secrets.token_hex(4)}")
        if national is None:
            national, msisdn = unique_cn_mobile()
        else:
            msisdn = f"+86{national}"
        secret = secrets.token_hex(8)
        body = await self.ok(
            "POST",
            f"{V3}/account/3pid/msisdn/requestToken",
            json={"client_secret": secret, "country": "CN", "phone_number": national, "send_attempt": 1},
        )
        code = await wait_for_code(self.stack.log_path, msisdn)
        await self.ok(
            "POST",
            f"{V3}/account/3pid/msisdn/submit_token",
            json={"sid": body["sid"], "client_secret": secret, "token": code},
        )
        await self.ok(
            "POST",
            f"{V3}/account/3pid/add",
            Person(account, national, msisdn),
            json={"sid": body["sid"], "client_secret": secret},
        )
        return Person(account, national, msisdn)

    async def upload(self, who: Person, numbers: list[str]) -> Any:
        return await self.ok("POST", f"{V1}/contacts/upload", who, {"numbers": numbers, "region": "CN"})

    async def sync(self, who: Person, add: list[str], remove: list[str] | None = None) -> tuple[int, Any]:
        return await self.call("POST", f"{V1}/contacts/sync", who, {"add": add, "remove": remove or []})

    async def matched(self, who: Person, numbers: list[str]) -> set[str]:
        status, body = await self.sync(who, numbers)
        assert status == 200, body
        return {m["user_id"] for m in body["matches"]}

    async def matches(self, who: Person, numbers: list[str], user_id: str) -> bool:
        """For polls: does `user_id` match now? A 429 from the gateway's upload rate limit (polls are
        fast) is "not yet", not a failure, so the poll keeps waiting instead of ending the test."""
        status, body = await self.sync(who, numbers)
        if status == 429:
            return False
        assert status == 200, body
        return user_id in {m["user_id"] for m in body["matches"]}

    async def discoverability(self, who: Person, value: str) -> None:
        body = await self.ok("PUT", f"{V1}/contacts/discoverability", who, {"discoverability": value})
        assert body == {"discoverability": value}

    async def befriend(self, x: Person, y: Person) -> None:
        """Each has the other's number (the default discoverability needs both), then request + accept."""
        for me, other in ((x, y), (y, x)):
            await self.ok("POST", f"{V1}/contacts/sync", me, {"add": [other.msisdn]})

        await eventually(lambda: self.matches(x, [y.msisdn], y.user_id), interval=0.2)
        await self.ok("POST", f"{V1}/friends/requests", x, {"user_id": y.user_id})
        await self.ok("POST", f"{V1}/friends/requests/{x.user_id}/accept", y)
