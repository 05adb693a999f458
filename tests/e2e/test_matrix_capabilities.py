"""`GET /capabilities`, `GET /voip/turnServer` and `GET /pushrules/` over real HTTP: answers and refusals."""

from __future__ import annotations

import aiohttp
import pytest

from tests.conftest import RunningStack
from tests.matrix_support import register_user

pytestmark = pytest.mark.e2e

V3 = "/_matrix/client/v3"


async def test_capabilities_turn_server_and_push_rules(stack: RunningStack) -> None:
    user = await register_user(stack.base_url)
    async with aiohttp.ClientSession(base_url=stack.base_url) as http:
        async with http.get(f"{V3}/capabilities", headers=user.headers) as r:
            assert r.status == 200
            caps = (await r.json())["capabilities"]
        assert caps["m.room_versions"] == {"default": "10", "available": {"10": "stable"}}
        assert caps["m.change_password"] == {"enabled": True}
        assert caps["m.set_displayname"] == {"enabled": True}
        async with http.get(f"{V3}/voip/turnServer", headers=user.headers) as r:
            assert r.status == 200
            assert await r.json() == {}
        async with http.get(f"{V3}/pushrules/", headers=user.headers) as r:
            assert r.status == 200
            rules = (await r.json())["global"]
        async with http.get(f"{V3}/pushrules/global/", headers=user.headers) as r:
            assert await r.json() == rules
        invite = next(rule for rule in rules["override"] if rule["rule_id"] == ".m.rule.invite_for_me")
        assert {"kind": "event_match", "key": "state_key", "pattern": user.user_id} in invite["conditions"]


@pytest.mark.parametrize("path", ["/capabilities", "/voip/turnServer", "/pushrules/", "/pushrules/global/"])
async def test_reads_need_an_access_token(stack: RunningStack, path: str) -> None:
    async with aiohttp.ClientSession(base_url=stack.base_url) as http:
        async with http.get(f"{V3}{path}") as r:
            assert r.status == 401
            assert (await r.json())["errcode"] == "M_MISSING_TOKEN"
        async with http.get(f"{V3}{path}", headers={"Authorization": "Bearer nope"}) as r:
            assert r.status == 401
            assert (await r.json())["errcode"] == "M_UNKNOWN_TOKEN"
