"""Settings are validated with one-line errors that name the variable."""

from __future__ import annotations

import re

import pytest

from gateway.config import GatewayConfig
from plumbing.config import Env, ServiceConfig
from plumbing.dev.stack import StackConfig
from plumbing.errors import ConfigError
from plumbing.streams import StreamSettings

pytestmark = pytest.mark.unit


def test_defaults_apply_when_nothing_is_set() -> None:
    config = ServiceConfig.from_env("auth", Env({}))
    assert config.grpc_port == 50051
    assert config.mongo_db == "laiwang_auth"
    assert config.log_level == "INFO"


@pytest.mark.parametrize(
    ("environ", "message"),
    [
        ({"GRPC_PORT": "abc"}, "GRPC_PORT='abc' is not an integer"),
        ({"GRPC_PORT": "70000"}, "GRPC_PORT=70000 is above the maximum 65535"),
        ({"MONGO_URI": "postgres://x"}, "MONGO_URI='postgres://x' must start with mongodb://"),
        ({"NATS_URL": "127.0.0.1:4222"}, "NATS_URL='127.0.0.1:4222' must start with nats://"),
        ({"LOG_LEVEL": "LOUD"}, "LOG_LEVEL='LOUD' is not one of DEBUG, INFO, WARNING, ERROR"),
        ({"SHUTDOWN_GRACE_SECONDS": "-1"}, "SHUTDOWN_GRACE_SECONDS=-1.0 is below the minimum 0.0"),
    ],
)
def test_bad_service_settings_name_the_variable(environ: dict[str, str], message: str) -> None:
    with pytest.raises(ConfigError) as raised:
        ServiceConfig.from_env("auth", Env(environ))
    assert str(raised.value).startswith(message)
    assert "\n" not in str(raised.value)


def test_log_level_is_case_insensitive() -> None:
    assert ServiceConfig.from_env("auth", Env({"LOG_LEVEL": "debug"})).log_level == "DEBUG"


def test_gateway_rejects_a_service_address_without_port() -> None:
    with pytest.raises(ConfigError, match="AUTH_ADDR='auth-service' is not a host:port address"):
        GatewayConfig.from_env(Env({"AUTH_ADDR": "auth-service"}))


def test_stack_uses_embedded_servers_unless_told_otherwise() -> None:
    embedded = StackConfig.from_env(Env({}))
    assert embedded.external_mongo_uri is None and embedded.external_nats_url is None
    external = StackConfig.from_env(Env({"MONGO_URI": "mongodb://db:27017", "NATS_URL": "nats://bus:4222"}))
    assert external.mongo_uri == "mongodb://db:27017"
    assert external.nats_url == "nats://bus:4222"


def test_required_value_missing() -> None:
    with pytest.raises(ConfigError, match="SECRET is required but not set"):
        Env({"SECRET": "  "}).str("SECRET")


@pytest.mark.parametrize(("raw", "expected"), [("true", True), ("0", False), ("Yes", True), ("off", False)])
def test_booleans(raw: str, expected: bool) -> None:
    assert Env({"FLAG": raw}).bool("FLAG", not expected) is expected


def test_bad_boolean() -> None:
    with pytest.raises(ConfigError, match="FLAG='maybe' is not a boolean"):
        Env({"FLAG": "maybe"}).bool("FLAG", False)


def test_stream_settings_default_to_one_node_and_read_the_cluster_settings() -> None:
    assert ServiceConfig.from_env("auth", Env({})).streams == StreamSettings(1, "file", None)
    env = Env({"STREAM_REPLICAS": "3", "STREAM_STORAGE": "memory", "STREAM_MAX_AGE_SECONDS": "86400"})
    assert ServiceConfig.from_env("auth", env).streams == StreamSettings(3, "memory", 86400)


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("STREAM_REPLICAS", "6", "STREAM_REPLICAS=6 is above the maximum 5"),
        ("STREAM_REPLICAS", "0", "STREAM_REPLICAS=0 is below the minimum 1"),
        ("STREAM_STORAGE", "disk", "STREAM_STORAGE='disk' is not one of file, memory"),
    ],
)
def test_bad_stream_settings_are_named(name: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        ServiceConfig.from_env("auth", Env({name: value}))
