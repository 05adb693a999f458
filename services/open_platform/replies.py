"""Users' replies in subscription rooms, and presses of an app card's buttons, reach the app.

open_platform follows messaging's room events (a durable consumer): a message a subscriber sends in
their room with the app's bot becomes a `message.received` webhook event; a `cn.laiwang.card_action`
naming one of the app's own cards and one of its buttons becomes `card.action`. Idempotent: the
webhook id is derived from the Matrix event id, so a redelivered room event is the same webhook
(receivers drop the duplicate)."""

from __future__ import annotations

import hashlib
import json

from nats.aio.msg import Msg

from laiwang.events.v1 import messaging_events_pb2 as mpb
from plumbing import streams
from plumbing.jetstream import ConsumerSpec, EventRouter, Handler
from services.open_platform.cards import APP_CARD, CARD_ACTION
from services.open_platform.clients import MessagingRooms
from services.open_platform.core import bot_user_id
from services.open_platform.subscription_store import MongoSubscriptionStore

REPLIES = ConsumerSpec(
    stream=streams.MESSAGING,
    durable="open-platform-replies",
    filter_subject="laiwang.messaging.room_event",
    batch=256,
)


async def _card_action(
    event: mpb.RoomEventPersisted, store: MongoSubscriptionStore, rooms: MessagingRooms, server_name: str
) -> None:
    """A press of a card's button: the app hears of it if the card is really its own and has that button."""
    content = json.loads(event.content_json or b"{}")
    client_id, card_id, action = content.get("app_id"), content.get("card_event_id"), content.get("action_id")
    if not all(isinstance(v, str) and 0 < len(v) <= 255 for v in (client_id, card_id, action)):
        return
    bot = bot_user_id(client_id, server_name)
    card = await rooms.get_event(event.room_id, card_id, bot)
    if card is None or card.get("type") != APP_CARD or card.get("sender") != bot:
        return
    buttons = card.get("content", {}).get("card", {}).get("buttons", [])
    if action not in {b.get("id") for b in buttons if isinstance(b, dict)}:
        return
    data = {"user_id": event.sender, "room_id": event.room_id, "card_event_id": card_id, "action_id": action}
    webhook_id = "msg_" + hashlib.sha256(event.event_id.encode()).hexdigest()[:26]
    await store.add_webhook(webhook_id, client_id, event.sender, "card.action", data, event.origin_server_ts)


def replies_handler(store: MongoSubscriptionStore, rooms: MessagingRooms, server_name: str) -> Handler:
    async def handle(event: mpb.RoomEventPersisted, _: Msg) -> None:
        if event.type == CARD_ACTION and not event.sender.startswith("@app_"):
            await _card_action(event, store, rooms, server_name)
            return
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

    return EventRouter(REPLIES.durable).on(mpb.RoomEventPersisted, handle)
