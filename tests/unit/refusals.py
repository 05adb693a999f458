"""`with refused("M_FORBIDDEN"):` — the block raises the one DomainError with that errcode."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from plumbing.domain_errors import DomainError


@contextlib.contextmanager
def refused(errcode: str, match: str | None = None) -> Iterator[pytest.ExceptionInfo[DomainError]]:
    with pytest.raises(DomainError, match=match) as caught:
        yield caught
    assert caught.value.errcode == errcode, caught.value.message
