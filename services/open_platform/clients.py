"""open_platform's calls into messaging: each subscription's direct room, run through messaging's
service-only calls (the bot is no account of auth's, and the room's membership is ours to set)."""

from __future__ import annotations

import json

import grpc

from laiwang.messaging.v1 import messaging_pb2 as mpb
from laiwang.messaging.v1 import messaging_pb2_grpc
from plumbing.domain_errors import DomainError, bad_json, forbidden, not_found, try_again
from services.open_platform.subscriptions import content_json

SERVICE_NAME = "open_platform"
BOT_DEVICE = "open_platform"


class MessagingRooms:
    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = messaging_pb2_grpc.MessagingServiceStub(channel)

    async def open_direct(self, bot: str, user: str, name: str) -> str:
        try:
            created = await self._stub.ServiceCreateRoom(
                mpb.ServiceCreateRoomRequest(
                    service=SERVICE_NAME, creator_user_id=bot, preset="trusted_private_chat", name=name, invite=[user]
                )
            )
            # The user asked for this room by subscribing: they are joined, not merely invited.
            await self._stub.ServiceSetMembership(
                mpb.ServiceSetMembershipRequest(
                    service=SERVICE_NAME, room_id=created.room_id, user_id=user, membership=mpb.MEMBERSHIP_JOIN
                )
            )
        except grpc.aio.AioRpcError as error:
            raise try_again(f"could not open the app's room: {error.code().name}") from None
        return created.room_id

    async def leave(self, room_id: str, user: str) -> None:
        try:
            await self._stub.ServiceSetMembership(
                mpb.ServiceSetMembershipRequest(
                    service=SERVICE_NAME, room_id=room_id, user_id=user, membership=mpb.MEMBERSHIP_LEAVE
                )
            )
        except grpc.aio.AioRpcError as error:
            raise try_again(f"could not leave the app's room: {error.code().name}") from None

    async def send(self, room_id: str, sender: str, txn_id: str, event_type: str, content: dict) -> str:
        try:
            reply = await self._stub.SendEvent(
                mpb.SendEventRequest(
                    requester=mpb.Requester(user_id=sender, device_id=BOT_DEVICE),
                    room_id=room_id,
                    event_type=event_type,
                    txn_id=txn_id,
                    content_json=content_json(content),
                )
            )
        except grpc.aio.AioRpcError as error:
            raise _refusal(error) from None
        return reply.event_id

    async def joined_members(self, room_id: str, as_user: str) -> set[str]:
        """Who is joined in the room, as `as_user` sees it (empty if they may not look)."""
        try:
            reply = await self._stub.GetMembers(
                mpb.GetMembersRequest(requester=mpb.Requester(user_id=as_user, device_id=BOT_DEVICE), room_id=room_id)
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND):
                return set()
            raise _refusal(error) from None
        chunk = json.loads(reply.body_json or b"{}").get("chunk", [])
        return {e.get("state_key", "") for e in chunk if e.get("content", {}).get("membership") == "join"}

    async def get_event(self, room_id: str, event_id: str, as_user: str) -> dict | None:
        try:
            reply = await self._stub.GetEvent(
                mpb.GetEventRequest(
                    requester=mpb.Requester(user_id=as_user, device_id=BOT_DEVICE), room_id=room_id, event_id=event_id
                )
            )
        except grpc.aio.AioRpcError as error:
            if error.code() in (grpc.StatusCode.PERMISSION_DENIED, grpc.StatusCode.NOT_FOUND):
                return None
            raise _refusal(error) from None
        return json.loads(reply.body_json or b"{}")


def _refusal(error: grpc.aio.AioRpcError) -> DomainError:
    """Messaging's refusal, as the partner should see it (its own message, never internals)."""
    message = (error.details() or "")[:300]
    code = error.code()
    if code == grpc.StatusCode.PERMISSION_DENIED:
        return forbidden(message or "not allowed")
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return bad_json(message or "invalid event")
    if code == grpc.StatusCode.NOT_FOUND:
        return not_found(message or "not found")
    return try_again(f"messaging could not take the event: {code.name}")
