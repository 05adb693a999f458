"""A real Matrix client library (matrix-nio) against the gateway of the running stack.

Register, log in by user id and by verified phone number, whoami, log out; the old token is then
refused. Phone codes are read from the dev SMS channel (the auth process's stdout, in the stack log).
"""

from __future__ import annotations

import secrets

import aiohttp
import pytest
from nio import (
    AsyncClient,
    LoginError,
    LoginResponse,
    LogoutResponse,
    RegisterResponse,
    WhoamiError,
    WhoamiResponse,
)

from tests.auth_support import unique_cn_mobile
from tests.matrix_support import unique_localpart

pytestmark = pytest.mark.e2e

PASSWORD = "nio-test-password-1"


async def _code_from_log(stack, msisdn: str) -> str:
    import asyncio
    import re

    for _ in range(200):
        found = re.findall(
            rf"DEV-SMS \S+ to {re.escape(msisdn)}: Your Laiwang verification code is (\d{{6}})", stack.log_text()
        )
        if found:
            return found[-1]
        await asyncio.sleep(0.05)
    raise AssertionError(f"no code for {msisdn} in the stack log")


async def test_register_login_whoami_logout_with_matrix_nio(stack) -> None:
    localpart = unique_localpart("nio")
    client = AsyncClient(stack.base_url, localpart)
    try:
        registered = await client.register(localpart, PASSWORD, device_name="nio phone")
        assert isinstance(registered, RegisterResponse), registered
        assert registered.user_id == f"@{localpart}:laiwang.test"
        first_token = registered.access_token

        # Log in again by full user id: a second device with its own token.
        login = AsyncClient(stack.base_url, registered.user_id)
        logged_in = await login.login(PASSWORD, device_name="nio laptop")
        assert isinstance(logged_in, LoginResponse), logged_in
        assert logged_in.user_id == registered.user_id
        assert logged_in.device_id != registered.device_id
        assert logged_in.access_token != first_token

        me = await login.whoami()
        assert isinstance(me, WhoamiResponse), me
        assert (me.user_id, me.device_id) == (registered.user_id, logged_in.device_id)

        old_token = login.access_token
        out = await login.logout()
        assert isinstance(out, LogoutResponse), out

        # The old token is refused from now on (nio clears it locally, so ask with it explicitly).
        login.access_token = old_token
        refused = await login.whoami()
        assert isinstance(refused, WhoamiError)
        assert refused.status_code == "M_UNKNOWN_TOKEN"

        # The first device is untouched.
        client.access_token = first_token
        still = await client.whoami()
        assert isinstance(still, WhoamiResponse) and still.device_id == registered.device_id
        await login.close()

        # Login by localpart only works too, and a wrong password is M_FORBIDDEN.
        by_localpart = AsyncClient(stack.base_url, localpart)
        assert isinstance(await by_localpart.login(PASSWORD), LoginResponse)
        wrong = AsyncClient(stack.base_url, localpart)
        failed = await wrong.login("not the password")
        assert isinstance(failed, LoginError) and failed.status_code == "M_FORBIDDEN"
        await by_localpart.close()
        await wrong.close()
    finally:
        await client.close()


async def test_login_by_verified_phone_number_with_matrix_nio(stack) -> None:
    localpart = unique_localpart("phone")
    client = AsyncClient(stack.base_url, localpart)
    registered = await client.register(localpart, PASSWORD)
    assert isinstance(registered, RegisterResponse), registered
    national, msisdn = unique_cn_mobile()
    secret = secrets.token_hex(16)
    headers = {"Authorization": f"Bearer {registered.access_token}"}
    base = f"{stack.base_url}/_matrix/client/v3"
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{base}/account/3pid/msisdn/requestToken",
            json={"client_secret": secret, "country": "CN", "phone_number": national, "send_attempt": 1},
        ) as r:
            assert r.status == 200, await r.text()
            sid = (await r.json())["sid"]
        code = await _code_from_log(stack, msisdn)
        async with http.post(
            f"{base}/account/3pid/msisdn/submit_token", json={"sid": sid, "client_secret": secret, "token": code}
        ) as r:
            assert r.status == 200 and (await r.json()) == {"success": True}
        async with http.post(
            f"{base}/account/3pid/add", headers=headers, json={"sid": sid, "client_secret": secret}
        ) as r:
            assert r.status == 200, await r.text()
        async with http.get(f"{base}/account/3pid", headers=headers) as r:
            assert (await r.json())["threepids"][0]["address"] == msisdn.lstrip("+")

    # The phone number is a login identifier (m.id.phone), through nio's raw login API.
    phone_client = AsyncClient(stack.base_url)
    response = await phone_client.login_raw(
        {
            "type": "m.login.password",
            "identifier": {"type": "m.id.phone", "country": "CN", "phone": national},
            "password": PASSWORD,
            "initial_device_display_name": "phone login",
        }
    )
    assert isinstance(response, LoginResponse), response
    assert response.user_id == registered.user_id
    me = await phone_client.whoami()
    assert isinstance(me, WhoamiResponse) and me.user_id == registered.user_id
    await phone_client.close()
    await client.close()
    # The code never reached a structured (JSON) log line of any process.
    for line in stack.log_text().splitlines():
        if code in line and '"msg"' in line:
            raise AssertionError(f"verification code leaked into a log line: {line}")
