"""gRPC API of the contacts service: proto <-> domain translation and error mapping, nothing else."""

from __future__ import annotations

import grpc

from laiwang.contacts.v1 import contacts_pb2 as pb
from laiwang.contacts.v1 import contacts_pb2_grpc
from plumbing.domain_errors import invalid
from plumbing.grpc_errors import maps_domain_errors
from services.contacts.core import Discoverability, Pair
from services.contacts.logic import ContactsLogic
from services.contacts.model import BookResult

Context = grpc.aio.ServicerContext

_TO_PROTO = {
    Discoverability.EVERYONE: pb.DISCOVERABILITY_EVERYONE,
    Discoverability.MUTUAL: pb.DISCOVERABILITY_MUTUAL,
    Discoverability.NOBODY: pb.DISCOVERABILITY_NOBODY,
}
_FROM_PROTO = {value: key for key, value in _TO_PROTO.items()}


def _replace_all(mode: int) -> bool:
    if mode == pb.UPLOAD_MODE_MERGE:
        return False
    if mode == pb.UPLOAD_MODE_REPLACE:
        return True
    raise invalid("mode must be UPLOAD_MODE_REPLACE or UPLOAD_MODE_MERGE")


def _book_reply(result: BookResult) -> dict[str, object]:
    return {
        "matches": [
            pb.Match(index=m.index, address=m.address, user_id=m.user_id, display_name=m.display_name)
            for m in result.matches
        ],
        "invalid": [
            pb.InvalidEntry(list=e.list, index=e.index, value=e.value, reason=e.reason) for e in result.invalid
        ],
        "added": result.added,
        "removed": result.removed,
        "budget_remaining": result.budget_remaining,
    }


def _request(pair: Pair, viewer: str) -> pb.FriendRequest:
    assert pair.request_from is not None
    return pb.FriendRequest(
        from_user_id=pair.request_from,
        to_user_id=pair.other(pair.request_from),
        message=pair.request_message,
        created_at_ms=pair.request_at_ms,
    )


