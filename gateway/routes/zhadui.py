"""Zhadui (扎堆) endpoints under Laiwang's client prefix.

  POST /_laiwang/client/v1/zhadui                       create
  GET  /_laiwang/client/v1/zhadui/feed?cursor&limit     my visible zhaduis, newest activity first
  GET  /_laiwang/client/v1/zhadui/notices?limit         "a friend joined" notices
  GET  /_laiwang/client/v1/zhadui/{id}?mark_seen=true   preview (404 outside the audience)
  POST /_laiwang/client/v1/zhadui/{id}/join | /leave | /close
  PUT  /_laiwang/client/v1/zhadui/{id}/mute             {"muted": bool}
  POST /_laiwang/client/v1/zhadui/{id}/remove           {"user_id": ...} (creator only)
  GET  /_laiwang/client/v1/zhadui/{id}/discussion       the Matrix room (participants only, else 403)
"""

from __future__ import annotations

from typing import Any

import orjson
from aiohttp import web

from gateway.app import DEPS_KEY, GatewayDeps
from gateway.matrix import MatrixError, json_response, read_json_object
from gateway.ratelimit import RateLimiter
from gateway.rpc import call
from gateway.session import authenticate
from laiwang.zhadui.v1 import zhadui_pb2 as pb
from laiwang.zhadui.v1 import zhadui_pb2_grpc
from plumbing.config import Env

PREFIX = "/_laiwang/client/v1/zhadui"
_STUB_KEY = "zhadui_stub"
_LIMITER_KEY = "zhadui_limiter"
_STATUS_NAMES = {
    pb.ZHADUI_STATUS_OPEN: "open",
    pb.ZHADUI_STATUS_CLOSED: "closed",
    pb.ZHADUI_STATUS_ARCHIVED: "archived",
}


def _stub(request: web.Request) -> zhadui_pb2_grpc.ZhaduiServiceStub:
    deps = request.app[DEPS_KEY]
    stub = deps.extras.get(_STUB_KEY)
    if stub is None:
        stub = deps.extras[_STUB_KEY] = zhadui_pb2_grpc.ZhaduiServiceStub(deps.downstream.channels["zhadui"])
    return stub


async def _viewer(request: web.Request) -> str:
    """The authenticated user, within their request rate."""
    requester = await authenticate(request)
    request.app[DEPS_KEY].extras[_LIMITER_KEY].check(requester.user_id)
    return requester.user_id


def _preview(z: pb.ZhaduiPreview) -> dict[str, Any]:
    body: dict[str, Any] = {
        "zhadui_id": z.zhadui_id,
        "creator": z.creator_user_id,
        "title": z.title,
        "body": z.body,
        "tags": list(z.tags),
        "status": _STATUS_NAMES.get(z.status, "open"),
        "participant_count": z.participant_count,
        "created_at": z.created_at_ms,
        "last_activity_at": z.last_activity_at_ms,
        "friends_in_it": list(z.friends_in_it),
        "joined": z.viewer_is_participant,
        "muted": z.muted,
        "unread": z.unread,
    }
    if z.attachment.link_url:
        body["link_url"] = z.attachment.link_url
    if z.attachment.card_json:
        body["card"] = orjson.loads(z.attachment.card_json)
    return body


def _string(body: dict[str, Any], key: str, required: bool = False) -> str:
    value = body.get(key)
    if value is None:
        if required:
            raise MatrixError(400, "M_BAD_JSON", f"'{key}' is required")
        return ""
    if not isinstance(value, str):
        raise MatrixError(400, "M_BAD_JSON", f"'{key}' must be a string")
    return value


def _zhadui_id(request: web.Request) -> str:
    return request.match_info["zhadui_id"]


def _limit(request: web.Request) -> int:
    raw = request.query.get("limit", "0")
    if not raw.isdigit():
        raise MatrixError(400, "M_INVALID_PARAM", "limit must be a non-negative integer")
    return int(raw)


async def create(request: web.Request) -> web.Response:
    viewer = await _viewer(request)
    body = await read_json_object(request)
    tags = body.get("tags", [])
    if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
        raise MatrixError(400, "M_BAD_JSON", "'tags' must be a list of strings")
    card = body.get("card")
    if card is not None and not isinstance(card, dict):
        raise MatrixError(400, "M_BAD_JSON", "'card' must be a JSON object")
    reply = await call(
        _stub(request).CreateZhadui,
        pb.CreateZhaduiRequest(
            viewer_user_id=viewer,
            title=_string(body, "title", required=True),
            body=_string(body, "body"),
            attachment=pb.Attachment(
                link_url=_string(body, "link_url"), card_json=orjson.dumps(card).decode() if card else ""
            ),
            tags=tags,
        ),
    )
    return json_response(_preview(reply.zhadui))


