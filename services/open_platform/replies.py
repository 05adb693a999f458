"""Users' replies in subscription rooms reach the app: open_platform follows messaging's room events
(a durable consumer) and turns each message a subscriber sends in their room with the app's bot
into a `message.received` webhook event. Idempotent: the webhook id is derived from the Matrix
event id, so a redelivered room event is the same webhook (receivers drop the duplicate)."""

from __future__ import annotations

import hashlib
import json

from nats.aio.msg import Msg

from laiwang.events.v1 import messaging_events_pb2 as mpb
from plumbing import streams
from plumbing.jetstream import ConsumerSpec, Handler
from services.open_platform.subscription_store import MongoSubscriptionStore

REPLIES = ConsumerSpec(
    stream=streams.MESSAGING,
    durable="open-platform-replies",
    filter_subject="laiwang.messaging.room_event",
    batch=256,
)


def replies_handler(store: MongoSubscriptionStore) -> Handler:
    async def handle(message: Msg) -> None:
        event = mpb.RoomEventPersisted.FromString(message.data)
        if event.type != "m.room.message" or event.sender.startswith("@app_"):
            return
        sub = await store.active_by_room(event.room_id)
        if sub is None or sub.user_id != event.sender:
            return
        content = json.loads(event.content_json or b"{}")
        data = {
            "user_id": sub.user_id,
            "room_id": sub.room_id,
            "event_id": event.event_id,
            "content": {"msgtype": content.get("msgtype", ""), "body": str(content.get("body", ""))[:4000]},
        }
        webhook_id = "msg_" + hashlib.sha256(event.event_id.encode()).hexdigest()[:26]
        await store.add_webhook(
            webhook_id, sub.client_id, sub.user_id, "message.received", data, event.origin_server_ts
        )

    return handle
