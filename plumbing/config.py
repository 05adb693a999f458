"""Configuration from environment variables (12-factor), validated with one-line errors.

Each reader names the variable it reads so that a bad value is reported as, for example,
``GRPC_PORT='abc' is not an integer``.
"""

from __future__ import annotations

import builtins
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field

from plumbing.errors import ConfigError
from plumbing.streams import STORAGE_TYPES, StreamSettings

_LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")
_HOST_PORT = re.compile(r"^[A-Za-z0-9_.\-\[\]:]+:\d{1,5}$")

# The local defaults, in one place: every process started alone (`laiwang serve <process>`) finds
# the others where `laiwang run` (`make run`) puts them. README "Configuration" lists them; a test
# checks that table and `make run`'s settings against these.
SERVICES = ("auth", "contacts", "messaging", "zhadui", "open_platform")
LOCAL_HOST = "127.0.0.1"
DEFAULT_GATEWAY_PORT = 8008
DEFAULT_NATS_PORT = 4322
DEFAULT_MONGO_PORT = 27817
DEFAULT_GRPC_PORT_BASE = 50051  # auth, contacts, messaging, zhadui, open_platform: this and the next four
DEFAULT_METRICS_PORT_BASE = 9101  # the same order
DEFAULT_NATS_URL = f"nats://{LOCAL_HOST}:{DEFAULT_NATS_PORT}"
DEFAULT_MONGO_URI = f"mongodb://{LOCAL_HOST}:{DEFAULT_MONGO_PORT}/?directConnection=true"


def default_grpc_port(service: str) -> int:
    return DEFAULT_GRPC_PORT_BASE + SERVICES.index(service)


def default_metrics_port(service: str) -> int:
    return DEFAULT_METRICS_PORT_BASE + SERVICES.index(service)


def default_address(service: str) -> str:
    """Where a process looks for `service` unless `<SERVICE>_ADDR` says otherwise."""
    return f"{LOCAL_HOST}:{default_grpc_port(service)}"


class Env:
    """Typed, validated reads from an environment mapping (``os.environ`` by default).

    Its methods are named after the types they return, so annotations below `def str` name the
    builtins as `builtins.str`.
    """

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self._environ = os.environ if environ is None else environ

    def _raw(self, name: str) -> str | None:
        value = self._environ.get(name)
        if value is None or value.strip() == "":
            return None
        return value.strip()

    def str(self, name: str, default: str | None = None) -> str:
        value = self._raw(name)
        if value is None:
            if default is None:
                raise ConfigError(f"{name} is required but not set")
            return default
        return value

    def int(
        self,
        name: builtins.str,
        default: builtins.int,
        *,
        minimum: builtins.int | None = None,
        maximum: builtins.int | None = None,
    ) -> builtins.int:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = int(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not an integer") from None
        if minimum is not None and value < minimum:
            raise ConfigError(f"{name}={value} is below the minimum {minimum}")
        if maximum is not None and value > maximum:
            raise ConfigError(f"{name}={value} is above the maximum {maximum}")
        return value

    def float(self, name: builtins.str, default: builtins.float, *, minimum: builtins.float = 0.0) -> builtins.float:
        raw = self._raw(name)
        if raw is None:
            return default
        try:
            value = float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r} is not a number") from None
        if value < minimum:
            raise ConfigError(f"{name}={value} is below the minimum {minimum}")
        return value

    def port(self, name: builtins.str, default: builtins.int) -> builtins.int:
        return self.int(name, default, minimum=0, maximum=65535)

    def choice(self, name: builtins.str, default: builtins.str, choices: tuple[builtins.str, ...]) -> builtins.str:
        value = self.str(name, default).upper() if choices == _LOG_LEVELS else self.str(name, default)
        if value not in choices:
            raise ConfigError(f"{name}={value!r} is not one of {', '.join(choices)}")
        return value

    def bool(self, name: builtins.str, default: builtins.bool) -> builtins.bool:
        raw = self._raw(name)
        if raw is None:
            return default
        lowered = raw.lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"{name}={raw!r} is not a boolean (use true or false)")

    def address(self, name: builtins.str, default: builtins.str | None = None) -> builtins.str:
        """A ``host:port`` address of another component."""
        value = self.str(name, default)
        if not _HOST_PORT.match(value):
            raise ConfigError(f"{name}={value!r} is not a host:port address")
        return value

    def url(self, name: builtins.str, default: builtins.str | None, schemes: tuple[builtins.str, ...]) -> builtins.str:
        value = self.str(name, default)
        if not any(value.startswith(f"{scheme}://") for scheme in schemes):
            raise ConfigError(f"{name}={value!r} must start with {' or '.join(s + '://' for s in schemes)}")
        return value


@dataclass(frozen=True)
class ServiceConfig:
    """Settings every gRPC service process reads."""

    name: str
    grpc_host: str
    grpc_port: int
    metrics_port: int
    mongo_uri: str
    mongo_db: str
    mongo_timeout_ms: int
    nats_url: str
    log_level: str
    server_name: str
    shutdown_grace_seconds: float
    streams: StreamSettings = field(default_factory=StreamSettings)

    @classmethod
    def from_env(cls, name: str, env: Env | None = None) -> ServiceConfig:
        env = env or Env()
        return cls(
            name=name,
            grpc_host=env.str("GRPC_HOST", LOCAL_HOST),
            grpc_port=env.port("GRPC_PORT", default_grpc_port(name)),
            metrics_port=env.port("METRICS_PORT", default_metrics_port(name)),
            mongo_uri=env.url("MONGO_URI", DEFAULT_MONGO_URI, ("mongodb", "mongodb+srv")),
            mongo_db=env.str("MONGO_DB", f"laiwang_{name}"),
            # How long a store call waits for an unreachable server before answering 503.
            mongo_timeout_ms=env.int("MONGO_TIMEOUT_MS", 5000, minimum=100),
            nats_url=env.url("NATS_URL", DEFAULT_NATS_URL, ("nats", "tls")),
            log_level=env.choice("LOG_LEVEL", "INFO", _LOG_LEVELS),
            server_name=env.str("SERVER_NAME", "localhost"),
            shutdown_grace_seconds=env.float("SHUTDOWN_GRACE_SECONDS", 10.0),
            streams=stream_settings(env),
        )


def stream_settings(env: Env) -> StreamSettings:
    """JetStream stream settings for a cluster (defaults: one node, file storage, 7 days)."""
    max_age = env.int("STREAM_MAX_AGE_SECONDS", 0, minimum=0)
    return StreamSettings(
        # A NATS cluster allows 1 to 5 replicas per stream; R3 is the usual production choice.
        replicas=env.int("STREAM_REPLICAS", 1, minimum=1, maximum=5),
        storage=env.choice("STREAM_STORAGE", "file", STORAGE_TYPES),
        max_age_seconds=max_age or None,
    )


LOG_LEVELS = _LOG_LEVELS
