"""The one error table: a refusal raised in a service reaches the client with the table's HTTP status."""

from __future__ import annotations

import grpc
import pytest

from gateway.rpc import matrix_error_from
from plumbing.domain_errors import ERRCODES, DomainError, Errcode, ErrorKind, try_again
from plumbing.grpc_errors import ERRCODE_KEY, RETRY_AFTER_KEY, STATUS_OF_KIND

pytestmark = pytest.mark.unit


def _rpc_error(code: grpc.StatusCode, trailing: tuple[tuple[str, str], ...] = (), details: str = "d"):
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), grpc.aio.Metadata(*trailing), details)


def _through_the_wire(error: DomainError):
    """What `abort_with` sends for `error`, as the gateway's stub sees it."""
    trailing = [(ERRCODE_KEY, str(error.errcode))]
    if error.retry_after_ms:
        trailing.append((RETRY_AFTER_KEY, str(error.retry_after_ms)))
    return matrix_error_from(_rpc_error(STATUS_OF_KIND[error.kind], tuple(trailing), error.message))


@pytest.mark.parametrize("errcode", sorted(ERRCODES))
def test_every_errcode_reaches_the_client_with_its_kinds_http_status(errcode: str) -> None:
    answered = _through_the_wire(DomainError(errcode, "no"))
    assert (answered.status, answered.errcode) == (ERRCODES[errcode].http_status, errcode)


def test_too_large_is_413_and_in_use_is_400_as_matrix_says() -> None:
    assert _through_the_wire(DomainError(Errcode.TOO_LARGE, "big")).status == 413
    assert _through_the_wire(DomainError(Errcode.USER_IN_USE, "taken")).status == 400
    limited = _through_the_wire(DomainError(Errcode.LIMIT_EXCEEDED, "slow down", retry_after_ms=1500))
    assert (limited.status, limited.extra) == (429, {"retry_after_ms": 1500})


def test_an_errcode_of_no_fixed_kind_must_name_its_kind() -> None:
    with pytest.raises(ValueError, match="M_UNKNOWN"):
        DomainError(Errcode.UNKNOWN, "which status?")
    answered = _through_the_wire(try_again("identity provider unreachable"))
    assert (answered.status, answered.errcode, answered.extra) == (503, "M_UNKNOWN", {"retry_after_ms": 1000})


def test_without_an_errcode_the_grpc_status_picks_the_kind() -> None:
    unreachable = matrix_error_from(_rpc_error(grpc.StatusCode.UNAVAILABLE))
    assert (unreachable.status, unreachable.errcode) == (503, "M_UNAVAILABLE")
    assert matrix_error_from(_rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED)).status == 504
    crashed = matrix_error_from(_rpc_error(grpc.StatusCode.UNKNOWN, details="Traceback: secret"))
    assert (crashed.status, crashed.errcode) == (500, "M_UNKNOWN") and "secret" not in crashed.error


def test_each_kind_is_a_distinct_grpc_status() -> None:
    assert len({STATUS_OF_KIND[kind] for kind in ErrorKind}) == len(ErrorKind)
