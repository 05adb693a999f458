"""The one error table: Matrix errcode -> kind -> gRPC status -> HTTP status, and the error cores raise.

Every refusal in every service is a `DomainError(errcode, message)`; its kind (and so its gRPC and
HTTP status) comes from `ERRCODES`. The API layer turns it into a gRPC status with the errcode in
trailing metadata (`plumbing.grpc_errors`); the gateway reads the errcode back and answers with the
HTTP status from this same table (`gateway.rpc`). Cores import only this module (no gRPC).
"""

from __future__ import annotations

import enum


class ErrorKind(enum.Enum):
    """What went wrong, as a transport sees it: (gRPC status name, HTTP status, errcode if none is sent)."""

    INVALID = ("INVALID_ARGUMENT", 400, "M_INVALID_PARAM")
    UNAUTHENTICATED = ("UNAUTHENTICATED", 401, "M_UNKNOWN_TOKEN")
    FORBIDDEN = ("PERMISSION_DENIED", 403, "M_FORBIDDEN")
    NOT_FOUND = ("NOT_FOUND", 404, "M_NOT_FOUND")
    TOO_LARGE = ("OUT_OF_RANGE", 413, "M_TOO_LARGE")
    RATE_LIMITED = ("RESOURCE_EXHAUSTED", 429, "M_LIMIT_EXCEEDED")
    UNAVAILABLE = ("UNAVAILABLE", 503, "M_UNAVAILABLE")
    # Services never raise this one; it is what a caller sees when its deadline passes.
    TIMED_OUT = ("DEADLINE_EXCEEDED", 504, "M_UNKNOWN")

    @property
    def grpc_status_name(self) -> str:
        return self.value[0]

    @property
    def http_status(self) -> int:
        return self.value[1]

    @property
    def default_errcode(self) -> str:
        return self.value[2]


class Errcode(enum.StrEnum):
    """The Matrix errcodes Laiwang answers with."""

    BAD_JSON = "M_BAD_JSON"
    NOT_JSON = "M_NOT_JSON"
    INVALID_PARAM = "M_INVALID_PARAM"
    MISSING_PARAM = "M_MISSING_PARAM"
    INVALID_USERNAME = "M_INVALID_USERNAME"
    WEAK_PASSWORD = "M_WEAK_PASSWORD"
    INVALID_PEPPER = "M_INVALID_PEPPER"
    USER_IN_USE = "M_USER_IN_USE"
    THREEPID_IN_USE = "M_THREEPID_IN_USE"
    THREEPID_AUTH_FAILED = "M_THREEPID_AUTH_FAILED"
    THREEPID_NOT_FOUND = "M_THREEPID_NOT_FOUND"
    UNSUPPORTED_ROOM_VERSION = "M_UNSUPPORTED_ROOM_VERSION"
    UNRECOGNIZED = "M_UNRECOGNIZED"
    UNKNOWN_TOKEN = "M_UNKNOWN_TOKEN"
    MISSING_TOKEN = "M_MISSING_TOKEN"
    FORBIDDEN = "M_FORBIDDEN"
    USER_DEACTIVATED = "M_USER_DEACTIVATED"
    GUEST_ACCESS_FORBIDDEN = "M_GUEST_ACCESS_FORBIDDEN"
    NOT_FOUND = "M_NOT_FOUND"
    TOO_LARGE = "M_TOO_LARGE"
    LIMIT_EXCEEDED = "M_LIMIT_EXCEEDED"
    UNAVAILABLE = "M_UNAVAILABLE"
    WRONG_ROOM_KEYS_VERSION = "M_WRONG_ROOM_KEYS_VERSION"
    UNKNOWN = "M_UNKNOWN"


