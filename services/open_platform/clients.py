"""open_platform's calls into messaging: each subscription's direct room, run through messaging's
service-only calls (the bot is no account of auth's, and the room's membership is ours to set)."""

from __future__ import annotations

import grpc

from laiwang.messaging.v1 import messaging_pb2 as mpb
from laiwang.messaging.v1 import messaging_pb2_grpc
from plumbing.domain_errors import try_again
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
        reply = await self._stub.SendEvent(
            mpb.SendEventRequest(
                requester=mpb.Requester(user_id=sender, device_id=BOT_DEVICE),
                room_id=room_id,
                event_type=event_type,
                txn_id=txn_id,
                content_json=content_json(content),
            )
        )
        return reply.event_id
