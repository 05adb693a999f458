"""Matrix end-to-end encryption endpoints: keys, to-device messages, key backup.

Translation only: the messaging process's E2eService (protos/laiwang/messaging/v1/e2e.proto)
keeps the keys and the rules (services/messaging/e2e.py). See docs/e2ee.md.
"""

from __future__ import annotations

from aiohttp import web

from gateway.app import DEPS_KEY, GatewayDeps
from gateway.fields import query_str
from gateway.matrix import MatrixError
from gateway.rpc import call
from gateway.session import authenticate
from laiwang.messaging.v1 import e2e_pb2 as pb
from laiwang.messaging.v1 import e2e_pb2_grpc
from laiwang.messaging.v1 import messaging_pb2 as mpb

PREFIXES = ("/_matrix/client/v3", "/_matrix/client/r0")
_MAX_BODY = 512 * 1024


def _stub(deps: GatewayDeps) -> e2e_pb2_grpc.E2eServiceAsyncStub:
    return deps.stubs.e2e


async def _start(request: web.Request) -> tuple[e2e_pb2_grpc.E2eServiceAsyncStub, mpb.Requester, bytes]:
    who = await authenticate(request)
    deps = request.app[DEPS_KEY]
    deps.limits.e2e.check(who.user_id)
    raw = await request.read()
    if len(raw) > _MAX_BODY:
        raise MatrixError(413, "M_TOO_LARGE", f"request body is larger than {_MAX_BODY} bytes")
    return _stub(deps), mpb.Requester(user_id=who.user_id, device_id=who.device_id), raw


def _raw(body: bytes) -> web.Response:
    return web.Response(body=body, content_type="application/json")


async def keys_upload(request: web.Request) -> web.Response:
    stub, who, raw = await _start(request)
    return _raw((await call(stub.UploadKeys, pb.UploadKeysRequest(requester=who, body_json=raw))).body_json)


async def signing_upload(request: web.Request) -> web.Response:
    stub, who, raw = await _start(request)
    if not raw.strip():
        raise MatrixError(400, "M_NOT_JSON", "a JSON body is required")
    return _raw((await call(stub.UploadKeys, pb.UploadKeysRequest(requester=who, body_json=raw))).body_json)


async def signatures_upload(request: web.Request) -> web.Response:
    await _start(request)
    # Signatures of other keys are not stored yet (docs/e2ee.md): nothing failed, nothing kept.
    return web.json_response({"failures": {}})


async def keys_query(request: web.Request) -> web.Response:
    stub, who, raw = await _start(request)
    return _raw((await call(stub.QueryKeys, pb.QueryKeysRequest(requester=who, body_json=raw))).body_json)


async def keys_claim(request: web.Request) -> web.Response:
    stub, who, raw = await _start(request)
    return _raw((await call(stub.ClaimKeys, pb.ClaimKeysRequest(requester=who, body_json=raw))).body_json)


async def keys_changes(request: web.Request) -> web.Response:
    stub, who, _ = await _start(request)
    since, upto = query_str(request, "from", max_len=64), query_str(request, "to", max_len=64)
    if not since or not upto:
        raise MatrixError(400, "M_MISSING_PARAM", "from and to are required")
    message = pb.KeyChangesRequest(requester=who, to=upto, **{"from": since})
    return _raw((await call(stub.KeyChanges, message)).body_json)


async def send_to_device(request: web.Request) -> web.Response:
    stub, who, raw = await _start(request)
    message = pb.SendToDeviceRequest(
        requester=who,
        event_type=request.match_info["event_type"],
        txn_id=request.match_info["txn_id"],
        body_json=raw,
    )
    await call(stub.SendToDevice, message)
    return web.json_response({})


def _room_keys(resource: str):  # noqa: ANN202 - an aiohttp handler factory
    async def handler(request: web.Request) -> web.Response:
        stub, who, raw = await _start(request)
        version = request.match_info.get("version", "") if resource == "version" else query_str(request, "version")
        message = pb.RoomKeysRequest(
            requester=who,
            method=request.method,
            resource=resource,
            version=version,
            room_id=request.match_info.get("room_id", ""),
            session_id=request.match_info.get("session_id", ""),
            body_json=raw,
        )
        return _raw((await call(stub.RoomKeys, message)).body_json)

    return handler


def routes(deps: GatewayDeps) -> list[web.RouteDef]:
    version, keys = _room_keys("version"), _room_keys("keys")
    table: list[web.RouteDef] = []
    for prefix in PREFIXES:
        table += [
            web.post(f"{prefix}/keys/upload", keys_upload),
            web.post(prefix + "/keys/upload/{device_id}", keys_upload),
            web.post(f"{prefix}/keys/query", keys_query),
            web.post(f"{prefix}/keys/claim", keys_claim),
            web.get(f"{prefix}/keys/changes", keys_changes),
            web.post(f"{prefix}/keys/device_signing/upload", signing_upload),
            web.post(f"{prefix}/keys/signatures/upload", signatures_upload),
            web.put(prefix + "/sendToDevice/{event_type}/{txn_id}", send_to_device),
            web.get(f"{prefix}/room_keys/version", version),
            web.post(f"{prefix}/room_keys/version", version),
            web.get(prefix + "/room_keys/version/{version}", version),
            web.put(prefix + "/room_keys/version/{version}", version),
            web.delete(prefix + "/room_keys/version/{version}", version),
        ]
        for path in ("/room_keys/keys", "/room_keys/keys/{room_id}", "/room_keys/keys/{room_id}/{session_id}"):
            table += [web.get(prefix + path, keys), web.put(prefix + path, keys), web.delete(prefix + path, keys)]
    return table
