"""`laiwang demo` (`make demo`): people you can log in as at once, made through the public APIs.

Against a running stack (`make run`) it creates Alice, Bob and Carol the way real users get there:
register, verify a phone with the code from the dev SMS channel, upload an address book, send and
accept friend requests. Alice and Bob then chat in a direct room; Alice starts a zhadui that Carol
(her friend) joins and posts in. It prints the user ids, passwords and the URL.

Running it again creates nothing new: accounts and bound phones are found again, address books
are replaced by the same list, friendships and rooms are looked up before being made, and
messages are sent from the same device with fixed transaction ids (Matrix de-duplicates those).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp

from plumbing.dev.stack import StackConfig

V3 = "/_matrix/client/v3"
V1 = "/_laiwang/client/v1"
DEVICE_ID = "LAIWANGDEMO"  # one device per demo user, so re-sent txn ids are recognised
ROOM_NAME = "Alice & Bob (Laiwang demo)"
ZHADUI_TITLE = "Hiking on Saturday? (Laiwang demo)"
WAIT_SECONDS = 20.0  # events between services arrive in well under a second; this is a safety net


@dataclass(frozen=True)
class Persona:
    localpart: str
    display_name: str
    password: str
    national: str  # a mainland China mobile number; the demo binds +86<national>

    @property
    def msisdn(self) -> str:
        return f"+86{self.national}"


PEOPLE = (
    Persona("demo_alice", "Alice", "alice-demo-password", "13900139001"),
    Persona("demo_bob", "Bob", "bob-demo-password", "13900139002"),
    Persona("demo_carol", "Carol", "carol-demo-password", "13900139003"),
)
# (sender index, txn id, text): Alice and Bob's direct chat.
CHAT = (
    (0, "demo-chat-1", "Hi Bob! This is the Laiwang demo."),
    (1, "demo-chat-2", "Hi Alice, found you through my address book."),
    (0, "demo-chat-3", "Join my zhadui about Saturday's hike?"),
)
DISCUSSION = (2, "demo-zhadui-1", "Count me in for Saturday!")


class DemoError(Exception):
    """The stack answered something the demo cannot go on from."""


@dataclass
class Session:
    persona: Persona
    user_id: str
    access_token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.access_token}"}


@dataclass
class DemoResult:
    url: str
    sessions: list[Session]
    room_id: str = ""
    zhadui_id: str = ""
    discussion_room_id: str = ""
    created: list[str] = field(default_factory=list)  # what this run made (empty on a re-run)


class Api:
    def __init__(self, http: aiohttp.ClientSession, url: str) -> None:
        self.http = http
        self.url = url

    async def call(self, method: str, path: str, who: Session | None = None, json: Any = None) -> tuple[int, Any]:
        headers = who.headers if who else {}
        async with self.http.request(method, self.url + path, json=json, headers=headers) as response:
            return response.status, await response.json(content_type=None)

    async def ok(self, method: str, path: str, who: Session | None = None, json: Any = None) -> Any:
        status, body = await self.call(method, path, who, json)
        if status != 200:
            raise DemoError(f"{method} {path} answered {status}: {body}")
        return body


async def until(what: str, check: Callable[[], Awaitable[Any]]) -> Any:
    """Poll `check` until it returns something truthy (effects that travel through NATS events)."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not (result := await check()):
        if time.monotonic() > deadline:
            raise DemoError(f"timed out after {WAIT_SECONDS:.0f}s waiting until {what}")
        await asyncio.sleep(0.1)
    return result


_CODE = re.compile(r"DEV-SMS \S+ to (\+\d+): Your Laiwang verification code is (\d{6})")


def sms_codes(sms_log: Path, msisdn: str) -> list[str]:
    text = sms_log.read_text(errors="replace") if sms_log.exists() else ""
    return [code for to, code in _CODE.findall(text) if to == msisdn]


def login_body(persona: Persona) -> dict[str, Any]:
    return {
        "type": "m.login.password",
        "identifier": {"type": "m.id.user", "user": persona.localpart},
        "password": persona.password,
    }


async def sign_in(api: Api, persona: Persona, result: DemoResult) -> Session:
    """Register (or find the existing account), then log in on the demo's own device."""
    status, body = await api.call(
        "POST",
        f"{V3}/register",
        json={
            "username": persona.localpart,
            "password": persona.password,
            "auth": {"type": "m.login.dummy"},
            "inhibit_login": True,
        },
    )
    if status == 200:
        result.created.append(f"account {body['user_id']}")
    elif body.get("errcode") != "M_USER_IN_USE":
        raise DemoError(f"registering {persona.localpart} answered {status}: {body}")
    body = await api.ok(
        "POST",
        f"{V3}/login",
        json={**login_body(persona), "device_id": DEVICE_ID, "initial_device_display_name": "laiwang demo"},
    )
    session = Session(persona, body["user_id"], body["access_token"])
    await api.ok("PUT", f"{V3}/profile/{session.user_id}/displayname", session, {"displayname": persona.display_name})
    return session


