"""Adapters to other services that contacts calls over gRPC (only through their protos)."""

from __future__ import annotations

import logging

import grpc

from laiwang.auth.v1 import auth_pb2, auth_pb2_grpc
from plumbing.domain_errors import Conflict

log = logging.getLogger(__name__)


class AuthPhones:
    """The verified numbers auth holds for a user (the source of truth contacts' index follows)."""

    def __init__(self, channel: grpc.aio.Channel, timeout: float = 3.0) -> None:
        self._stub = auth_pb2_grpc.AuthServiceStub(channel)
        self._timeout = timeout

    async def __call__(self, user_id: str) -> list[tuple[str, int]]:
        try:
            reply = await self._stub.ListThreepids(
                auth_pb2.ListThreepidsRequest(user_id=user_id), timeout=self._timeout
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return []
            log.warning("could not ask auth for verified phones", extra={"code": error.code().name})
            raise Conflict("could not check your verified phone number just now; try again") from None
        return [
            (t.address if t.address.startswith("+") else f"+{t.address}", t.validated_at_ms)
            for t in reply.threepids
            if t.medium == "msisdn" and t.validated_at_ms
        ]
