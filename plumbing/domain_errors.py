"""Errors a service's domain core raises, carrying the Matrix errcode the client should see.

Cores import only this module (no gRPC); the API layer turns a DomainError into a gRPC status
with the errcode in trailing metadata (`plumbing.grpc_errors`), and the gateway turns that back
into an HTTP status and a Matrix error body (`gateway.rpc`).
"""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    INVALID = "invalid"  # 400
    UNAUTHENTICATED = "unauthenticated"  # 401
    FORBIDDEN = "forbidden"  # 403
    NOT_FOUND = "not_found"  # 404
    CONFLICT = "conflict"  # 409 (or 400 where Matrix says so, e.g. M_USER_IN_USE)
    TOO_LARGE = "too_large"  # 413
    RATE_LIMITED = "rate_limited"  # 429
    UNAVAILABLE = "unavailable"  # 503


class DomainError(Exception):
    def __init__(self, kind: ErrorKind, errcode: str, message: str, retry_after_ms: int = 0) -> None:
        super().__init__(message)
        self.kind = kind
        self.errcode = errcode
        self.message = message
        self.retry_after_ms = retry_after_ms


def invalid(message: str, errcode: str = "M_INVALID_PARAM") -> DomainError:
    return DomainError(ErrorKind.INVALID, errcode, message)


def forbidden(message: str) -> DomainError:
    return DomainError(ErrorKind.FORBIDDEN, "M_FORBIDDEN", message)


def not_found(message: str) -> DomainError:
    return DomainError(ErrorKind.NOT_FOUND, "M_NOT_FOUND", message)


def rate_limited(message: str, retry_after_ms: int) -> DomainError:
    return DomainError(ErrorKind.RATE_LIMITED, "M_LIMIT_EXCEEDED", message, retry_after_ms=retry_after_ms)
