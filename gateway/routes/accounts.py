"""Matrix account endpoints: register, login, refresh, logout, whoami, password, deactivate, devices.

Handlers translate HTTP <-> auth's gRPC API; the rules live in services/auth/ (core.py, phone.py,
sso.py). Passwords and tokens pass through here but are never logged (the access log is off and
errors never echo request bodies).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import AsyncIterator
from typing import Any, TypedDict

import grpc
from aiohttp import web

from gateway.app import DEPS_KEY, GatewayDeps
from gateway.client_address import client_address
from gateway.fields import body_bool, body_object, body_str, path_user_id, query_str, read_json_object
from gateway.matrix import MatrixError, json_response
from gateway.rpc import matrix_error_from
from gateway.session import (
    REQUESTER_KEY,
    Requester,
    auth_stub,
    authenticate,
    start_revocation_listener,
    stop_revocation_listener,
)
from laiwang.auth.v1 import auth_pb2 as pb

PREFIX = "/_matrix/client/v3"


@contextlib.asynccontextmanager
async def rpc_errors() -> AsyncIterator[None]:
    """A downstream gRPC failure inside the block becomes the matching Matrix error."""
    try:
        yield
    except grpc.aio.AioRpcError as exc:
        raise matrix_error_from(exc) from None


# --- small request helpers (shared with the other account route modules) ---------------------------


def limit_address(request: web.Request, cost: float = 1.0) -> None:
    """First-line, per-replica flood limit on credential endpoints (auth enforces the real limits)."""
    request.app[DEPS_KEY].limits.credentials.check(f"addr:{client_address(request)}", cost)


def session_body(deps: GatewayDeps, session: pb.Session) -> dict[str, Any]:
    body: dict[str, Any] = {
        "user_id": session.user_id,
        "device_id": session.device_id,
        "access_token": session.access_token,
        "home_server": deps.config.server_name,
    }
    if session.refresh_token:
        body["refresh_token"] = session.refresh_token
    if session.expires_in_ms:
        body["expires_in_ms"] = session.expires_in_ms
    return body


def uia_challenge(stage: str, errcode: str | None = None, error: str | None = None) -> web.Response:
    """A user-interactive-auth 401: which stage to complete (one-stage flows only)."""
    body: dict[str, Any] = {"flows": [{"stages": [stage]}], "params": {}, "session": secrets.token_urlsafe(16)}
    if errcode:
        body.update(errcode=errcode, error=error or errcode)
    return json_response(body, status=401)


def uia_password(body: dict[str, Any]) -> str | None:
    """The password of an m.login.password UIA `auth` dict, or None when the client must be challenged."""
    auth = body_object(body, "auth")
    if auth is None or auth.get("type") != "m.login.password":
        return None
    password = auth.get("password")
    if not isinstance(password, str) or not password:
        return None
    return password


async def uia_call(call: Any) -> web.Response | None:
    """Run an RPC that re-checks the password; a wrong password answers a UIA 401 with M_FORBIDDEN."""
    try:
        async with rpc_errors():
            await call
    except MatrixError as exc:
        if exc.errcode == "M_FORBIDDEN" and exc.status == 403:
            return uia_challenge("m.login.password", "M_FORBIDDEN", exc.error)
        raise
    return None


# --- registration --------------------------------------------------------------------------------


async def register(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    limit_address(request)
    body = await read_json_object(request)
    if request.query.get("kind", "user") != "user":
        raise MatrixError(403, "M_GUEST_ACCESS_FORBIDDEN", "guest accounts are not available")
    username = body_str(body, "username", max_len=255)
    password = body_str(body, "password")
    auth = body_object(body, "auth")
    if auth is None:
        return uia_challenge("m.login.dummy")
    if auth.get("type") != "m.login.dummy":
        return uia_challenge("m.login.dummy", "M_UNRECOGNIZED", "only m.login.dummy is supported here")
    if not password:
        raise MatrixError(400, "M_MISSING_PARAM", "password is required")
    async with rpc_errors():
        reply = await auth_stub(deps).Register(
            pb.RegisterRequest(
                username=username,
                password=password,
                device_id=body_str(body, "device_id", max_len=255),
                initial_device_display_name=body_str(body, "initial_device_display_name", max_len=200),
                inhibit_login=body_bool(body, "inhibit_login", False),
                refresh_token=body_bool(body, "refresh_token", False),
                client_address=client_address(request),
            )
        )
    if not reply.HasField("session"):
        return json_response({"user_id": reply.user_id, "home_server": deps.config.server_name})
    return json_response(session_body(deps, reply.session))


async def register_available(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    limit_address(request, cost=0.2)
    username = query_str(request, "username", max_len=255)
    if not username:
        raise MatrixError(400, "M_MISSING_PARAM", "username is required")
    async with rpc_errors():
        reply = await auth_stub(deps).CheckUsername(pb.CheckUsernameRequest(username=username))
    if not reply.available:
        raise MatrixError(400, "M_USER_IN_USE", "that user id is already taken")
    return json_response({"available": True})


# --- login, refresh, logout, whoami ----------------------------------------------------------------


async def login_flows(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    flows: list[dict[str, Any]] = [{"type": "m.login.password"}, {"type": "m.login.token"}]
    async with rpc_errors():
        providers = (await auth_stub(deps).ListIdentityProviders(pb.ListIdentityProvidersRequest())).providers
    if providers:
        flows.append({"type": "m.login.sso", "identity_providers": [{"id": p.id, "name": p.name} for p in providers]})
    return json_response({"flows": flows})


def _identifier(body: dict[str, Any]) -> dict[str, Any]:
    identifier = body_object(body, "identifier")
    if identifier is not None:
        return identifier
    # Deprecated top-level forms some older clients still send.
    if "user" in body:
        return {"type": "m.id.user", "user": body["user"]}
    if "medium" in body and "address" in body:
        return {"type": "m.id.thirdparty", "medium": body["medium"], "address": body["address"]}
    raise MatrixError(400, "M_MISSING_PARAM", "identifier is required")


class _LoginCommon(TypedDict):
    """The LoginRequest fields every login type sends."""

    device_id: str
    initial_device_display_name: str
    refresh_token: bool
    client_address: str


async def login(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    limit_address(request)
    body = await read_json_object(request)
    login_type = body.get("type")
    common: _LoginCommon = {
        "device_id": body_str(body, "device_id", max_len=255),
        "initial_device_display_name": body_str(body, "initial_device_display_name", max_len=200),
        "refresh_token": body_bool(body, "refresh_token", False),
        "client_address": client_address(request),
    }
    if login_type == "m.login.password":
        password = body_str(body, "password")
        if not password:
            raise MatrixError(400, "M_MISSING_PARAM", "password is required")
        identifier = _identifier(body)
        kind = identifier.get("type")
        if kind == "m.id.user":
            user = identifier.get("user")
            if not isinstance(user, str) or not user:
                raise MatrixError(400, "M_BAD_JSON", "identifier.user must be a non-empty string")
            rpc = pb.LoginRequest(user=user[:512], password=password, **common)
        elif kind == "m.id.phone":
            country, phone = identifier.get("country", ""), identifier.get("phone")
            if not isinstance(country, str) or not isinstance(phone, str) or not phone:
                raise MatrixError(400, "M_BAD_JSON", "identifier.country and identifier.phone must be strings")
            rpc = pb.LoginRequest(
                phone=pb.PhoneIdentifier(country=country[:8], phone=phone[:64]), password=password, **common
            )
        elif kind == "m.id.thirdparty":
            medium, address = identifier.get("medium"), identifier.get("address")
            if medium != "msisdn" or not isinstance(address, str) or not address:
                raise MatrixError(400, "M_UNRECOGNIZED", "only msisdn third-party identifiers can sign in")
            rpc = pb.LoginRequest(phone=pb.PhoneIdentifier(country="", phone=address[:64]), password=password, **common)
        else:
            raise MatrixError(400, "M_UNRECOGNIZED", "identifier.type must be m.id.user, m.id.phone or m.id.thirdparty")
    elif login_type == "m.login.token":
        token = body_str(body, "token", max_len=512)
        if not token:
            raise MatrixError(400, "M_MISSING_PARAM", "token is required")
        rpc = pb.LoginRequest(login_token=token, **common)
    else:
        raise MatrixError(400, "M_UNKNOWN", "unsupported login type; use m.login.password or m.login.token")
    async with rpc_errors():
        reply = await auth_stub(deps).Login(rpc)
    return json_response(session_body(deps, reply.session))


async def refresh(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    limit_address(request)
    body = await read_json_object(request)
    token = body_str(body, "refresh_token", max_len=512)
    if not token:
        raise MatrixError(400, "M_MISSING_PARAM", "refresh_token is required")
    async with rpc_errors():
        reply = await auth_stub(deps).RefreshSession(pb.RefreshSessionRequest(refresh_token=token))
    session = reply.session
    return json_response(
        {
            "access_token": session.access_token,
            "refresh_token": session.refresh_token,
            "expires_in_ms": session.expires_in_ms,
        }
    )


async def whoami(request: web.Request) -> web.Response:
    requester = await authenticate(request)
    return json_response({"user_id": requester.user_id, "device_id": requester.device_id, "is_guest": False})


def _evict_own(request: web.Request, requester: Requester, *, everything: bool) -> None:
    """This replica forgets the tokens at once; other replicas hear the TokenRevoked event."""
    deps = request.app[DEPS_KEY]
    deps.tokens.evict_user(requester.user_id, None if everything else requester.device_id)


async def logout(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    requester = await authenticate(request)
    await read_json_object(request, allow_empty=True)
    async with rpc_errors():
        await auth_stub(deps).Logout(
            pb.LogoutRequest(token_id=requester.token_id, user_id=requester.user_id, device_id=requester.device_id)
        )
    _evict_own(request, requester, everything=False)
    return json_response({})


async def logout_all(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    requester = await authenticate(request)
    await read_json_object(request, allow_empty=True)
    async with rpc_errors():
        await auth_stub(deps).LogoutAll(pb.LogoutAllRequest(user_id=requester.user_id))
    _evict_own(request, requester, everything=True)
    return json_response({})


# --- password and deactivation ----------------------------------------------------------------------


async def change_password(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    requester = await authenticate(request)
    limit_address(request)
    body = await read_json_object(request)
    new_password = body_str(body, "new_password")
    if not new_password:
        raise MatrixError(400, "M_MISSING_PARAM", "new_password is required")
    logout_devices = body_bool(body, "logout_devices", True)
    password = uia_password(body)
    if password is None:
        return uia_challenge("m.login.password")
    failed = await uia_call(
        auth_stub(deps).ChangePassword(
            pb.ChangePasswordRequest(
                user_id=requester.user_id,
                current_password=password,
                new_password=new_password,
                logout_devices=logout_devices,
                keep_device_id=requester.device_id,
                client_address=client_address(request),
            )
        )
    )
    if failed is not None:
        return failed
    if logout_devices:
        deps.tokens.evict_user(requester.user_id)  # ours is simply introspected again
    return json_response({})


async def deactivate(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    requester = await authenticate(request)
    limit_address(request)
    body = await read_json_object(request)
    password = uia_password(body)
    if password is None:
        return uia_challenge("m.login.password")
    failed = await uia_call(
        auth_stub(deps).DeactivateAccount(
            pb.DeactivateAccountRequest(
                user_id=requester.user_id, password=password, client_address=client_address(request)
            )
        )
    )
    if failed is not None:
        return failed
    _evict_own(request, requester, everything=True)
    return json_response({"id_server_unbind_result": "no-support"})


# --- devices -------------------------------------------------------------------------------------


def _device_body(device: pb.Device, user_id: str) -> dict[str, Any]:
    body: dict[str, Any] = {
        "device_id": device.device_id,
        "display_name": device.display_name or None,
        "user_id": user_id,
    }
    if device.last_seen_ts_ms:
        body["last_seen_ts"] = device.last_seen_ts_ms
        body["last_seen_ip"] = device.last_seen_ip
    return body


async def list_devices(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    requester = await authenticate(request)
    async with rpc_errors():
        reply = await auth_stub(deps).ListDevices(pb.ListDevicesRequest(user_id=requester.user_id))
    return json_response({"devices": [_device_body(d, requester.user_id) for d in reply.devices]})


async def get_device(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    requester = await authenticate(request)
    async with rpc_errors():
        reply = await auth_stub(deps).GetDevice(
            pb.GetDeviceRequest(user_id=requester.user_id, device_id=request.match_info["device_id"])
        )
    return json_response(_device_body(reply.device, requester.user_id))


async def update_device(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    requester = await authenticate(request)
    body = await read_json_object(request)
    display_name = body_str(body, "display_name", max_len=200)
    async with rpc_errors():
        await auth_stub(deps).UpdateDevice(
            pb.UpdateDeviceRequest(
                user_id=requester.user_id, device_id=request.match_info["device_id"], display_name=display_name
            )
        )
    return json_response({})


async def _delete_devices(request: web.Request, device_ids: list[str], body: dict[str, Any]) -> web.Response:
    deps = request.app[DEPS_KEY]
    requester: Requester = request[REQUESTER_KEY]
    password = uia_password(body)
    if password is None:
        return uia_challenge("m.login.password")
    failed = await uia_call(
        auth_stub(deps).DeleteDevices(
            pb.DeleteDevicesRequest(
                user_id=requester.user_id,
                device_ids=device_ids,
                password=password,
                client_address=client_address(request),
            )
        )
    )
    if failed is not None:
        return failed
    for device_id in device_ids:
        deps.tokens.evict_user(requester.user_id, device_id)
    return json_response({})


async def delete_device(request: web.Request) -> web.Response:
    requester = await authenticate(request)
    limit_address(request)
    body = await read_json_object(request, allow_empty=True)
    device_id = request.match_info["device_id"]
    # Only the requester's own devices exist for them: another user's device id (or none) is 404,
    # answered before the password prompt. POST /delete_devices skips unknown ids, as Synapse does.
    async with rpc_errors():
        await auth_stub(request.app[DEPS_KEY]).GetDevice(
            pb.GetDeviceRequest(user_id=requester.user_id, device_id=device_id)
        )
    return await _delete_devices(request, [device_id], body)


async def delete_devices(request: web.Request) -> web.Response:
    await authenticate(request)
    limit_address(request)
    body = await read_json_object(request)
    devices = body.get("devices")
    if not isinstance(devices, list) or not all(isinstance(d, str) for d in devices) or len(devices) > 1000:
        raise MatrixError(400, "M_BAD_JSON", "'devices' must be a list of device ids")
    return await _delete_devices(request, devices, body)


# --- profiles --------------------------------------------------------------------------------------


async def _profile(request: web.Request) -> pb.GetProfileResponse:
    deps = request.app[DEPS_KEY]
    await authenticate(request)  # profiles are visible to signed-in users only (acquaintance network)
    async with rpc_errors():
        return await auth_stub(deps).GetProfile(pb.GetProfileRequest(user_id=path_user_id(request)))


async def get_profile(request: web.Request) -> web.Response:
    profile = await _profile(request)
    body: dict[str, Any] = {}
    if profile.display_name:
        body["displayname"] = profile.display_name
    if profile.avatar_url:
        body["avatar_url"] = profile.avatar_url
    return json_response(body)


async def get_displayname(request: web.Request) -> web.Response:
    profile = await _profile(request)
    return json_response({"displayname": profile.display_name} if profile.display_name else {})


async def get_avatar_url(request: web.Request) -> web.Response:
    profile = await _profile(request)
    return json_response({"avatar_url": profile.avatar_url} if profile.avatar_url else {})


async def _set_profile(request: web.Request, field: str, key: str) -> web.Response:
    deps = request.app[DEPS_KEY]
    requester = await authenticate(request)
    if path_user_id(request) != requester.user_id:
        raise MatrixError(403, "M_FORBIDDEN", "you can only change your own profile")
    body = await read_json_object(request)
    value = body_str(body, key, max_len=2048)
    async with rpc_errors():
        await auth_stub(deps).SetProfile(pb.SetProfileRequest(user_id=requester.user_id, **{field: value}))
    return json_response({})


async def set_displayname(request: web.Request) -> web.Response:
    return await _set_profile(request, "display_name", "displayname")


async def set_avatar_url(request: web.Request) -> web.Response:
    return await _set_profile(request, "avatar_url", "avatar_url")


def routes(deps: GatewayDeps) -> list[web.RouteDef]:
    p = PREFIX
    return [
        web.post(f"{p}/register", register),
        web.get(f"{p}/register/available", register_available),
        web.get(f"{p}/login", login_flows),
        web.post(f"{p}/login", login),
        web.post(f"{p}/refresh", refresh),
        web.get(f"{p}/account/whoami", whoami),
        web.post(f"{p}/logout", logout),
        web.post(f"{p}/logout/all", logout_all),
        web.post(f"{p}/account/password", change_password),
        web.post(f"{p}/account/deactivate", deactivate),
        web.get(f"{p}/devices", list_devices),
        web.get(f"{p}/devices/{{device_id}}", get_device),
        web.put(f"{p}/devices/{{device_id}}", update_device),
        web.delete(f"{p}/devices/{{device_id}}", delete_device),
        web.post(f"{p}/delete_devices", delete_devices),
        web.get(f"{p}/profile/{{user_id}}", get_profile),
        web.get(f"{p}/profile/{{user_id}}/displayname", get_displayname),
        web.put(f"{p}/profile/{{user_id}}/displayname", set_displayname),
        web.get(f"{p}/profile/{{user_id}}/avatar_url", get_avatar_url),
        web.put(f"{p}/profile/{{user_id}}/avatar_url", set_avatar_url),
    ]


async def startup(deps: GatewayDeps) -> None:
    await start_revocation_listener(deps)


async def cleanup(deps: GatewayDeps) -> None:
    await stop_revocation_listener(deps)