class ContactsApi(contacts_pb2_grpc.ContactsServiceServicer):
    def __init__(self, logic: ContactsLogic) -> None:
        self._logic = logic

    def register(self, server: grpc.aio.Server) -> None:
        contacts_pb2_grpc.add_ContactsServiceServicer_to_server(self, server)

    # address book
    @maps_domain_errors
    async def GetHashDetails(self, request: pb.GetHashDetailsRequest, context: Context) -> pb.GetHashDetailsResponse:
        pepper, algorithms = self._logic.hash_details()
        return pb.GetHashDetailsResponse(lookup_pepper=pepper, algorithms=list(algorithms))

    @maps_domain_errors
    async def RotatePepper(self, request: pb.RotatePepperRequest, context: Context) -> pb.RotatePepperResponse:
        return pb.RotatePepperResponse(lookup_pepper=await self._logic.rotate_pepper())

    @maps_domain_errors
    async def UploadContacts(self, request: pb.UploadContactsRequest, context: Context) -> pb.UploadContactsResponse:
        result = await self._logic.upload(
            request.user_id,
            _replace_all(request.mode),
            request.add,
            request.remove,
            request.default_region,
            request.client_address,
        )
        return pb.UploadContactsResponse(**_book_reply(result))  # type: ignore[arg-type]

    @maps_domain_errors
    async def LookupHashes(self, request: pb.LookupHashesRequest, context: Context) -> pb.LookupHashesResponse:
        result = await self._logic.lookup_hashes(
            request.user_id,
            request.algorithm,
            request.pepper,
            request.addresses,
            request.remove,
            _replace_all(request.mode or pb.UPLOAD_MODE_MERGE),
            request.client_address,
        )
        return pb.LookupHashesResponse(**_book_reply(result))  # type: ignore[arg-type]

    @maps_domain_errors
    async def ListMatches(self, request: pb.ListMatchesRequest, context: Context) -> pb.ListMatchesResponse:
        users = await self._logic.list_matches(request.user_id)
        return pb.ListMatchesResponse(
            users=[pb.UserSummary(user_id=u.user_id, display_name=u.display_name) for u in users]
        )

    @maps_domain_errors
    async def GetDiscoverability(
        self, request: pb.GetDiscoverabilityRequest, context: Context
    ) -> pb.GetDiscoverabilityResponse:
        value = await self._logic.get_discoverability(request.user_id)
        return pb.GetDiscoverabilityResponse(discoverability=_TO_PROTO[value])

    @maps_domain_errors
    async def SetDiscoverability(
        self, request: pb.SetDiscoverabilityRequest, context: Context
    ) -> pb.SetDiscoverabilityResponse:
        wanted = _FROM_PROTO.get(request.discoverability)
        if wanted is None:
            raise invalid("discoverability must be EVERYONE, MUTUAL or NOBODY")
        value = await self._logic.set_discoverability(request.user_id, wanted)
        return pb.SetDiscoverabilityResponse(discoverability=_TO_PROTO[value])

    @maps_domain_errors
    async def ListSuggestions(self, request: pb.ListSuggestionsRequest, context: Context) -> pb.ListSuggestionsResponse:
        rows = await self._logic.list_suggestions(request.user_id)
        return pb.ListSuggestionsResponse(
            suggestions=[
                pb.Suggestion(user_id=s.user_id, display_name=s.display_name, reason="registered", created_at_ms=at)
                for s, at in rows
            ]
        )

    @maps_domain_errors
    async def DismissSuggestion(
        self, request: pb.DismissSuggestionRequest, context: Context
    ) -> pb.DismissSuggestionResponse:
        await self._logic.dismiss_suggestion(request.user_id, request.other_user_id)
        return pb.DismissSuggestionResponse()

    @maps_domain_errors
    async def SearchDirectory(self, request: pb.SearchDirectoryRequest, context: Context) -> pb.SearchDirectoryResponse:
        results, limited = await self._logic.search_directory(request.user_id, request.search_term, request.limit)
        return pb.SearchDirectoryResponse(
            results=[pb.UserSummary(user_id=u.user_id, display_name=u.display_name) for u in results], limited=limited
        )

    # friends
    @maps_domain_errors
    async def SendFriendRequest(
        self, request: pb.SendFriendRequestRequest, context: Context
    ) -> pb.SendFriendRequestResponse:
        state = await self._logic.send_request(request.user_id, request.other_user_id, request.message)
        return pb.SendFriendRequestResponse(state=state)

    @maps_domain_errors
    async def AcceptFriendRequest(
        self, request: pb.AcceptFriendRequestRequest, context: Context
    ) -> pb.AcceptFriendRequestResponse:
        await self._logic.accept_request(request.user_id, request.other_user_id)
        return pb.AcceptFriendRequestResponse()

    @maps_domain_errors
    async def DeclineFriendRequest(
        self, request: pb.DeclineFriendRequestRequest, context: Context
    ) -> pb.DeclineFriendRequestResponse:
        await self._logic.decline_request(request.user_id, request.other_user_id)
        return pb.DeclineFriendRequestResponse()

    @maps_domain_errors
    async def ListFriendRequests(
        self, request: pb.ListFriendRequestsRequest, context: Context
    ) -> pb.ListFriendRequestsResponse:
        incoming, outgoing = await self._logic.list_requests(request.user_id)
        index = self._logic.index
        reply = pb.ListFriendRequestsResponse()
        for pair in incoming:
            item = _request(pair, request.user_id)
            item.display_name = index.display_name(item.from_user_id)
            reply.incoming.append(item)
        for pair in outgoing:
            item = _request(pair, request.user_id)
            item.display_name = index.display_name(item.to_user_id)
            reply.outgoing.append(item)
        return reply

    @maps_domain_errors
    async def RemoveFriend(self, request: pb.RemoveFriendRequest, context: Context) -> pb.RemoveFriendResponse:
        await self._logic.remove_friend(request.user_id, request.other_user_id)
        return pb.RemoveFriendResponse()

    @maps_domain_errors
    async def ListFriends(self, request: pb.ListFriendsRequest, context: Context) -> pb.ListFriendsResponse:
        rows = await self._logic.list_friends(request.user_id, not request.without_mutual_counts)
        return pb.ListFriendsResponse(
            friends=[
                pb.Friend(user_id=s.user_id, display_name=s.display_name, since_ms=since, mutual_friends=mutual)
                for s, since, mutual in rows
            ]
        )

    @maps_domain_errors
    async def GetRelationship(self, request: pb.GetRelationshipRequest, context: Context) -> pb.GetRelationshipResponse:
        pair, mutual = await self._logic.relationship(request.user_id, request.other_user_id)
        me = request.user_id
        pending = "" if pair.request_from is None else ("outgoing" if pair.request_from == me else "incoming")
        return pb.GetRelationshipResponse(
            friends=pair.friends,
            blocking=pair.blocks(me),
            blocked_by=pair.blocks(pair.other(me)),
            pending_request=pending,
            mutual_friends=mutual,
            version=pair.version,
        )

    @maps_domain_errors
    async def AreFriends(self, request: pb.AreFriendsRequest, context: Context) -> pb.AreFriendsResponse:
        pair, _ = await self._logic.relationship(request.user_id, request.other_user_id)
        return pb.AreFriendsResponse(friends=pair.friends, blocked=pair.blocked)

    @maps_domain_errors
    async def ListMutualFriends(
        self, request: pb.ListMutualFriendsRequest, context: Context
    ) -> pb.ListMutualFriendsResponse:
        return pb.ListMutualFriendsResponse(
            user_ids=await self._logic.mutual_friends(request.user_id, request.other_user_id)
        )

    @maps_domain_errors
    async def BlockUser(self, request: pb.BlockUserRequest, context: Context) -> pb.BlockUserResponse:
        await self._logic.block(request.user_id, request.other_user_id)
        return pb.BlockUserResponse()

    @maps_domain_errors
    async def UnblockUser(self, request: pb.UnblockUserRequest, context: Context) -> pb.UnblockUserResponse:
        await self._logic.unblock(request.user_id, request.other_user_id)
        return pb.UnblockUserResponse()

    @maps_domain_errors
    async def ListBlocks(self, request: pb.ListBlocksRequest, context: Context) -> pb.ListBlocksResponse:
        return pb.ListBlocksResponse(user_ids=await self._logic.list_blocks(request.user_id))
