"""gRPC layer of the messaging process's E2eService (e2e.proto): proto <-> domain, nothing else."""

from __future__ import annotations

from typing import Any

import grpc
import orjson

from laiwang.messaging.v1 import e2e_pb2 as pb
from laiwang.messaging.v1 import e2e_pb2_grpc
from plumbing.domain_errors import DomainError
from plumbing.grpc_errors import maps_domain_errors
from services.messaging.e2e import E2e
from services.messaging.rules import JSON, check_canonical, sync_token_e2e


def _who(request: Any) -> tuple[str, str]:
    if not request.requester.user_id:
        raise DomainError("M_INVALID_PARAM", "requester.user_id is required")
    return request.requester.user_id, request.requester.device_id


MAX_BODY_BYTES = 512 * 1024  # a to-device fan-out or a key upload is bigger than one event may be


def _body(raw: bytes) -> JSON:
    if len(raw) > MAX_BODY_BYTES:
        raise DomainError("M_TOO_LARGE", f"request body is larger than {MAX_BODY_BYTES} bytes")
    if not raw.strip():
        return {}
    try:
        value = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise DomainError("M_NOT_JSON", "body is not valid JSON") from None
    if not isinstance(value, dict):
        raise DomainError("M_BAD_JSON", "body must be a JSON object")
    check_canonical(value, "body")
    return value


class E2eApi(e2e_pb2_grpc.E2eServiceServicer):
    def __init__(self, e2e: E2e) -> None:
        self._e2e = e2e

    def register(self, server: grpc.aio.Server) -> None:
        e2e_pb2_grpc.add_E2eServiceServicer_to_server(self, server)

    @maps_domain_errors
    async def UploadKeys(self, request: pb.UploadKeysRequest, context: Any) -> pb.UploadKeysResponse:
        user_id, device_id = _who(request)
        body = _body(request.body_json)
        if "master_key" in body or "self_signing_key" in body or "user_signing_key" in body:
            return pb.UploadKeysResponse(body_json=orjson.dumps(await self._e2e.upload_signing(user_id, body)))
        return pb.UploadKeysResponse(body_json=orjson.dumps(await self._e2e.upload(user_id, device_id, body)))

    @maps_domain_errors
    async def QueryKeys(self, request: pb.QueryKeysRequest, context: Any) -> pb.QueryKeysResponse:
        user_id, _ = _who(request)
        return pb.QueryKeysResponse(body_json=orjson.dumps(await self._e2e.query(user_id, _body(request.body_json))))

    @maps_domain_errors
    async def ClaimKeys(self, request: pb.ClaimKeysRequest, context: Any) -> pb.ClaimKeysResponse:
        _who(request)
        return pb.ClaimKeysResponse(body_json=orjson.dumps(await self._e2e.claim(_body(request.body_json))))

    @maps_domain_errors
    async def KeyChanges(self, request: pb.KeyChangesRequest, context: Any) -> pb.KeyChangesResponse:
        user_id, _ = _who(request)
        try:
            since, upto = sync_token_e2e(getattr(request, "from")), sync_token_e2e(request.to)
        except ValueError:
            raise DomainError("M_INVALID_PARAM", "unknown token") from None
        body = await self._e2e.changes(user_id, since, upto)
        return pb.KeyChangesResponse(body_json=orjson.dumps(body))

    @maps_domain_errors
    async def SendToDevice(self, request: pb.SendToDeviceRequest, context: Any) -> pb.SendToDeviceResponse:
        user_id, device_id = _who(request)
        await self._e2e.send_to_device(user_id, device_id, request.event_type, request.txn_id, _body(request.body_json))
        return pb.SendToDeviceResponse()

    @maps_domain_errors
    async def RoomKeys(self, request: pb.RoomKeysRequest, context: Any) -> pb.RoomKeysResponse:
        user_id, _ = _who(request)
        body = await self._e2e.room_keys(
            user_id,
            request.method,
            request.resource,
            request.version,
            request.room_id,
            request.session_id,
            _body(request.body_json),
        )
        return pb.RoomKeysResponse(body_json=orjson.dumps(body))
