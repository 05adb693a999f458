"""A development push gateway: speaks the Matrix Push Gateway API and logs each notification.

`make run` starts it (docs/push.md), so that a newcomer sees a push happen without APNs or FCM:
register a pusher whose `data.url` is `http://127.0.0.1:<PUSH_GATEWAY_PORT>/_matrix/push/v1/notify`
and every poke appears in `make run`'s output as a `push-gateway` line. It stands in for Sygnal,
which is what carries pokes to Apple and Google in production.

  POST /_matrix/push/v1/notify    log the notification; answer {"rejected": [...]}: the pushkeys
                                  that start with the reject prefix (`--reject-prefix`, to try
                                  what a dead pushkey does)
  GET  /_laiwang/dev/notifications  the last notifications received, oldest first (JSON)
  GET  /healthz
"""

from __future__ import annotations

import argparse
import asyncio
import logging
from collections import deque
from typing import Any

import orjson
from aiohttp import web

log = logging.getLogger("push-gateway")

NOTIFY_PATH = "/_matrix/push/v1/notify"
MAX_BODY_BYTES = 64 * 1024


class PushGateway:
    """The gateway's state; `hold` (tests) makes it accept requests without ever answering them."""

    def __init__(self, reject_prefix: str = "", keep: int = 10_000) -> None:
        self.reject_prefix = reject_prefix
        self.received: deque[dict[str, Any]] = deque(maxlen=keep)  # answered with 200
        self.held: list[dict[str, Any]] = []  # read but never answered (while `hold` is set)
        self.hold = False
        self.failing: set[str] = set()  # pushkeys answered with 503 (tests: a gateway in trouble)
        self.failures = 0
        self.arrived = asyncio.Condition()

    async def notify(self, request: web.Request) -> web.Response:
        raw = await request.content.read(MAX_BODY_BYTES + 1)
        if len(raw) > MAX_BODY_BYTES:
            return _error(413, "M_TOO_LARGE", "notification too large")
        try:
            body = orjson.loads(raw)
            notification = body["notification"]
            devices = notification["devices"]
            pushkeys = [d["pushkey"] for d in devices]
        except (ValueError, KeyError, TypeError):
            return _error(400, "M_BAD_JSON", "not a Push Gateway API notification")
        if self.failing.intersection(pushkeys):
            self.failures += 1
            await self._arrived()
            return _error(503, "M_UNKNOWN", "temporarily unavailable")
        if self.hold:
            self.held.append(notification)
            await self._arrived()
            await asyncio.Event().wait()  # never answered: the pusher sees its request hang
        rejected = [key for key in pushkeys if self.reject_prefix and key.startswith(self.reject_prefix)]
        self.received.append(notification)
        log.info(
            "notification room=%s event=%s prio=%s unread=%s pushkeys=%s rejected=%s",
            notification.get("room_id"),
            notification.get("event_id"),
            notification.get("prio"),
            notification.get("counts", {}).get("unread"),
            ",".join(pushkeys),
            ",".join(rejected) or "-",
        )
        await self._arrived()
        return web.json_response({"rejected": rejected})

    async def _arrived(self) -> None:
        async with self.arrived:
            self.arrived.notify_all()

    async def wait_for(self, predicate: Any, timeout: float = 20.0) -> None:
        """Until `predicate()` holds (re-checked on each request), or TimeoutError."""

        async def wait() -> None:
            async with self.arrived:
                await self.arrived.wait_for(predicate)

        await asyncio.wait_for(wait(), timeout)

    async def recent(self, _: web.Request) -> web.Response:
        return web.json_response(list(self.received), dumps=lambda v: orjson.dumps(v).decode())

    def app(self) -> web.Application:
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.add_routes(
            [
                web.post(NOTIFY_PATH, self.notify),
                web.get("/_laiwang/dev/notifications", self.recent),
                web.get("/healthz", _healthz),
            ]
        )
        return app


async def _healthz(_: web.Request) -> web.Response:
    return web.json_response({"status": "ready"})


def _error(status: int, errcode: str, message: str) -> web.Response:
    return web.json_response({"errcode": errcode, "error": message}, status=status)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="laiwang dev-push-gateway", description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8009)
    parser.add_argument("--reject-prefix", default="reject-", help="pushkeys answered as rejected ('' for none)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    gateway = PushGateway(args.reject_prefix)
    log.info("dev push gateway on http://%s:%d%s", args.host, args.port, NOTIFY_PATH)
    web.run_app(gateway.app(), host=args.host, port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
