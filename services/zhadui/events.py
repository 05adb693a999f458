"""Events the zhadui service consumes: its own (to fan joins and leaves out to friends' feeds and
keep discussion rooms in step) and contacts' friend-graph events (to follow the graph)."""

from __future__ import annotations

from nats.aio.msg import Msg

from laiwang.events.v1 import contacts_events_pb2 as contacts_events
from laiwang.events.v1 import zhadui_events_pb2 as zhadui_events
from plumbing import streams
from plumbing.jetstream import ConsumerSpec, Handler
from services.zhadui.core import PairState, ZhaduiCore

OWN_EVENTS = ConsumerSpec(stream=streams.ZHADUI, durable="zhadui-fanout", filter_subject="laiwang.zhadui.>")
FRIEND_GRAPH = ConsumerSpec(stream=streams.CONTACTS, durable="zhadui-friend-graph", filter_subject="laiwang.contacts.>")

_PAIR_EVENTS = {
    "laiwang.contacts.friendship_created": contacts_events.FriendshipCreated,
    "laiwang.contacts.friendship_removed": contacts_events.FriendshipRemoved,
    "laiwang.contacts.user_blocked": contacts_events.UserBlocked,
    "laiwang.contacts.user_unblocked": contacts_events.UserUnblocked,
}


def own_event_handler(core: ZhaduiCore) -> Handler:
    async def handle(msg: Msg) -> None:
        kind = msg.subject.rsplit(".", 1)[-1]
        if kind == "joined":
            joined = zhadui_events.ZhaduiJoined.FromString(msg.data)
            await core.on_joined(joined.zhadui_id, joined.user_id, joined.joined_at_ms)
        elif kind == "left":
            left = zhadui_events.ZhaduiLeft.FromString(msg.data)
            await core.on_left(left.zhadui_id, left.user_id, removed=bool(left.removed_by))
        elif kind == "archived":
            await core.on_archived(zhadui_events.ZhaduiArchived.FromString(msg.data).zhadui_id)
        # created / closed change nothing in feeds: the preview reads the status directly.

    return handle


def friend_graph_handler(core: ZhaduiCore) -> Handler:
    async def handle(msg: Msg) -> None:
        message_type = _PAIR_EVENTS.get(msg.subject)
        if message_type is None:
            return  # contacts publishes other events zhadui does not need
        event = message_type.FromString(msg.data)
        state = event.state
        await core.on_pair_changed(
            PairState(state.user_a, state.user_b, state.friends, state.a_blocks_b, state.b_blocks_a), event.version
        )

    return handle
