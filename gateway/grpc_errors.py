"""gRPC failures of downstream services -> Matrix errors.

A service may put the Matrix errcode in trailing metadata (`laiwang-errcode`, plus
`laiwang-retry-after-ms` for rate limits); otherwise the gRPC status code decides. Usable by every
route module: `raise matrix_error(exc)` or `async with rpc_errors(): ...`.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator

import grpc

from gateway.matrix import MatrixError

log = logging.getLogger(__name__)

ERRCODE_KEY = "laiwang-errcode"
RETRY_AFTER_KEY = "laiwang-retry-after-ms"

# HTTP status of each Matrix errcode a service may return.
HTTP_STATUS = {
    "M_FORBIDDEN": 403,
    "M_USER_DEACTIVATED": 403,
    "M_GUEST_ACCESS_FORBIDDEN": 403,
    "M_UNKNOWN_TOKEN": 401,
    "M_MISSING_TOKEN": 401,
    "M_USER_IN_USE": 400,
    "M_INVALID_USERNAME": 400,
    "M_WEAK_PASSWORD": 400,
    "M_INVALID_PARAM": 400,
    "M_MISSING_PARAM": 400,
    "M_BAD_JSON": 400,
    "M_NOT_JSON": 400,
    "M_THREEPID_IN_USE": 400,
    "M_THREEPID_AUTH_FAILED": 400,
    "M_THREEPID_NOT_FOUND": 400,
    "M_LIMIT_EXCEEDED": 429,
    "M_NOT_FOUND": 404,
    "M_TOO_LARGE": 413,
}

# Fallback when a service gives no errcode.
BY_STATUS: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "M_INVALID_PARAM"),
    grpc.StatusCode.NOT_FOUND: (404, "M_NOT_FOUND"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "M_UNKNOWN"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "M_FORBIDDEN"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "M_UNKNOWN_TOKEN"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "M_LIMIT_EXCEEDED"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "M_UNKNOWN"),
}

_UNAVAILABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.CANCELLED}


def matrix_error(exc: grpc.aio.AioRpcError) -> MatrixError:
    code = exc.code()
    trailing = {key: value for key, value in (exc.trailing_metadata() or ())}
    errcode = str(trailing.get(ERRCODE_KEY, ""))
    extra: dict[str, object] = {}
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        try:
            extra["retry_after_ms"] = max(1, int(str(trailing.get(RETRY_AFTER_KEY, "1000"))))
        except ValueError:
            extra["retry_after_ms"] = 1000
    if errcode:
        status = HTTP_STATUS.get(errcode, BY_STATUS.get(code, (500, ""))[0])
        return MatrixError(status, errcode, exc.details() or errcode, **extra)
    if code in _UNAVAILABLE:
        log.warning("downstream call failed: %s", code.name)
        return MatrixError(503, "M_UNKNOWN", "a backend service is unavailable; try again shortly")
    if code in BY_STATUS:
        status, errcode = BY_STATUS[code]
        return MatrixError(status, errcode, exc.details() or errcode, **extra)
    log.error("downstream call failed: %s", code.name)
    return MatrixError(500, "M_UNKNOWN", "internal server error")


@contextlib.asynccontextmanager
async def rpc_errors() -> AsyncIterator[None]:
    """Translate a downstream gRPC failure raised inside the block into a MatrixError."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise matrix_error(exc) from None
