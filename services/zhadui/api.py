"""gRPC API of the zhadui service: proto <-> domain translation and error mapping, nothing else."""

from __future__ import annotations

import time

import grpc

from laiwang.zhadui.v1 import zhadui_pb2 as pb
from laiwang.zhadui.v1 import zhadui_pb2_grpc
from plumbing.grpc_errors import maps_domain_errors
from services.zhadui.core import Preview, Status, ZhaduiCore, validate_draft

_STATUS = {
    Status.OPEN: pb.ZHADUI_STATUS_OPEN,
    Status.CLOSED: pb.ZHADUI_STATUS_CLOSED,
    Status.ARCHIVED: pb.ZHADUI_STATUS_ARCHIVED,
}


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


def _preview(preview: Preview) -> pb.ZhaduiPreview:
    z = preview.zhadui
    return pb.ZhaduiPreview(
        zhadui_id=z.zhadui_id,
        creator_user_id=z.creator,
        title=z.title,
        body=z.body,
        attachment=pb.Attachment(link_url=z.link_url, card_json=z.card_json),
        tags=list(z.tags),
        status=_STATUS[z.status],
        participant_count=z.participant_count,
        created_at_ms=z.created_ms,
        last_activity_at_ms=z.last_activity_ms,
        friends_in_it=preview.friends_in_it,
        viewer_is_participant=preview.viewer_is_participant,
        muted=preview.muted,
        unread=preview.unread,
    )


class ZhaduiApi(zhadui_pb2_grpc.ZhaduiServiceServicer):
    def __init__(self, core: ZhaduiCore) -> None:
        self._core = core

    def register(self, server: grpc.aio.Server) -> None:
        zhadui_pb2_grpc.add_ZhaduiServiceServicer_to_server(self, server)

    @maps_domain_errors
    async def CreateZhadui(
        self, request: pb.CreateZhaduiRequest, context: grpc.aio.ServicerContext
    ) -> pb.CreateZhaduiResponse:
        draft = validate_draft(
            request.title, request.body, request.attachment.link_url, request.attachment.card_json, list(request.tags)
        )
        preview = await self._core.create(request.viewer_user_id, draft, _now_ms())
        return pb.CreateZhaduiResponse(zhadui=_preview(preview))

    @maps_domain_errors
    async def GetZhadui(self, request: pb.GetZhaduiRequest, context: grpc.aio.ServicerContext) -> pb.GetZhaduiResponse:
        preview = await self._core.preview(request.viewer_user_id, request.zhadui_id, request.mark_seen, _now_ms())
        return pb.GetZhaduiResponse(zhadui=_preview(preview))

    @maps_domain_errors
    async def ListFeed(self, request: pb.ListFeedRequest, context: grpc.aio.ServicerContext) -> pb.ListFeedResponse:
        items, next_cursor = await self._core.feed(request.viewer_user_id, request.cursor, request.limit)
        return pb.ListFeedResponse(items=[_preview(item) for item in items], next_cursor=next_cursor)

    @maps_domain_errors
    async def JoinZhadui(
        self, request: pb.JoinZhaduiRequest, context: grpc.aio.ServicerContext
    ) -> pb.JoinZhaduiResponse:
        preview = await self._core.join(request.viewer_user_id, request.zhadui_id, _now_ms())
        return pb.JoinZhaduiResponse(zhadui=_preview(preview), room_id=preview.zhadui.room_id)

    @maps_domain_errors
    async def LeaveZhadui(
        self, request: pb.LeaveZhaduiRequest, context: grpc.aio.ServicerContext
    ) -> pb.LeaveZhaduiResponse:
        await self._core.leave(request.viewer_user_id, request.zhadui_id, _now_ms())
        return pb.LeaveZhaduiResponse()

    @maps_domain_errors
    async def MuteZhadui(
        self, request: pb.MuteZhaduiRequest, context: grpc.aio.ServicerContext
    ) -> pb.MuteZhaduiResponse:
        await self._core.mute(request.viewer_user_id, request.zhadui_id, request.muted)
        return pb.MuteZhaduiResponse()

    @maps_domain_errors
    async def CloseZhadui(
        self, request: pb.CloseZhaduiRequest, context: grpc.aio.ServicerContext
    ) -> pb.CloseZhaduiResponse:
        await self._core.close(request.viewer_user_id, request.zhadui_id, _now_ms())
        return pb.CloseZhaduiResponse()

    @maps_domain_errors
    async def RemoveParticipant(
        self, request: pb.RemoveParticipantRequest, context: grpc.aio.ServicerContext
    ) -> pb.RemoveParticipantResponse:
        await self._core.remove(request.viewer_user_id, request.zhadui_id, request.user_id, _now_ms())
        return pb.RemoveParticipantResponse()

    @maps_domain_errors
    async def GetDiscussion(
        self, request: pb.GetDiscussionRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetDiscussionResponse:
        return pb.GetDiscussionResponse(room_id=await self._core.discussion(request.viewer_user_id, request.zhadui_id))

    @maps_domain_errors
    async def ListNotices(
        self, request: pb.ListNoticesRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListNoticesResponse:
        notices = await self._core.notices(request.viewer_user_id, request.limit)
        return pb.ListNoticesResponse(
            notices=[
                pb.Notice(zhadui_id=n.zhadui_id, title=n.title, actor_user_id=n.actor, at_ms=n.at_ms) for n in notices
            ]
        )