async def feed(request: web.Request) -> web.Response:
    viewer = await _viewer(request)
    reply = await call(
        _stub(request).ListFeed,
        pb.ListFeedRequest(viewer_user_id=viewer, cursor=request.query.get("cursor", ""), limit=_limit(request)),
    )
    body: dict[str, Any] = {"items": [_preview(item) for item in reply.items]}
    if reply.next_cursor:
        body["next_cursor"] = reply.next_cursor
    return json_response(body)


async def notices(request: web.Request) -> web.Response:
    viewer = await _viewer(request)
    reply = await call(_stub(request).ListNotices, pb.ListNoticesRequest(viewer_user_id=viewer, limit=_limit(request)))
    return json_response(
        {"notices": [{"zhadui_id": n.zhadui_id, "title": n.title, "user_id": n.actor_user_id, "at": n.at_ms}
                     for n in reply.notices]}
    )


async def get_zhadui(request: web.Request) -> web.Response:
    viewer = await _viewer(request)
    reply = await call(
        _stub(request).GetZhadui,
        pb.GetZhaduiRequest(viewer_user_id=viewer, zhadui_id=_zhadui_id(request),
                            mark_seen=request.query.get("mark_seen") == "true"),
    )
    return json_response(_preview(reply.zhadui))


async def join(request: web.Request) -> web.Response:
    viewer = await _viewer(request)
    reply = await call(
        _stub(request).JoinZhadui, pb.JoinZhaduiRequest(viewer_user_id=viewer, zhadui_id=_zhadui_id(request))
    )
    return json_response({**_preview(reply.zhadui), "room_id": reply.room_id})


async def leave(request: web.Request) -> web.Response:
    viewer = await _viewer(request)
    await call(_stub(request).LeaveZhadui,
               pb.LeaveZhaduiRequest(viewer_user_id=viewer, zhadui_id=_zhadui_id(request)))
    return json_response({})


async def close(request: web.Request) -> web.Response:
    viewer = await _viewer(request)
    await call(_stub(request).CloseZhadui,
               pb.CloseZhaduiRequest(viewer_user_id=viewer, zhadui_id=_zhadui_id(request)))
    return json_response({})


async def mute(request: web.Request) -> web.Response:
    viewer = await _viewer(request)
    body = await read_json_object(request)
    muted = body.get("muted")
    if not isinstance(muted, bool):
        raise MatrixError(400, "M_BAD_JSON", "'muted' must be true or false")
    await call(_stub(request).MuteZhadui,
               pb.MuteZhaduiRequest(viewer_user_id=viewer, zhadui_id=_zhadui_id(request), muted=muted))
    return json_response({})


async def remove(request: web.Request) -> web.Response:
    viewer = await _viewer(request)
    body = await read_json_object(request)
    await call(
        _stub(request).RemoveParticipant,
        pb.RemoveParticipantRequest(viewer_user_id=viewer, zhadui_id=_zhadui_id(request),
                                    user_id=_string(body, "user_id", required=True)),
    )
    return json_response({})


async def discussion(request: web.Request) -> web.Response:
    viewer = await _viewer(request)
    reply = await call(_stub(request).GetDiscussion,
                       pb.GetDiscussionRequest(viewer_user_id=viewer, zhadui_id=_zhadui_id(request)))
    return json_response({"room_id": reply.room_id})


def routes(deps: GatewayDeps) -> list[web.RouteDef]:
    env = Env()
    deps.extras[_LIMITER_KEY] = RateLimiter(
        per_second=env.float("GATEWAY_ZHADUI_RATE_PER_SECOND", 20.0, minimum=0.01),
        burst=env.int("GATEWAY_ZHADUI_BURST", 60, minimum=1),
    )
    one = f"{PREFIX}/{{zhadui_id}}"
    return [
        web.post(PREFIX, create),
        web.get(f"{PREFIX}/feed", feed),
        web.get(f"{PREFIX}/notices", notices),
        web.get(one, get_zhadui),
        web.post(f"{one}/join", join),
        web.post(f"{one}/leave", leave),
        web.post(f"{one}/close", close),
        web.put(f"{one}/mute", mute),
        web.post(f"{one}/remove", remove),
        web.get(f"{one}/discussion", discussion),
    ]
