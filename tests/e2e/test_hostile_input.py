"""Hostile clients against the real stack: bad input gets a Matrix 4xx, never a 5xx, and never hangs.

The regression tests name the defect they pin (issue 9). The sweep at the end sends malformed
requests to every route the gateway registers (the route table is read from the app itself, so a
new route is swept without anyone adding it here): nesting, NUL, huge strings, wrong types,
out-of-range numbers, bad ids, bad tokens, odd headers and oversize bodies. Slow clients have their
own tests on raw sockets.

This module starts its own stack, with high request-rate limits (so the sweep reaches the
handlers instead of the rate limiters, and no other test's limits are spent) and short header and
body deadlines (so the slow-client tests finish fast).
"""

from __future__ import annotations

import asyncio
import base64
import functools
import itertools
import json
import re
import socket
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
import pytest

from gateway.app import GatewayDeps, create_app
from gateway.config import GatewayConfig
from gateway.downstream import Downstream
from gateway.routes import route_modules
from gateway.routes.contacts import OPENAPI_PATH
from plumbing.config import Env
from tests.conftest import launch_stack
from tests.matrix_support import RegisteredUser, register_user

pytestmark = pytest.mark.e2e

V3 = "/_matrix/client/v3"
Z = "/_laiwang/client/v1/zhadui"
HEADER_TIMEOUT = 1.5
BODY_TIMEOUT = 1.5
HOSTILE_ENV = {
    "GATEWAY_HEADER_TIMEOUT_SECONDS": str(HEADER_TIMEOUT),
    "GATEWAY_BODY_TIMEOUT_SECONDS": str(BODY_TIMEOUT),
    **{
        name: "1000000"
        for name in (
            "GATEWAY_SEND_BURST",
            "GATEWAY_SEND_RATE_PER_SECOND",
            "GATEWAY_ZHADUI_BURST",
            "GATEWAY_ZHADUI_RATE_PER_SECOND",
            "GATEWAY_CONTACTS_BURST",
            "GATEWAY_CONTACTS_RATE_PER_SECOND",
            "GATEWAY_CONTACTS_UPLOAD_BURST",
            "GATEWAY_CONTACTS_UPLOAD_RATE_PER_SECOND",
            "GATEWAY_CREDENTIAL_BURST",
            "GATEWAY_CREDENTIAL_RATE_PER_SECOND",
            "GATEWAY_PARTNER_BAD_TOKEN_BURST",
            "GATEWAY_PARTNER_BAD_TOKEN_RATE_PER_SECOND",
        )
    },
}


