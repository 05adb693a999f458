"""gRPC API of the open_platform service: proto <-> domain translation and error mapping, nothing else."""

from __future__ import annotations

import json
import secrets
import time

import grpc

from laiwang.open_platform.v1 import open_platform_pb2 as pb
from laiwang.open_platform.v1 import open_platform_pb2_grpc
from plumbing.domain_errors import bad_json, invalid, not_found
from plumbing.grpc_errors import maps_domain_errors
from services.open_platform.authorizations import Authorizations
from services.open_platform.cards import Cards
from services.open_platform.core import SCOPES, App, AppRegistry, AppSettings, bot_user_id, validate_settings
from services.open_platform.oauth import Consent, OAuthServer, Refusal
from services.open_platform.subscriptions import Subscription, Subscriptions
from services.open_platform.webhook_health import Health
from services.open_platform.webhook_store import MongoWebhookStore

_ENDPOINTS = {
    pb.O_AUTH_ENDPOINT_KIND_TOKEN: "token",
    pb.O_AUTH_ENDPOINT_KIND_REVOCATION: "revocation",
    pb.O_AUTH_ENDPOINT_KIND_INTROSPECTION: "introspection",
}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class OpenPlatformApi(open_platform_pb2_grpc.OpenPlatformServiceServicer):
    def __init__(
        self,
        registry: AppRegistry,
        server_name: str,
        allow_loopback_webhooks: bool,
        oauth: OAuthServer,
        authorizations: Authorizations,
        subscriptions: Subscriptions,
        webhooks: MongoWebhookStore,
        cards: Cards,
    ) -> None:
        self._registry = registry
        self._cards = cards
        self._webhooks = webhooks
        self._subscriptions = subscriptions
        self._oauth = oauth
        self._authorizations = authorizations
        self._server_name = server_name
        self._allow_loopback = allow_loopback_webhooks

    def register(self, server: grpc.aio.Server) -> None:
        open_platform_pb2_grpc.add_OpenPlatformServiceServicer_to_server(self, server)

    def _settings(self, s: pb.AppSettings) -> AppSettings:
        return validate_settings(
            s.name,
            s.description,
            s.icon_url,
            s.homepage_url,
            list(s.redirect_uris),
            s.webhook_url,
            list(s.scopes),
            allow_loopback_webhooks=self._allow_loopback,
        )

    def _app(self, app: App) -> pb.App:
        s = app.settings
        now = _now_ms()
        return pb.App(
            client_id=app.client_id,
            owner_user_id=app.owner,
            settings=pb.AppSettings(
                name=s.name,
                description=s.description,
                icon_url=s.icon_url,
                homepage_url=s.homepage_url,
                redirect_uris=list(s.redirect_uris),
                webhook_url=s.webhook_url,
                scopes=list(s.scopes),
            ),
            public_client=app.public_client,
            suspended=app.suspended,
            created_at_ms=app.created_ms,
            updated_at_ms=app.updated_ms,
            bot_user_id=bot_user_id(app.client_id, self._server_name),
            webhook_secret_rotated_at_ms=app.webhook_rotated_ms,
            previous_webhook_secret_expires_at_ms=app.previous_expires_ms(now),
        )

    @maps_domain_errors
    async def CreateApp(self, request: pb.CreateAppRequest, context: grpc.aio.ServicerContext) -> pb.CreateAppResponse:
        created = await self._registry.create(
            request.caller_user_id, self._settings(request.settings), request.public_client, _now_ms()
        )
        return pb.CreateAppResponse(
            app=self._app(created.app), client_secret=created.client_secret, webhook_secret=created.webhook_secret
        )

    @maps_domain_errors
    async def ListApps(self, request: pb.ListAppsRequest, context: grpc.aio.ServicerContext) -> pb.ListAppsResponse:
        return pb.ListAppsResponse(apps=[self._app(app) for app in await self._registry.list(request.caller_user_id)])

    @maps_domain_errors
    async def GetApp(self, request: pb.GetAppRequest, context: grpc.aio.ServicerContext) -> pb.GetAppResponse:
        return pb.GetAppResponse(app=self._app(await self._registry.get(request.caller_user_id, request.client_id)))

    @maps_domain_errors
    async def UpdateApp(self, request: pb.UpdateAppRequest, context: grpc.aio.ServicerContext) -> pb.UpdateAppResponse:
        settings = self._settings(request.settings)
        app = await self._registry.update(request.caller_user_id, request.client_id, settings, _now_ms())
        return pb.UpdateAppResponse(app=self._app(app))

    @maps_domain_errors
    async def SetAppSuspended(
        self, request: pb.SetAppSuspendedRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetAppSuspendedResponse:
        app = await self._registry.set_suspended(
            request.caller_user_id, request.client_id, request.suspended, _now_ms()
        )
        return pb.SetAppSuspendedResponse(app=self._app(app))

    @maps_domain_errors
    async def DeleteApp(self, request: pb.DeleteAppRequest, context: grpc.aio.ServicerContext) -> pb.DeleteAppResponse:
        await self._registry.delete(request.caller_user_id, request.client_id)
        return pb.DeleteAppResponse()

    @maps_domain_errors
    async def RotateClientSecret(
        self, request: pb.RotateClientSecretRequest, context: grpc.aio.ServicerContext
    ) -> pb.RotateClientSecretResponse:
        app, secret = await self._registry.rotate_client_secret(request.caller_user_id, request.client_id, _now_ms())
        return pb.RotateClientSecretResponse(app=self._app(app), client_secret=secret)

    @maps_domain_errors
    async def RotateWebhookSecret(
        self, request: pb.RotateWebhookSecretRequest, context: grpc.aio.ServicerContext
    ) -> pb.RotateWebhookSecretResponse:
        app, secret = await self._registry.rotate_webhook_secret(
            request.caller_user_id, request.client_id, request.overlap_seconds * 1000, _now_ms()
        )
        return pb.RotateWebhookSecretResponse(app=self._app(app), webhook_secret=secret)

    # -- OAuth2 ------------------------------------------------------------------------------------

    @staticmethod
    def _scopes(scopes: tuple[str, ...] | list[str]) -> list[pb.ScopeDescription]:
        return [pb.ScopeDescription(scope=s, description=SCOPES.get(s, s)) for s in scopes]

    @staticmethod
    def _oauth_error(refusal: Refusal) -> pb.OAuthError:
        return pb.OAuthError(error=refusal.error, description=refusal.description)

    @maps_domain_errors
    async def PrepareConsent(
        self, request: pb.PrepareConsentRequest, context: grpc.aio.ServicerContext
    ) -> pb.PrepareConsentResponse:
        outcome = await self._oauth.prepare_consent(request.query, request.user_id)
        if isinstance(outcome, Consent):
            s = outcome.app.settings
            return pb.PrepareConsentResponse(
                page=pb.ConsentPage(
                    client_id=outcome.app.client_id,
                    app_name=s.name,
                    app_description=s.description,
                    icon_url=s.icon_url,
                    homepage_url=s.homepage_url,
                    scopes=self._scopes(outcome.scopes),
                    redirect_uri=outcome.redirect_uri,
                )
            )
        if outcome.redirect_to:
            return pb.PrepareConsentResponse(redirect_to=outcome.redirect_to)
        return pb.PrepareConsentResponse(error=self._oauth_error(outcome))

    @maps_domain_errors
    async def CompleteConsent(
        self, request: pb.CompleteConsentRequest, context: grpc.aio.ServicerContext
    ) -> pb.CompleteConsentResponse:
        outcome = await self._oauth.complete_consent(request.query, request.user_id, request.approved)
        if isinstance(outcome, str):
            return pb.CompleteConsentResponse(redirect_to=outcome)
        if outcome.redirect_to:
            return pb.CompleteConsentResponse(redirect_to=outcome.redirect_to)
        return pb.CompleteConsentResponse(error=self._oauth_error(outcome))

    @maps_domain_errors
    async def OAuthEndpoint(
        self, request: pb.OAuthEndpointRequest, context: grpc.aio.ServicerContext
    ) -> pb.OAuthEndpointResponse:
        kind = _ENDPOINTS.get(request.endpoint)
        if kind is None:
            raise invalid("unknown OAuth endpoint")
        status, headers, body = await self._oauth.endpoint(kind, request.form, request.authorization)
        return pb.OAuthEndpointResponse(status=status, headers=headers, body=body)

    @maps_domain_errors
    async def CheckPartnerToken(
        self, request: pb.CheckPartnerTokenRequest, context: grpc.aio.ServicerContext
    ) -> pb.CheckPartnerTokenResponse:
        found = await self._authorizations.check(request.access_token)
        if found is None:
            return pb.CheckPartnerTokenResponse(active=False)
        t = found.token
        return pb.CheckPartnerTokenResponse(
            active=True,
            client_id=t.client_id,
            user_id=t.user_id,
            scopes=t.scope.split(),
            grant_id=t.grant_id,
            expires_at_ms=t.expires_ms,
            app_name=found.app.settings.name,
            bot_user_id=bot_user_id(t.client_id, self._server_name),
        )

    @maps_domain_errors
    async def ListAuthorizations(
        self, request: pb.ListAuthorizationsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAuthorizationsResponse:
        found = await self._authorizations.list(request.caller_user_id)
        return pb.ListAuthorizationsResponse(
            authorizations=[
                pb.Authorization(
                    client_id=app.client_id,
                    app_name=app.settings.name,
                    icon_url=app.settings.icon_url,
                    homepage_url=app.settings.homepage_url,
                    scopes=self._scopes(record.scopes),
                    authorized_at_ms=record.created_ms,
                    updated_at_ms=record.updated_ms,
                )
                for record, app in found
            ]
        )

    @maps_domain_errors
    async def RevokeAuthorization(
        self, request: pb.RevokeAuthorizationRequest, context: grpc.aio.ServicerContext
    ) -> pb.RevokeAuthorizationResponse:
        await self._authorizations.revoke(request.caller_user_id, request.client_id, _now_ms())
        return pb.RevokeAuthorizationResponse()

    # -- subscriptions -----------------------------------------------------------------------------

    async def _info(self, sub: Subscription) -> pb.SubscriptionInfo:
        app = await self._registry.lookup(sub.client_id)
        return pb.SubscriptionInfo(
            client_id=sub.client_id,
            user_id=sub.user_id,
            room_id=sub.room_id,
            bot_user_id=bot_user_id(sub.client_id, self._server_name),
            app_name=app.settings.name if app else "",
            subscribed_at_ms=sub.subscribed_ms,
        )

    @maps_domain_errors
    async def Subscribe(self, request: pb.SubscribeRequest, context: grpc.aio.ServicerContext) -> pb.SubscribeResponse:
        sub = await self._subscriptions.subscribe(request.caller_user_id, request.client_id, _now_ms())
        return pb.SubscribeResponse(subscription=await self._info(sub))

    @maps_domain_errors
    async def Unsubscribe(
        self, request: pb.UnsubscribeRequest, context: grpc.aio.ServicerContext
    ) -> pb.UnsubscribeResponse:
        await self._subscriptions.unsubscribe(request.caller_user_id, request.client_id, _now_ms())
        return pb.UnsubscribeResponse()

    @maps_domain_errors
    async def ListSubscriptions(
        self, request: pb.ListSubscriptionsRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSubscriptionsResponse:
        subs = await self._subscriptions.of_user(request.caller_user_id)
        return pb.ListSubscriptionsResponse(subscriptions=[await self._info(s) for s in subs])

    @maps_domain_errors
    async def ListSubscribers(
        self, request: pb.ListSubscribersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListSubscribersResponse:
        subs = await self._subscriptions.of_app(request.client_id, request.after_user_id, request.limit or 100)
        return pb.ListSubscribersResponse(subscribers=[await self._info(s) for s in subs])

    @maps_domain_errors
    async def MessageSubscriber(
        self, request: pb.MessageSubscriberRequest, context: grpc.aio.ServicerContext
    ) -> pb.MessageSubscriberResponse:
        txn_id = request.txn_id or secrets.token_hex(12)
        room_id, event_id = await self._subscriptions.message(
            request.client_id, request.user_id, request.body, txn_id, _now_ms()
        )
        return pb.MessageSubscriberResponse(room_id=room_id, event_id=event_id)

    # -- webhooks, owner side ----------------------------------------------------------------------

    @maps_domain_errors
    async def ListWebhookDeliveries(
        self, request: pb.ListWebhookDeliveriesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListWebhookDeliveriesResponse:
        app = await self._registry.get(request.caller_user_id, request.client_id)
        docs = await self._webhooks.attempts_of(app.client_id)
        return pb.ListWebhookDeliveriesResponse(
            attempts=[
                pb.WebhookAttempt(
                    webhook_id=d["webhook_id"],
                    type=d["type"],
                    attempt=d["attempt"],
                    status=d["status"],
                    latency_ms=d["latency_ms"],
                    error=d["error"],
                    at_ms=d["at_ms"],
                )
                for d in docs
            ]
        )

    @maps_domain_errors
    async def ListDeadLetters(
        self, request: pb.ListDeadLettersRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListDeadLettersResponse:
        app = await self._registry.get(request.caller_user_id, request.client_id)
        docs = await self._webhooks.dead_letters_of(app.client_id)
        return pb.ListDeadLettersResponse(
            dead_letters=[
                pb.DeadLetter(webhook_id=d["webhook_id"], type=d["type"], reason=d["reason"], dead_at_ms=d["at_ms"])
                for d in docs
            ]
        )

    @maps_domain_errors
    async def ReplayDeadLetter(
        self, request: pb.ReplayDeadLetterRequest, context: grpc.aio.ServicerContext
    ) -> pb.ReplayDeadLetterResponse:
        app = await self._registry.get(request.caller_user_id, request.client_id)
        if not await self._webhooks.replay(app.client_id, request.webhook_id, _now_ms()):
            raise not_found("no such dead letter")
        return pb.ReplayDeadLetterResponse()

    @staticmethod
    def _health(health: Health) -> pb.WebhookHealth:
        return pb.WebhookHealth(
            consecutive_failures=health.consecutive_failures,
            failing_since_ms=health.failing_since_ms,
            last_error=health.last_error,
            paused_at_ms=health.paused_at_ms,
            owner_told=health.owner_told,
        )

    @maps_domain_errors
    async def GetWebhookHealth(
        self, request: pb.GetWebhookHealthRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetWebhookHealthResponse:
        app = await self._registry.get(request.caller_user_id, request.client_id)
        return pb.GetWebhookHealthResponse(health=self._health(await self._webhooks.health(app.client_id)))

    @maps_domain_errors
    async def ResumeWebhook(
        self, request: pb.ResumeWebhookRequest, context: grpc.aio.ServicerContext
    ) -> pb.ResumeWebhookResponse:
        app = await self._registry.get(request.caller_user_id, request.client_id)
        return pb.ResumeWebhookResponse(health=self._health(await self._webhooks.resume(app.client_id)))

    # -- cards -------------------------------------------------------------------------------------

    @staticmethod
    def _card(raw: bytes) -> object:
        try:
            return json.loads(raw)
        except ValueError:
            raise bad_json("card_json is not JSON") from None

    @maps_domain_errors
    async def PostCard(self, request: pb.PostCardRequest, context: grpc.aio.ServicerContext) -> pb.PostCardResponse:
        event_id = await self._cards.post(
            request.client_id,
            request.user_id,
            request.room_id,
            self._card(request.card_json),
            request.body,
            request.txn_id or secrets.token_hex(12),
        )
        return pb.PostCardResponse(event_id=event_id)

    @maps_domain_errors
    async def UpdateCard(
        self, request: pb.UpdateCardRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateCardResponse:
        event_id = await self._cards.update(
            request.client_id,
            request.user_id,
            request.room_id,
            request.event_id,
            self._card(request.card_json),
            request.body,
            request.txn_id or secrets.token_hex(12),
        )
        return pb.UpdateCardResponse(event_id=event_id)
