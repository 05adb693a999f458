"""Adapters to other services that zhadui calls over gRPC (only through their protos)."""

from __future__ import annotations

import grpc

from laiwang.messaging.v1 import messaging_pb2 as mpb
from laiwang.messaging.v1 import messaging_pb2_grpc
from plumbing.domain_errors import try_again

SERVICE_NAME = "zhadui"


class MessagingRooms:
    """Each zhadui's discussion is a messaging room whose membership zhadui controls."""

    def __init__(self, channel: grpc.aio.Channel) -> None:
        self._stub = messaging_pb2_grpc.MessagingServiceStub(channel)

    async def create(self, creator: str, title: str) -> str:
        try:
            reply = await self._stub.ServiceCreateRoom(
                mpb.ServiceCreateRoomRequest(
                    service=SERVICE_NAME,
                    creator_user_id=creator,
                    preset="private_chat",
                    name=title,
                    topic="扎堆 discussion",
                )
            )
        except grpc.aio.AioRpcError as error:
            raise try_again(f"could not create the discussion room: {error.code().name}") from None
        return reply.room_id

    async def join(self, room_id: str, user: str) -> None:
        await self._set(room_id, user, mpb.MEMBERSHIP_JOIN)

    async def leave(self, room_id: str, user: str, ban: bool) -> None:
        await self._set(room_id, user, mpb.MEMBERSHIP_BAN if ban else mpb.MEMBERSHIP_LEAVE)

    async def _set(self, room_id: str, user: str, membership: mpb.Membership.ValueType) -> None:
        # Messaging answers a change to the membership a user already has without a new event,
        # which is what makes these calls safe to repeat from event redelivery.
        await self._stub.ServiceSetMembership(
            mpb.ServiceSetMembershipRequest(service=SERVICE_NAME, room_id=room_id, user_id=user, membership=membership)
        )