def deep(levels: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(levels - 1):
        value = {"a": value}
    return value


def deep_json(levels: int) -> bytes:
    """`deep(levels)` as JSON text (orjson cannot write it, which is the point)."""
    return b'{"a":' * (levels - 1) + b"{}" + b"}" * (levels - 1)


@dataclass
class World:
    base_url: str
    http: aiohttp.ClientSession
    alice: RegisteredUser
    bob: RegisteredUser
    room_id: str
    event_id: str
    zhadui_id: str

    async def call(
        self,
        method: str,
        path: str,
        who: RegisteredUser | None = None,
        *,
        json: Any = None,
        data: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        all_headers = {**(who.headers if who else {}), **(headers or {})}
        async with self.http.request(
            method, f"{self.base_url}{path}", json=json, data=data, headers=all_headers
        ) as response:
            return response.status, await response.json(content_type=None)


@pytest.fixture(scope="module")
async def world(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[World]:
    async with (
        launch_stack(mongo_uri, tmp_path_factory.mktemp("hostile"), HOSTILE_ENV) as running,
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=20)) as http,
    ):
        alice, bob = await register_user(running.base_url), await register_user(running.base_url)
        w = World(running.base_url, http, alice, bob, "", "", "")
        status, body = await w.call("POST", f"{V3}/createRoom", alice, json={"name": "hostile"})
        assert status == 200, body
        w.room_id = body["room_id"]
        status, body = await w.call(
            "PUT", f"{V3}/rooms/{w.room_id}/send/m.room.message/t1", alice, json={"msgtype": "m.text", "body": "hello"}
        )
        assert status == 200, body
        w.event_id = body["event_id"]
        status, body = await w.call("POST", Z, alice, json={"title": "hostile"})
        assert status == 200, body
        w.zhadui_id = body["zhadui_id"]
        yield w


def assert_matrix_error(status: int, body: Any, expected_status: int, errcode: str) -> None:
    assert (status, body.get("errcode") if isinstance(body, dict) else body) == (expected_status, errcode), body
    assert body["error"]


# -- issue 9 item 2: deep JSON the gateway re-encodes -----------------------------------------------


async def test_deep_json_in_a_filter_or_a_card_is_400_not_500(world: World) -> None:
    status, body = await world.call(
        "POST", f"{V3}/user/{quote(world.alice.user_id)}/filter", world.alice, json=deep(300)
    )
    assert_matrix_error(status, body, 400, "M_BAD_JSON")
    status, body = await world.call("POST", Z, world.alice, json={"title": "deep", "card": deep(300)})
    assert_matrix_error(status, body, 400, "M_BAD_JSON")
    status, body = await world.call(
        "POST", f"{V3}/user/{quote(world.alice.user_id)}/filter", world.alice, json={"room": {"timeline": {"limit": 5}}}
    )
    assert status == 200 and body["filter_id"]


async def test_event_content_is_checked_as_canonical_json_at_the_edge(world: World) -> None:
    send = f"{V3}/rooms/{world.room_id}/send/m.room.message"
    for index, content in enumerate(
        [deep(300), {"body\u0000": "x", "msgtype": "m.text"}, {"msgtype": "m.text", "body": "x", "n": 2**60}]
    ):
        status, body = await world.call("PUT", f"{send}/deep{index}", world.alice, json=content)
        assert_matrix_error(status, body, 400, "M_BAD_JSON")
    status, body = await world.call("PUT", f"{V3}/rooms/{world.room_id}/state/m.custom/k", world.alice, json=deep(300))
    assert_matrix_error(status, body, 400, "M_BAD_JSON")
    status, body = await world.call(
        "POST",
        f"{V3}/createRoom",
        world.alice,
        json={"initial_state": [{"type": "m.x", "state_key": "", "content": deep(300)}]},
    )
    assert_matrix_error(status, body, 400, "M_BAD_JSON")
    # A filter id is the filter itself, echoed back: a forged deep one is simply unknown.
    forged = "f" + base64.urlsafe_b64encode(orjson.dumps(deep(100))).decode().rstrip("=")
    status, body = await world.call("GET", f"{V3}/user/{quote(world.alice.user_id)}/filter/{forged}", world.alice)
    assert_matrix_error(status, body, 404, "M_NOT_FOUND")


# -- issue 9 item 3: out-of-range integers never reach an int32 field --------------------------------


@pytest.mark.parametrize("limit", ["4294967296", "99999999999999999999", "2147483648"])
async def test_huge_limits_are_clamped(world: World, limit: str) -> None:
    for path in (
        f"{Z}/feed?limit={limit}",
        f"{Z}/notices?limit={limit}",
        f"{V3}/rooms/{world.room_id}/messages?limit={limit}",
    ):
        status, body = await world.call("GET", path, world.alice)
        assert status == 200, (path, body)


@pytest.mark.parametrize("value", ["²", "-1", "1e3", "0x10", " 5", "٣"])
async def test_non_ascii_or_negative_integers_are_refused(world: World, value: str) -> None:
    for path in (
        f"{Z}/feed?limit=",
        f"{Z}/notices?limit=",
        f"{V3}/rooms/{world.room_id}/messages?limit=",
        f"{V3}/sync?timeout=",
    ):
        status, body = await world.call("GET", path + quote(value), world.alice)
        assert_matrix_error(status, body, 400, "M_INVALID_PARAM")


async def test_a_huge_timeline_limit_in_a_sync_filter_is_clamped(world: World) -> None:
    inline = orjson.dumps({"room": {"timeline": {"limit": 2147483648}}}).decode()
    status, body = await world.call("GET", f"{V3}/sync?filter={quote(inline)}", world.alice)
    assert status == 200 and "next_batch" in body, body
    status, body = await world.call("GET", f"{V3}/sync?timeout=99999999999999999999999", world.alice)
    assert status == 200, body  # clamped to the 30 s maximum ... and answered at once: there is news


# -- issue 9 item 11: ids, headers, methods, the HTTP parser -----------------------------------------


@pytest.mark.parametrize(
    "user_id",
    [
        "@用:localhost",
        "@a:b/../c",
        "alice",
        "@:localhost",
        "@a:",
        "@a:b:c:d",
        "@a:-bad-.host",
        "@a b:localhost",
        "@" + "a" * 300 + ":localhost",
    ],
)
async def test_non_matrix_user_ids_are_refused_everywhere(world: World, user_id: str) -> None:
    quoted = quote(user_id, safe="")
    for method, path in [
        ("GET", f"/_laiwang/client/v1/relationship/{quoted}"),
        ("PUT", f"/_laiwang/client/v1/blocks/{quoted}"),
        ("DELETE", f"/_laiwang/client/v1/blocks/{quoted}"),
        ("DELETE", f"/_laiwang/client/v1/suggestions/{quoted}"),
        ("GET", f"/_laiwang/client/v1/friends/{quoted}/mutual"),
        ("GET", f"{V3}/profile/{quoted}"),
    ]:
        status, body = await world.call(method, path, world.alice)
        assert_matrix_error(status, body, 400, "M_INVALID_PARAM")
    status, body = await world.call(
        "POST", "/_laiwang/client/v1/friends/requests", world.alice, json={"user_id": user_id}
    )
    assert_matrix_error(status, body, 400, "M_INVALID_PARAM")
    status, body = await world.call(
        "POST", f"{V3}/rooms/{world.room_id}/invite", world.alice, json={"user_id": user_id}
    )
    assert_matrix_error(status, body, 400, "M_INVALID_PARAM")


async def test_two_authorization_headers_are_refused(world: World) -> None:
    headers = [("Authorization", f"Bearer {world.alice.access_token}"), ("Authorization", "Bearer someone-else")]
    async with world.http.get(f"{world.base_url}{V3}/account/whoami", headers=headers) as response:
        body = await response.json()
    assert_matrix_error(response.status, body, 400, "M_INVALID_PARAM")


async def test_405_names_the_allowed_methods_and_unknown_paths_are_matrix_404s(world: World) -> None:
    async with world.http.delete(f"{world.base_url}{V3}/account/whoami") as response:
        body = await response.json()
        assert_matrix_error(response.status, body, 405, "M_UNRECOGNIZED")
        assert "GET" in response.headers["Allow"]
    status, body = await world.call("GET", f"{V3}/no/such/endpoint")
    assert_matrix_error(status, body, 404, "M_UNRECOGNIZED")


async def raw_exchange(base_url: str, payload: bytes, *, read_timeout: float = 10.0) -> bytes:
    """Send bytes on a fresh connection and read until the server closes it (or `read_timeout`)."""
    host, port = base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.read(1 << 20), read_timeout)
    finally:
        writer.close()


