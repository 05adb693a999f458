"""Auth service settings: defaults, and one-line errors naming the variable."""

from __future__ import annotations

import pytest

from plumbing.config import Env
from plumbing.errors import ConfigError
from services.auth.main import oidc_from_env, settings_from_env, sms_from_env

pytestmark = pytest.mark.unit


def test_defaults_match_the_issue() -> None:
    settings = settings_from_env("laiwang.test", Env({}))
    assert (settings.code_ttl_seconds, settings.code_max_attempts, settings.code_resend_seconds) == (300, 5, 60)
    assert settings.default_region == "CN" and settings.password_min_length == 8
    assert (settings.argon2.time_cost, settings.argon2.memory_cost_kib) == (2, 19 * 1024)
    assert oidc_from_env(Env({})) is None


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"AUTH_DEFAULT_REGION": "XX"}, "AUTH_DEFAULT_REGION"),
        ({"AUTH_CODE_TTL_SECONDS": "five"}, "AUTH_CODE_TTL_SECONDS"),
        ({"AUTH_PASSWORD_MIN_LENGTH": "2"}, "AUTH_PASSWORD_MIN_LENGTH"),
        ({"AUTH_ARGON2_MEMORY_KIB": "16"}, "AUTH_ARGON2_MEMORY_KIB"),
    ],
)
def test_bad_values_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError, match=variable):
        settings_from_env("laiwang.test", Env(env))


def test_oidc_needs_https_unless_allowed_and_a_client_id() -> None:
    with pytest.raises(ConfigError, match="AUTH_OIDC_ISSUER"):
        oidc_from_env(
            Env({"AUTH_OIDC_ISSUER": "http://idp.example", "AUTH_OIDC_CLIENT_ID": "c", "AUTH_OIDC_CLIENT_SECRET": "s"})
        )
    with pytest.raises(ConfigError, match="AUTH_OIDC_CLIENT_ID"):
        oidc_from_env(Env({"AUTH_OIDC_ISSUER": "https://idp.example"}))
    client = oidc_from_env(
        Env(
            {
                "AUTH_OIDC_ISSUER": "http://127.0.0.1:9/",
                "AUTH_OIDC_ALLOW_HTTP": "true",
                "AUTH_OIDC_CLIENT_ID": "c",
                "AUTH_OIDC_CLIENT_SECRET": "s",
            }
        )
    )
    assert client is not None and client.issuer == "http://127.0.0.1:9" and client.providers() == [("taobao", "Taobao")]


def test_unknown_sms_provider_is_refused() -> None:
    with pytest.raises(ConfigError, match="AUTH_SMS_PROVIDER"):
        sms_from_env(Env({"AUTH_SMS_PROVIDER": "carrier-pigeon"}))
