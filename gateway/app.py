"""The gateway's aiohttp application: middleware shared by every route, and the route groups."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from nats.aio.client import Client as NatsClient
from prometheus_client import CONTENT_TYPE_LATEST, Counter, Histogram, generate_latest

from gateway.config import GatewayConfig, Rate
from gateway.downstream import Downstream
from gateway.matrix import MatrixError, json_response
from gateway.partner_tokens import PartnerRequester, PartnerTokenCache
from gateway.ratelimit import RateLimiter
from gateway.token_cache import Rejection, Requester, TokenCache
from laiwang.auth.v1 import auth_pb2_grpc
from laiwang.contacts.v1 import contacts_pb2_grpc
from laiwang.messaging.v1 import e2e_pb2_grpc, media_pb2_grpc, messaging_pb2_grpc
from laiwang.open_platform.v1 import open_platform_pb2_grpc
from laiwang.zhadui.v1 import zhadui_pb2_grpc
from plumbing.logs import request_id_var

if TYPE_CHECKING:
    from nats.aio.subscription import Subscription

    from gateway.routes.sync import SingleFlight, WakeHub

log = logging.getLogger(__name__)

HTTP_REQUESTS = Counter("http_requests_total", "HTTP requests answered by the gateway.", ["route", "method", "status"])
HTTP_LATENCY = Histogram(
    "http_request_duration_seconds",
    "Time to answer an HTTP request at the gateway (long-polls included).",
    ["route", "method"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)

SUPPORTED_MATRIX_VERSIONS = ["r0.6.1", *(f"v1.{minor}" for minor in range(1, 12))]
CORS_HEADERS = {
    "Access-Control-Allow-Origin": "*",
    "Access-Control-Allow-Methods": "GET, POST, PUT, DELETE, OPTIONS",
    "Access-Control-Allow-Headers": "X-Requested-With, Content-Type, Authorization",
}


@dataclass(frozen=True)
class Stubs:
    """One typed stub per downstream service, over the channels opened once at start-up."""

    auth: auth_pb2_grpc.AuthServiceAsyncStub
    contacts: contacts_pb2_grpc.ContactsServiceAsyncStub
    messaging: messaging_pb2_grpc.MessagingServiceAsyncStub
    e2e: e2e_pb2_grpc.E2eServiceAsyncStub  # served by the messaging process
    media: media_pb2_grpc.MediaServiceAsyncStub  # served by the messaging process
    zhadui: zhadui_pb2_grpc.ZhaduiServiceAsyncStub
    open_platform: open_platform_pb2_grpc.OpenPlatformServiceAsyncStub

    @classmethod
    def over(cls, downstream: Downstream) -> Stubs:
        channels = downstream.channels
        return cls(
            auth=auth_pb2_grpc.AuthServiceStub(channels["auth"]),
            contacts=contacts_pb2_grpc.ContactsServiceStub(channels["contacts"]),
            messaging=messaging_pb2_grpc.MessagingServiceStub(channels["messaging"]),
            e2e=e2e_pb2_grpc.E2eServiceStub(channels["messaging"]),
            media=media_pb2_grpc.MediaServiceStub(channels["messaging"]),
            zhadui=zhadui_pb2_grpc.ZhaduiServiceStub(channels["zhadui"]),
            open_platform=open_platform_pb2_grpc.OpenPlatformServiceStub(channels["open_platform"]),
        )


@dataclass(frozen=True)
class Limiters:
    """This replica's request-rate limiters, one per budget in GatewayConfig."""

    send: RateLimiter
    contacts: RateLimiter
    contacts_upload: RateLimiter
    zhadui: RateLimiter
    credentials: RateLimiter
    e2e: RateLimiter
    media: RateLimiter
    apps: RateLimiter
    oauth: RateLimiter
    partner_app: RateLimiter
    partner_user: RateLimiter
    partner_bad_token: RateLimiter

    @classmethod
    def of(cls, config: GatewayConfig) -> Limiters:
        def limiter(rate: Rate) -> RateLimiter:
            return RateLimiter(rate.per_second, rate.burst)

        return cls(
            send=limiter(config.send_rate),
            contacts=limiter(config.contacts_rate),
            contacts_upload=limiter(config.contacts_upload_rate),
            zhadui=limiter(config.zhadui_rate),
            credentials=limiter(config.credential_rate),
            e2e=limiter(config.e2e_rate),
            media=limiter(config.media_rate),
            apps=limiter(config.apps_rate),
            oauth=limiter(config.oauth_rate),
            partner_app=limiter(config.partner_app_rate),
            partner_user=limiter(config.partner_user_rate),
            partner_bad_token=limiter(config.partner_bad_token_rate),
        )