async def verify_phone(api: Api, session: Session, sms_log: Path, result: DemoResult) -> None:
    """Bind the persona's number unless it is bound already; the code comes from the dev SMS log."""
    msisdn = session.persona.msisdn
    bound = await api.ok("GET", f"{V3}/account/3pid", session)
    if any(t["medium"] == "msisdn" and t["address"] == msisdn.lstrip("+") for t in bound["threepids"]):
        return
    before = len(sms_codes(sms_log, msisdn))
    secret = secrets.token_hex(16)
    sent = await api.ok(
        "POST",
        f"{V3}/account/3pid/msisdn/requestToken",
        json={"client_secret": secret, "country": "CN", "phone_number": session.persona.national, "send_attempt": 1},
    )

    async def new_code() -> str | None:
        codes = sms_codes(sms_log, msisdn)
        return codes[-1] if len(codes) > before else None

    try:
        code = await until(f"a code for {msisdn} appears in {sms_log}", new_code)
    except DemoError as exc:
        raise DemoError(f"{exc}; run the demo from the directory of `make run`, or pass --sms-log") from None
    await api.ok(
        "POST",
        f"{V3}/account/3pid/msisdn/submit_token",
        json={"sid": sent["sid"], "client_secret": secret, "token": code},
    )
    await api.ok("POST", f"{V3}/account/3pid/add", session, {"sid": sent["sid"], "client_secret": secret})
    result.created.append(f"phone {msisdn} for {session.user_id}")


async def befriend(api: Api, x: Session, y: Session, result: DemoResult) -> None:
    """x asks once y shows up among x's matches; y accepts. Nothing happens if they are friends."""
    relation = await api.ok("GET", f"{V1}/relationship/{y.user_id}", x)
    if relation.get("friends"):
        return

    async def matched() -> bool:
        # Re-adding a number already in the book changes nothing but answers whether it matches now
        # (contacts learns of verified phones from auth's events, so a fresh number takes a moment).
        body = await api.ok("POST", f"{V1}/contacts/sync", x, {"add": [y.persona.msisdn], "region": "CN"})
        return any(m["user_id"] == y.user_id for m in body["matches"])

    await until(f"{y.user_id} matches {x.user_id}'s address book", matched)
    await api.ok("POST", f"{V1}/friends/requests", x, {"user_id": y.user_id, "message": "Laiwang demo"})
    await api.ok("POST", f"{V1}/friends/requests/{x.user_id}/accept", y)
    result.created.append(f"friendship {x.user_id} - {y.user_id}")


async def find_room(api: Api, who: Session, name: str) -> str | None:
    joined = await api.ok("GET", f"{V3}/joined_rooms", who)
    for room_id in joined["joined_rooms"]:
        status, body = await api.call("GET", f"{V3}/rooms/{room_id}/state/m.room.name", who)
        if status == 200 and body.get("name") == name:
            return room_id
    return None


async def until_allowed(api: Api, what: str, method: str, path: str, who: Session, json: Any) -> Any:
    """Retry a call that messaging refuses (403) until it has seen the friendship from contacts' events."""

    async def attempt() -> Any:
        status, body = await api.call(method, path, who, json)
        if status not in (200, 403):
            raise DemoError(f"{method} {path} answered {status}: {body}")
        return body if status == 200 else None

    return await until(what, attempt)


async def direct_room(api: Api, alice: Session, bob: Session, result: DemoResult) -> str:
    room_id = await find_room(api, alice, ROOM_NAME)
    if room_id is None:
        body = await until_allowed(
            api,
            f"messaging lets {alice.user_id} start a chat with {bob.user_id}",
            "POST",
            f"{V3}/createRoom",
            alice,
            {"name": ROOM_NAME, "preset": "trusted_private_chat", "is_direct": True, "invite": [bob.user_id]},
        )
        room_id = body["room_id"]
        result.created.append(f"room {room_id}")
    members = await api.ok("GET", f"{V3}/rooms/{room_id}/joined_members", alice)
    if bob.user_id not in members["joined"]:
        status, _ = await api.call("POST", f"{V3}/rooms/{room_id}/join", bob, {})
        if status == 403:  # not invited (an earlier run stopped half-way): invite, then join
            await until_allowed(
                api,
                f"messaging lets {alice.user_id} invite {bob.user_id}",
                "POST",
                f"{V3}/rooms/{room_id}/invite",
                alice,
                {"user_id": bob.user_id},
            )
            await api.ok("POST", f"{V3}/rooms/{room_id}/join", bob, {})
    return room_id


async def send(api: Api, who: Session, room_id: str, txn_id: str, text: str) -> None:
    await api.ok("PUT", f"{V3}/rooms/{room_id}/send/m.room.message/{txn_id}", who, {"msgtype": "m.text", "body": text})


