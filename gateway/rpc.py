"""Calling a service from a route: gRPC failures become Matrix errors with the right HTTP status."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from gateway.matrix import MatrixError
from plumbing.grpc_errors import ERRCODE_KEY, RETRY_AFTER_KEY, UNAVAILABLE_ERRCODE, UNAVAILABLE_RETRY_AFTER_MS

T = TypeVar("T")

HTTP_OF_STATUS: dict[grpc.StatusCode, tuple[int, str]] = {
    grpc.StatusCode.INVALID_ARGUMENT: (400, "M_INVALID_PARAM"),
    grpc.StatusCode.FAILED_PRECONDITION: (400, "M_UNKNOWN"),
    grpc.StatusCode.OUT_OF_RANGE: (413, "M_TOO_LARGE"),
    grpc.StatusCode.UNAUTHENTICATED: (401, "M_UNKNOWN_TOKEN"),
    grpc.StatusCode.PERMISSION_DENIED: (403, "M_FORBIDDEN"),
    grpc.StatusCode.NOT_FOUND: (404, "M_NOT_FOUND"),
    grpc.StatusCode.ALREADY_EXISTS: (409, "M_UNKNOWN"),
    grpc.StatusCode.RESOURCE_EXHAUSTED: (429, "M_LIMIT_EXCEEDED"),
    grpc.StatusCode.UNAVAILABLE: (503, UNAVAILABLE_ERRCODE),
    grpc.StatusCode.DEADLINE_EXCEEDED: (504, "M_UNKNOWN"),
}
# Matrix answers these with 400 whatever the gRPC status says.
ERRCODES_THAT_ARE_400 = {
    "M_USER_IN_USE",
    "M_THREEPID_IN_USE",
    "M_BAD_JSON",
    "M_NOT_JSON",
    "M_INVALID_USERNAME",
    "M_WEAK_PASSWORD",
    "M_INVALID_PEPPER",
    "M_MISSING_PARAM",
    "M_INVALID_PARAM",
}


def matrix_error_from(error: grpc.aio.AioRpcError) -> MatrixError:
    trailing = {key: value for key, value in (error.trailing_metadata() or ())}
    status, default_errcode = HTTP_OF_STATUS.get(error.code(), (500, "M_UNKNOWN"))
    errcode = str(trailing.get(ERRCODE_KEY) or default_errcode)
    if errcode in ERRCODES_THAT_ARE_400:
        status = 400
    message = error.details() or errcode
    if status == 500:
        message = "internal error in a downstream service"  # never leak internals to clients
    extra: dict[str, Any] = {}
    if retry_after := trailing.get(RETRY_AFTER_KEY):
        extra["retry_after_ms"] = int(retry_after)
    elif status == 503:  # the service itself is unreachable: clients retry after this hint
        extra["retry_after_ms"] = UNAVAILABLE_RETRY_AFTER_MS
    return MatrixError(status, errcode, message, **extra)


async def call(method: Callable[..., Awaitable[T]], request: Any, timeout: float | None = None) -> T:
    """`await call(stub.Method, request)`: the reply, or a MatrixError a route can let fly."""
    try:
        return await method(request, timeout=timeout)
    except grpc.aio.AioRpcError as error:
        raise matrix_error_from(error) from None