@dataclass
class GatewayDeps:
    """What route handlers may use: built once by gateway/main.py (the composition root)."""

    config: GatewayConfig
    downstream: Downstream
    nats: NatsClient | None = None
    # Token introspection answers, evicted by laiwang.auth.token_revoked (see gateway/session.py).
    tokens: TokenCache = field(default_factory=TokenCache)
    # Set on SIGTERM: readiness fails so that balancers stop sending while in-flight calls drain.
    draining: bool = False
    stubs: Stubs = field(init=False)
    limits: Limiters = field(init=False)
    # Per-replica state, each owned by one module: session.py (introspections in flight, the NATS
    # reconnect count the token cache was filled at, revocation subscriptions), routes/sync.py
    # (the wake-up hub, initial syncs in flight) and routes/contacts.py (the served OpenAPI document).
    introspections: dict[str, asyncio.Future[Requester | Rejection]] = field(default_factory=dict)
    nats_reconnects: int | None = None
    revocation_subscriptions: list[Subscription] = field(default_factory=list)
    wake_hub: WakeHub | None = None
    initial_syncs: SingleFlight | None = None
    openapi_document: bytes | None = None
    # partner_auth.py: partner token checks (evicted by open_platform's events), checks in flight,
    # the NATS reconnect count the cache was filled at, its subscriptions.
    partner_tokens: PartnerTokenCache = field(default_factory=PartnerTokenCache)
    partner_checks: dict[str, asyncio.Future[PartnerRequester | None]] = field(default_factory=dict)
    partner_nats_reconnects: int | None = None
    partner_subscriptions: list[Subscription] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.stubs = Stubs.over(self.downstream)
        self.limits = Limiters.of(self.config)
        self.tokens.ttl = self.config.token_cache_seconds
        self.partner_tokens.ttl = self.config.token_cache_seconds


