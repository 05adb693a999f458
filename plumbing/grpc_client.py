"""Channels to other services, carrying the request id and the remaining deadline downstream."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from plumbing.grpc_context import REQUEST_ID_METADATA_KEY, effective_timeout
from plumbing.logs import request_id_var
from plumbing.metrics import GRPC_CLIENT_HANDLED, split_method

DEFAULT_TIMEOUT_SECONDS = 10.0


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


def open_channel(target: str) -> grpc.aio.Channel:
    """An insecure channel (inside the cluster) with propagation and sane keepalives."""
    return grpc.aio.insecure_channel(
        target,
        interceptors=[_PropagatingInterceptor()],
        options=[
            ("grpc.keepalive_time_ms", 30_000),
            ("grpc.keepalive_permit_without_calls", 1),
            ("grpc.enable_retries", 1),
        ],
    )