# Every errcode and its kind. Matrix answers "in use" and malformed-input codes with 400, so they
# are INVALID. M_UNKNOWN is not here: its kind varies, so whoever raises it names the kind
# (`DomainError(Errcode.UNKNOWN, ..., kind=...)`).
ERRCODES: dict[str, ErrorKind] = {
    Errcode.BAD_JSON: ErrorKind.INVALID,
    Errcode.NOT_JSON: ErrorKind.INVALID,
    Errcode.INVALID_PARAM: ErrorKind.INVALID,
    Errcode.MISSING_PARAM: ErrorKind.INVALID,
    Errcode.INVALID_USERNAME: ErrorKind.INVALID,
    Errcode.WEAK_PASSWORD: ErrorKind.INVALID,
    Errcode.INVALID_PEPPER: ErrorKind.INVALID,
    Errcode.USER_IN_USE: ErrorKind.INVALID,
    Errcode.THREEPID_IN_USE: ErrorKind.INVALID,
    Errcode.THREEPID_AUTH_FAILED: ErrorKind.INVALID,
    Errcode.THREEPID_NOT_FOUND: ErrorKind.INVALID,
    Errcode.UNSUPPORTED_ROOM_VERSION: ErrorKind.INVALID,
    Errcode.UNRECOGNIZED: ErrorKind.INVALID,
    Errcode.UNKNOWN_TOKEN: ErrorKind.UNAUTHENTICATED,
    Errcode.MISSING_TOKEN: ErrorKind.UNAUTHENTICATED,
    Errcode.FORBIDDEN: ErrorKind.FORBIDDEN,
    Errcode.USER_DEACTIVATED: ErrorKind.FORBIDDEN,
    Errcode.GUEST_ACCESS_FORBIDDEN: ErrorKind.FORBIDDEN,
    Errcode.NOT_FOUND: ErrorKind.NOT_FOUND,
    Errcode.TOO_LARGE: ErrorKind.TOO_LARGE,
    Errcode.LIMIT_EXCEEDED: ErrorKind.RATE_LIMITED,
    Errcode.UNAVAILABLE: ErrorKind.UNAVAILABLE,
    Errcode.WRONG_ROOM_KEYS_VERSION: ErrorKind.FORBIDDEN,  # the spec answers a stale key-backup version 403
}

KIND_OF_GRPC_STATUS: dict[str, ErrorKind] = {kind.grpc_status_name: kind for kind in ErrorKind}


class DomainError(Exception):
    """A rule said no: the Matrix errcode and a message for the client (the kind follows the errcode)."""

    def __init__(self, errcode: str, message: str, *, kind: ErrorKind | None = None, retry_after_ms: int = 0) -> None:
        super().__init__(message)
        found = kind or ERRCODES.get(errcode)
        if found is None:
            raise ValueError(f"{errcode} is not in plumbing.domain_errors.ERRCODES; name its kind")
        self.kind: ErrorKind = found
        self.errcode = errcode
        self.message = message
        self.retry_after_ms = retry_after_ms


class Conflict(DomainError):
    """A concurrent writer changed the document first: the caller retries its read-modify-write,
    and if it keeps losing the client gets 503 and may retry too. The one subclass, because callers
    catch it to retry."""

    def __init__(self, message: str) -> None:
        super().__init__(Errcode.UNKNOWN, message, kind=ErrorKind.UNAVAILABLE)


def invalid(message: str, errcode: str = Errcode.INVALID_PARAM) -> DomainError:
    return DomainError(errcode, message)


def bad_json(message: str) -> DomainError:
    return DomainError(Errcode.BAD_JSON, message)


def forbidden(message: str) -> DomainError:
    return DomainError(Errcode.FORBIDDEN, message)


def not_found(message: str) -> DomainError:
    return DomainError(Errcode.NOT_FOUND, message)


def too_large(message: str) -> DomainError:
    return DomainError(Errcode.TOO_LARGE, message)


def rate_limited(message: str, retry_after_ms: int) -> DomainError:
    return DomainError(Errcode.LIMIT_EXCEEDED, message, retry_after_ms=retry_after_ms)


def try_again(message: str) -> DomainError:
    """A dependency (another service, an identity provider) could not answer now: 503, retry."""
    return DomainError(Errcode.UNKNOWN, message, kind=ErrorKind.UNAVAILABLE)
