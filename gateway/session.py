"""Authenticating gateway requests: `await authenticate(request) -> Requester`.

The access token comes from `Authorization: Bearer <token>` or the `access_token` query parameter.
Answers of auth's IntrospectToken are cached in `deps.tokens` (gateway/token_cache.py) for a few
seconds; `start_revocation_listener` subscribes to `laiwang.auth.token_revoked` (and
`account_deactivated`) on plain NATS, so every gateway replica hears every revocation and evicts,
and a revoked token stops working everywhere well within a second. If the NATS connection drops,
events may have been missed, so the whole cache is dropped on reconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time

import grpc
from aiohttp import web
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from gateway.app import DEPS_KEY, GatewayDeps
from gateway.matrix import MatrixError
from gateway.rpc import matrix_error_from
from gateway.token_cache import Rejection, Requester, TokenCache
from laiwang.auth.v1 import auth_pb2, auth_pb2_grpc
from laiwang.events.v1 import auth_events_pb2
from plumbing.jetstream import decode_event

__all__ = [
    "Requester",
    "access_token_of",
    "auth_stub",
    "authenticate",
    "authenticate_token",
    "start_revocation_listener",
    "stop_revocation_listener",
    "token_key",
]

log = logging.getLogger(__name__)

REQUESTER_KEY = "laiwang.requester"
TOKEN_REVOKED_SUBJECT = "laiwang.auth.token_revoked"
ACCOUNT_DEACTIVATED_SUBJECT = "laiwang.auth.account_deactivated"


def token_key(access_token: str) -> str:
    return hashlib.sha256(access_token.encode()).hexdigest()


def access_token_of(request: web.Request) -> str | None:
    headers = request.headers.getall("Authorization", [])
    if len(headers) > 1:
        # Proxies and servers disagree on which of two wins; picking one would let a request be read two ways.
        raise MatrixError(400, "M_INVALID_PARAM", "send one Authorization header, not several")
    header = headers[0] if headers else None
    if header is not None:
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return value.strip()
        raise MatrixError(401, "M_MISSING_TOKEN", "Authorization header must be 'Bearer <access token>'")
    token = request.query.get("access_token")
    return token or None


def auth_stub(deps: GatewayDeps) -> auth_pb2_grpc.AuthServiceAsyncStub:
    return deps.stubs.auth


def _drop_cache_after_reconnect(deps: GatewayDeps) -> None:
    """Events published while we were disconnected are lost to a plain subscription: start afresh."""
    if deps.nats is None:
        return
    reconnects = deps.nats.stats.get("reconnects", 0)
    if deps.nats_reconnects is not None and deps.nats_reconnects != reconnects:
        deps.tokens.clear()
    deps.nats_reconnects = reconnects


async def _introspect(deps: GatewayDeps, key: str, access_token: str) -> Requester | Rejection:
    cache = deps.tokens
    generation = cache.generation
    try:
        reply = await auth_stub(deps).IntrospectToken(
            auth_pb2.IntrospectTokenRequest(access_token=access_token), timeout=5.0
        )
    except grpc.aio.AioRpcError as exc:
        raise matrix_error_from(exc) from None
    if not reply.active:
        rejection = Rejection(soft_logout=reply.inactive_reason == "expired")
        cache.put(key, rejection, generation)
        return rejection
    requester = Requester(reply.user_id, reply.device_id, reply.token_id)
    expires_in = reply.expires_at_ms / 1000 - time.time() if reply.expires_at_ms else None
    cache.put(key, requester, generation, expires_in)
    return requester


async def authenticate(request: web.Request) -> Requester:
    """The requester behind the request's access token, or 401 M_MISSING_TOKEN / M_UNKNOWN_TOKEN."""
    cached = request.get(REQUESTER_KEY)
    if cached is not None:
        return cached
    access_token = access_token_of(request)
    if access_token is None:
        raise MatrixError(401, "M_MISSING_TOKEN", "missing access token")
    requester = await authenticate_token(request, access_token)
    request[REQUESTER_KEY] = requester
    return requester


async def authenticate_token(request: web.Request, access_token: str) -> Requester:
    """The requester behind `access_token` (from wherever the route found it, e.g. a session cookie)."""
    deps = request.app[DEPS_KEY]
    _drop_cache_after_reconnect(deps)
    key = token_key(access_token)
    answer = deps.tokens.get(key)
    if answer is None:
        # Concurrent requests with the same uncached token share one introspection call.
        inflight = deps.introspections
        pending = inflight.get(key)
        if pending is None:
            pending = inflight[key] = asyncio.ensure_future(_introspect(deps, key, access_token))
            pending.add_done_callback(lambda _: inflight.pop(key, None))
        answer = await asyncio.shield(pending)
    if isinstance(answer, Rejection):
        raise MatrixError(401, "M_UNKNOWN_TOKEN", "unknown or expired access token", soft_logout=answer.soft_logout)
    return answer


def handle_revocation(cache: TokenCache, subject: str, data: bytes) -> None:
    """Apply one auth event to the cache (exposed for tests)."""
    match decode_event(subject, data):
        case auth_events_pb2.TokenRevoked() as event:
            if event.all_devices:
                cache.evict_user(event.user_id)
            if event.token_ids:
                cache.evict_token_ids(list(event.token_ids))
            elif event.device_id:
                cache.evict_user(event.user_id, event.device_id)
        case auth_events_pb2.AccountDeactivated() as event:
            cache.evict_user(event.user_id)
        # Other auth events do not touch the cache.


async def start_revocation_listener(deps: GatewayDeps) -> None:
    """Subscribe this replica to revocations (plain NATS: every replica gets every event)."""
    if deps.nats is None:
        return

    async def on_event(message: Msg) -> None:
        try:
            handle_revocation(deps.tokens, message.subject, message.data)
        except Exception:
            # Unreadable event: be safe and forget everything rather than keep a revoked token.
            log.warning("unreadable auth event on %s; clearing the token cache", message.subject)
            deps.tokens.clear()

    subscriptions: list[Subscription] = [
        await deps.nats.subscribe(TOKEN_REVOKED_SUBJECT, cb=on_event),
        await deps.nats.subscribe(ACCOUNT_DEACTIVATED_SUBJECT, cb=on_event),
    ]
    await deps.nats.flush()
    deps.revocation_subscriptions = subscriptions
    deps.nats_reconnects = deps.nats.stats.get("reconnects", 0)


async def stop_revocation_listener(deps: GatewayDeps) -> None:
    subscriptions, deps.revocation_subscriptions = deps.revocation_subscriptions, []
    for subscription in subscriptions:
        with contextlib.suppress(Exception):
            await subscription.unsubscribe()