async def zhadui(api: Api, alice: Session, carol: Session, result: DemoResult) -> tuple[str, str]:
    """Alice's zhadui (found in her feed, or started), joined by Carol once she is in its audience."""
    feed = await api.ok("GET", f"{V1}/zhadui/feed?limit=50", alice)
    mine = [z for z in feed["items"] if z["creator"] == alice.user_id and z["title"] == ZHADUI_TITLE]
    if mine:
        zhadui_id = mine[0]["zhadui_id"]
    else:
        zhadui_id = (
            await api.ok(
                "POST",
                f"{V1}/zhadui",
                alice,
                {"title": ZHADUI_TITLE, "body": "Fragrant Hills, 9:00 at the east gate. Who's in?", "tags": ["hiking"]},
            )
        )["zhadui_id"]
        result.created.append(f"zhadui {zhadui_id}")

    async def visible() -> Any:
        status, body = await api.call("GET", f"{V1}/zhadui/{zhadui_id}", carol)
        return body if status == 200 else None

    preview = await until(f"{carol.user_id} sees the zhadui (she is Alice's friend)", visible)
    if not preview["joined"]:
        await api.ok("POST", f"{V1}/zhadui/{zhadui_id}/join", carol, {})
        result.created.append(f"{carol.user_id} joined zhadui {zhadui_id}")
    discussion = await api.ok("GET", f"{V1}/zhadui/{zhadui_id}/discussion", carol)
    return zhadui_id, discussion["room_id"]


async def run_demo(url: str, sms_log: Path) -> DemoResult:
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as http:
        api = Api(http, url)
        result = DemoResult(url, [])
        for persona in PEOPLE:
            result.sessions.append(await sign_in(api, persona, result))
        alice, bob, carol = result.sessions
        for session in result.sessions:
            await verify_phone(api, session, sms_log, result)
        for session in result.sessions:  # everyone has the other two in their phone
            others = [s.persona.msisdn for s in result.sessions if s is not session]
            await api.ok("POST", f"{V1}/contacts/upload", session, {"numbers": others, "region": "CN"})
        await befriend(api, alice, bob, result)
        await befriend(api, alice, carol, result)
        result.room_id = await direct_room(api, alice, bob, result)
        for sender, txn_id, text in CHAT:
            await send(api, result.sessions[sender], result.room_id, txn_id, text)
        result.zhadui_id, result.discussion_room_id = await zhadui(api, alice, carol, result)
        sender, txn_id, text = DISCUSSION
        await send(api, result.sessions[sender], result.discussion_room_id, txn_id, text)
        return result


def report(result: DemoResult) -> str:
    lines = [f"Laiwang demo at {result.url}", ""]
    lines.append(f"{'user id':<28}{'password':<24}phone")
    for s in result.sessions:
        lines.append(f"{s.user_id:<28}{s.persona.password:<24}{s.persona.msisdn}")
    lines += [
        "",
        "Alice and Bob are friends and chat in a direct room; Alice and Carol are friends.",
        f"direct room (Alice, Bob): {result.room_id}",
        f"zhadui (Alice started, Carol joined): {result.zhadui_id}, discussion room {result.discussion_room_id}",
        "",
        "made now: " + ("; ".join(result.created) if result.created else "nothing (everything was there already)"),
        "",
        f"Point a Matrix client at {result.url} and log in as one of them, for example:",
        f"  curl -s -X POST {result.url}{V3}/login -d '{json.dumps(login_body(PEOPLE[1]))}'",
    ]
    return "\n".join(lines)


def default_sms_log(config: StackConfig) -> Path:
    """Where `make run` has the dev SMS provider write (AUTH_DEV_SMS_LOG, else <data dir>/dev-sms.log)."""
    return Path(os.environ.get("AUTH_DEV_SMS_LOG") or config.data_dir / "dev-sms.log")


def main(argv: list[str] | None = None) -> None:
    config = StackConfig.from_env()
    parser = argparse.ArgumentParser(prog="laiwang demo", description=__doc__.splitlines()[0])
    parser.add_argument("--url", default=config.gateway_url, help="the gateway (default: from GATEWAY_PORT)")
    parser.add_argument(
        "--sms-log",
        type=Path,
        default=default_sms_log(config),
        help="the dev SMS log (default: AUTH_DEV_SMS_LOG, else LAIWANG_DATA_DIR/dev-sms.log)",
    )
    args = parser.parse_args(argv)
    try:
        result = asyncio.run(run_demo(args.url.rstrip("/"), args.sms_log))
    except aiohttp.ClientConnectionError as exc:
        sys.exit(f"laiwang demo: cannot reach {args.url} ({exc}); is `make run` running?")
    except DemoError as exc:
        sys.exit(f"laiwang demo: {exc}")
    print(report(result), flush=True)


if __name__ == "__main__":
    main()