def status_and_body(raw: bytes) -> tuple[int, Any]:
    head, _, body = raw.partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), orjson.loads(body) if body else None


@pytest.mark.parametrize(
    "request_bytes",
    [
        b"GARBAGE\r\n\r\n",
        b"GET /_matrix/client/versions HTTP/1.1\r\nHost: x\r\nBad Header\r\n\r\n",
        b"GET /" + b"a" * 20_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        b"POST /_matrix/client/v3/login HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 7\r\n\r\n{}",
        b"POST /_matrix/client/v3/login HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n",
    ],
)
async def test_requests_the_http_parser_refuses_get_matrix_json_errors(world: World, request_bytes: bytes) -> None:
    status, body = status_and_body(await raw_exchange(world.base_url, request_bytes))
    assert 400 <= status < 500 and body["errcode"] in ("M_UNRECOGNIZED", "M_NOT_JSON", "M_BAD_JSON"), body


# -- issue 9 item 5: oversize declarations and slow clients -------------------------------------------


async def test_a_huge_declared_content_length_is_413_at_once(world: World) -> None:
    started = time.monotonic()
    raw = await raw_exchange(
        world.base_url,
        (
            f"PUT {V3}/rooms/{world.room_id}/send/m.room.message/big HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {world.alice.access_token}\r\nContent-Length: 10000000000\r\n\r\n{{}}"
        ).encode(),
        read_timeout=5.0,
    )
    status, body = status_and_body(raw)
    assert_matrix_error(status, body, 413, "M_TOO_LARGE")
    assert time.monotonic() - started < BODY_TIMEOUT  # not the body deadline: at once


