"""Gateway settings from the environment."""

from __future__ import annotations

from dataclasses import dataclass, field
from ipaddress import IPv4Network, IPv6Network, ip_network
from pathlib import Path

from plumbing.config import (
    DEFAULT_GATEWAY_PORT,
    DEFAULT_NATS_URL,
    LOCAL_HOST,
    LOG_LEVELS,
    SERVICES,
    Env,
    default_address,
)
from plumbing.errors import ConfigError


@dataclass(frozen=True)
class Rate:
    """A token bucket's refill rate and size (gateway/ratelimit.py)."""

    per_second: float
    burst: int

    @classmethod
    def from_env(cls, env: Env, name: str, per_second: float, burst: int, minimum_rate: float = 0.01) -> Rate:
        return cls(
            per_second=env.float(f"GATEWAY_{name}_RATE_PER_SECOND", per_second, minimum=minimum_rate),
            burst=env.int(f"GATEWAY_{name}_BURST", burst, minimum=1),
        )


def _trusted_proxies(env: Env) -> tuple[IPv4Network | IPv6Network, ...]:
    proxies = []
    for item in env.str("GATEWAY_TRUSTED_PROXIES", "-").split(","):
        if item.strip() and item.strip() != "-":
            try:
                proxies.append(ip_network(item.strip(), strict=False))
            except ValueError:
                raise ConfigError(f"GATEWAY_TRUSTED_PROXIES has {item.strip()!r}, not an IP address or CIDR") from None
    return tuple(proxies)


@dataclass(frozen=True)
class GatewayConfig:
    """Every gateway setting, read and checked at start-up (a bad value stops the process with one
    line naming the variable, never at first use)."""

    host: str
    port: int
    server_name: str
    public_base_url: str
    nats_url: str
    log_level: str
    service_addresses: dict[str, str]
    max_body_bytes: int
    listen_backlog: int
    shutdown_grace_seconds: float
    # Slow clients (slowloris): a request's headers must arrive within header_timeout of its first
    # byte (or of the connection opening), and its body within body_timeout of the headers.
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    keepalive_seconds: float = 75.0
    # Media uploads (gateway/routes/media.py) may be bigger than other bodies.
    max_upload_bytes: int = 7 * 1024 * 1024
    # Per-user request rates (per replica), and the per-address flood limit on credential endpoints.
    send_rate: Rate = Rate(20.0, 100)
    contacts_rate: Rate = Rate(10.0, 40)
    contacts_upload_rate: Rate = Rate(0.5, 20)
    zhadui_rate: Rate = Rate(20.0, 60)
    credential_rate: Rate = Rate(20.0, 100)
    e2e_rate: Rate = Rate(20.0, 200)
    media_rate: Rate = Rate(10.0, 100)
    apps_rate: Rate = Rate(10.0, 100)  # the open platform's owner routes
    oauth_rate: Rate = Rate(20.0, 100)  # per address: the OAuth2 endpoints and the consent page
    partner_app_rate: Rate = Rate(50.0, 200)  # per app: the partner API
    partner_user_rate: Rate = Rate(5.0, 30)  # per app and user: the partner API
    # Per client address: partner tokens that turned out unknown (a guesser's budget, not a client's).
    partner_bad_token_rate: Rate = Rate(1.0, 30)
    # Peers whose X-Forwarded-For is believed (the client is the last untrusted hop).
    trusted_proxies: tuple[IPv4Network | IPv6Network, ...] = ()
    token_cache_seconds: float = 30.0
    wake_linger_seconds: float = 60.0
    # Extra prefixes an SSO redirectUrl may start with (besides this server and loopback).
    sso_redirect_prefixes: tuple[str, ...] = field(default=())
    # The built web client (`make web` writes web/dist); `/` serves it when it exists.
    web_dist_dir: str = str(Path(__file__).resolve().parent.parent / "web" / "dist")

    @classmethod
    def from_env(cls, env: Env | None = None) -> GatewayConfig:
        env = env or Env()
        host = env.str("GATEWAY_HOST", LOCAL_HOST)
        port = env.port("GATEWAY_PORT", DEFAULT_GATEWAY_PORT)
        return cls(
            host=host,
            port=port,
            server_name=env.str("SERVER_NAME", "localhost"),
            public_base_url=env.str("PUBLIC_BASE_URL", f"http://{host}:{port}"),
            nats_url=env.url("NATS_URL", DEFAULT_NATS_URL, ("nats", "tls")),
            log_level=env.choice("LOG_LEVEL", "INFO", LOG_LEVELS),
            service_addresses={name: env.address(f"{name.upper()}_ADDR", default_address(name)) for name in SERVICES},
            max_body_bytes=env.int("MAX_BODY_BYTES", 1024 * 1024, minimum=1024),
            # Mobile clients reconnect in herds after a network blip; 128 (aiohttp's default) overflows.
            listen_backlog=env.int("GATEWAY_LISTEN_BACKLOG", 2048, minimum=16),
            shutdown_grace_seconds=env.float("SHUTDOWN_GRACE_SECONDS", 10.0),
            header_timeout_seconds=env.float("GATEWAY_HEADER_TIMEOUT_SECONDS", 10.0, minimum=0.1),
            body_timeout_seconds=env.float("GATEWAY_BODY_TIMEOUT_SECONDS", 30.0, minimum=0.1),
            keepalive_seconds=env.float("GATEWAY_KEEPALIVE_SECONDS", 75.0, minimum=1.0),
            max_upload_bytes=env.int(
                "MEDIA_MAX_UPLOAD_BYTES", 7 * 1024 * 1024, minimum=1024, maximum=7 * 1024 * 1024 + 512 * 1024
            ),
            send_rate=Rate.from_env(env, "SEND", 20.0, 100),
            contacts_rate=Rate.from_env(env, "CONTACTS", 10.0, 40),
            contacts_upload_rate=Rate.from_env(env, "CONTACTS_UPLOAD", 0.5, 20, minimum_rate=0.001),
            zhadui_rate=Rate.from_env(env, "ZHADUI", 20.0, 60),
            credential_rate=Rate.from_env(env, "CREDENTIAL", 20.0, 100),
            e2e_rate=Rate.from_env(env, "E2E", 20.0, 200),
            media_rate=Rate.from_env(env, "MEDIA", 10.0, 100),
            apps_rate=Rate.from_env(env, "APPS", 10.0, 100),
            oauth_rate=Rate.from_env(env, "OAUTH", 20.0, 100),
            partner_app_rate=Rate.from_env(env, "PARTNER_APP", 50.0, 200),
            partner_user_rate=Rate.from_env(env, "PARTNER_USER", 5.0, 30),
            partner_bad_token_rate=Rate.from_env(env, "PARTNER_BAD_TOKEN", 1.0, 30),
            trusted_proxies=_trusted_proxies(env),
            token_cache_seconds=env.float("GATEWAY_TOKEN_CACHE_SECONDS", 30.0, minimum=0.0),
            wake_linger_seconds=env.float("GATEWAY_WAKE_LINGER_SECONDS", 60.0, minimum=0.1),
            sso_redirect_prefixes=tuple(
                p.strip() for p in env.str("GATEWAY_SSO_REDIRECT_PREFIXES", "").split(",") if p.strip()
            ),
            web_dist_dir=env.str("WEB_DIST_DIR", str(Path(__file__).resolve().parent.parent / "web" / "dist")),
        )
