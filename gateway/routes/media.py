"""Matrix content repository: authenticated media (`/_matrix/client/v1/media/*`), uploads
(`/_matrix/media/v3/upload`, `/_matrix/media/v1/create` is not offered) and the legacy
`/_matrix/media/v3/{download,thumbnail,config}`.

Translation only: the messaging process's MediaService keeps the bytes and decides who may read
them (services/messaging/media.py, docs/media.md). Legacy downloads need an access token too
(as Synapse's frozen legacy media): without one they answer 404, never the bytes.
"""

from __future__ import annotations

from urllib.parse import quote

from aiohttp import web

from gateway.app import DEPS_KEY, UPLOAD_PATHS, GatewayDeps
from gateway.fields import query_int, query_str
from gateway.matrix import MatrixError
from gateway.rpc import call
from gateway.session import authenticate
from laiwang.messaging.v1 import media_pb2 as pb
from laiwang.messaging.v1 import media_pb2_grpc
from laiwang.messaging.v1 import messaging_pb2 as mpb

_INLINE = frozenset(
    {
        "image/jpeg",
        "image/png",
        "image/gif",
        "image/webp",
        "audio/ogg",
        "audio/mpeg",
        "audio/mp4",
        "video/mp4",
        "video/webm",
    }
)


def _stub(deps: GatewayDeps) -> media_pb2_grpc.MediaServiceAsyncStub:
    return deps.stubs.media


async def _start(request: web.Request) -> tuple[media_pb2_grpc.MediaServiceAsyncStub, mpb.Requester]:
    who = await authenticate(request)
    deps = request.app[DEPS_KEY]
    deps.limits.media.check(who.user_id)
    return _stub(deps), mpb.Requester(user_id=who.user_id, device_id=who.device_id)


async def _start_legacy(request: web.Request) -> tuple[media_pb2_grpc.MediaServiceAsyncStub, mpb.Requester]:
    try:
        return await _start(request)
    except MatrixError as exc:
        if exc.status == 401:
            raise MatrixError(404, "M_NOT_FOUND", "media not found") from None
        raise


async def config(request: web.Request) -> web.Response:
    await authenticate(request)
    return web.json_response({"m.upload.size": request.app[DEPS_KEY].config.max_upload_bytes})


async def legacy_config(request: web.Request) -> web.Response:
    return await config(request)


async def upload(request: web.Request) -> web.Response:
    stub, who = await _start(request)
    content = await request.read()  # the app's body reader held it to config.max_upload_bytes
    reply = await call(
        stub.Upload,
        pb.UploadRequest(
            requester=who,
            content_type=request.headers.get("Content-Type", "application/octet-stream")[:200],
            filename=query_str(request, "filename", max_len=255),
            content=content,
        ),
        timeout=60.0,
    )
    return web.json_response({"content_uri": reply.content_uri})


def _serve(content: bytes, content_type: str, filename: str) -> web.Response:
    disposition = "inline" if content_type in _INLINE else "attachment"
    if filename:
        disposition += f"; filename*=utf-8''{quote(filename, safe='')}"
    return web.Response(
        body=content,
        headers={
            "Content-Type": content_type,
            "Content-Disposition": disposition,
            "X-Content-Type-Options": "nosniff",
            "Content-Security-Policy": "sandbox; default-src 'none'; script-src 'none'; plugin-types application/pdf; "
            "style-src 'unsafe-inline'; media-src 'self'; object-src 'self';",
            "Cross-Origin-Resource-Policy": "cross-origin",
            "Cache-Control": "private, max-age=86400",
        },
    )


async def _download(
    request: web.Request, stub: media_pb2_grpc.MediaServiceAsyncStub, who: mpb.Requester
) -> web.Response:
    reply = await call(
        stub.Download,
        pb.DownloadRequest(
            requester=who, server_name=request.match_info["server_name"], media_id=request.match_info["media_id"]
        ),
        timeout=30.0,
    )
    return _serve(reply.content, reply.content_type, request.match_info.get("file_name") or reply.filename)


async def _thumbnail(
    request: web.Request, stub: media_pb2_grpc.MediaServiceAsyncStub, who: mpb.Requester
) -> web.Response:
    method = query_str(request, "method", "scale", max_len=16)
    message = pb.ThumbnailRequest(
        requester=who,
        server_name=request.match_info["server_name"],
        media_id=request.match_info["media_id"],
        width=query_int(request, "width", 0, maximum=100_000),
        height=query_int(request, "height", 0, maximum=100_000),
        method=method,
    )
    if not message.width or not message.height:
        raise MatrixError(400, "M_MISSING_PARAM", "width and height are required")
    reply = await call(stub.Thumbnail, message, timeout=30.0)
    return _serve(reply.content, reply.content_type, "")


async def download(request: web.Request) -> web.Response:
    return await _download(request, *await _start(request))


async def thumbnail(request: web.Request) -> web.Response:
    return await _thumbnail(request, *await _start(request))


async def legacy_download(request: web.Request) -> web.Response:
    return await _download(request, *await _start_legacy(request))


async def legacy_thumbnail(request: web.Request) -> web.Response:
    return await _thumbnail(request, *await _start_legacy(request))


def routes(deps: GatewayDeps) -> list[web.RouteDef]:
    table: list[web.RouteDef] = [web.post(path, upload) for path in sorted(UPLOAD_PATHS)]
    v1 = "/_matrix/client/v1/media"
    table += [
        web.get(f"{v1}/config", config),
        web.get(v1 + "/download/{server_name}/{media_id}", download),
        web.get(v1 + "/download/{server_name}/{media_id}/{file_name}", download),
        web.get(v1 + "/thumbnail/{server_name}/{media_id}", thumbnail),
    ]
    for legacy in ("/_matrix/media/v3", "/_matrix/media/r0"):
        table += [
            web.get(f"{legacy}/config", legacy_config),
            web.get(legacy + "/download/{server_name}/{media_id}", legacy_download),
            web.get(legacy + "/download/{server_name}/{media_id}/{file_name}", legacy_download),
            web.get(legacy + "/thumbnail/{server_name}/{media_id}", legacy_thumbnail),
        ]
    return table