async def test_a_trickled_body_is_cut_off_at_the_body_deadline(world: World) -> None:
    host, port = world.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.monotonic()
    writer.write(b"POST /_matrix/client/v3/login HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n")
    try:
        answer = b""
        for byte in itertools.cycle(b"{"):  # one byte every 0.2 s, until the server answers
            writer.write(bytes([byte]))
            await writer.drain()
            try:
                answer = await asyncio.wait_for(reader.read(65536), 0.2)
                break
            except TimeoutError:
                assert time.monotonic() - started < BODY_TIMEOUT + 5, "the trickled body was never cut off"
        status, body = status_and_body(answer)
        assert_matrix_error(status, body, 408, "M_UNKNOWN")
        assert BODY_TIMEOUT - 0.5 < time.monotonic() - started < BODY_TIMEOUT + 5
    finally:
        writer.close()


async def test_trickled_headers_are_cut_off_at_the_header_deadline(world: World) -> None:
    host, port = world.base_url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    started = time.monotonic()
    closed = False
    try:
        writer.write(b"GET /_matrix/client/versions HTTP/1.1\r\n")
        for index in range(100):
            try:
                writer.write(b"X-Slow-%d: y\r\n" % index)
                await writer.drain()
            except ConnectionError:
                closed = True
                break
            try:
                if await asyncio.wait_for(reader.read(65536), 0.2) == b"":
                    closed = True
                    break
            except TimeoutError:
                pass
            assert time.monotonic() - started < HEADER_TIMEOUT + 5, "the trickled headers were never cut off"
        assert closed
        assert HEADER_TIMEOUT - 0.5 < time.monotonic() - started < HEADER_TIMEOUT + 5
    finally:
        writer.close()


async def test_an_idle_connection_that_never_sends_is_closed(world: World) -> None:
    host, port = world.base_url.removeprefix("http://").split(":")
    started = time.monotonic()
    with socket.create_connection((host, int(port)), timeout=HEADER_TIMEOUT + 5) as sock:
        assert sock.recv(1) == b""
    assert time.monotonic() - started < HEADER_TIMEOUT + 5


# -- the sweep -------------------------------------------------------------------------------------


@functools.cache
def gateway_routes() -> list[tuple[str, str]]:
    """(method, path template) of every route the gateway serves, read from its own route table."""
    config = GatewayConfig.from_env(Env({}))
    deps = GatewayDeps(config=config, downstream=Downstream(config.service_addresses))
    modules = route_modules()
    app = create_app(deps, route_groups=[module.routes(deps) for module in modules])
    found = {
        (route.method, route.resource.canonical)
        for route in app.router.routes()
        if route.resource is not None and route.method not in ("HEAD", "*")
    }
    return sorted(found)


