"""Calling a service from a route: gRPC failures become Matrix errors with the right HTTP status.

The status comes from the one table in `plumbing.domain_errors`: by the errcode a service sent in
the trailer, or, when none came (an outage, a deadline), by the gRPC status's kind.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from gateway.matrix import MatrixError
from plumbing.domain_errors import ERRCODES, KIND_OF_GRPC_STATUS
from plumbing.grpc_errors import ERRCODE_KEY, RETRY_AFTER_KEY, UNAVAILABLE_RETRY_AFTER_MS

T = TypeVar("T")

log = logging.getLogger(__name__)


def matrix_error_from(error: grpc.aio.AioRpcError) -> MatrixError:
    trailing = {key: value for key, value in (error.trailing_metadata() or ())}
    sent = str(trailing.get(ERRCODE_KEY) or "")
    kind = ERRCODES.get(sent) or KIND_OF_GRPC_STATUS.get(error.code().name)
    status = kind.http_status if kind else 500
    errcode = sent or (kind.default_errcode if kind else "M_UNKNOWN")
    message = error.details() or errcode
    if status == 500:
        # Never leak internals to clients; the operator gets them in the log.
        log.warning("downstream call failed: %s %s", error.code().name, error.details())
        message = "internal error in a downstream service"
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
