"""The app card schema: what it accepts and refuses (with the jsonschema library), the plain-text
fallback every client shows, and that the schema published in gateway/openapi.json is the one used."""

from __future__ import annotations

import json

import pytest

from gateway.routes.contacts import OPENAPI_PATH
from plumbing.domain_errors import DomainError
from services.open_platform.cards import CARD_SCHEMA, check_card, fallback_body

pytestmark = pytest.mark.unit

CARD = {
    "title": "Hotpot",
    "description": "30% off",
    "link": "https://partner.example/d",
    "buttons": [{"id": "buy", "label": "Buy", "url": "https://partner.example/buy"}],
}


def test_a_good_card_passes_and_has_a_readable_fallback() -> None:
    assert check_card(CARD) == CARD
    assert fallback_body(CARD) == "Hotpot\n30% off\nhttps://partner.example/d\n[Buy]"
    assert fallback_body({"title": "Only a title"}) == "Only a title"


@pytest.mark.parametrize(
    "card",
    [
        {},
        {"title": ""},
        {"title": "x" * 121},
        {**CARD, "buttons": [{"id": str(i), "label": "b"} for i in range(6)]},
        {**CARD, "buttons": [{"id": "has space", "label": "b"}]},
        {**CARD, "link": "http://plain.example/"},
        {**CARD, "image_url": "file:///etc/passwd"},
        {**CARD, "unknown": 1},
        ["not", "an", "object"],
    ],
)
def test_cards_that_break_the_schema_are_m_bad_json(card: object) -> None:
    with pytest.raises(DomainError) as refused:
        check_card(card)
    assert refused.value.errcode == "M_BAD_JSON"


def test_the_published_schema_is_the_one_that_validates() -> None:
    published = json.loads(OPENAPI_PATH.read_text())["components"]["schemas"]["AppCard"]
    assert published == {k: v for k, v in CARD_SCHEMA.items() if k != "$schema"}