# Routes that end the sweep's session: they get their own, throwaway account.
DESTRUCTIVE = re.compile(r"/logout|/deactivate|/account/password|/delete_devices|DELETE /_matrix/client/v3/devices")
NASTY_STRINGS = [
    "",
    "\u0000",
    "x" * 70_000,
    "@用:localhost",
    "@a:b/../c",
    "../../etc/passwd",
    "\U0001f600" * 50,
    "%00",
    "$where",
    "a.b",
    "{}",
]
NASTY_VALUES: list[Any] = [
    None,
    True,
    -1,
    2**31,
    2**63,
    2**64 + 1,
    1.5,
    1e308,
    [],
    {},
    [[[]]],
    deep(80),
    {"\u0000": 1},
    {"$gt": ""},
    *NASTY_STRINGS,
]
FIELDS = [
    "user_id",
    "reason",
    "room_version",
    "preset",
    "invite",
    "initial_state",
    "name",
    "topic",
    "visibility",
    "power_level_content_override",
    "creation_content",
    "is_direct",
    "msgtype",
    "body",
    "typing",
    "timeout",
    "m.read",
    "m.read.private",
    "username",
    "password",
    "auth",
    "device_id",
    "initial_device_display_name",
    "inhibit_login",
    "refresh_token",
    "type",
    "identifier",
    "token",
    "new_password",
    "logout_devices",
    "devices",
    "display_name",
    "displayname",
    "avatar_url",
    "client_secret",
    "country",
    "phone_number",
    "send_attempt",
    "sid",
    "medium",
    "address",
    "redirect_url",
    "numbers",
    "region",
    "add",
    "remove",
    "algorithm",
    "pepper",
    "addresses",
    "replace",
    "discoverability",
    "message",
    "search_term",
    "limit",
    "title",
    "tags",
    "card",
    "link_url",
    "muted",
    "room",
    "presence",
]
BODIES: list[bytes] = [
    deep_json(300),
    b"[" * 2000 + b"]" * 2000,
    b'{"a\\u0000b": 1}',
    b'{"n": 1e400}',
    b'{"n": 123456789012345678901234567890}',
    b'{"s": "\\ud800"}',
    b"\xff\xfe\x00",
    b"not json",
    b"[1, 2]",
    b'"string"',
    b"null",
    b"",
    b"{" * 10,
    orjson.dumps({"x": "y" * 900_000}),
]
QUERIES = {
    "limit": ["4294967296", "99999999999999999999", "²", "-5", "1.5"],
    "from": ["s99999999999999999999_1", "t-1", "x" * 3000, "\u0000"],
    "to": ["t99999999999999999999"],
    "dir": ["x", "ff"],
    "since": ["s1_99999999999999999999", "s\u0663_1", "garbage"],
    "timeout": ["-1", "99999999999999999999", "²"],
    "filter": [
        orjson.dumps({"room": {"timeline": {"limit": 2**31}}}).decode(),
        deep_json(300).decode(),
        "{bad",
        "f" + "A" * 100,
        "fe30",
    ],
    "full_state": ["maybe"],
    "cursor": ["x" * 3000, "\u0000", "1_" + "9" * 40],
    "mark_seen": ["yes"],
    "username": ["x" * 3000, "\u0000"],
    "kind": ["guest"],
    "redirectUrl": ["javascript:alert(1)", "http://127.0.0.1/" + "x" * 3000],
    "state": ["x" * 3000],
    "code": ["\u0000"],
    "error": ["x"],
    "access_token": ["\u0000", "x" * 3000],
}


def path_values(w: World) -> dict[str, str]:
    return {
        "room_id": w.room_id,
        "room_id_or_alias": w.room_id,
        "event_type": "m.room.message",
        "txn_id": "t",
        "state_key": "",
        "event_id": w.event_id,
        "receipt_type": "m.read",
        "user_id": w.alice.user_id,
        "filter_id": "fe30",
        "device_id": w.alice.device_id,
        "zhadui_id": w.zhadui_id,
        "provider_id": "none",
        "idp_id": "none",
    }


NASTY_PATH_VALUES = [
    "\u0000",
    "x" * 3000,
    "@用:localhost",
    "@a:b/../c",
    "..",
    "%",
    "!\u0000:localhost",
    "\U0001f600",
    "$1",
]


def fill(template: str, values: dict[str, str], override: tuple[str, str] | None = None) -> str:
    def one(match: re.Match[str]) -> str:
        name = match.group(1)
        value = override[1] if override and override[0] == name else values.get(name, "x")
        return quote(value, safe="")

    return re.sub(r"\{(\w+)\}", one, template)


