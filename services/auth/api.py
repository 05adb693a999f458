"""gRPC API of the auth service: proto <-> domain translation and error mapping, nothing else."""

from __future__ import annotations

from typing import Any

import grpc

from laiwang.auth.v1 import auth_pb2 as pb
from laiwang.auth.v1 import auth_pb2_grpc
from plumbing.grpc_errors import maps_domain_errors
from services.auth.core import AuthCore
from services.auth.model import NewSession


def _session(s: NewSession) -> pb.Session:
    return pb.Session(
        user_id=s.user_id,
        device_id=s.device_id,
        access_token=s.access_token,
        refresh_token=s.refresh_token,
        expires_in_ms=s.expires_in_ms,
        token_id=s.token_id,
    )


def _ms(seconds: float | None) -> int:
    return int(seconds * 1000) if seconds else 0


class AuthApi(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, core: AuthCore) -> None:
        self.core = core

    def register(self, server: grpc.aio.Server) -> None:
        auth_pb2_grpc.add_AuthServiceServicer_to_server(self, server)

    @maps_domain_errors
    async def IntrospectToken(self, request: pb.IntrospectTokenRequest, context: Any) -> pb.IntrospectTokenResponse:
        r = await self.core.introspect(request.access_token)
        return pb.IntrospectTokenResponse(
            active=r.active,
            user_id=r.user_id,
            device_id=r.device_id,
            token_id=r.token_id,
            expires_at_ms=r.expires_at_ms,
            inactive_reason=r.inactive_reason,
        )

    @maps_domain_errors
    async def CheckUsername(self, request: pb.CheckUsernameRequest, context: Any) -> pb.CheckUsernameResponse:
        available, user_id = await self.core.check_username(request.username)
        return pb.CheckUsernameResponse(available=available, user_id=user_id)

    @maps_domain_errors
    async def Register(self, request: pb.RegisterRequest, context: Any) -> pb.RegisterResponse:
        user_id, session = await self.core.register(
            request.username,
            request.password,
            device_id=request.device_id,
            device_name=request.initial_device_display_name,
            inhibit_login=request.inhibit_login,
            want_refresh=request.refresh_token,
            client_address=request.client_address,
        )
        reply = pb.RegisterResponse(user_id=user_id)
        if session is not None:
            reply.session.CopyFrom(_session(session))
        return reply

    @maps_domain_errors
    async def Login(self, request: pb.LoginRequest, context: Any) -> pb.LoginResponse:
        which = request.WhichOneof("identifier")
        common: dict[str, Any] = {
            "device_id": request.device_id,
            "device_name": request.initial_device_display_name,
            "want_refresh": request.refresh_token,
            "client_address": request.client_address,
        }
        if which == "login_token":
            session = await self.core.login_with_token(request.login_token, **common)
        elif which == "phone":
            session = await self.core.login_password(
                phone=(request.phone.country, request.phone.phone), password=request.password, **common
            )
        else:
            session = await self.core.login_password(user=request.user, password=request.password, **common)
        return pb.LoginResponse(session=_session(session))

    @maps_domain_errors
    async def RefreshSession(self, request: pb.RefreshSessionRequest, context: Any) -> pb.RefreshSessionResponse:
        return pb.RefreshSessionResponse(session=_session(await self.core.refresh(request.refresh_token)))

    @maps_domain_errors
    async def Logout(self, request: pb.LogoutRequest, context: Any) -> pb.LogoutResponse:
        await self.core.logout(request.user_id, request.device_id)
        return pb.LogoutResponse()

    @maps_domain_errors
    async def LogoutAll(self, request: pb.LogoutAllRequest, context: Any) -> pb.LogoutAllResponse:
        await self.core.logout_all(request.user_id)
        return pb.LogoutAllResponse()

    @maps_domain_errors
    async def ChangePassword(self, request: pb.ChangePasswordRequest, context: Any) -> pb.ChangePasswordResponse:
        await self.core.change_password(
            request.user_id,
            request.current_password,
            request.new_password,
            logout_devices=request.logout_devices,
            keep_device_id=request.keep_device_id,
            client_address=request.client_address,
        )
        return pb.ChangePasswordResponse()

    @maps_domain_errors
    async def DeactivateAccount(
        self, request: pb.DeactivateAccountRequest, context: Any
    ) -> pb.DeactivateAccountResponse:
        await self.core.deactivate(request.user_id, request.password, request.client_address)
        return pb.DeactivateAccountResponse()

    @staticmethod
    def _device(d: Any) -> pb.Device:
        return pb.Device(
            device_id=d.device_id,
            display_name=d.display_name,
            last_seen_ip=d.last_seen_ip,
            last_seen_ts_ms=_ms(d.last_seen_at),
        )

    @maps_domain_errors
    async def ListDevices(self, request: pb.ListDevicesRequest, context: Any) -> pb.ListDevicesResponse:
        return pb.ListDevicesResponse(devices=[self._device(d) for d in await self.core.list_devices(request.user_id)])

    @maps_domain_errors
    async def GetDevice(self, request: pb.GetDeviceRequest, context: Any) -> pb.GetDeviceResponse:
        return pb.GetDeviceResponse(device=self._device(await self.core.get_device(request.user_id, request.device_id)))

    @maps_domain_errors
    async def UpdateDevice(self, request: pb.UpdateDeviceRequest, context: Any) -> pb.UpdateDeviceResponse:
        await self.core.rename_device(request.user_id, request.device_id, request.display_name)
        return pb.UpdateDeviceResponse()

    @maps_domain_errors
    async def DeleteDevices(self, request: pb.DeleteDevicesRequest, context: Any) -> pb.DeleteDevicesResponse:
        await self.core.delete_devices(
            request.user_id, list(request.device_ids), request.password, request.client_address
        )
        return pb.DeleteDevicesResponse()

    @maps_domain_errors
    async def RequestPhoneCode(self, request: pb.RequestPhoneCodeRequest, context: Any) -> pb.RequestPhoneCodeResponse:
        s = await self.core.request_phone_code(
            request.country,
            request.phone_number,
            request.client_secret,
            request.send_attempt,
            request.client_address,
        )
        return pb.RequestPhoneCodeResponse(
            sid=s.sid,
            msisdn=s.msisdn,
            expires_at_ms=_ms(s.expires_at),
            resend_after_ms=_ms(s.created_at + self.core.settings.code_resend_seconds),
        )

    @maps_domain_errors
    async def SubmitPhoneCode(self, request: pb.SubmitPhoneCodeRequest, context: Any) -> pb.SubmitPhoneCodeResponse:
        await self.core.submit_phone_code(request.sid, request.client_secret, request.code, request.client_address)
        return pb.SubmitPhoneCodeResponse(success=True)

    @maps_domain_errors
    async def BindPhone(self, request: pb.BindPhoneRequest, context: Any) -> pb.BindPhoneResponse:
        return pb.BindPhoneResponse(
            msisdn=await self.core.bind_phone(request.user_id, request.sid, request.client_secret)
        )

    @maps_domain_errors
    async def UnbindPhone(self, request: pb.UnbindPhoneRequest, context: Any) -> pb.UnbindPhoneResponse:
        await self.core.unbind_phone(request.user_id, request.msisdn)
        return pb.UnbindPhoneResponse()

    @maps_domain_errors
    async def ListThreepids(self, request: pb.ListThreepidsRequest, context: Any) -> pb.ListThreepidsResponse:
        return pb.ListThreepidsResponse(
            threepids=[
                pb.Threepid(
                    medium=t.medium, address=t.address, validated_at_ms=_ms(t.validated_at), added_at_ms=_ms(t.added_at)
                )
                for t in await self.core.list_threepids(request.user_id)
            ]
        )

    @maps_domain_errors
    async def GetProfile(self, request: pb.GetProfileRequest, context: Any) -> pb.GetProfileResponse:
        user = await self.core.get_profile(request.user_id)
        return pb.GetProfileResponse(user_id=user.user_id, display_name=user.display_name, avatar_url=user.avatar_url)

    @maps_domain_errors
    async def SetProfile(self, request: pb.SetProfileRequest, context: Any) -> pb.SetProfileResponse:
        await self.core.set_profile(
            request.user_id,
            display_name=request.display_name if request.HasField("display_name") else None,
            avatar_url=request.avatar_url if request.HasField("avatar_url") else None,
        )
        return pb.SetProfileResponse()

    @maps_domain_errors
    async def ListIdentityProviders(
        self, request: pb.ListIdentityProvidersRequest, context: Any
    ) -> pb.ListIdentityProvidersResponse:
        return pb.ListIdentityProvidersResponse(
            providers=[pb.IdentityProvider(id=i, name=n) for i, n in self.core.identity_providers()]
        )

    @maps_domain_errors
    async def StartOidc(self, request: pb.StartOidcRequest, context: Any) -> pb.StartOidcResponse:
        url = await self.core.start_oidc(
            request.provider_id,
            request.purpose,
            user_id=request.user_id,
            callback_url=request.callback_url,
            client_redirect_url=request.client_redirect_url,
        )
        return pb.StartOidcResponse(authorization_url=url)

    @maps_domain_errors
    async def CompleteOidc(self, request: pb.CompleteOidcRequest, context: Any) -> pb.CompleteOidcResponse:
        record, identity, user_id, login_token = await self.core.complete_oidc(
            request.state, request.code, request.error
        )
        return pb.CompleteOidcResponse(
            purpose=record.purpose,
            user_id=user_id,
            provider_id=record.provider_id,
            subject=identity.subject,
            login_token=login_token,
            client_redirect_url=record.client_redirect_url,
        )

    @maps_domain_errors
    async def ListExternalAccounts(
        self, request: pb.ListExternalAccountsRequest, context: Any
    ) -> pb.ListExternalAccountsResponse:
        return pb.ListExternalAccountsResponse(
            accounts=[
                pb.ExternalAccount(provider_id=a.provider_id, subject=a.subject, linked_at_ms=_ms(a.linked_at))
                for a in await self.core.list_external_accounts(request.user_id)
            ]
        )

    @maps_domain_errors
    async def UnlinkExternalAccount(
        self, request: pb.UnlinkExternalAccountRequest, context: Any
    ) -> pb.UnlinkExternalAccountResponse:
        await self.core.unlink_external_account(request.user_id, request.provider_id)
        return pb.UnlinkExternalAccountResponse()
