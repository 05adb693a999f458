"""gRPC API of the messaging service: proto <-> domain translation and error mapping, nothing else."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import grpc
import orjson

from laiwang.messaging.v1 import messaging_pb2 as pb
from laiwang.messaging.v1 import messaging_pb2_grpc
from plumbing.domain_errors import DomainError
from plumbing.grpc_errors import maps_domain_errors
from services.messaging.core import Messaging
from services.messaging.rules import parse_content

# GET /notifications (services/messaging/push_delivery.py): (user, from, limit, only) -> body
NotificationsReader = Callable[[str, str, int, str], Awaitable[dict[str, Any]]]

_ACTIONS = {
    pb.MEMBERSHIP_ACTION_INVITE: "invite",
    pb.MEMBERSHIP_ACTION_JOIN: "join",
    pb.MEMBERSHIP_ACTION_LEAVE: "leave",
    pb.MEMBERSHIP_ACTION_KICK: "kick",
    pb.MEMBERSHIP_ACTION_BAN: "ban",
    pb.MEMBERSHIP_ACTION_UNBAN: "unban",
}
_MEMBERSHIPS = {
    pb.MEMBERSHIP_INVITE: "invite",
    pb.MEMBERSHIP_JOIN: "join",
    pb.MEMBERSHIP_LEAVE: "leave",
    pb.MEMBERSHIP_BAN: "ban",
}


_PUSH_RULE_CHANGES = {
    pb.PUSH_RULE_CHANGE_PUT: "put",
    pb.PUSH_RULE_CHANGE_DELETE: "delete",
    pb.PUSH_RULE_CHANGE_ENABLED: "enabled",
    pb.PUSH_RULE_CHANGE_ACTIONS: "actions",
}


def _object(raw: bytes) -> dict[str, Any]:
    value = parse_content(raw)
    if not isinstance(value, dict):
        raise DomainError("M_BAD_JSON", "expected a JSON object")
    return value


def _requester(request: Any) -> tuple[str, str]:
    user_id = request.requester.user_id
    if not user_id:
        raise DomainError("M_INVALID_PARAM", "requester.user_id is required")
    return user_id, request.requester.device_id


class MessagingApi(messaging_pb2_grpc.MessagingServiceServicer):
    def __init__(self, core: Messaging, notifications: NotificationsReader | None = None) -> None:
        self._core = core
        self._notifications = notifications

    def register(self, server: grpc.aio.Server) -> None:
        messaging_pb2_grpc.add_MessagingServiceServicer_to_server(self, server)

    @maps_domain_errors
    async def CreateRoom(self, request: pb.CreateRoomRequest, context: Any) -> pb.CreateRoomResponse:
        user_id, _ = _requester(request)
        room_id = await self._core.create_room(user_id, parse_content(request.body_json))
        return pb.CreateRoomResponse(room_id=room_id)

    @maps_domain_errors
    async def ChangeMembership(self, request: pb.ChangeMembershipRequest, context: Any) -> pb.ChangeMembershipResponse:
        user_id, _ = _requester(request)
        action = _ACTIONS.get(request.action)
        if action is None:
            raise DomainError("M_INVALID_PARAM", "action is required")
        event_id = await self._core.change_membership(
            user_id, request.room_id, action, request.target_user_id, request.reason
        )
        return pb.ChangeMembershipResponse(event_id=event_id)

    @maps_domain_errors
    async def SendEvent(self, request: pb.SendEventRequest, context: Any) -> pb.SendEventResponse:
        user_id, device_id = _requester(request)
        event_id = await self._core.send_event(
            user_id, device_id, request.room_id, request.event_type, request.txn_id, request.content_json
        )
        return pb.SendEventResponse(event_id=event_id)

    @maps_domain_errors
    async def SetState(self, request: pb.SetStateRequest, context: Any) -> pb.SetStateResponse:
        user_id, _ = _requester(request)
        event_id = await self._core.set_state(
            user_id, request.room_id, request.event_type, request.state_key, request.content_json
        )
        return pb.SetStateResponse(event_id=event_id)

    @maps_domain_errors
    async def Redact(self, request: pb.RedactRequest, context: Any) -> pb.RedactResponse:
        user_id, device_id = _requester(request)
        event_id = await self._core.redact(
            user_id, device_id, request.room_id, request.event_id, request.txn_id, request.reason
        )
        return pb.RedactResponse(event_id=event_id)

    @maps_domain_errors
    async def GetState(self, request: pb.GetStateRequest, context: Any) -> pb.GetStateResponse:
        user_id, _ = _requester(request)
        body = await self._core.get_state(
            user_id, request.room_id, request.event_type, request.state_key, request.single
        )
        return pb.GetStateResponse(body_json=orjson.dumps(body))

    @maps_domain_errors
    async def GetMembers(self, request: pb.GetMembersRequest, context: Any) -> pb.GetMembersResponse:
        user_id, _ = _requester(request)
        return pb.GetMembersResponse(body_json=orjson.dumps(await self._core.get_members(user_id, request.room_id)))

    @maps_domain_errors
    async def JoinedRooms(self, request: pb.JoinedRoomsRequest, context: Any) -> pb.JoinedRoomsResponse:
        user_id, _ = _requester(request)
        return pb.JoinedRoomsResponse(room_ids=await self._core.joined_rooms(user_id))

    @maps_domain_errors
    async def Sync(self, request: pb.SyncRequest, context: Any) -> pb.SyncResponse:
        user_id, device_id = _requester(request)
        result = await self._core.sync(
            user_id, device_id, request.since, request.timeline_limit, request.full_state, request.min_position
        )
        return pb.SyncResponse(
            body_json=orjson.dumps(result.body), next_batch=result.next_batch, has_changes=result.has_changes
        )

    @maps_domain_errors
    async def Messages(self, request: pb.MessagesRequest, context: Any) -> pb.MessagesResponse:
        user_id, device_id = _requester(request)
        body = await self._core.messages(
            user_id, device_id, request.room_id, getattr(request, "from"), request.to, request.dir, request.limit
        )
        return pb.MessagesResponse(body_json=orjson.dumps(body))

    @maps_domain_errors
    async def SendReceipt(self, request: pb.SendReceiptRequest, context: Any) -> pb.SendReceiptResponse:
        user_id, _ = _requester(request)
        await self._core.send_receipt(user_id, request.room_id, request.receipt_type, request.event_id)
        return pb.SendReceiptResponse()

    @maps_domain_errors
    async def SetTyping(self, request: pb.SetTypingRequest, context: Any) -> pb.SetTypingResponse:
        user_id, _ = _requester(request)
        await self._core.set_typing(user_id, request.room_id, request.typing, request.timeout_ms)
        return pb.SetTypingResponse()

    @maps_domain_errors
    async def GetPushRules(self, request: pb.GetPushRulesRequest, context: Any) -> pb.GetPushRulesResponse:
        user_id, _ = _requester(request)
        return pb.GetPushRulesResponse(body_json=orjson.dumps(await self._core.push_rules(user_id)))

    @maps_domain_errors
    async def GetEvent(self, request: pb.GetEventRequest, context: Any) -> pb.GetEventResponse:
        user_id, device_id = _requester(request)
        body = await self._core.get_event(user_id, device_id, request.room_id, request.event_id)
        return pb.GetEventResponse(body_json=orjson.dumps(body))

    @maps_domain_errors
    async def GetEventContext(self, request: pb.GetEventContextRequest, context: Any) -> pb.GetEventContextResponse:
        user_id, device_id = _requester(request)
        body = await self._core.event_context(
            user_id, device_id, request.room_id, request.event_id, request.limit, request.lazy_load_members
        )
        return pb.GetEventContextResponse(body_json=orjson.dumps(body))

    @maps_domain_errors
    async def GetRelations(self, request: pb.GetRelationsRequest, context: Any) -> pb.GetRelationsResponse:
        user_id, device_id = _requester(request)
        body = await self._core.event_relations(
            user_id,
            device_id,
            request.room_id,
            request.event_id,
            request.rel_type,
            request.event_type,
            getattr(request, "from"),
            request.to,
            request.dir,
            request.limit,
        )
        return pb.GetRelationsResponse(body_json=orjson.dumps(body))

    @maps_domain_errors
    async def ChangePushRule(self, request: pb.ChangePushRuleRequest, context: Any) -> pb.ChangePushRuleResponse:
        user_id, _ = _requester(request)
        change = _PUSH_RULE_CHANGES.get(request.change)
        if change is None:
            raise DomainError("M_INVALID_PARAM", "change is required")
        body = _object(request.body_json) if request.body_json else {}
        await self._core.change_push_rule(
            user_id, change, request.scope, request.kind, request.rule_id, body, request.before, request.after
        )
        return pb.ChangePushRuleResponse()

    @maps_domain_errors
    async def GetPushers(self, request: pb.GetPushersRequest, context: Any) -> pb.GetPushersResponse:
        user_id, _ = _requester(request)
        return pb.GetPushersResponse(body_json=orjson.dumps(await self._core.pushers(user_id)))

    @maps_domain_errors
    async def SetPusher(self, request: pb.SetPusherRequest, context: Any) -> pb.SetPusherResponse:
        user_id, device_id = _requester(request)
        await self._core.set_pusher(user_id, _object(request.body_json), device_id)
        return pb.SetPusherResponse()

    @maps_domain_errors
    async def GetNotifications(self, request: pb.GetNotificationsRequest, context: Any) -> pb.GetNotificationsResponse:
        user_id, _ = _requester(request)
        if self._notifications is None:
            raise DomainError("M_UNRECOGNIZED", "notifications are not kept by this server")
        body = await self._notifications(user_id, getattr(request, "from"), request.limit, request.only)
        return pb.GetNotificationsResponse(body_json=orjson.dumps(body))

    @maps_domain_errors
    async def SetAccountData(self, request: pb.SetAccountDataRequest, context: Any) -> pb.SetAccountDataResponse:
        user_id, _ = _requester(request)
        await self._core.set_account_data(user_id, request.room_id, request.type, _object(request.content_json))
        return pb.SetAccountDataResponse()

    @maps_domain_errors
    async def GetAccountData(self, request: pb.GetAccountDataRequest, context: Any) -> pb.GetAccountDataResponse:
        user_id, _ = _requester(request)
        content = await self._core.get_account_data(user_id, request.room_id, request.type)
        return pb.GetAccountDataResponse(content_json=orjson.dumps(content))

    @maps_domain_errors
    async def SetFullyRead(self, request: pb.SetFullyReadRequest, context: Any) -> pb.SetFullyReadResponse:
        user_id, _ = _requester(request)
        await self._core.set_fully_read(user_id, request.room_id, request.event_id)
        return pb.SetFullyReadResponse()

    @maps_domain_errors
    async def ServiceCreateRoom(
        self, request: pb.ServiceCreateRoomRequest, context: Any
    ) -> pb.ServiceCreateRoomResponse:
        if not request.service:
            raise DomainError("M_INVALID_PARAM", "service is required")
        body: dict[str, Any] = {"invite": list(request.invite)}
        for key in ("preset", "name", "topic"):
            if getattr(request, key):
                body[key] = getattr(request, key)
        room_id = await self._core.create_room(
            request.creator_user_id, body, bypass_policy=True, service=request.service
        )
        return pb.ServiceCreateRoomResponse(room_id=room_id)

    @maps_domain_errors
    async def ServiceSetMembership(
        self, request: pb.ServiceSetMembershipRequest, context: Any
    ) -> pb.ServiceSetMembershipResponse:
        membership = _MEMBERSHIPS.get(request.membership)
        if membership is None:
            raise DomainError("M_INVALID_PARAM", "membership is required")
        event_id = await self._core.service_set_membership(
            request.service, request.room_id, request.user_id, membership, request.reason
        )
        return pb.ServiceSetMembershipResponse(event_id=event_id)
