"""Authenticating partner apps at the gateway: `await authenticate_partner(request, scope) -> PartnerRequester`.

A partner access token (`lwat_...`, from the OAuth2 token endpoint) is checked with open_platform's
CheckPartnerToken, and the answer is cached per replica for a few seconds (SHA-256 keys; raw
tokens are never kept). Each entry is tagged with its app, its grant and its (app, user) pair, and
`start_partner_listener` follows open_platform's events on plain NATS so that every replica drops:

- a grant's tokens on `authorization_revoked` naming it (RFC 7009 revocation, refresh reuse),
- every token of a user with an app on `authorization_revoked` without grant ids (the user revoked it),
- every token of an app on `app_changed` suspended or deleted.

open_platform relays those events before its revoking call returns, so a revocation is in force at
every replica by the time the revoking client has its answer. After a NATS reconnect (events may
have been missed) the whole cache is dropped.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging

import grpc
from aiohttp import web
from nats.aio.msg import Msg

from gateway.app import DEPS_KEY, GatewayDeps
from gateway.client_address import client_address
from gateway.matrix import MatrixError
from gateway.partner_tokens import PartnerRequester, PartnerTokenCache
from gateway.rpc import matrix_error_from
from laiwang.events.v1 import open_platform_events_pb2 as events_pb
from laiwang.open_platform.v1 import open_platform_pb2 as pb
from plumbing.jetstream import decode_event

log = logging.getLogger(__name__)

AUTHORIZATION_REVOKED_SUBJECT = "laiwang.open_platform.authorization_revoked"
APP_CHANGED_SUBJECT = "laiwang.open_platform.app_changed"
_ENDS_TOKENS = (events_pb.APP_CHANGE_SUSPENDED, events_pb.APP_CHANGE_DELETED)
PARTNER_REQUESTER_KEY = "laiwang.partner_requester"


def handle_event(cache: PartnerTokenCache, subject: str, data: bytes) -> None:
    """Apply one open_platform event to the cache (exposed for tests)."""
    match decode_event(subject, data):
        case events_pb.AuthorizationRevoked() as event if event.grant_ids:
            for grant_id in event.grant_ids:
                cache.evict(f"grant:{grant_id}")
        case events_pb.AuthorizationRevoked() as event:
            cache.evict(f"user:{event.client_id}\n{event.user_id}")
        case events_pb.AppChanged() as changed if changed.change in _ENDS_TOKENS:
            cache.evict(f"app:{changed.client_id}")
        case events_pb.AppChanged(change=events_pb.APP_CHANGE_RESUMED):
            cache.evict_inactive()
        # Other open_platform events do not touch the cache.


def partner_token_of(request: web.Request) -> str:
    headers = request.headers.getall("Authorization", [])
    if len(headers) > 1:
        raise MatrixError(400, "M_INVALID_PARAM", "send one Authorization header, not several")
    if not headers:
        raise MatrixError(401, "M_MISSING_TOKEN", "missing access token (Authorization: Bearer <token>)")
    scheme, _, value = headers[0].partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise MatrixError(401, "M_MISSING_TOKEN", "Authorization header must be 'Bearer <access token>'")
    return value.strip()


def _drop_cache_after_reconnect(deps: GatewayDeps) -> None:
    if deps.nats is None:
        return
    reconnects = deps.nats.stats.get("reconnects", 0)
    if deps.partner_nats_reconnects is not None and deps.partner_nats_reconnects != reconnects:
        deps.partner_tokens.clear()
    deps.partner_nats_reconnects = reconnects


async def _check(deps: GatewayDeps, key: str, token: str) -> PartnerRequester | None:
    cache = deps.partner_tokens
    generation = cache.generation
    try:
        reply = await deps.stubs.open_platform.CheckPartnerToken(
            pb.CheckPartnerTokenRequest(access_token=token), timeout=5.0
        )
    except grpc.aio.AioRpcError as exc:
        raise matrix_error_from(exc) from None
    value = None
    if reply.active:
        value = PartnerRequester(
            client_id=reply.client_id,
            user_id=reply.user_id,
            scopes=frozenset(reply.scopes),
            grant_id=reply.grant_id,
            app_name=reply.app_name,
            bot_user_id=reply.bot_user_id,
            expires_at_ms=reply.expires_at_ms,
        )
    cache.put(key, value, generation)
    return value


async def authenticate_partner(
    request: web.Request, scope: str | None = None, *, user: bool = False
) -> PartnerRequester:
    """The app behind the request's partner token: 401 M_UNKNOWN_TOKEN if it is not live, 403
    M_FORBIDDEN without `scope` (or, with `user`, for an app-level token), 429 over the app's rates."""
    requester = request.get(PARTNER_REQUESTER_KEY)
    if requester is None:
        token = partner_token_of(request)
        deps = request.app[DEPS_KEY]
        _drop_cache_after_reconnect(deps)
        key = hashlib.sha256(token.encode()).hexdigest()
        entry = deps.partner_tokens.get(key)
        guesses = deps.limits.partner_bad_token
        address = client_address(request)
        if entry is not None:
            requester = entry.value
        else:
            # An address that keeps presenting unknown tokens is guessing: refuse it before asking
            # open_platform, so a guesser costs neither a lookup nor a cache entry.
            if (wait := guesses.wait(address)) > 0:
                raise MatrixError(
                    429, "M_LIMIT_EXCEEDED", "too many unknown partner tokens", retry_after_ms=int(wait * 1000) + 1
                )
            inflight = deps.partner_checks
            pending = inflight.get(key)
            if pending is None:
                pending = inflight[key] = asyncio.ensure_future(_check(deps, key, token))
                pending.add_done_callback(lambda _: inflight.pop(key, None))
            requester = await asyncio.shield(pending)
        if requester is None:
            guesses.retry_after(address)  # spends one of the address's unknown-token budget
            raise MatrixError(401, "M_UNKNOWN_TOKEN", "unknown, expired or revoked partner token")
        deps.limits.partner_app.check(requester.client_id)
        if requester.user_id:
            deps.limits.partner_user.check(f"{requester.client_id}\n{requester.user_id}")
        request[PARTNER_REQUESTER_KEY] = requester
    if scope is not None and scope not in requester.scopes:
        raise MatrixError(403, "M_FORBIDDEN", f"the token lacks the scope {scope}")
    if user and not requester.user_id:
        raise MatrixError(403, "M_FORBIDDEN", "this call needs a token a user granted, not an app-level token")
    return requester


async def start_partner_listener(deps: GatewayDeps) -> None:
    """Subscribe this replica to open_platform's revocations (plain NATS: every replica hears all)."""
    if deps.nats is None:
        return

    async def on_event(message: Msg) -> None:
        try:
            handle_event(deps.partner_tokens, message.subject, message.data)
        except Exception:
            log.warning("unreadable open_platform event on %s; clearing the partner token cache", message.subject)
            deps.partner_tokens.clear()

    deps.partner_subscriptions = [
        await deps.nats.subscribe(AUTHORIZATION_REVOKED_SUBJECT, cb=on_event),
        await deps.nats.subscribe(APP_CHANGED_SUBJECT, cb=on_event),
    ]
    await deps.nats.flush()
    deps.partner_nats_reconnects = deps.nats.stats.get("reconnects", 0)


async def stop_partner_listener(deps: GatewayDeps) -> None:
    subscriptions, deps.partner_subscriptions = deps.partner_subscriptions, []
    for subscription in subscriptions:
        with contextlib.suppress(Exception):
            await subscription.unsubscribe()
