"""Auth through the gateway of a dedicated stack (short lifetimes, dev SMS file, a real OIDC provider).

Covers every bad input of issue 3, phone-code expiry / attempt / resend limits, refresh-token
rotation, revocation reaching the gateway's introspection cache, devices, profiles, password
change, deactivation, and linking + signing in with an external account through panva's
oidc-provider (npm) started locally.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlparse

import aiohttp
import grpc
import pytest

from laiwang.auth.v1 import auth_pb2, auth_pb2_grpc
from tests.auth_support import complete_provider_login, oidc_provider, sms_codes, unique_cn_mobile, wait_for_code
from tests.conftest import RunningStack, launch_stack
from tests.matrix_support import RegisteredUser, login_user, register_user, unique_localpart
from tests.support import eventually, free_port

pytestmark = pytest.mark.e2e

V3 = "/_matrix/client/v3"
CLIENT_ID = "laiwang-test"
CLIENT_SECRET = secrets.token_urlsafe(24)
CODE_TTL = 3
ACCESS_TTL = 2
RESEND_WAIT = 4


class Flows:
    def __init__(self, stack: RunningStack, http: aiohttp.ClientSession, sms_log, issuer: str) -> None:
        self.stack = stack
        self.http = http
        self.sms_log = sms_log
        self.issuer = issuer

    async def call(
        self, method: str, path: str, *, token: str | None = None, json: Any = None, data: bytes | None = None
    ) -> tuple[int, dict[str, Any]]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        url = f"{self.stack.base_url}{path if path.startswith('/_') else V3 + path}"
        async with self.http.request(method, url, json=json, data=data, headers=headers, allow_redirects=False) as r:
            body = await r.json(content_type=None) if r.status != 302 else {"location": r.headers["Location"]}
            return r.status, body

    async def wait_refused(self, token: str, within: float = 5.0) -> dict[str, Any]:
        """Poll whoami until the token is refused (revocation events reach the gateway asynchronously)."""
        deadline = time.monotonic() + within
        while True:
            status, body = await self.call("GET", "/account/whoami", token=token)
            if status == 401:
                return body
            assert time.monotonic() < deadline, "token still accepted"
            await asyncio.sleep(0.02)

    async def bind_phone(self, user: RegisteredUser) -> tuple[str, str]:
        national, msisdn = unique_cn_mobile()
        secret = secrets.token_hex(8)
        status, body = await self.call(
            "POST",
            "/account/3pid/msisdn/requestToken",
            json={"client_secret": secret, "country": "CN", "phone_number": national, "send_attempt": 1},
        )
        assert status == 200, body
        code = await wait_for_code(self.sms_log, msisdn)
        sid = body["sid"]
        status, body = await self.call(
            "POST", "/account/3pid/msisdn/submit_token", json={"sid": sid, "client_secret": secret, "token": code}
        )
        assert status == 200, body
        status, body = await self.call(
            "POST", "/account/3pid/add", token=user.access_token, json={"sid": sid, "client_secret": secret}
        )
        assert status == 200, body
        return national, msisdn


@pytest.fixture(scope="module")
async def flows(mongo_uri: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Flows]:
    data_dir = tmp_path_factory.mktemp("auth-stack")
    sms_log = data_dir / "dev-sms.log"
    oidc_port = free_port()
    env = {
        "AUTH_DEV_SMS_LOG": str(sms_log),
        "AUTH_CODE_TTL_SECONDS": str(CODE_TTL),
        "AUTH_ACCESS_TOKEN_TTL_SECONDS": str(ACCESS_TTL),
        "AUTH_CODE_RESEND_SECONDS": str(RESEND_WAIT),
        "AUTH_LOGIN_FAILURES_PER_ACCOUNT": "3",
        "AUTH_OIDC_ISSUER": f"http://127.0.0.1:{oidc_port}",
        "AUTH_OIDC_ALLOW_HTTP": "true",
        "AUTH_OIDC_CLIENT_ID": CLIENT_ID,
        "AUTH_OIDC_CLIENT_SECRET": CLIENT_SECRET,
        "AUTH_OIDC_PROVIDER_ID": "taobao",
        "GATEWAY_TOKEN_CACHE_SECONDS": "60",
    }
    async with launch_stack(mongo_uri, data_dir, env=env) as stack:
        # The provider needs our callback URL, known once the stack has its ports; auth discovers lazily.
        callback = f"{stack.base_url}/_laiwang/client/v1/oidc/callback"
        with oidc_provider(oidc_port, CLIENT_ID, CLIENT_SECRET, callback) as issuer:
            async with aiohttp.ClientSession() as http:
                yield Flows(stack, http, sms_log, issuer)


# --- bad input ------------------------------------------------------------------------------------


async def test_every_error_body_has_errcode_and_error(flows: Flows) -> None:
    user = await register_user(flows.stack.base_url)
    cases = [
        (
            "POST",
            "/login",
            {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user.user_id},
                "password": "wrong password!",
            },
            None,
            403,
            "M_FORBIDDEN",
        ),
        ("GET", "/account/whoami", None, "lwa_not-a-real-token", 401, "M_UNKNOWN_TOKEN"),
        ("GET", "/account/whoami", None, None, 401, "M_MISSING_TOKEN"),
        (
            "POST",
            "/register",
            {
                "username": user.user_id.split(":")[0][1:],
                "password": "long enough pw",
                "auth": {"type": "m.login.dummy"},
            },
            None,
            400,
            "M_USER_IN_USE",
        ),
        (
            "POST",
            "/register",
            {"username": "Not Valid!", "password": "long enough pw", "auth": {"type": "m.login.dummy"}},
            None,
            400,
            "M_INVALID_USERNAME",
        ),
        (
            "POST",
            "/register",
            {"username": unique_localpart(), "password": "short", "auth": {"type": "m.login.dummy"}},
            None,
            400,
            "M_WEAK_PASSWORD",
        ),
        ("POST", "/login", ["not", "an", "object"], None, 400, "M_BAD_JSON"),
        (
            "POST",
            "/login",
            {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": 7}, "password": "x"},
            None,
            400,
            "M_BAD_JSON",
        ),
        ("GET", "/profile/@nobody-here:laiwang.test", None, user.access_token, 404, "M_NOT_FOUND"),
    ]
    for method, path, body, token, status, errcode in cases:
        got_status, got = await flows.call(method, path, json=body, token=token)
        assert (got_status, got.get("errcode")) == (status, errcode), (path, body, got)
        assert isinstance(got.get("error"), str) and got["error"], got

    status, body = await flows.call("POST", "/login", data=b"{not json")
    assert (status, body["errcode"]) == (400, "M_NOT_JSON") and body["error"]


async def test_registration_without_auth_gets_a_dummy_flow_and_availability_is_checked(flows: Flows) -> None:
    localpart = unique_localpart()
    status, body = await flows.call("POST", "/register", json={"username": localpart, "password": "long enough pw"})
    assert status == 401 and body["flows"] == [{"stages": ["m.login.dummy"]}] and body["session"]
    status, body = await flows.call("GET", f"/register/available?username={localpart}")
    assert (status, body) == (200, {"available": True})
    await register_user(flows.stack.base_url, localpart)
    status, body = await flows.call("GET", f"/register/available?username={localpart}")
    assert (status, body["errcode"]) == (400, "M_USER_IN_USE")


async def test_repeated_wrong_passwords_are_rate_limited_per_account(flows: Flows) -> None:
    user = await register_user(flows.stack.base_url)
    login = {"type": "m.login.password", "identifier": {"type": "m.id.user", "user": user.user_id}}
    for _ in range(3):  # AUTH_LOGIN_FAILURES_PER_ACCOUNT=3
        status, body = await flows.call("POST", "/login", json={**login, "password": "guess-guess"})
        assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = await flows.call("POST", "/login", json={**login, "password": "guess-again"})
    assert (status, body["errcode"]) == (429, "M_LIMIT_EXCEEDED")
    assert body["retry_after_ms"] > 0
    # Even the right password waits: the account is shielded until the window ends.
    status, body = await flows.call("POST", "/login", json={**login, "password": user.password})
    assert status == 429


# --- phone verification ----------------------------------------------------------------------------


async def test_phone_code_attempt_limit_resend_wait_and_expiry(flows: Flows) -> None:
    national, msisdn = unique_cn_mobile()
    secret = secrets.token_hex(8)
    request = {"client_secret": secret, "country": "CN", "phone_number": national, "send_attempt": 1}
    status, body = await flows.call("POST", "/account/3pid/msisdn/requestToken", json=request)
    assert status == 200 and body["msisdn"] == msisdn.lstrip("+"), body
    sid = body["sid"]
    code = await wait_for_code(flows.sms_log, msisdn)
    wrong = f"{(int(code) + 1) % 1_000_000:06d}"

    # A new code for the same number within the resend wait is refused with a retry hint.
    status, body = await flows.call("POST", "/account/3pid/msisdn/requestToken", json={**request, "send_attempt": 2})
    assert (status, body["errcode"]) == (429, "M_LIMIT_EXCEEDED") and 0 < body["retry_after_ms"] <= RESEND_WAIT * 1000

    for attempt in range(5):
        status, body = await flows.call(
            "POST", "/account/3pid/msisdn/submit_token", json={"sid": sid, "client_secret": secret, "token": wrong}
        )
        assert (status, body["errcode"]) == (400, "M_THREEPID_AUTH_FAILED"), (attempt, body)
    # After five wrong tries even the right code is refused.
    status, body = await flows.call(
        "POST", "/account/3pid/msisdn/submit_token", json={"sid": sid, "client_secret": secret, "token": code}
    )
    assert (status, body["errcode"]) == (400, "M_THREEPID_AUTH_FAILED") and "request a new one" in body["error"]

    # Expiry: another number, wait out the (shortened) lifetime, then the right code is refused.
    national2, msisdn2 = unique_cn_mobile()
    status, body = await flows.call(
        "POST", "/account/3pid/msisdn/requestToken", json={**request, "phone_number": national2}
    )
    assert status == 200
    code2 = await wait_for_code(flows.sms_log, msisdn2)
    await asyncio.sleep(CODE_TTL + 0.5)
    status, body = await flows.call(
        "POST", "/account/3pid/msisdn/submit_token", json={"sid": body["sid"], "client_secret": secret, "token": code2}
    )
    assert (status, body["errcode"]) == (400, "M_THREEPID_AUTH_FAILED") and "expired" in body["error"]
    # The code went to the dev SMS file only, never into a structured log line.
    assert sms_codes(flows.sms_log, msisdn2) == [code2]
    assert not [line for line in flows.stack.log_text().splitlines() if code2 in line and '"msg"' in line]


async def test_a_phone_number_belongs_to_one_account_and_phone_login_works(flows: Flows) -> None:
    owner = await register_user(flows.stack.base_url)
    national, msisdn = await flows.bind_phone(owner)
    status, body = await flows.call(
        "POST",
        "/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.thirdparty", "medium": "msisdn", "address": msisdn.lstrip("+")},
            "password": owner.password,
        },
    )
    assert status == 200 and body["user_id"] == owner.user_id, body

    # Someone else verifies the same number (they can receive the SMS) but cannot bind it.
    other = await register_user(flows.stack.base_url)
    secret = secrets.token_hex(8)
    status, body = await flows.call(
        "POST",
        "/account/3pid/msisdn/requestToken",
        json={"client_secret": secret, "country": "CN", "phone_number": national, "send_attempt": 1},
    )
    if status == 429:
        await asyncio.sleep(body["retry_after_ms"] / 1000 + 0.1)
        status, body = await flows.call(
            "POST",
            "/account/3pid/msisdn/requestToken",
            json={"client_secret": secret, "country": "CN", "phone_number": national, "send_attempt": 1},
        )
    assert status == 200, body
    code = await wait_for_code(flows.sms_log, msisdn, count=2)
    sid = body["sid"]
    status, _ = await flows.call(
        "POST", "/account/3pid/msisdn/submit_token", json={"sid": sid, "client_secret": secret, "token": code}
    )
    assert status == 200
    status, body = await flows.call(
        "POST", "/account/3pid/add", token=other.access_token, json={"sid": sid, "client_secret": secret}
    )
    assert (status, body["errcode"]) == (400, "M_THREEPID_IN_USE")

    # Unbinding frees the number (and phone login stops working for it).
    status, _ = await flows.call(
        "POST",
        "/account/3pid/delete",
        token=owner.access_token,
        json={"medium": "msisdn", "address": msisdn.lstrip("+")},
    )
    assert status == 200
    status, body = await flows.call(
        "POST",
        "/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.phone", "country": "CN", "phone": national},
            "password": owner.password,
        },
    )
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")


# --- tokens ----------------------------------------------------------------------------------------


async def test_refresh_tokens_rotate_and_expired_access_tokens_soft_logout(flows: Flows) -> None:
    user = await register_user(flows.stack.base_url)
    status, session = await flows.call(
        "POST",
        "/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user.user_id},
            "password": user.password,
            "refresh_token": True,
        },
    )
    assert status == 200 and session["refresh_token"] and session["expires_in_ms"] == ACCESS_TTL * 1000

    status, rotated = await flows.call("POST", "/refresh", json={"refresh_token": session["refresh_token"]})
    assert status == 200 and rotated["refresh_token"] != session["refresh_token"]
    assert rotated["access_token"] != session["access_token"]
    status, me = await flows.call("GET", "/account/whoami", token=rotated["access_token"])
    assert status == 200 and me["device_id"] == session["device_id"]
    # The replaced access token is revoked at once.
    status, body = await flows.call("GET", "/account/whoami", token=session["access_token"])
    assert (status, body["errcode"], body["soft_logout"]) == (401, "M_UNKNOWN_TOKEN", False)

    # An expired access token is refused with soft_logout (the client may refresh).
    await asyncio.sleep(ACCESS_TTL + 0.3)
    status, body = await flows.call("GET", "/account/whoami", token=rotated["access_token"])
    assert (status, body["errcode"], body["soft_logout"]) == (401, "M_UNKNOWN_TOKEN", True)
    status, again = await flows.call("POST", "/refresh", json={"refresh_token": rotated["refresh_token"]})
    assert status == 200
    status, _ = await flows.call("GET", "/account/whoami", token=again["access_token"])
    assert status == 200

    # Replaying a used refresh token is refused and signs the device out (it was copied).
    status, body = await flows.call("POST", "/refresh", json={"refresh_token": session["refresh_token"]})
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    # Auth revoked the device's tokens; the gateway's cache hears it through the event.
    await flows.wait_refused(again["access_token"])


async def _introspections(flows: Flows) -> float:
    async with flows.http.get(flows.stack.metrics_url("auth")) as r:
        text = await r.text()
    total = 0.0
    for line in text.splitlines():
        if line.startswith("grpc_server_handled_total") and 'grpc_method="IntrospectToken"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def test_revocation_reaches_the_gateway_cache(flows: Flows) -> None:
    user = await register_user(flows.stack.base_url)
    second = await login_user(flows.stack.base_url, user.user_id, user.password)
    status, _ = await flows.call("GET", "/account/whoami", token=second.access_token)
    assert status == 200
    before = await _introspections(flows)
    for _ in range(5):
        status, _ = await flows.call("GET", "/account/whoami", token=second.access_token)
        assert status == 200
    assert await _introspections(flows) == before, "repeated requests must be answered from the cache"

    # Revoke behind the gateway's back (straight to auth over gRPC): only the event can evict.
    async with grpc.aio.insecure_channel(flows.stack.grpc_address("auth")) as channel:
        await auth_pb2_grpc.AuthServiceStub(channel).DeleteDevices(
            auth_pb2.DeleteDevicesRequest(user_id=user.user_id, device_ids=[second.device_id], password=user.password)
        )
    started = time.monotonic()
    while True:
        status, body = await flows.call("GET", "/account/whoami", token=second.access_token)
        if status == 401:
            break
        assert time.monotonic() - started < 10, "revocation never reached the gateway (cache TTL is 60 s)"
        await asyncio.sleep(0.02)
    assert body["errcode"] == "M_UNKNOWN_TOKEN"
    print(f"revocation reached the gateway cache after {(time.monotonic() - started) * 1000:.0f} ms")
    status, _ = await flows.call("GET", "/account/whoami", token=user.access_token)
    assert status == 200


async def test_logout_all_and_password_change_revoke_other_devices(flows: Flows) -> None:
    user = await register_user(flows.stack.base_url)
    other = await login_user(flows.stack.base_url, user.user_id, user.password)
    third = await login_user(flows.stack.base_url, user.user_id, user.password)
    for session in (user, other, third):
        assert (await flows.call("GET", "/account/whoami", token=session.access_token))[0] == 200

    change = {"new_password": "a brand new password", "logout_devices": True}
    status, body = await flows.call("POST", "/account/password", token=user.access_token, json=change)
    assert status == 401 and body["flows"] == [{"stages": ["m.login.password"]}]
    status, body = await flows.call(
        "POST",
        "/account/password",
        token=user.access_token,
        json={**change, "auth": {"type": "m.login.password", "password": "not it at all"}},
    )
    assert (status, body["errcode"]) == (401, "M_FORBIDDEN")
    status, body = await flows.call(
        "POST",
        "/account/password",
        token=user.access_token,
        json={**change, "auth": {"type": "m.login.password", "password": user.password}},
    )
    assert (status, body) == (200, {})
    assert (await flows.call("GET", "/account/whoami", token=user.access_token))[0] == 200
    for session in (other, third):
        status, body = await flows.call("GET", "/account/whoami", token=session.access_token)
        assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    await login_user(flows.stack.base_url, user.user_id, "a brand new password")

    status, body = await flows.call("POST", "/logout/all", token=user.access_token)
    assert (status, body) == (200, {})
    assert (await flows.call("GET", "/account/whoami", token=user.access_token))[0] == 401


# --- devices, profiles, deactivation ------------------------------------------------------------------


async def test_devices_list_rename_delete(flows: Flows) -> None:
    user = await register_user(flows.stack.base_url, device_name="phone")
    laptop = await login_user(flows.stack.base_url, user.user_id, user.password)
    status, body = await flows.call("GET", "/devices", token=user.access_token)
    assert status == 200
    assert {d["device_id"]: d["display_name"] for d in body["devices"]} == {
        user.device_id: "phone",
        laptop.device_id: None,
    }
    status, _ = await flows.call(
        "PUT", f"/devices/{laptop.device_id}", token=user.access_token, json={"display_name": "work laptop"}
    )
    assert status == 200
    status, body = await flows.call("GET", f"/devices/{laptop.device_id}", token=user.access_token)
    assert body["display_name"] == "work laptop"
    status, body = await flows.call("GET", "/devices/NOSUCHDEVICE", token=user.access_token)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")

    status, body = await flows.call("DELETE", f"/devices/{laptop.device_id}", token=user.access_token)
    assert status == 401 and "flows" in body
    status, _ = await flows.call(
        "DELETE",
        f"/devices/{laptop.device_id}",
        token=user.access_token,
        json={
            "auth": {
                "type": "m.login.password",
                "identifier": {"type": "m.id.user", "user": user.user_id},
                "password": user.password,
            }
        },
    )
    assert status == 200
    status, body = await flows.call("GET", "/account/whoami", token=laptop.access_token)
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    status, body = await flows.call("GET", "/devices", token=user.access_token)
    assert [d["device_id"] for d in body["devices"]] == [user.device_id]


async def test_another_users_device_is_not_found_and_never_touched(flows: Flows) -> None:
    """Issue 9 item 11: DELETE /devices/{someone else's device} answered 200; it is 404, and nothing changes."""
    owner = await register_user(flows.stack.base_url, device_name="owner's phone")
    intruder = await register_user(flows.stack.base_url)
    path = f"/devices/{owner.device_id}"
    password_auth = {
        "auth": {
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": intruder.user_id},
            "password": intruder.password,
        }
    }
    status, body = await flows.call("GET", path, token=intruder.access_token)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = await flows.call("PUT", path, token=intruder.access_token, json={"display_name": "mine now"})
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = await flows.call("DELETE", path, token=intruder.access_token)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")  # before the password prompt: nothing to delete
    status, body = await flows.call("DELETE", path, token=intruder.access_token, json=password_auth)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    status, body = await flows.call("DELETE", "/devices/NOSUCHDEVICE", token=intruder.access_token)
    assert (status, body["errcode"]) == (404, "M_NOT_FOUND")
    # The bulk form skips ids that are not the requester's (as Synapse does) and deletes only their own.
    status, body = await flows.call(
        "POST",
        "/delete_devices",
        token=intruder.access_token,
        json={"devices": [owner.device_id], **password_auth},
    )
    assert status == 200, body

    status, body = await flows.call("GET", "/account/whoami", token=owner.access_token)
    assert (status, body["device_id"]) == (200, owner.device_id)
    status, body = await flows.call("GET", path, token=owner.access_token)
    assert (status, body["display_name"]) == (200, "owner's phone")
    status, body = await flows.call("GET", "/account/whoami", token=intruder.access_token)
    assert (status, body["user_id"]) == (200, intruder.user_id)


async def test_profiles(flows: Flows) -> None:
    user = await register_user(flows.stack.base_url)
    other = await register_user(flows.stack.base_url)
    path = f"/profile/{user.user_id}"
    status, body = await flows.call("GET", path, token=other.access_token)
    assert status == 200 and body["displayname"] == user.user_id[1:].split(":")[0]
    status, _ = await flows.call("PUT", f"{path}/displayname", token=user.access_token, json={"displayname": "小明"})
    assert status == 200
    status, _ = await flows.call(
        "PUT", f"{path}/avatar_url", token=user.access_token, json={"avatar_url": "mxc://laiwang.test/abc"}
    )
    assert status == 200
    assert (await flows.call("GET", path, token=other.access_token))[1] == {
        "displayname": "小明",
        "avatar_url": "mxc://laiwang.test/abc",
    }
    assert (await flows.call("GET", f"{path}/displayname", token=other.access_token))[1] == {"displayname": "小明"}
    status, body = await flows.call(
        "PUT", f"{path}/displayname", token=other.access_token, json={"displayname": "hijack"}
    )
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = await flows.call(
        "PUT", f"{path}/avatar_url", token=user.access_token, json={"avatar_url": "javascript:alert(1)"}
    )
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")


async def test_deactivation_signs_out_and_blocks_login(flows: Flows) -> None:
    user = await register_user(flows.stack.base_url)
    await flows.bind_phone(user)
    status, body = await flows.call(
        "POST",
        "/account/deactivate",
        token=user.access_token,
        json={"auth": {"type": "m.login.password", "password": user.password}},
    )
    assert status == 200, body
    status, body = await flows.call("GET", "/account/whoami", token=user.access_token)
    assert (status, body["errcode"]) == (401, "M_UNKNOWN_TOKEN")
    status, body = await flows.call(
        "POST",
        "/login",
        json={
            "type": "m.login.password",
            "identifier": {"type": "m.id.user", "user": user.user_id},
            "password": user.password,
        },
    )
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = await flows.call(
        "POST",
        "/register",
        json={
            "username": user.user_id[1:].split(":")[0],
            "password": "long enough pw",
            "auth": {"type": "m.login.dummy"},
        },
    )
    assert (status, body["errcode"]) == (400, "M_USER_IN_USE")


# --- linked external account (OIDC against a real provider) -------------------------------------------


async def test_link_an_external_account_then_sign_in_with_it(flows: Flows) -> None:
    user = await register_user(flows.stack.base_url)
    callback = f"{flows.stack.base_url}/_laiwang/client/v1/oidc/callback"
    subject = f"taobao-{secrets.token_hex(4)}"

    status, body = await flows.call("GET", "/login")
    assert {"type": "m.login.sso", "identity_providers": [{"id": "taobao", "name": "Taobao"}]} in body["flows"]

    # Link: authorization-code flow with PKCE, started by the signed-in user.
    status, body = await flows.call(
        "POST", "/_laiwang/client/v1/account/external/taobao/link", token=user.access_token, json={}
    )
    assert status == 200, body
    authorization_url = body["authorization_url"]
    query = parse_qs(urlparse(authorization_url).query)
    assert authorization_url.startswith(flows.issuer)
    assert query["code_challenge_method"] == ["S256"] and query["code_challenge"][0]
    returned = await complete_provider_login(authorization_url, subject, stop_at=callback)
    status, body = await flows.call("GET", returned[len(flows.stack.base_url) :])
    assert (status, body) == (200, {"linked": "taobao", "user_id": user.user_id})
    status, body = await flows.call("GET", "/_laiwang/client/v1/account/external", token=user.access_token)
    assert [(a["provider_id"], a["subject"]) for a in body["accounts"]] == [("taobao", subject)]

    # A replayed callback (same state) is refused: states are single-use.
    status, body = await flows.call("GET", returned[len(flows.stack.base_url) :])
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")

    # Sign in: Matrix SSO redirect -> provider -> callback -> client redirect with a loginToken.
    client_redirect = "http://127.0.0.1:9/after-sso"
    status, body = await flows.call("GET", f"/login/sso/redirect/taobao?redirectUrl={client_redirect}")
    assert status == 302
    returned = await complete_provider_login(body["location"], subject, stop_at=callback)
    status, body = await flows.call("GET", returned[len(flows.stack.base_url) :])
    assert status == 302 and body["location"].startswith(client_redirect + "?loginToken=")
    login_token = parse_qs(urlparse(body["location"]).query)["loginToken"][0]
    status, session = await flows.call("POST", "/login", json={"type": "m.login.token", "token": login_token})
    assert status == 200 and session["user_id"] == user.user_id, session
    assert (await flows.call("GET", "/account/whoami", token=session["access_token"]))[1]["user_id"] == user.user_id
    # Login tokens are single-use.
    status, body = await flows.call("POST", "/login", json={"type": "m.login.token", "token": login_token})
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")

    # An external identity nobody linked cannot sign in; unknown redirect targets are refused.
    status, body = await flows.call("GET", f"/login/sso/redirect/taobao?redirectUrl={client_redirect}")
    returned = await complete_provider_login(body["location"], "someone-unlinked", stop_at=callback)
    status, body = await flows.call("GET", returned[len(flows.stack.base_url) :])
    assert (status, body["errcode"]) == (403, "M_FORBIDDEN")
    status, body = await flows.call("GET", "/login/sso/redirect/taobao?redirectUrl=https://evil.example/steal")
    assert (status, body["errcode"]) == (400, "M_INVALID_PARAM")

    # Unlink.
    status, _ = await flows.call("DELETE", "/_laiwang/client/v1/account/external/taobao", token=user.access_token)
    assert status == 200
    status, body = await flows.call("GET", "/_laiwang/client/v1/account/external", token=user.access_token)
    assert body["accounts"] == []


async def test_no_password_token_or_code_reaches_a_log_line_or_metric(flows: Flows) -> None:
    password = f"pw-{secrets.token_hex(8)}"
    user = await register_user(flows.stack.base_url, password=password)
    session = await login_user(flows.stack.base_url, user.user_id, password)
    await flows.call(
        "POST",
        "/login",
        json={
            "type": "m.login.password",
            "password": password + "-wrong",
            "identifier": {"type": "m.id.user", "user": user.user_id},
        },
    )
    await flows.call("GET", f"/account/whoami?access_token={session.access_token}")
    _, msisdn = await flows.bind_phone(user)
    code = sms_codes(flows.sms_log, msisdn)[-1]
    await flows.call("POST", "/logout", token=session.access_token)
    # A marker after everything above: once auth's DEV-SMS line for a fresh number is in the stack
    # log, auth's earlier output is there too (one pipe per child, relayed in order).
    marker_national, marker_msisdn = unique_cn_mobile()
    status, _ = await flows.call(
        "POST",
        "/account/3pid/msisdn/requestToken",
        json={"client_secret": "marker", "country": "CN", "phone_number": marker_national, "send_attempt": 1},
    )
    assert status == 200

    async def marker_logged() -> bool:
        return f"to {marker_msisdn}:" in flows.stack.log_text()

    await eventually(marker_logged)
    metrics = ""
    for url in (f"{flows.stack.base_url}/metrics", flows.stack.metrics_url("auth")):
        async with flows.http.get(url) as r:
            metrics += await r.text()
    logs = flows.stack.log_text()
    for secret in (password, user.access_token, session.access_token):
        assert secret not in logs and secret not in metrics
    assert not [line for line in logs.splitlines() if code in line and "DEV-SMS" not in line]
