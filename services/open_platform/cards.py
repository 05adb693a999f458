"""Cards in chat: an app posts a `cn.laiwang.app_card` event into a room it shares with the user who
authorized it (cards:write), updates its own cards (m.replace; messaging refuses an edit of another
sender's event), and hears button presses (`cn.laiwang.card_action` events) as webhook events.

The card is validated against the published JSON Schema (schemas/app_card.schema.json, also in the
gateway's OpenAPI document) with the `jsonschema` library; a card that breaks it is 400 M_BAD_JSON
and nothing is sent. Every card carries a plain `body`, so any Matrix client shows something.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, Protocol

from jsonschema import Draft202012Validator

from plumbing.domain_errors import bad_json, forbidden, not_found
from services.open_platform.core import App, bot_user_id

APP_CARD = "cn.laiwang.app_card"
CARD_ACTION = "cn.laiwang.card_action"
SCHEMA_PATH = Path(__file__).parent / "schemas" / "app_card.schema.json"
CARD_SCHEMA: dict[str, Any] = json.loads(SCHEMA_PATH.read_text())
_VALIDATOR = Draft202012Validator(CARD_SCHEMA)
MAX_BODY = 4000


def check_card(card: Any) -> dict[str, Any]:
    errors = sorted(_VALIDATOR.iter_errors(card), key=lambda e: list(e.absolute_path))
    if errors:
        where = "/".join(str(p) for p in errors[0].absolute_path) or "card"
        raise bad_json(f"the card does not match the app card schema at {where}: {errors[0].message[:200]}")
    return card


def fallback_body(card: dict[str, Any]) -> str:
    """What a client that knows nothing of cards shows."""
    lines = [card["title"]]
    if card.get("description"):
        lines.append(card["description"])
    if card.get("link"):
        lines.append(card["link"])
    if card.get("buttons"):
        lines.append(" ".join(f"[{b['label']}]" for b in card["buttons"]))
    return "\n".join(lines)[:MAX_BODY]


class CardRooms(Protocol):
    async def joined_members(self, room_id: str, as_user: str) -> set[str]: ...
    async def send(self, room_id: str, sender: str, txn_id: str, event_type: str, content: dict) -> str: ...


class Cards:
    def __init__(self, apps: Callable[[str], Awaitable[App | None]], rooms: CardRooms, server_name: str) -> None:
        self._apps = apps
        self._rooms = rooms
        self._server_name = server_name

    async def _shared_room(self, client_id: str, user_id: str, room_id: str) -> str:
        app = await self._apps(client_id)
        if app is None or app.suspended:
            raise not_found("no such app")
        bot = bot_user_id(client_id, self._server_name)
        members = await self._rooms.joined_members(room_id, bot)
        if bot not in members or user_id not in members:
            raise forbidden("cards go only into rooms the user shares with the app")
        return bot

    async def post(self, client_id: str, user_id: str, room_id: str, card: Any, body: str, txn_id: str) -> str:
        card = check_card(card)
        bot = await self._shared_room(client_id, user_id, room_id)
        content = {"app_id": client_id, "card": card, "body": (body or fallback_body(card))[:MAX_BODY]}
        return await self._rooms.send(room_id, bot, txn_id, APP_CARD, content)

    async def update(
        self, client_id: str, user_id: str, room_id: str, event_id: str, card: Any, body: str, txn_id: str
    ) -> str:
        """An m.replace edit of one of the app's own cards (messaging refuses anyone else's event)."""
        card = check_card(card)
        bot = await self._shared_room(client_id, user_id, room_id)
        new = {"app_id": client_id, "card": card, "body": (body or fallback_body(card))[:MAX_BODY]}
        content = {
            **new,
            "body": f"* {new['body']}"[:MAX_BODY],
            "m.new_content": new,
            "m.relates_to": {"rel_type": "m.replace", "event_id": event_id},
        }
        return await self._rooms.send(room_id, bot, txn_id, APP_CARD, content)
