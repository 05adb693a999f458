"""Prometheus metrics shared by every process, and the `/metrics` endpoint for gRPC services."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

from plumbing.errors import StartupError

GRPC_SERVER_HANDLED = Counter(
    "grpc_server_handled_total",
    "gRPC calls completed by this server, by method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
GRPC_SERVER_LATENCY = Histogram(
    "grpc_server_handling_seconds",
    "Time spent handling a gRPC call on this server.",
    ["grpc_service", "grpc_method"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
GRPC_CLIENT_HANDLED = Counter(
    "grpc_client_handled_total",
    "gRPC calls made by this process to other services, by method and status code.",
    ["grpc_service", "grpc_method", "grpc_code"],
)
EVENTS_PUBLISHED = Counter("events_published_total", "Events published to JetStream.", ["subject_prefix"])
EVENTS_CONSUMED = Counter("events_consumed_total", "Events handled by a durable consumer.", ["consumer", "outcome"])
# Backlogs the alerts in deploy/k8s/base/monitoring.yaml watch.
CONSUMER_PENDING = Gauge(
    "jetstream_consumer_pending_messages",
    "Messages in the stream not yet delivered to this durable consumer.",
    ["consumer"],
)
CONSUMER_ACK_PENDING = Gauge(
    "jetstream_consumer_ack_pending_messages",
    "Messages delivered to this durable consumer, not yet acked.",
    ["consumer"],
)
OUTBOX_PENDING = Gauge("outbox_pending_events", "Events committed to this service's outbox, not yet published.")
OUTBOX_OLDEST_AGE = Gauge(
    "outbox_oldest_event_age_seconds", "Age of the oldest event in this service's outbox (0 when it is empty)."
)


def split_method(full_method: str) -> tuple[str, str]:
    """'/laiwang.auth.v1.AuthService/Login' -> ('laiwang.auth.v1.AuthService', 'Login')."""
    service, _, method = full_method.lstrip("/").partition("/")
    return service, method


def serve_metrics(host: str, port: int, setting: str = "METRICS_PORT") -> None:
    """Start the `/metrics` HTTP endpoint on a background thread (prometheus_client's own server)."""
    try:
        start_http_server(port, addr=host)
    except OSError as exc:
        raise StartupError(f"cannot serve metrics on {host}:{port} ({setting}): {_reason(exc)}") from None


def _reason(exc: OSError) -> str:
    if exc.errno in (98, 48):  # EADDRINUSE on Linux / macOS
        return "port already in use"
    return exc.strerror or str(exc)
