"""Gateway-side account settings: client address behind trusted proxies, and one-line config errors."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from gateway.app import DEPS_KEY, GatewayDeps
from gateway.client_address import client_address
from gateway.config import GatewayConfig
from gateway.downstream import Downstream
from plumbing.config import Env
from plumbing.errors import ConfigError

pytestmark = pytest.mark.unit


def _request(remote: str, forwarded: str | None, trusted: str) -> web.Request:
    config = GatewayConfig.from_env(Env({"GATEWAY_TRUSTED_PROXIES": trusted}))
    deps = GatewayDeps(config=config, downstream=Downstream(config.service_addresses))
    app = web.Application()
    app[DEPS_KEY] = deps
    headers = {"X-Forwarded-For": forwarded} if forwarded else {}
    request = make_mocked_request("POST", "/", headers=headers, app=app)
    return request.clone(remote=remote)


def test_without_trusted_proxies_the_peer_is_the_client() -> None:
    assert client_address(_request("203.0.113.9", "1.2.3.4", "")) == "203.0.113.9"


def test_behind_a_trusted_proxy_the_last_untrusted_hop_is_the_client() -> None:
    # A client may forge the left part of the header; only hops added by our proxies count.
    request = _request("10.0.0.5", "6.6.6.6, 198.51.100.7, 10.0.0.4", "10.0.0.0/8")
    assert client_address(request) == "198.51.100.7"


def test_an_untrusted_peer_cannot_claim_another_address() -> None:
    assert client_address(_request("198.51.100.7", "1.1.1.1", "10.0.0.0/8")) == "198.51.100.7"


def test_bad_settings_fail_with_one_line_naming_the_variable() -> None:
    with pytest.raises(ConfigError, match="GATEWAY_TRUSTED_PROXIES"):
        GatewayConfig.from_env(Env({"GATEWAY_TRUSTED_PROXIES": "10.0.0.0/8, not-an-ip"}))
    with pytest.raises(ConfigError, match="GATEWAY_CREDENTIAL_BURST"):
        GatewayConfig.from_env(Env({"GATEWAY_CREDENTIAL_BURST": "lots"}))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("GATEWAY_SEND_RATE_PER_SECOND", "abc"),
        ("GATEWAY_SEND_BURST", "0"),
        ("GATEWAY_CONTACTS_RATE_PER_SECOND", "fast"),
        ("GATEWAY_CONTACTS_UPLOAD_BURST", "x"),
        ("GATEWAY_ZHADUI_RATE_PER_SECOND", "-1"),
        ("GATEWAY_TOKEN_CACHE_SECONDS", "soon"),
        ("GATEWAY_WAKE_LINGER_SECONDS", "0"),
    ],
)
def test_every_gateway_setting_is_checked_at_start_up(name: str, value: str) -> None:
    """Read when the config is built (before serving), not at the first request that needs it."""
    with pytest.raises(ConfigError, match=name):
        GatewayConfig.from_env(Env({name: value}))
