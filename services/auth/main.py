"""Composition root of the auth service: builds its parts from the shared runtime and serves them.

Settings (all optional; see docs/auth.md):
  AUTH_DEFAULT_REGION, AUTH_PASSWORD_MIN_LENGTH, AUTH_ARGON2_TIME_COST, AUTH_ARGON2_MEMORY_KIB,
  AUTH_ACCESS_TOKEN_TTL_SECONDS, AUTH_REFRESH_TOKEN_TTL_SECONDS, AUTH_CODE_TTL_SECONDS,
  AUTH_CODE_MAX_ATTEMPTS, AUTH_CODE_RESEND_SECONDS, AUTH_SMS_PER_NUMBER_PER_HOUR,
  AUTH_SMS_PER_ADDRESS_PER_HOUR, AUTH_LOGIN_FAILURES_PER_ACCOUNT, AUTH_LOGIN_FAILURES_PER_ADDRESS,
  AUTH_LOGIN_FAILURE_WINDOW_SECONDS, AUTH_REGISTRATIONS_PER_ADDRESS_PER_HOUR, AUTH_CODE_PEPPER,
  AUTH_SMS_PROVIDER, AUTH_DEV_SMS_LOG,
  AUTH_OIDC_ISSUER, AUTH_OIDC_CLIENT_ID, AUTH_OIDC_CLIENT_SECRET, AUTH_OIDC_PROVIDER_ID,
  AUTH_OIDC_PROVIDER_NAME, AUTH_OIDC_SCOPES, AUTH_OIDC_ALLOW_HTTP
"""

from __future__ import annotations

from pathlib import Path

import phonenumbers

from laiwang.auth.v1 import auth_pb2
from plumbing import streams
from plumbing.config import Env
from plumbing.errors import ConfigError
from plumbing.service import Runtime, ServiceParts, run_service
from services.auth.api import AuthApi
from services.auth.core import AuthCore
from services.auth.model import Argon2Params, AuthSettings
from services.auth.oidc import OidcClient
from services.auth.sms import DevSmsSender
from services.auth.store import AuthStore


def settings_from_env(server_name: str, env: Env | None = None) -> AuthSettings:
    env = env or Env()
    region = env.str("AUTH_DEFAULT_REGION", "CN").upper()
    if region not in phonenumbers.SUPPORTED_REGIONS:
        raise ConfigError(f"AUTH_DEFAULT_REGION={region!r} is not a region code phonenumbers knows (e.g. CN, US)")
    return AuthSettings(
        server_name=server_name,
        default_region=region,
        password_min_length=env.int("AUTH_PASSWORD_MIN_LENGTH", 8, minimum=6, maximum=128),
        argon2=Argon2Params(
            time_cost=env.int("AUTH_ARGON2_TIME_COST", 2, minimum=1, maximum=20),
            memory_cost_kib=env.int("AUTH_ARGON2_MEMORY_KIB", 19 * 1024, minimum=8 * 1024, maximum=1024 * 1024),
        ),
        access_token_ttl_seconds=env.int("AUTH_ACCESS_TOKEN_TTL_SECONDS", 3600, minimum=1),
        refresh_token_ttl_seconds=env.int("AUTH_REFRESH_TOKEN_TTL_SECONDS", 30 * 24 * 3600, minimum=60),
        code_ttl_seconds=env.int("AUTH_CODE_TTL_SECONDS", 300, minimum=1),
        code_max_attempts=env.int("AUTH_CODE_MAX_ATTEMPTS", 5, minimum=1, maximum=20),
        code_resend_seconds=env.int("AUTH_CODE_RESEND_SECONDS", 60, minimum=0),
        sms_per_number_per_hour=env.int("AUTH_SMS_PER_NUMBER_PER_HOUR", 5, minimum=1),
        sms_per_address_per_hour=env.int("AUTH_SMS_PER_ADDRESS_PER_HOUR", 20, minimum=1),
        login_failure_window_seconds=env.int("AUTH_LOGIN_FAILURE_WINDOW_SECONDS", 900, minimum=1),
        login_failures_per_account=env.int("AUTH_LOGIN_FAILURES_PER_ACCOUNT", 10, minimum=1),
        login_failures_per_address=env.int("AUTH_LOGIN_FAILURES_PER_ADDRESS", 100, minimum=1),
        registrations_per_address_per_hour=env.int("AUTH_REGISTRATIONS_PER_ADDRESS_PER_HOUR", 200, minimum=1),
        code_checks_per_address_per_hour=env.int("AUTH_CODE_CHECKS_PER_ADDRESS_PER_HOUR", 60, minimum=1),
        code_pepper=env.str("AUTH_CODE_PEPPER", "laiwang-dev-pepper").encode(),
    )


def oidc_from_env(env: Env | None = None) -> OidcClient | None:
    env = env or Env()
    if env._raw("AUTH_OIDC_ISSUER") is None:
        return None
    schemes = ("https", "http") if env.bool("AUTH_OIDC_ALLOW_HTTP", False) else ("https",)
    issuer = env.url("AUTH_OIDC_ISSUER", None, schemes)
    return OidcClient(
        provider_id=env.str("AUTH_OIDC_PROVIDER_ID", "taobao"),
        display_name=env.str("AUTH_OIDC_PROVIDER_NAME", "Taobao"),
        issuer=issuer,
        client_id=env.str("AUTH_OIDC_CLIENT_ID"),
        client_secret=env.str("AUTH_OIDC_CLIENT_SECRET"),
        scopes=env.str("AUTH_OIDC_SCOPES", "openid"),
    )


def sms_from_env(env: Env | None = None) -> DevSmsSender:
    env = env or Env()
    env.choice("AUTH_SMS_PROVIDER", "dev", ("dev",))
    raw = env._raw("AUTH_DEV_SMS_LOG")
    return DevSmsSender(Path(raw) if raw else None)


async def build(runtime: Runtime) -> ServiceParts:
    env = Env()
    settings = settings_from_env(runtime.config.server_name, env)
    store = AuthStore(runtime.mongo, runtime.db, runtime.outbox)
    core = AuthCore(store, settings, sms=sms_from_env(env), oidc=oidc_from_env(env))
    api = AuthApi(core)
    return ServiceParts(
        service_names=[auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name],
        registrations=[api.register],
        indexes=store.indexes(),
        produces=[streams.AUTH],
    )


def main() -> None:
    run_service("auth", build)
