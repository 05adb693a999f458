"""DomainError -> gRPC status, with the Matrix errcode (and retry hint) in trailing metadata."""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import grpc

from plumbing.domain_errors import DomainError, ErrorKind

ERRCODE_KEY = "laiwang-errcode"
RETRY_AFTER_KEY = "laiwang-retry-after-ms"

STATUS_OF_KIND: dict[ErrorKind, grpc.StatusCode] = {
    ErrorKind.INVALID: grpc.StatusCode.INVALID_ARGUMENT,
    ErrorKind.UNAUTHENTICATED: grpc.StatusCode.UNAUTHENTICATED,
    ErrorKind.FORBIDDEN: grpc.StatusCode.PERMISSION_DENIED,
    ErrorKind.NOT_FOUND: grpc.StatusCode.NOT_FOUND,
    ErrorKind.CONFLICT: grpc.StatusCode.ALREADY_EXISTS,
    ErrorKind.TOO_LARGE: grpc.StatusCode.OUT_OF_RANGE,
    ErrorKind.RATE_LIMITED: grpc.StatusCode.RESOURCE_EXHAUSTED,
    ErrorKind.UNAVAILABLE: grpc.StatusCode.UNAVAILABLE,
}

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


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
