"""DomainError -> gRPC status, with the Matrix errcode (and retry hint) in trailing metadata."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc
from nats.errors import ConnectionClosedError, NoRespondersError, NoServersError
from nats.errors import TimeoutError as NatsTimeoutError
from pymongo.errors import ConnectionFailure, PyMongoError

from plumbing.domain_errors import DomainError, ErrorKind

ERRCODE_KEY = "laiwang-errcode"
RETRY_AFTER_KEY = "laiwang-retry-after-ms"

# The gRPC half of the table in plumbing.domain_errors (which names the statuses without importing grpc).
STATUS_OF_KIND: dict[ErrorKind, grpc.StatusCode] = {kind: grpc.StatusCode[kind.grpc_status_name] for kind in ErrorKind}

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])

# What a client sees while a store, the bus or a downstream service is out: 503 with a retry hint
# (Matrix clients retry 5xx after retry_after_ms / Retry-After).
UNAVAILABLE_ERRCODE = ErrorKind.UNAVAILABLE.default_errcode
UNAVAILABLE_RETRY_AFTER_MS = 1000
_NATS_OUTAGES = (NatsTimeoutError, NoServersError, ConnectionClosedError, NoRespondersError)
_DOWNSTREAM_OUTAGES = (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED)


def _is_outage(error: BaseException) -> bool:
    if isinstance(error, ConnectionFailure):  # AutoReconnect, NetworkTimeout, NotPrimaryError, ServerSelection...
        return True
    if isinstance(error, PyMongoError) and error.has_error_label("TransientTransactionError"):
        return True
    if isinstance(error, _NATS_OUTAGES):
        return True
    return isinstance(error, grpc.aio.AioRpcError) and error.code() in _DOWNSTREAM_OUTAGES


def outage_of(error: BaseException) -> BaseException | None:
    """The infrastructure failure behind `error` (itself or what it was raised from), if any.

    The one place that decides which failures are "try again shortly" rather than a bug.
    """
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if _is_outage(current):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def unavailable(cause: BaseException) -> DomainError:
    return DomainError(
        UNAVAILABLE_ERRCODE,
        f"temporarily unavailable ({type(cause).__name__}); retry shortly",
        retry_after_ms=UNAVAILABLE_RETRY_AFTER_MS,
    )


async def abort_with(context: grpc.aio.ServicerContext, error: DomainError) -> None:
    trailing: list[tuple[str, str]] = [(ERRCODE_KEY, error.errcode)]
    if error.retry_after_ms:
        trailing.append((RETRY_AFTER_KEY, str(error.retry_after_ms)))
    await context.abort(STATUS_OF_KIND[error.kind], error.message, trailing_metadata=tuple(trailing))


def maps_domain_errors(method: F) -> F:
    """Decorate a servicer method so a DomainError becomes the matching gRPC status."""

    @functools.wraps(method)
    async def wrapper(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await method(self, request, context)
        except DomainError as error:
            await abort_with(context, error)

    return wrapper  # type: ignore[return-value]
