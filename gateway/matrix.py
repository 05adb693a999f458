"""Matrix-style HTTP errors and JSON helpers shared by every route."""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

# Matrix event content is canonical JSON: integers only, within this range.
CANONICAL_INT_MIN = -(2**53) + 1
CANONICAL_INT_MAX = 2**53 - 1


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
    return web.Response(
        body=orjson.dumps(body), status=status, content_type="application/json", headers=headers
    )


async def read_json_object(request: web.Request, *, allow_empty: bool = False) -> dict[str, Any]:
    """The request body as a JSON object, or M_NOT_JSON / M_BAD_JSON.

    Some clients send no body at all for POST /join and /logout; `allow_empty` treats that as {}.
    """
    raw = await request.read()
    if not raw.strip():
        if allow_empty:
            return {}
        raise MatrixError(400, "M_NOT_JSON", "request body is empty; expected a JSON object")
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise MatrixError(400, "M_NOT_JSON", "request body is not valid JSON") from None
    if not isinstance(value, dict):
        raise MatrixError(400, "M_BAD_JSON", "request body must be a JSON object")
    return value
