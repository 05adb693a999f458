"""gRPC layer of the messaging process's MediaService (media.proto): proto <-> domain, nothing else."""

from __future__ import annotations

from typing import Any

import grpc

from laiwang.messaging.v1 import media_pb2 as pb
from laiwang.messaging.v1 import media_pb2_grpc
from plumbing.domain_errors import DomainError
from plumbing.grpc_errors import maps_domain_errors
from services.messaging.media import Media


def _user(request: Any) -> str:
    if not request.requester.user_id:
        raise DomainError("M_INVALID_PARAM", "requester.user_id is required")
    return str(request.requester.user_id)


class MediaApi(media_pb2_grpc.MediaServiceServicer):
    def __init__(self, media: Media) -> None:
        self._media = media

    def register(self, server: grpc.aio.Server) -> None:
        media_pb2_grpc.add_MediaServiceServicer_to_server(self, server)

    @maps_domain_errors
    async def Upload(self, request: pb.UploadRequest, context: Any) -> pb.UploadResponse:
        uri = await self._media.upload(_user(request), request.content, request.content_type, request.filename)
        return pb.UploadResponse(content_uri=uri)

    @maps_domain_errors
    async def Download(self, request: pb.DownloadRequest, context: Any) -> pb.DownloadResponse:
        blob = await self._media.download(_user(request), request.server_name, request.media_id)
        return pb.DownloadResponse(content=blob.content, content_type=blob.content_type, filename=blob.filename)

    @maps_domain_errors
    async def Thumbnail(self, request: pb.ThumbnailRequest, context: Any) -> pb.ThumbnailResponse:
        content, content_type = await self._media.thumbnail(
            _user(request), request.server_name, request.media_id, request.width, request.height, request.method
        )
        return pb.ThumbnailResponse(content=content, content_type=content_type)
