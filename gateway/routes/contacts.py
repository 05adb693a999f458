"""Contacts and friends (熟人) under Laiwang's client prefix, plus the Matrix user directory.

  GET  /_laiwang/client/v1/openapi.json                         this gateway's OpenAPI document
  POST /_laiwang/client/v1/contacts/upload                      whole address book, plain numbers
  POST /_laiwang/client/v1/contacts/sync                        incremental: {"add": [...], "remove": [...]}
  GET  /_laiwang/client/v1/contacts/hash_details                Matrix IS v2 pepper + algorithms
  POST /_laiwang/client/v1/contacts/lookup                      Matrix IS v2 hashed lookup
  GET  /_laiwang/client/v1/contacts/matches                     current matches of my stored book
  GET|PUT /_laiwang/client/v1/contacts/discoverability          everyone | mutual | nobody
  GET  /_laiwang/client/v1/suggestions                          people from my book who joined later
  DELETE /_laiwang/client/v1/suggestions/{user_id}
  GET  /_laiwang/client/v1/friends                              with mutual-friend counts
  DELETE /_laiwang/client/v1/friends/{user_id}
  GET  /_laiwang/client/v1/friends/{user_id}/mutual
  GET|POST /_laiwang/client/v1/friends/requests
  POST /_laiwang/client/v1/friends/requests/{user_id}/accept | /decline
  GET  /_laiwang/client/v1/relationship/{user_id}
  GET  /_laiwang/client/v1/blocks ; PUT|DELETE /_laiwang/client/v1/blocks/{user_id}
  POST /_matrix/client/v3/user_directory/search                 friends and address-book matches only

Request rates are limited here per user (per replica); the enumeration budget that stops number
scanning is enforced inside the contacts service, so it holds across gateway replicas.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import grpc
import orjson
from aiohttp import web

from gateway.app import DEPS_KEY, GatewayDeps
from gateway.client_address import client_address
from gateway.fields import body_bool, body_int, body_str, body_strings, body_user_id, path_user_id, read_json_object
from gateway.matrix import MatrixError, json_response
from gateway.rpc import call, matrix_error_from
from gateway.session import authenticate
from laiwang.contacts.v1 import contacts_pb2 as pb
from laiwang.contacts.v1 import contacts_pb2_grpc

PREFIX = "/_laiwang/client/v1"
OPENAPI_PATH = Path(__file__).resolve().parent.parent / "openapi.json"

_SETTINGS = {
    "everyone": pb.DISCOVERABILITY_EVERYONE,
    "mutual": pb.DISCOVERABILITY_MUTUAL,
    "nobody": pb.DISCOVERABILITY_NOBODY,
}
_SETTING_NAMES = {value: name for name, value in _SETTINGS.items()}


def _stub(request: web.Request) -> contacts_pb2_grpc.ContactsServiceAsyncStub:
    return request.app[DEPS_KEY].stubs.contacts


async def _viewer(request: web.Request, upload: bool = False) -> str:
    """The authenticated user, within their request rate (uploads have their own, lower rate)."""
    requester = await authenticate(request)
    limits = request.app[DEPS_KEY].limits
    (limits.contacts_upload if upload else limits.contacts).check(requester.user_id)
    return requester.user_id


def _other(request: web.Request) -> str:
    return path_user_id(request)


def _book_body(reply: pb.UploadContactsResponse | pb.LookupHashesResponse) -> dict[str, Any]:
    return {
        "matches": [
            {"index": m.index, "address": m.address, "user_id": m.user_id, "display_name": m.display_name}
            for m in reply.matches
        ],
        "invalid": [{"list": e.list, "index": e.index, "value": e.value, "reason": e.reason} for e in reply.invalid],
        "added": reply.added,
        "removed": reply.removed,
        "budget_remaining": reply.budget_remaining,
    }


# ------------------------------------------------------------------------------ address book
async def upload(request: web.Request) -> web.Response:
    user = await _viewer(request, upload=True)
    body = await read_json_object(request)
    reply = await call(
        _stub(request).UploadContacts,
        pb.UploadContactsRequest(
            user_id=user,
            mode=pb.UPLOAD_MODE_REPLACE,
            add=body_strings(body, "numbers", required=True),
            default_region=body_str(body, "region", max_len=8),
            client_address=client_address(request),
        ),
    )
    return json_response(_book_body(reply))


async def sync(request: web.Request) -> web.Response:
    user = await _viewer(request, upload=True)
    body = await read_json_object(request)
    add, remove = body_strings(body, "add"), body_strings(body, "remove")
    if not add and not remove:
        raise MatrixError(400, "M_MISSING_PARAM", "send 'add' and/or 'remove'")
    reply = await call(
        _stub(request).UploadContacts,
        pb.UploadContactsRequest(
            user_id=user,
            mode=pb.UPLOAD_MODE_MERGE,
            add=add,
            remove=remove,
            default_region=body_str(body, "region", max_len=8),
            client_address=client_address(request),
        ),
    )
    return json_response(_book_body(reply))


async def hash_details(request: web.Request) -> web.Response:
    await _viewer(request)
    reply = await call(_stub(request).GetHashDetails, pb.GetHashDetailsRequest())
    return json_response({"lookup_pepper": reply.lookup_pepper, "algorithms": list(reply.algorithms)})


async def lookup(request: web.Request) -> web.Response:
    user = await _viewer(request, upload=True)
    body = await read_json_object(request)
    algorithm = body_str(body, "algorithm", max_len=64)
    pepper = body_str(body, "pepper", max_len=256)
    if not algorithm or not pepper:
        raise MatrixError(400, "M_MISSING_PARAM", "'algorithm' and 'pepper' are required")
    replace_all = body_bool(body, "replace", False)
    stub = _stub(request)
    try:
        reply = await stub.LookupHashes(
            pb.LookupHashesRequest(
                user_id=user,
                algorithm=algorithm,
                pepper=pepper,
                addresses=body_strings(body, "addresses", required=True),
                remove=body_strings(body, "remove"),
                mode=pb.UPLOAD_MODE_REPLACE if replace_all else pb.UPLOAD_MODE_MERGE,
                client_address=client_address(request),
            )
        )
    except grpc.aio.AioRpcError as error:
        failure = matrix_error_from(error)
        if failure.errcode == "M_INVALID_PEPPER":
            # As the Matrix IS API: the client learns the current pepper from the error itself.
            details = await call(stub.GetHashDetails, pb.GetHashDetailsRequest())
            failure.extra.update(lookup_pepper=details.lookup_pepper, algorithms=list(details.algorithms))
        raise failure from None
    return json_response({**_book_body(reply), "mappings": {m.address: m.user_id for m in reply.matches}})


async def matches(request: web.Request) -> web.Response:
    user = await _viewer(request)
    reply = await call(_stub(request).ListMatches, pb.ListMatchesRequest(user_id=user))
    return json_response({"matches": [{"user_id": u.user_id, "display_name": u.display_name} for u in reply.users]})


async def get_discoverability(request: web.Request) -> web.Response:
    user = await _viewer(request)
    reply = await call(_stub(request).GetDiscoverability, pb.GetDiscoverabilityRequest(user_id=user))
    return json_response({"discoverability": _SETTING_NAMES[reply.discoverability]})


async def put_discoverability(request: web.Request) -> web.Response:
    user = await _viewer(request)
    body = await read_json_object(request)
    setting = _SETTINGS.get(body_str(body, "discoverability", max_len=16))
    if setting is None:
        raise MatrixError(400, "M_INVALID_PARAM", "'discoverability' must be one of everyone, mutual, nobody")
    reply = await call(
        _stub(request).SetDiscoverability, pb.SetDiscoverabilityRequest(user_id=user, discoverability=setting)
    )
    return json_response({"discoverability": _SETTING_NAMES[reply.discoverability]})


# ------------------------------------------------------------------------------ suggestions
async def suggestions(request: web.Request) -> web.Response:
    user = await _viewer(request)
    reply = await call(_stub(request).ListSuggestions, pb.ListSuggestionsRequest(user_id=user))
    return json_response(
        {
            "suggestions": [
                {
                    "user_id": s.user_id,
                    "display_name": s.display_name,
                    "reason": s.reason,
                    "created_at": s.created_at_ms,
                }
                for s in reply.suggestions
            ]
        }
    )


async def dismiss_suggestion(request: web.Request) -> web.Response:
    user = await _viewer(request)
    await call(
        _stub(request).DismissSuggestion, pb.DismissSuggestionRequest(user_id=user, other_user_id=_other(request))
    )
    return json_response({})


# ------------------------------------------------------------------------------ friends
async def friends(request: web.Request) -> web.Response:
    user = await _viewer(request)
    reply = await call(_stub(request).ListFriends, pb.ListFriendsRequest(user_id=user))
    return json_response(
        {
            "friends": [
                {
                    "user_id": f.user_id,
                    "display_name": f.display_name,
                    "since": f.since_ms,
                    "mutual_friends": f.mutual_friends,
                }
                for f in reply.friends
            ]
        }
    )


async def remove_friend(request: web.Request) -> web.Response:
    user = await _viewer(request)
    await call(_stub(request).RemoveFriend, pb.RemoveFriendRequest(user_id=user, other_user_id=_other(request)))
    return json_response({})


async def mutual_friends(request: web.Request) -> web.Response:
    user = await _viewer(request)
    reply = await call(
        _stub(request).ListMutualFriends, pb.ListMutualFriendsRequest(user_id=user, other_user_id=_other(request))
    )
    return json_response({"user_ids": list(reply.user_ids), "count": len(reply.user_ids)})


def _request_body(r: pb.FriendRequest) -> dict[str, Any]:
    return {
        "from": r.from_user_id,
        "to": r.to_user_id,
        "display_name": r.display_name,
        "message": r.message,
        "created_at": r.created_at_ms,
    }


async def list_requests(request: web.Request) -> web.Response:
    user = await _viewer(request)
    reply = await call(_stub(request).ListFriendRequests, pb.ListFriendRequestsRequest(user_id=user))
    return json_response(
        {"incoming": [_request_body(r) for r in reply.incoming], "outgoing": [_request_body(r) for r in reply.outgoing]}
    )


async def send_request(request: web.Request) -> web.Response:
    user = await _viewer(request)
    body = await read_json_object(request)
    other = body_user_id(body, "user_id")
    reply = await call(
        _stub(request).SendFriendRequest,
        pb.SendFriendRequestRequest(
            user_id=user, other_user_id=other, message=body_str(body, "message", max_len=65536)
        ),
    )
    return json_response({"state": reply.state})


async def accept_request(request: web.Request) -> web.Response:
    user = await _viewer(request)
    await call(
        _stub(request).AcceptFriendRequest, pb.AcceptFriendRequestRequest(user_id=user, other_user_id=_other(request))
    )
    return json_response({})


async def decline_request(request: web.Request) -> web.Response:
    user = await _viewer(request)
    await call(
        _stub(request).DeclineFriendRequest, pb.DeclineFriendRequestRequest(user_id=user, other_user_id=_other(request))
    )
    return json_response({})


async def relationship(request: web.Request) -> web.Response:
    user = await _viewer(request)
    reply = await call(
        _stub(request).GetRelationship, pb.GetRelationshipRequest(user_id=user, other_user_id=_other(request))
    )
    return json_response(
        {
            "friends": reply.friends,
            "blocking": reply.blocking,
            "blocked_by": reply.blocked_by,
            "pending_request": reply.pending_request or None,
            "mutual_friends": reply.mutual_friends,
        }
    )


# ------------------------------------------------------------------------------ blocks
async def blocks(request: web.Request) -> web.Response:
    user = await _viewer(request)
    reply = await call(_stub(request).ListBlocks, pb.ListBlocksRequest(user_id=user))
    return json_response({"user_ids": list(reply.user_ids)})


async def block(request: web.Request) -> web.Response:
    user = await _viewer(request)
    await call(_stub(request).BlockUser, pb.BlockUserRequest(user_id=user, other_user_id=_other(request)))
    return json_response({})


async def unblock(request: web.Request) -> web.Response:
    user = await _viewer(request)
    await call(_stub(request).UnblockUser, pb.UnblockUserRequest(user_id=user, other_user_id=_other(request)))
    return json_response({})


# ------------------------------------------------------------------------------ Matrix user directory
async def user_directory_search(request: web.Request) -> web.Response:
    user = await _viewer(request)
    body = await read_json_object(request)
    term = body.get("search_term")
    if not isinstance(term, str):
        raise MatrixError(400, "M_MISSING_PARAM", "'search_term' is required")
    if len(term) > 1024:
        raise MatrixError(400, "M_BAD_JSON", "'search_term' is longer than 1024 characters")
    # Matrix lets the server cap the limit; ours is 100.
    limit = body_int(body, "limit", 10, minimum=1, maximum=2**53)
    reply = await call(
        _stub(request).SearchDirectory, pb.SearchDirectoryRequest(user_id=user, search_term=term, limit=min(limit, 100))
    )
    return json_response(
        {
            "results": [{"user_id": u.user_id, "display_name": u.display_name} for u in reply.results],
            "limited": reply.limited,
        }
    )


# ------------------------------------------------------------------------------ OpenAPI
async def openapi(request: web.Request) -> web.Response:
    deps = request.app[DEPS_KEY]
    document = deps.openapi_document
    if document is None:
        document = deps.openapi_document = orjson.dumps(orjson.loads(OPENAPI_PATH.read_bytes()))
    return web.Response(body=document, content_type="application/json")


def routes(deps: GatewayDeps) -> list[web.RouteDef]:
    c = f"{PREFIX}/contacts"
    f = f"{PREFIX}/friends"
    return [
        web.get(f"{PREFIX}/openapi.json", openapi),
        web.post(f"{c}/upload", upload),
        web.post(f"{c}/sync", sync),
        web.get(f"{c}/hash_details", hash_details),
        web.post(f"{c}/lookup", lookup),
        web.get(f"{c}/matches", matches),
        web.get(f"{c}/discoverability", get_discoverability),
        web.put(f"{c}/discoverability", put_discoverability),
        web.get(f"{PREFIX}/suggestions", suggestions),
        web.delete(f"{PREFIX}/suggestions/{{user_id}}", dismiss_suggestion),
        web.get(f"{f}/requests", list_requests),
        web.post(f"{f}/requests", send_request),
        web.post(f"{f}/requests/{{user_id}}/accept", accept_request),
        web.post(f"{f}/requests/{{user_id}}/decline", decline_request),
        web.get(f, friends),
        web.delete(f"{f}/{{user_id}}", remove_friend),
        web.get(f"{f}/{{user_id}}/mutual", mutual_friends),
        web.get(f"{PREFIX}/relationship/{{user_id}}", relationship),
        web.get(f"{PREFIX}/blocks", blocks),
        web.put(f"{PREFIX}/blocks/{{user_id}}", block),
        web.delete(f"{PREFIX}/blocks/{{user_id}}", unblock),
        web.post("/_matrix/client/v3/user_directory/search", user_directory_search),
    ]