def sweep_requests(w: World, routes: list[tuple[str, str]]) -> list[tuple[str, str, dict[str, str], bytes | None]]:
    """Every malformed request of the sweep: (method, path, headers, body)."""
    values = path_values(w)
    out: list[tuple[str, str, dict[str, str], bytes | None]] = []
    cycle = itertools.cycle(NASTY_VALUES)
    for method, template in routes:
        path = fill(template, values)
        has_body = method in ("POST", "PUT", "DELETE")
        for name in re.findall(r"\{(\w+)\}", template):
            out += [
                (method, fill(template, values, (name, nasty)), {}, b"{}" if has_body else None)
                for nasty in NASTY_PATH_VALUES
            ]
        for name, nasty_values in QUERIES.items():
            out += [(method, f"{path}?{name}={quote(value, safe='')}", {}, None) for value in nasty_values]
        out += [
            (method, path, {"Authorization": auth}, None)
            for auth in ("Bearer", "Bearer x", "Basic eDp5", "Bearer " + "x" * 4000, "bearer  two words")
        ]
        out += [
            (
                method,
                path,
                {"Content-Type": "text/plain", "X-Request-Id": "x" * 4000, "X-Forwarded-For": "not-an-ip, 999.1.1.1"},
                b"{}" if has_body else None,
            )
        ]
        if has_body:
            out += [(method, path, {"Content-Type": "application/json"}, body) for body in BODIES]
            out += [
                (method, path, {"Content-Type": "application/json"}, json.dumps({field: next(cycle)}).encode())
                for field in FIELDS
            ]
            out += [
                (
                    method,
                    path,
                    {"Content-Type": "application/json"},
                    json.dumps({field: next(cycle) for field in FIELDS}).encode(),
                )
            ]
    return out


@dataclass
class SweepResult:
    sent: int = 0
    server_errors: list[str] | None = None
    hangs: list[str] | None = None
    not_json: list[str] | None = None


async def run_sweep(w: World, requests: list[tuple[str, str, dict[str, str], bytes | None]], token: str) -> SweepResult:
    result = SweepResult(server_errors=[], hangs=[], not_json=[])
    limit = asyncio.Semaphore(8)

    async def one(method: str, path: str, headers: dict[str, str], body: bytes | None) -> None:
        key = f"{method} {path[:160]!r} {headers} body={(body or b'')[:60]!r}"
        all_headers = {"Authorization": f"Bearer {token}", **headers}
        async with limit:
            try:
                async with w.http.request(
                    method,
                    f"{w.base_url}{path}",
                    data=body,
                    headers=all_headers,
                    timeout=aiohttp.ClientTimeout(total=15),
                ) as response:
                    raw = await response.read()
                    status = response.status
            except TimeoutError:
                result.hangs.append(key)  # type: ignore[union-attr]
                return
            except aiohttp.ClientError as exc:  # a refused request line (e.g. over 8 KiB): not a 5xx
                if not isinstance(exc, aiohttp.ServerDisconnectedError):
                    raise
                return
        result.sent += 1
        if status >= 500:
            result.server_errors.append(f"{status} {key} -> {raw[:200]!r}")  # type: ignore[union-attr]
        elif status >= 400:
            try:
                parsed = orjson.loads(raw)
                # A Matrix error, or a user-interactive-auth challenge (401 with the flows to follow).
                assert (parsed["errcode"] and parsed["error"]) if "flows" not in parsed else status == 401
            except (orjson.JSONDecodeError, KeyError, TypeError, AssertionError):
                result.not_json.append(f"{status} {key} -> {raw[:200]!r}")  # type: ignore[union-attr]

    await asyncio.gather(*(one(*r) for r in requests))
    return result


# The sweep (about 15,000 requests) and Schemathesis (about 1,750 cases) run in shards: every route
# and operation is still covered, and each shard stays well inside the per-test timeout on a loaded
# 2-core machine, where the whole of either took longer than that.
SHARDS = 8


