"""A sample partner app, "Hotpot Finder": its own process, using only Laiwang's public HTTP API.

On start it signs in its owner account (registering it if needed) and registers itself as an app
(or reuses the one it registered before, kept in SAMPLE_STATE_FILE). Then it serves:

GET  /                  a page with "Connect with Laiwang"
GET  /connect           starts OAuth 2 (authorization code + PKCE S256, Authlib's client)
GET  /oauth/callback    exchanges the code; the user's tokens are kept in memory
POST /webhooks          Laiwang's signed events: the signature is verified (standardwebhooks);
                        a subscriber's message is answered with a card in their room
GET  /status            what it has seen (for a person, and for the e2e tests)

Run it against a stack started with OPEN_PLATFORM_ALLOW_LOOPBACK_WEBHOOKS=true (webhooks to this
loopback process): `make run` in one terminal, `make sample` in another (docs/open_platform.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import os
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
from aiohttp import web
from authlib.integrations.requests_client import OAuth2Session
from standardwebhooks import Webhook, WebhookVerificationError

log = logging.getLogger("sample-app")
SCOPES = "profile:read cards:write"


@dataclass
class Settings:
    laiwang: str
    host: str
    port: int
    owner_user: str
    owner_password: str
    state_file: Path

    @property
    def base(self) -> str:
        return f"http://{self.host}:{self.port}"

    @classmethod
    def from_env(cls) -> Settings:
        return cls(
            laiwang=os.environ.get("LAIWANG_URL", "http://127.0.0.1:8008").rstrip("/"),
            host=os.environ.get("SAMPLE_HOST", "127.0.0.1"),
            port=int(os.environ.get("SAMPLE_PORT", "8090")),
            owner_user=os.environ.get("SAMPLE_OWNER_USER", "hotpot_owner"),
            owner_password=os.environ.get("SAMPLE_OWNER_PASSWORD", "sample app owner password"),
            state_file=Path(os.environ.get("SAMPLE_STATE_FILE", "var/sample-app.json")),
        )


@dataclass
class State:
    client_id: str = ""
    client_secret: str = ""
    webhook_secret: str = ""
    pending: dict[str, str] = field(default_factory=dict)  # OAuth state -> code verifier
    users: dict[str, dict[str, Any]] = field(default_factory=dict)  # user id -> token
    events: list[dict[str, Any]] = field(default_factory=list)
    rejected: int = 0
    answered: list[str] = field(default_factory=list)  # card event ids
    seen_ids: set[str] = field(default_factory=set)


class SampleApp:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.state = State()
        self.http: aiohttp.ClientSession | None = None

    # -- start-up: owner account and app registration ------------------------------------------------

    async def _owner_token(self) -> str:
        s, http = self.settings, self.http
        assert http is not None
        login = {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": s.owner_user},
            "password": s.owner_password,
        }
        async with http.post(f"{s.laiwang}/_matrix/client/v3/login", json=login) as r:
            if r.status == 200:
                return (await r.json())["access_token"]
        register = {"username": s.owner_user, "password": s.owner_password, "auth": {"type": "m.login.dummy"}}
        async with http.post(f"{s.laiwang}/_matrix/client/v3/register", json=register) as r:
            body = await r.json()
            if r.status != 200:
                raise RuntimeError(f"cannot sign in or register the owner account: {body}")
            return body["access_token"]

    async def register(self) -> None:
        s = self.settings
        if s.state_file.exists():
            saved = json.loads(s.state_file.read_text())
            self.state.client_id, self.state.client_secret = saved["client_id"], saved["client_secret"]
            self.state.webhook_secret = saved["webhook_secret"]
            return
        token = await self._owner_token()
        settings = {
            "name": "Hotpot Finder (sample)",
            "description": "Finds the cheapest hotpot near you. A sample partner app.",
            "homepage_url": "https://github.com/",
            "redirect_uris": [f"{s.base}/oauth/callback"],
            "webhook_url": f"{s.base}/webhooks",
            "scopes": ["profile:read", "cards:write", "subscribers:message"],
        }
        assert self.http is not None
        async with self.http.post(
            f"{s.laiwang}/_laiwang/client/v1/apps", json=settings, headers={"Authorization": f"Bearer {token}"}
        ) as r:
            body = await r.json()
            if r.status != 200:
                raise RuntimeError(f"cannot register the app: {body}")
        self.state.client_id, self.state.client_secret = body["client_id"], body["client_secret"]
        self.state.webhook_secret = body["webhook_secret"]
        s.state_file.parent.mkdir(parents=True, exist_ok=True)
        s.state_file.write_text(
            json.dumps(
                {
                    "client_id": body["client_id"],
                    "client_secret": body["client_secret"],
                    "webhook_secret": body["webhook_secret"],
                }
            )
        )
        s.state_file.chmod(0o600)
        log.info("registered app %s", body["client_id"])

    # -- OAuth ---------------------------------------------------------------------------------------

    def _oauth(self) -> OAuth2Session:
        return OAuth2Session(
            self.state.client_id,
            self.state.client_secret,
            scope=SCOPES,
            redirect_uri=f"{self.settings.base}/oauth/callback",
            code_challenge_method="S256",
        )

    async def index(self, _: web.Request) -> web.Response:
        users = "".join(f"<li>{html.escape(u)}</li>" for u in self.state.users)
        return web.Response(
            content_type="text/html",
            text=(
                "<!doctype html><title>Hotpot Finder</title><h1>Hotpot Finder (a Laiwang sample app)</h1>"
                '<p><a href="/connect">Connect with Laiwang</a></p>'
                f"<p>Connected users:</p><ul>{users}</ul>"
            ),
        )

    async def connect(self, _: web.Request) -> web.Response:
        verifier = secrets.token_urlsafe(48)
        url, state = self._oauth().create_authorization_url(
            f"{self.settings.laiwang}/_laiwang/oauth2/authorize", code_verifier=verifier
        )
        self.state.pending[state] = verifier
        return web.Response(status=303, headers={"Location": url})

    async def callback(self, request: web.Request) -> web.Response:
        verifier = self.state.pending.pop(request.query.get("state", ""), None)
        if verifier is None or "code" not in request.query:
            return web.Response(status=400, text=f"authorization failed: {request.query.get('error', 'bad state')}")
        client = self._oauth()
        token = await asyncio.to_thread(
            client.fetch_token,
            f"{self.settings.laiwang}/_laiwang/oauth2/token",
            authorization_response=str(request.url),
            code_verifier=verifier,
        )
        me = await self._get("/_laiwang/apps/v1/me", token["access_token"])
        self.state.users[me["user_id"]] = token
        return web.Response(content_type="text/html", text=f"<p>Connected as {html.escape(me['user_id'])}.</p>")

    async def _get(self, path: str, token: str) -> Any:
        assert self.http is not None
        async with self.http.get(f"{self.settings.laiwang}{path}", headers={"Authorization": f"Bearer {token}"}) as r:
            r.raise_for_status()
            return await r.json()

    # -- webhooks ------------------------------------------------------------------------------------

    async def webhooks(self, request: web.Request) -> web.Response:
        body = await request.text()
        try:
            event = Webhook(self.state.webhook_secret).verify(body, dict(request.headers))
        except WebhookVerificationError:
            self.state.rejected += 1
            return web.Response(status=400, text="bad signature")
        webhook_id = request.headers["webhook-id"]
        if webhook_id in self.state.seen_ids:
            return web.json_response({})  # a retry of something handled already
        self.state.seen_ids.add(webhook_id)
        self.state.events.append({"id": webhook_id, **event})
        if event["type"] == "message.received":
            await self._answer(event["data"])
        return web.json_response({})

    async def _answer(self, data: dict[str, Any]) -> None:
        """Answer a subscriber's message with a card, with the token they granted."""
        token = self.state.users.get(data["user_id"])
        if token is None:
            return
        card = {
            "title": "Spicy hotpot, 2 people",
            "description": f"You asked: {data['content'].get('body', '')[:200]}",
            "link": "https://github.com/",
            "buttons": [{"id": "buy", "label": "Buy"}, {"id": "later", "label": "Later"}],
        }
        assert self.http is not None
        async with self.http.post(
            f"{self.settings.laiwang}/_laiwang/apps/v1/rooms/{quote(data['room_id'])}/cards",
            json={"card": card},
            headers={"Authorization": f"Bearer {token['access_token']}"},
        ) as r:
            if r.status == 200:
                self.state.answered.append((await r.json())["event_id"])
            else:
                log.warning("posting the card failed: %s %s", r.status, await r.text())

    async def status(self, _: web.Request) -> web.Response:
        return web.json_response(
            {
                "client_id": self.state.client_id,
                "users": sorted(self.state.users),
                "events": self.state.events,
                "rejected_deliveries": self.state.rejected,
                "answered_with_cards": self.state.answered,
            }
        )


async def serve(settings: Settings) -> None:
    app = SampleApp(settings)
    async with aiohttp.ClientSession() as http:
        app.http = http
        await app.register()
        web_app = web.Application()
        web_app.add_routes(
            [
                web.get("/", app.index),
                web.get("/connect", app.connect),
                web.get("/oauth/callback", app.callback),
                web.post("/webhooks", app.webhooks),
                web.get("/status", app.status),
            ]
        )
        runner = web.AppRunner(web_app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, settings.host, settings.port).start()
        print(f"sample app: {settings.base} (client_id {app.state.client_id})", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await runner.cleanup()


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s sample-app %(levelname)s %(message)s")
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve(Settings.from_env()))
