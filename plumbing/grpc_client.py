"""Channels to other services, carrying the request id and the remaining deadline downstream."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc

from plumbing.config import Env
from plumbing.grpc_context import REQUEST_ID_METADATA_KEY, effective_timeout
from plumbing.logs import request_id_var
from plumbing.metrics import GRPC_CLIENT_HANDLED, split_method

DEFAULT_TIMEOUT_SECONDS = 10.0


def keepalive_ms() -> int:
    """How often channels ping an idle connection (GRPC_KEEPALIVE_MS); servers accept twice that rate."""
    return Env().int("GRPC_KEEPALIVE_MS", 30_000, minimum=50)


# A restarted service is reachable again within ~0.5 s, instead of gRPC's default 1 s first retry
# growing to 120 s (channel-arg names as grpc core reads them). Not grpc.min_reconnect_backoff_ms:
# grpc core also takes it as the time a connection attempt may take (default 20 s), and at 100 ms a
# busy server that sent its HTTP/2 SETTINGS a little late failed every waiting call with
# UNAVAILABLE "connection attempt timed out before receiving SETTINGS frame".
RECONNECT_OPTIONS: list[tuple[str, int]] = [
    ("grpc.initial_reconnect_backoff_ms", 100),
    ("grpc.max_reconnect_backoff_ms", 500),
]


# A server that shuts down (a rollout replacing a replica) sends GOAWAY, then finishes the calls
# it started. Calls that reached it before the client read the GOAWAY, but that its grpc core had
# not handed to a handler yet, it drops with CANCELLED: they never ran, so any method may be sent
# again, and the retry goes out on the channel's new connection (through the Service, to another
# replica). UNAVAILABLE is not retried here: a service answers an outage of its store or bus
# with it, and the caller then retries after the retry_after_ms hint, not at once.
RETRY_POLICY = {
    "maxAttempts": 4,
    "initialBackoff": "0.05s",
    "maxBackoff": "0.5s",
    "backoffMultiplier": 2,
    "retryableStatusCodes": ["CANCELLED"],
}
SERVICE_CONFIG = json.dumps({"methodConfig": [{"name": [{}], "retryPolicy": RETRY_POLICY}]})


class _PropagatingInterceptor(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self,
        continuation: Callable[[grpc.aio.ClientCallDetails, Any], Any],
        client_call_details: grpc.aio.ClientCallDetails,
        request: Any,
    ) -> Any:
        metadata = grpc.aio.Metadata(*(client_call_details.metadata or ()))
        request_id = request_id_var.get()
        if request_id != "-" and REQUEST_ID_METADATA_KEY not in metadata:
            metadata.add(REQUEST_ID_METADATA_KEY, request_id)
        timeout = effective_timeout(
            client_call_details.timeout if client_call_details.timeout is not None else DEFAULT_TIMEOUT_SECONDS
        )
        details = grpc.aio.ClientCallDetails(
            method=client_call_details.method,
            timeout=timeout,
            metadata=metadata,
            credentials=client_call_details.credentials,
            wait_for_ready=client_call_details.wait_for_ready,
        )
        method = client_call_details.method
        service, name = split_method(method.decode() if isinstance(method, bytes) else method)
        call = await continuation(details, request)
        code = await call.code()
        GRPC_CLIENT_HANDLED.labels(service, name, code.name).inc()
        return call


def open_channel(target: str, keepalive: int | None = None) -> grpc.aio.Channel:
    """An insecure channel (inside the cluster) with propagation, keepalives the server accepts
    (`plumbing.grpc_server` allows pings at twice this rate) and a short reconnect backoff."""
    options = channel_options(keepalive)
    return grpc.aio.insecure_channel(target, interceptors=[_PropagatingInterceptor()], options=options)


def channel_options(keepalive: int | None = None) -> list[tuple[str, int | str]]:
    return [
        ("grpc.keepalive_time_ms", keepalive or keepalive_ms()),
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.max_pings_without_data", 0),  # keep pinging an idle connection
        ("grpc.enable_retries", 1),
        ("grpc.max_receive_message_length", 8 * 1024 * 1024),  # media downloads (docs/media.md)
        ("grpc.service_config", SERVICE_CONFIG),  # the default; a resolver's own config would win
        *RECONNECT_OPTIONS,
    ]
