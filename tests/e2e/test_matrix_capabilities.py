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


async def test_account_data_push_rules_pushers_and_read_markers_over_http(stack: RunningStack) -> None:
    alice = await register_user(stack.base_url)
    bob = await register_user(stack.base_url)
    async with aiohttp.ClientSession(base_url=stack.base_url) as http:
        mine = f"{V3}/user/{alice.user_id}/account_data/org.example.settings"
        async with http.put(mine, json={"theme": "dark"}, headers=alice.headers) as r:
            assert r.status == 200 and await r.json() == {}
        async with http.get(mine, headers=alice.headers) as r:
            assert await r.json() == {"theme": "dark"}
        # Someone else's account data: neither readable nor writable.
        async with http.get(mine, headers=bob.headers) as r:
            assert r.status == 403 and (await r.json())["errcode"] == "M_FORBIDDEN"
        async with http.put(mine, data=b"[1]", headers=alice.headers) as r:
            assert r.status == 400 and (await r.json())["errcode"] == "M_BAD_JSON"
        async with http.put(mine, data=b"{", headers=alice.headers) as r:
            assert r.status == 400 and (await r.json())["errcode"] == "M_NOT_JSON"
        async with http.get(f"{V3}/user/{alice.user_id}/account_data/absent", headers=alice.headers) as r:
            assert r.status == 404 and (await r.json())["errcode"] == "M_NOT_FOUND"
        bad_room = f"{V3}/user/{alice.user_id}/rooms/nonsense/account_data/x"
        async with http.put(bad_room, json={}, headers=alice.headers) as r:
            assert r.status == 400 and (await r.json())["errcode"] == "M_INVALID_PARAM"

        rule = f"{V3}/pushrules/global/content/cake"
        async with http.put(rule, json={"pattern": "cake", "actions": ["notify"]}, headers=alice.headers) as r:
            assert r.status == 200
        async with http.get(rule, headers=alice.headers) as r:
            assert (await r.json())["pattern"] == "cake"
        async with http.put(f"{rule}/enabled", json={"enabled": False}, headers=alice.headers) as r:
            assert r.status == 200
        async with http.get(f"{rule}/enabled", headers=alice.headers) as r:
            assert await r.json() == {"enabled": False}
        async with http.get(rule, headers=bob.headers) as r:
            assert r.status == 404  # rules are per user
        async with http.put(f"{V3}/pushrules/global/override/x", json={"actions": 5}, headers=alice.headers) as r:
            assert r.status == 400 and (await r.json())["errcode"] == "M_BAD_JSON"
        async with http.put(f"{V3}/pushrules/device/override/x", json={"actions": []}, headers=alice.headers) as r:
            assert r.status == 400 and (await r.json())["errcode"] == "M_INVALID_PARAM"
        async with http.delete(rule, headers=alice.headers) as r:
            assert r.status == 200
        async with http.get(rule, headers=alice.headers) as r:
            assert r.status == 404

        pusher = {
            "pushkey": "k",
            "kind": "http",
            "app_id": "cn.laiwang.test",
            "app_display_name": "t",
            "device_display_name": "d",
            "lang": "en",
            "data": {"url": "http://127.0.0.1:1/_matrix/push/v1/notify"},
        }
        async with http.post(f"{V3}/pushers/set", json=pusher, headers=alice.headers) as r:
            assert r.status == 200
        async with http.get(f"{V3}/pushers", headers=alice.headers) as r:
            assert (await r.json())["pushers"][0]["pushkey"] == "k"
        async with http.post(
            f"{V3}/pushers/set", json={**pusher, "data": {"url": "file:///etc/passwd"}}, headers=alice.headers
        ) as r:
            assert r.status == 400 and (await r.json())["errcode"] == "M_INVALID_PARAM"
        async with http.get(f"{V3}/pushers", headers=bob.headers) as r:
            assert (await r.json())["pushers"] == []
