"""Helpers for tests that need Matrix accounts on a running gateway (real HTTP, no shortcuts)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass

import aiohttp

DEFAULT_PASSWORD = "correct horse battery staple"


@dataclass(frozen=True)
class RegisteredUser:
    user_id: str
    device_id: str
    access_token: str
    password: str = DEFAULT_PASSWORD

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


def unique_localpart(prefix: str = "u") -> str:
    return f"{prefix}{uuid.uuid4().hex[:12]}"


async def register_user(
    base_url: str, localpart: str | None = None, password: str = DEFAULT_PASSWORD, device_name: str = "test device"
) -> RegisteredUser:
    """Register a fresh account through POST /_matrix/client/v3/register (m.login.dummy)."""
    localpart = localpart or unique_localpart()
    body = {
        "username": localpart,
        "password": password,
        "auth": {"type": "m.login.dummy"},
        "initial_device_display_name": device_name,
    }
    async with aiohttp.ClientSession() as http, http.post(f"{base_url}/_matrix/client/v3/register", json=body) as r:
        reply = await r.json()
        if r.status != 200:
            raise AssertionError(f"register {localpart} failed: {r.status} {reply}")
    return RegisteredUser(reply["user_id"], reply["device_id"], reply["access_token"], password)


async def login_user(base_url: str, user: str, password: str = DEFAULT_PASSWORD) -> RegisteredUser:
    """A new device (session) for an existing account through POST /login (m.login.password)."""
    body = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user}, "password": password}
    async with aiohttp.ClientSession() as http, http.post(f"{base_url}/_matrix/client/v3/login", json=body) as r:
        reply = await r.json()
        if r.status != 200:
            raise AssertionError(f"login {user} failed: {r.status} {reply}")
    return RegisteredUser(reply["user_id"], reply["device_id"], reply["access_token"], password)
