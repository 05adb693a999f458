"""Gateway settings from the environment."""

from __future__ import annotations

from dataclasses import dataclass

from plumbing.config import LOG_LEVELS, Env

SERVICES = ("auth", "contacts", "messaging", "zhadui", "open_platform")
DEFAULT_GRPC_PORTS = {"auth": 50051, "contacts": 50052, "messaging": 50053, "zhadui": 50054, "open_platform": 50055}


@dataclass(frozen=True)
class GatewayConfig:
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

    @classmethod
    def from_env(cls, env: Env | None = None) -> GatewayConfig:
        env = env or Env()
        host = env.str("GATEWAY_HOST", "127.0.0.1")
        port = env.port("GATEWAY_PORT", 8008)
        return cls(
            host=host,
            port=port,
            server_name=env.str("SERVER_NAME", "localhost"),
            public_base_url=env.str("PUBLIC_BASE_URL", f"http://{host}:{port}"),
            nats_url=env.url("NATS_URL", "nats://127.0.0.1:4222", ("nats", "tls")),
            log_level=env.choice("LOG_LEVEL", "INFO", LOG_LEVELS),
            service_addresses={
                name: env.address(f"{name.upper()}_ADDR", f"127.0.0.1:{DEFAULT_GRPC_PORTS[name]}") for name in SERVICES
            },
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
        )
