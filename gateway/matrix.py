"""Matrix-style HTTP errors and JSON responses shared by every route (reading requests: gateway/fields.py)."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web


class MatrixError(Exception):
    """An error answered as `{"errcode": ..., "error": ...}` with an HTTP status."""

    def __init__(self, status: int, errcode: str, error: str, **extra: Any) -> None:
        super().__init__(error)
        self.status = status
        self.errcode = errcode
        self.error = error
        self.extra = extra

    def to_response(self) -> web.Response:
        body = {"errcode": self.errcode, "error": self.error, **self.extra}
        headers = {}
        if "retry_after_ms" in self.extra:
            headers["Retry-After"] = str(max(1, int(self.extra["retry_after_ms"]) // 1000))
        return json_response(body, status=self.status, headers=headers)


def json_response(body: Any, status: int = 200, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json", headers=headers)
