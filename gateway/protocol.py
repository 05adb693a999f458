"""The gateway's HTTP connections: a header deadline against slow clients, and Matrix errors from the parser.

aiohttp has no timeout on reading a request's headers (its keep-alive timer is armed once per
request, and a client trickling header bytes keeps the connection for as long as it likes), and it
answers requests its HTTP parser refuses with a plain-text 400. `GatewayRunner` serves the app
through `HardenedRequestHandler`, which:

- closes a connection whose request headers are not complete within `header_timeout` seconds of
  their first byte (or of the connection opening);
- answers parser errors (bad request line, bad header, oversized line) as Matrix JSON errors.

The body deadline and the declared-length check are in gateway/app.py (`read_body`), since the
body is read inside a handler's task.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest
from aiohttp.web_response import StreamResponse

from gateway.matrix import MatrixError

log = logging.getLogger(__name__)


class HardenedRequestHandler(RequestHandler):
    """aiohttp's connection handler with a header deadline and Matrix-shaped parser errors."""

    def __init__(self, *args: Any, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timeout = header_timeout
        self._header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._arm_header_timer()

    def connection_lost(self, exc: BaseException | None) -> None:
        self._disarm_header_timer()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._awaiting_request():
            self._arm_header_timer()
        super().data_received(data)
        if not self._awaiting_request():
            self._disarm_header_timer()  # the headers are in; the body has its own deadline

    def _awaiting_request(self) -> bool:
        """True while the connection waits for (the rest of) a request's headers."""
        return not self._messages and self._current_request is None and not self._force_close

    def _arm_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self._loop.call_later(self._header_timeout, self._headers_too_slow)

    def _disarm_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_too_slow(self) -> None:
        self._header_timer = None
        if self._awaiting_request() and self.transport is not None:
            log.info("closing a connection whose request headers took over %.1f s", self._header_timeout)
            self.force_close()

    def handle_error(
        self, request: BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> StreamResponse:
        """A request the HTTP parser refused (or a failure outside any handler), as a Matrix error."""
        if status >= 500:
            log.error("error handling a request from %s", request.remote, exc_info=exc)
            error = MatrixError(status, "M_UNKNOWN", "internal server error")
        else:
            # The client's fault: no traceback in the logs for every port scanner.
            log.info("refused a malformed HTTP request from %s: %s", request.remote, message or exc)
            error = MatrixError(status, "M_UNRECOGNIZED", f"malformed HTTP request: {message or status}"[:300])
        if request.writer.output_size > 0:
            raise ConnectionError("a response was already sent; cannot send an error after it")
        response = error.to_response()
        response.force_close()
        return response


class HardenedServer(web.Server):
    """aiohttp's Server, making `HardenedRequestHandler` connections."""

    header_timeout: float = 10.0

    def __call__(self) -> RequestHandler:
        return HardenedRequestHandler(self, loop=self._loop, header_timeout=self.header_timeout, **self._kwargs)


class GatewayRunner(web.AppRunner):
    """An AppRunner whose server makes hardened connections (see the module docstring)."""

    def __init__(self, app: web.Application, *, header_timeout: float, **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._header_timeout = header_timeout

    async def _make_server(self) -> web.Server:
        server = await super()._make_server()
        # AppRunner builds the Server itself; switching its class is the one hook that keeps every
        # other part of aiohttp's start-up (app freezing, signals, handler arguments) as it is.
        server.__class__ = HardenedServer
        server.header_timeout = self._header_timeout  # type: ignore[attr-defined]
        return server
