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
from gateway.fields import (
    body_bool,
    body_object,
    body_str,
    body_strings,
    body_user_id,
    check_json,
    query_bool,
    query_int,
    query_str,
    read_json_object,
)
from gateway.matrix import json_response
from gateway.rpc import call
from gateway.session import authenticate
from laiwang.zhadui.v1 import zhadui_pb2 as pb
from laiwang.zhadui.v1 import zhadui_pb2_grpc

PREFIX = "/_laiwang/client/v1/zhadui"
MAX_PAGE_LIMIT = 1000
_STATUS_NAMES = {
    pb.ZHADUI_STATUS_OPEN: "open",
    pb.ZHADUI_STATUS_CLOSED: "closed",
    pb.ZHADUI_STATUS_ARCHIVED: "archived",
}


def _stub(request: web.Request) -> zhadui_pb2_grpc.ZhaduiServiceAsyncStub:
    return request.app[DEPS_KEY].stubs.zhadui


async def _viewer(request: web.Request) -> str:
    """The authenticated user, within their request rate."""
    requester = await authenticate(request)
    request.app[DEPS_KEY].limits.zhadui.check(requester.user_id)
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


def _zhadui_id(request: web.Request) -> str:
    return request.match_info["zhadui_id"]


def _limit(request: web.Request) -> int:
    # 0 is the service's default page; larger pages are clamped by the service to its maximum.
    return query_int(request, "limit", 0, maximum=MAX_PAGE_LIMIT)


async def create(request: web.Request) -> web.Response:
    viewer = await _viewer(request)
    body = await read_json_object(request)
    tags = body_strings(body, "tags", max_items=1000)
    card = body_object(body, "card")
    if card is not None:
        check_json(card, canonical=True, where="card")  # it is re-encoded here and stored as canonical JSON
    reply = await call(
        _stub(request).CreateZhadui,
        pb.CreateZhaduiRequest(
            viewer_user_id=viewer,
            title=body_str(body, "title", max_len=65536),
            body=body_str(body, "body", max_len=65536),
            attachment=pb.Attachment(
                link_url=body_str(body, "link_url", max_len=65536),
                card_json=orjson.dumps(card).decode() if card else "",
            ),
            tags=tags,
        ),
    )
    return json_response(_preview(reply.zhadui))


async def feed(request: web.Request) -> web.Response:
    viewer = await _viewer(request)
    reply = await call(
        _stub(request).ListFeed,
        pb.ListFeedRequest(viewer_user_id=viewer, cursor=query_str(request, "cursor"), limit=_limit(request)),
    )
    body: dict[str, Any] = {"items": [_preview(item) for item in reply.items]}
    if reply.next_cursor:
        body["next_cursor"] = reply.next_cursor
    return json_response(body)


async def notices(request: web.Request) -> web.Response:
    viewer = await _viewer(request)
    reply = await call(_stub(request).ListNotices, pb.ListNoticesRequest(viewer_user_id=viewer, limit=_limit(request)))
    return json_response(
        {
            "notices": [
                {"zhadui_id": n.zhadui_id, "title": n.title, "user_id": n.actor_user_id, "at": n.at_ms}
                for n in reply.notices
            ]
        }
    )


async def get_zhadui(request: web.Request) -> web.Response:
    viewer = await _viewer(request)
    reply = await call(
        _stub(request).GetZhadui,
        pb.GetZhaduiRequest(
            viewer_user_id=viewer, zhadui_id=_zhadui_id(request), mark_seen=query_bool(request, "mark_seen")
        ),
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
    await call(_stub(request).LeaveZhadui, pb.LeaveZhaduiRequest(viewer_user_id=viewer, zhadui_id=_zhadui_id(request)))
    return json_response({})


async def close(request: web.Request) -> web.Response:
    viewer = await _viewer(request)
    await call(_stub(request).CloseZhadui, pb.CloseZhaduiRequest(viewer_user_id=viewer, zhadui_id=_zhadui_id(request)))
    return json_response({})


async def mute(request: web.Request) -> web.Response:
    viewer = await _viewer(request)
    body = await read_json_object(request)
    muted = body_bool(body, "muted")
    await call(
        _stub(request).MuteZhadui,
        pb.MuteZhaduiRequest(viewer_user_id=viewer, zhadui_id=_zhadui_id(request), muted=muted),
    )
    return json_response({})


async def remove(request: web.Request) -> web.Response:
    viewer = await _viewer(request)
    body = await read_json_object(request)
    await call(
        _stub(request).RemoveParticipant,
        pb.RemoveParticipantRequest(
            viewer_user_id=viewer, zhadui_id=_zhadui_id(request), user_id=body_user_id(body, "user_id")
        ),
    )
    return json_response({})


async def discussion(request: web.Request) -> web.Response:
    viewer = await _viewer(request)
    reply = await call(
        _stub(request).GetDiscussion, pb.GetDiscussionRequest(viewer_user_id=viewer, zhadui_id=_zhadui_id(request))
    )
    return json_response({"room_id": reply.room_id})


def routes(deps: GatewayDeps) -> list[web.RouteDef]:
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
