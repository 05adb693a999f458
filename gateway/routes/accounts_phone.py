"""Phone numbers as Matrix `msisdn` third-party identifiers: request a code, submit it, bind, list, unbind.

POST /account/3pid/msisdn/requestToken   {client_secret, country, phone_number, send_attempt}
                                           -> {sid, msisdn, submit_url}
POST /account/3pid/msisdn/submit_token   {sid, client_secret, token} -> {success: true}
POST /account/3pid/add                   {sid, client_secret} (signed in) -> {}
GET  /account/3pid                       -> {threepids: [...]}
POST /account/3pid/delete                {medium: "msisdn", address} -> {id_server_unbind_result}
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from gateway.app import DEPS_KEY, GatewayDeps
from gateway.client_address import client_address
from gateway.fields import body_int, body_str, read_json_object
from gateway.matrix import MatrixError, json_response
from gateway.routes.accounts import PREFIX, limit_address, rpc_errors
from gateway.session import auth_stub, authenticate
from laiwang.auth.v1 import auth_pb2 as pb

SUBMIT_PATH = f"{PREFIX}/account/3pid/msisdn/submit_token"


def _required(body: dict[str, Any], name: str, max_len: int = 255) -> str:
    return body_str(body, name, required=True, max_len=max_len)


async def request_token(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    limit_address(request)
    body = await read_json_object(request)
    send_attempt = body_int(body, "send_attempt", 1)
    async with rpc_errors():
        reply = await auth_stub(deps).RequestPhoneCode(
            pb.RequestPhoneCodeRequest(
                country=body_str(body, "country", max_len=8),
                phone_number=_required(body, "phone_number", 64),
                client_secret=_required(body, "client_secret"),
                send_attempt=send_attempt,
                client_address=client_address(request),
                purpose="bind",
            )
        )
    return json_response(
        {
            "sid": reply.sid,
            "msisdn": reply.msisdn.lstrip("+"),
            "intl_fmt": reply.msisdn,
            "submit_url": f"{deps.config.public_base_url}{SUBMIT_PATH}",
        }
    )


async def submit_token(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    limit_address(request)
    body = await read_json_object(request)
    async with rpc_errors():
        await auth_stub(deps).SubmitPhoneCode(
            pb.SubmitPhoneCodeRequest(
                sid=_required(body, "sid"),
                client_secret=_required(body, "client_secret"),
                code=_required(body, "token", 16),
                client_address=client_address(request),
            )
        )
    return json_response({"success": True})


async def add_threepid(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    requester = await authenticate(request)
    body = await read_json_object(request)
    async with rpc_errors():
        await auth_stub(deps).BindPhone(
            pb.BindPhoneRequest(
                user_id=requester.user_id, sid=_required(body, "sid"), client_secret=_required(body, "client_secret")
            )
        )
    return json_response({})


async def list_threepids(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    requester = await authenticate(request)
    async with rpc_errors():
        reply = await auth_stub(deps).ListThreepids(pb.ListThreepidsRequest(user_id=requester.user_id))
    return json_response(
        {
            "threepids": [
                # Matrix writes msisdn addresses without the leading "+".
                {
                    "medium": t.medium,
                    "address": t.address.lstrip("+"),
                    "validated_at": t.validated_at_ms,
                    "added_at": t.added_at_ms,
                }
                for t in reply.threepids
            ]
        }
    )


async def delete_threepid(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    requester = await authenticate(request)
    body = await read_json_object(request)
    if body.get("medium") != "msisdn":
        raise MatrixError(400, "M_UNRECOGNIZED", "only msisdn identifiers are supported")
    address = _required(body, "address", 64)
    async with rpc_errors():
        await auth_stub(deps).UnbindPhone(
            pb.UnbindPhoneRequest(
                user_id=requester.user_id, msisdn=address if address.startswith("+") else "+" + address
            )
        )
    return json_response({"id_server_unbind_result": "no-support"})


def routes(deps: GatewayDeps) -> list[web.RouteDef]:
    p = PREFIX
    return [
        web.post(f"{p}/account/3pid/msisdn/requestToken", request_token),
        web.post(SUBMIT_PATH, submit_token),
        web.post(f"{p}/account/3pid/add", add_threepid),
        web.get(f"{p}/account/3pid", list_threepids),
        web.post(f"{p}/account/3pid/delete", delete_threepid),
    ]