@pytest.mark.parametrize("shard", range(SHARDS))
async def test_sweep_every_route_with_malformed_requests(world: World, shard: int) -> None:
    routes = gateway_routes()
    assert len(routes) > 80  # the table was read, not guessed
    mine = routes[shard::SHARDS]
    ordinary = [r for r in mine if not DESTRUCTIVE.search(f"{r[0]} {r[1]}")]
    destructive = [r for r in mine if DESTRUCTIVE.search(f"{r[0]} {r[1]}")]
    started = time.monotonic()
    result = await run_sweep(world, sweep_requests(world, ordinary), world.alice.access_token)
    # Each destructive route with an account of its own, so the rest of the sweep keeps its session.
    for method, template in destructive:
        victim = await register_user(world.base_url)
        more = await run_sweep(world, sweep_requests(world, [(method, template)]), victim.access_token)
        result.sent += more.sent
        result.server_errors += more.server_errors  # type: ignore[operator]
        result.hangs += more.hangs  # type: ignore[operator]
        result.not_json += more.not_json  # type: ignore[operator]
    elapsed = time.monotonic() - started
    print(f"hostile sweep shard {shard}: {result.sent} requests to {len(mine)} routes in {elapsed:.1f} s")
    assert not result.hangs, result.hangs[:20]
    assert not result.server_errors, result.server_errors[:20]
    assert not result.not_json, result.not_json[:20]
    assert result.sent > 3000 // SHARDS
    # The stack is still healthy and still serves the sweep's own user.
    status, body = await world.call("GET", f"{V3}/account/whoami", world.alice)
    assert status == 200 and body["user_id"] == world.alice.user_id


# -- Schemathesis against the OpenAPI document ----------------------------------------------------

SCHEMATHESIS_EXAMPLES = 25  # per operation and generation mode; derandomized, so every run sends the same cases


@pytest.mark.parametrize("shard", range(SHARDS))
def test_schemathesis_finds_no_server_error(world: World, shard: int) -> None:
    """Property-based requests from gateway/openapi.json, valid and invalid (schemathesis), against the real stack."""
    import hypothesis
    import hypothesis.errors
    import requests
    import schemathesis
    from schemathesis import GenerationMode
    from schemathesis.specs.openapi.checks import response_schema_conformance

    document = orjson.loads(OPENAPI_PATH.read_bytes())
    schema = schemathesis.openapi.from_dict(document)
    auth = {"Authorization": f"Bearer {world.alice.access_token}"}
    sent = 0
    failures: list[str] = []
    started = time.monotonic()
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 30  # the document was read
    with requests.Session() as session:
        for operation in operations[shard::SHARDS]:
            for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

                @hypothesis.given(case=operation.as_strategy(generation_mode=mode))
                @hypothesis.settings(
                    max_examples=SCHEMATHESIS_EXAMPLES,
                    deadline=None,
                    database=None,
                    derandomize=True,
                    suppress_health_check=list(hypothesis.HealthCheck),
                    phases=[hypothesis.Phase.explicit, hypothesis.Phase.generate],
                )
                def run(case: Any) -> None:
                    nonlocal sent
                    response = case.call(base_url=world.base_url, session=session, headers=auth, timeout=15)
                    sent += 1
                    where = f"{case.method} {case.formatted_path} query={case.query} body={str(case.body)[:200]}"
                    if response.status_code >= 500:
                        failures.append(f"{response.status_code} {where} -> {response.text[:200]}")
                        return
                    try:  # a documented answer must match its documented schema
                        case.validate_response(response, checks=[response_schema_conformance])
                    except AssertionError as exc:
                        failures.append(f"{response.status_code} {where}: {str(exc)[:300]}")

                try:
                    run()
                except hypothesis.errors.Unsatisfiable:
                    # Nothing to make invalid (no parameters, no body): only the valid cases apply.
                    assert mode == GenerationMode.NEGATIVE, operation.label
    print(f"schemathesis shard {shard}: {sent} requests in {time.monotonic() - started:.1f} s")
    assert not failures, failures[:20]
    assert sent > 500 // SHARDS
