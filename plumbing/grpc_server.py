"""grpc.aio server bootstrap used by every service.

Gives each service the standard health service (SERVING / NOT_SERVING), reflection, Prometheus
metrics per method and status code, request-id logging, deadline propagation and a graceful
shutdown: health flips to NOT_SERVING, grpc sends GOAWAY (clients open new calls elsewhere),
in-flight calls drain for a grace period, then the server stops.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, cast

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from plumbing.errors import StartupError
from plumbing.grpc_client import keepalive_ms
from plumbing.grpc_context import REQUEST_ID_METADATA_KEY, deadline_var
from plumbing.grpc_errors import abort_with, outage_of, unavailable
from plumbing.logs import request_id_var
from plumbing.metrics import GRPC_SERVER_HANDLED, GRPC_SERVER_LATENCY, split_method

log = logging.getLogger(__name__)

Registration = Callable[[grpc.aio.Server], None]


def _incoming_request_id(context: grpc.aio.ServicerContext) -> str:
    for key, value in context.invocation_metadata() or ():
        if key == REQUEST_ID_METADATA_KEY and value:
            return str(value)[:128]
    return uuid.uuid4().hex


def _status_of(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    if isinstance(error, asyncio.CancelledError):
        return grpc.StatusCode.CANCELLED
    if error is not None and not isinstance(error, grpc.aio.AbortError):
        return grpc.StatusCode.UNKNOWN
    code = context.code()
    if code is None:
        return grpc.StatusCode.OK
    if isinstance(code, grpc.StatusCode):
        return code
    # context.code() may return the raw integer from the C core.
    for status in grpc.StatusCode:
        if status.value[0] == code:
            return status
    return grpc.StatusCode.UNKNOWN


class ObservabilityInterceptor(grpc.aio.ServerInterceptor):
    """Request id + deadline context, logs for failures, and Prometheus metrics for every call
    (and a count of business calls in flight)."""

    def __init__(self) -> None:
        self.in_flight = 0

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        service, method = split_method(handler_call_details.method)
        if service.startswith("grpc."):
            return handler  # health and reflection are not business traffic

        if handler.unary_unary is not None:
            # Under grpc.aio the behaviour is a coroutine function of the aio context; the stubs
            # type RpcMethodHandler for the synchronous server only.
            inner = cast(Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]], handler.unary_unary)

            async def unary_unary(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
                request_token = request_id_var.set(_incoming_request_id(context))
                remaining = context.time_remaining()
                deadline_token = deadline_var.set(time.monotonic() + remaining if remaining is not None else None)
                started = time.perf_counter()
                error: BaseException | None = None
                self.in_flight += 1
                try:
                    return await inner(request, context)
                except asyncio.CancelledError as exc:
                    error = exc  # the caller went away (or gave up): nothing failed on our side
                    log.debug("call %s/%s cancelled", service, method)
                    raise
                except Exception as exc:
                    error = exc
                    if isinstance(exc, grpc.aio.AbortError):
                        raise
                    if (outage := outage_of(exc)) is not None:
                        log.warning("%s/%s: %s: %s", service, method, type(outage).__name__, outage)
                        error = None  # answered below with UNAVAILABLE, a status and not a crash
                        await abort_with(context, unavailable(outage))
                    log.exception("unhandled error in %s/%s", service, method)
                    raise
                finally:
                    self.in_flight -= 1
                    code = _status_of(context, error)
                    GRPC_SERVER_HANDLED.labels(service, method, code.name).inc()
                    GRPC_SERVER_LATENCY.labels(service, method).observe(time.perf_counter() - started)
                    deadline_var.reset(deadline_token)
                    request_id_var.reset(request_token)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary,
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler


def server_options(keepalive: int | None = None) -> list[tuple[str, int]]:
    return [
        ("grpc.max_receive_message_length", 8 * 1024 * 1024),
        ("grpc.so_reuseport", 0),  # a second process on the same port must fail, not share it
        # Channels (plumbing.grpc_client) ping every GRPC_KEEPALIVE_MS, also when idle. The
        # server default (one ping per 5 min without data, two strikes) answers that with
        # GOAWAY "too_many_pings", which fails calls in flight on that connection. These are
        # the channel-arg names grpc core reads (an unknown name is silently ignored).
        ("grpc.keepalive_permit_without_calls", 1),
        ("grpc.http2.min_ping_interval_without_data_ms", (keepalive or keepalive_ms()) // 2),
    ]


LIVENESS_SERVICE = "liveness"

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class HealthService(health_pb2_grpc.HealthServicer):
    """grpc.health.v1 Check and Watch. Unlike grpc_health's servicer, a Watch stream ends (after
    it sent NOT_SERVING) once shutdown begins: grpc's graceful stop waits for every call the
    server accepted, and a stream that never ends would hold it up for the whole grace period."""

    def __init__(self) -> None:
        self._status: dict[str, int] = {"": SERVING}
        self._changed = asyncio.Condition()
        self._stopping = False

    async def Check(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> Any:
        status = self._status.get(request.service)
        if status is None:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"unknown service {request.service!r}")
        return health_pb2.HealthCheckResponse(status=status)

    async def Watch(self, request: health_pb2.HealthCheckRequest, context: grpc.aio.ServicerContext) -> None:
        def current() -> int:
            return self._status.get(request.service, health_pb2.HealthCheckResponse.SERVICE_UNKNOWN)

        sent: int | None = None

        def changed() -> bool:
            return current() != sent or self._stopping

        while True:
            async with self._changed:
                await self._changed.wait_for(changed)
                status, stopping = current(), self._stopping
            if status != sent:  # written outside the lock: a slow reader holds up no one else
                await context.write(health_pb2.HealthCheckResponse(status=status))
                sent = status
            if stopping:
                return

    async def set(self, service: str, status: int) -> None:
        """Ignored once shutdown began: then everything stays NOT_SERVING."""
        async with self._changed:
            if not self._stopping:
                self._status[service] = status
                self._changed.notify_all()

    async def enter_graceful_shutdown(self) -> None:
        async with self._changed:
            self._stopping = True
            self._status = dict.fromkeys(self._status, NOT_SERVING)
            self._changed.notify_all()


class GrpcServer:
    """One grpc.aio server with health, reflection and the observability interceptor."""

    def __init__(
        self,
        host: str,
        port: int,
        service_names: Iterable[str],
        registrations: Iterable[Registration],
        keepalive: int | None = None,
    ) -> None:
        self.host = host
        self.port = port
        self._service_names = list(service_names)
        self._observability = ObservabilityInterceptor()
        self._server = grpc.aio.server(
            interceptors=[self._observability],
            options=server_options(keepalive),
        )
        self._health = HealthService()
        health_pb2_grpc.add_HealthServicer_to_server(self._health, self._server)
        for register in registrations:
            register(self._server)
        reflection.enable_server_reflection(
            [*self._service_names, health.SERVICE_NAME, reflection.SERVICE_NAME], self._server
        )

    async def start(self, serving: bool = True) -> None:
        """Listen; report SERVING now, or (`serving=False`) only once `set_serving(True)` says so."""
        address = f"{self.host}:{self.port}"
        try:
            bound = self._server.add_insecure_port(address)
        except RuntimeError:
            bound = 0
        if bound == 0:
            await self._server.stop(None)
            raise StartupError(f"cannot listen for gRPC on {address} (GRPC_PORT): port already in use")
        self.port = bound
        await self._server.start()
        # Liveness (Kubernetes livenessProbe, grpc service "liveness"): SERVING while this process
        # answers, whatever its dependencies do; readiness is the overall status ("").
        await self._health.set(LIVENESS_SERVICE, SERVING)
        await self.set_serving(serving)

    async def set_serving(self, serving: bool) -> None:
        """Readiness (ignored once graceful shutdown began: then it stays NOT_SERVING)."""
        await self._set_all(SERVING if serving else NOT_SERVING)

    async def _set_all(self, status: int) -> None:
        for name in ("", *self._service_names):
            await self._health.set(name, status)

    async def shutdown(self, grace_seconds: float) -> None:
        """Report NOT_SERVING, let every call the server accepted finish within the grace period,
        then stop; anything still running after it is cancelled.

        grpc's own graceful stop is the only wait: it sends GOAWAY (clients open new calls on a
        new connection, through the Service to another replica) and knows every accepted call,
        also those not yet handed to a handler. Counting calls in the interceptor and then
        stopping with no grace cancelled those ("Cancelling all calls"). Calls that grpc core
        drops unstarted while the GOAWAY is on its way are retried by the channel
        (`plumbing.grpc_client`)."""
        await self._health.enter_graceful_shutdown()
        await self._server.stop(grace_seconds)

    async def wait_for_termination(self) -> None:
        await self._server.wait_for_termination()