DEPS_KEY = web.AppKey("deps", GatewayDeps)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _route_label(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "unmatched"


# Media uploads: the only bodies allowed up to `max_upload_bytes` (gateway/routes/media.py).
UPLOAD_PATHS = frozenset({"/_matrix/media/v3/upload", "/_matrix/media/r0/upload"})

# Set on a request whose body was refused unread: the connection closes after the answer.
CLOSE_AFTER_RESPONSE = "laiwang.close_after_response"


async def read_body(request: web.Request, config: GatewayConfig) -> None:
    """Read the whole body before the handler runs, within the size limit and the body deadline.

    A declared Content-Length over the limit is refused at once, before a byte is read (otherwise
    the read would wait for bytes that never come). The body is cached on the request, so handlers'
    own `request.read()` calls return at once. Either refusal closes the connection: the rest of
    the body is never read.
    """
    limit = config.max_upload_bytes if request.path in UPLOAD_PATHS else config.max_body_bytes
    declared = request.content_length
    if declared is not None and declared > limit:
        request[CLOSE_AFTER_RESPONSE] = True
        raise MatrixError(413, "M_TOO_LARGE", f"request body is larger than {limit} bytes")
    if not request.body_exists:
        return
    try:
        async with asyncio.timeout(config.body_timeout_seconds):
            body = await request.read()
    except TimeoutError:
        request[CLOSE_AFTER_RESPONSE] = True
        raise MatrixError(
            408, "M_UNKNOWN", f"request body not received within {config.body_timeout_seconds:g} s"
        ) from None
    except HttpProcessingError as exc:  # bad chunked encoding, body shorter than declared, ...
        request[CLOSE_AFTER_RESPONSE] = True
        raise MatrixError(400, "M_NOT_JSON", f"malformed request body: {exc.message}"[:300]) from None
    except web.HTTPRequestEntityTooLarge:
        request[CLOSE_AFTER_RESPONSE] = True
        raise MatrixError(413, "M_TOO_LARGE", f"request body is larger than {limit} bytes") from None
    if len(body) > limit:  # a chunked body declares no length
        request[CLOSE_AFTER_RESPONSE] = True
        raise MatrixError(413, "M_TOO_LARGE", f"request body is larger than {limit} bytes")


def _allow_header(exc: web.HTTPMethodNotAllowed) -> dict[str, str]:
    return {"Allow": ", ".join(sorted(exc.allowed_methods))}


@web.middleware
async def observe(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Request id, CORS, Matrix-shaped errors and metrics, for every request."""
    request_id = request.headers.get("X-Request-Id", "")[:128] or uuid.uuid4().hex
    token = request_id_var.set(request_id)
    started = time.perf_counter()
    route = _route_label(request)
    try:
        if request.method == "OPTIONS":
            response: web.StreamResponse = web.Response(status=204)
        else:
            await read_body(request, request.app[DEPS_KEY].config)
            response = await handler(request)
    except MatrixError as exc:
        response = exc.to_response()
    except web.HTTPRequestEntityTooLarge:
        response = MatrixError(413, "M_TOO_LARGE", "request body is too large").to_response()
    except web.HTTPNotFound:
        response = MatrixError(404, "M_UNRECOGNIZED", "unrecognized request").to_response()
    except web.HTTPMethodNotAllowed as exc:
        response = MatrixError(405, "M_UNRECOGNIZED", f"{request.method} is not allowed on this endpoint").to_response()
        response.headers.update(_allow_header(exc))
    except ConnectionError:
        raise  # the client went away: nobody to answer, and not our error (aiohttp drops the connection)
    except Exception:
        log.exception("unhandled error on %s %s", request.method, route)
        response = MatrixError(500, "M_UNKNOWN", "internal server error").to_response()
    finally:
        request_id_var.reset(token)
    if not response.prepared:
        if request.get(CLOSE_AFTER_RESPONSE):
            response.force_close()
        response.headers.update(CORS_HEADERS)
        response.headers["X-Request-Id"] = request_id
    HTTP_REQUESTS.labels(route, request.method, str(response.status)).inc()
    HTTP_LATENCY.labels(route, request.method).observe(time.perf_counter() - started)
    return response


async def healthz(request: web.Request) -> web.Response:
    """Readiness: only when every downstream service reports SERVING and NATS is connected (and
    not while shutting down); the body lists each."""
    deps = request.app[DEPS_KEY]
    services = await deps.downstream.health()
    nats_state = "CONNECTED" if deps.nats is not None and deps.nats.is_connected else "DISCONNECTED"
    ready = all(status == "SERVING" for status in services.values()) and nats_state == "CONNECTED"
    ready = ready and not deps.draining
    body = {"status": "ready" if ready else "not_ready", "services": services, "nats": nats_state}
    return json_response(body, status=200 if ready else 503)


async def livez(_: web.Request) -> web.Response:
    """Liveness: the process answers HTTP. Deliberately asks no downstream service, so that one
    failing service makes gateways unready (/healthz) but never gets them restarted."""
    return json_response({"status": "alive"})


async def metrics(_: web.Request) -> web.Response:
    response = web.Response(body=generate_latest())
    response.content_type = CONTENT_TYPE_LATEST.split(";")[0]
    return response


async def versions(_: web.Request) -> web.Response:
    return json_response({"versions": SUPPORTED_MATRIX_VERSIONS, "unstable_features": {}})


def create_app(deps: GatewayDeps, route_groups: list[list[web.RouteDef]] | None = None) -> web.Application:
    app = web.Application(
        middlewares=[observe], client_max_size=max(deps.config.max_body_bytes, deps.config.max_upload_bytes)
    )
    app[DEPS_KEY] = deps
    app.add_routes(
        [
            web.get("/healthz", healthz),
            web.get("/livez", livez),
            web.get("/metrics", metrics),
            web.get("/_matrix/client/versions", versions),
        ]
    )
    for group in route_groups or []:
        app.add_routes(group)
    return app
