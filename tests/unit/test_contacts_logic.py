"""Contacts' use-case layer (services.contacts.logic) over an in-memory repository."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from services.contacts import core
from services.contacts.core import BudgetPolicy, Discoverability, Keyring, Normaliser
from services.contacts.logic import ContactsLogic
from services.contacts.model import Settings
from tests.unit.contacts_fakes import FakeContactsStore
from tests.unit.refusals import refused

pytestmark = pytest.mark.unit

ALICE, BOB, CAROL = "@alice:x", "@bob:x", "@carol:x"
ALICE_NO, BOB_NO = "+8613800138001", "+8613800138002"
HANG_BOUND = 30.0  # catches a call that waits for the rows (it would wait forever), not a speed claim


def fresh(n: int, start: int = 0) -> list[str]:
    return [f"+86139{i:08d}" for i in range(start, start + n)]


@pytest.fixture
async def logic() -> ContactsLogic:
    settings = Settings(
        budget=BudgetPolicy(initial=10, refill_per_hour=0),
        pepper_rotate_seconds=3600,
        pepper_keep=2,
        address_budget=BudgetPolicy(initial=15, refill_per_hour=0),
    )
    logic = ContactsLogic(
        FakeContactsStore(),
        core.PhoneIndex(),
        Keyring(b"k" * 16),
        Normaliser("CN"),
        settings,
        stage=_no_stage,
        after_commit=lambda: None,
        clock=lambda: 1_000_000,
    )
    await logic.load()
    await logic.phone_verified(ALICE, ALICE_NO, 1)
    await logic.phone_verified(BOB, BOB_NO, 1)
    return logic


async def _no_stage(session: object, event: object) -> None:
    return None


async def test_no_verified_phone_no_matching(logic: ContactsLogic) -> None:
    with refused("M_FORBIDDEN", match="verified phone"):
        await logic.upload(CAROL, True, [ALICE_NO], [], "CN")
    pepper = logic.index.pepper
    with refused("M_FORBIDDEN"):
        await logic.lookup_hashes(CAROL, "sha256", pepper, [core.lookup_hash(ALICE_NO, pepper)], [], False)


async def test_the_budget_follows_the_number_to_a_new_account(logic: ContactsLogic) -> None:
    assert (await logic.upload(ALICE, True, fresh(8), [], "CN")).budget_remaining == 2
    await logic.phone_unbound(ALICE, ALICE_NO, 2)
    await logic.phone_verified(CAROL, ALICE_NO, 3)  # the same number on a fresh account
    with refused("M_LIMIT_EXCEEDED"):
        await logic.upload(CAROL, True, fresh(3, 100), [], "CN")


async def test_the_address_ceiling_refuses_as_a_whole_and_refunds(logic: ContactsLogic) -> None:
    await logic.upload(ALICE, False, fresh(10), [], "CN", client_address="10.0.0.1")  # address: 5 left
    with refused("M_LIMIT_EXCEEDED"):
        await logic.upload(BOB, False, fresh(6, 100), [], "CN", client_address="10.0.0.1")
    # Bob's own budget was not spent by the refused upload.
    assert (await logic.upload(BOB, False, fresh(5, 200), [], "CN", client_address="10.0.0.1")).budget_remaining == 5


async def test_hashed_lookup_after_plain_upload_is_free(logic: ContactsLogic) -> None:
    numbers = fresh(4)
    assert (await logic.upload(ALICE, True, numbers, [], "CN")).budget_remaining == 6
    pepper = logic.index.pepper
    reply = await logic.lookup_hashes(
        ALICE, "sha256", pepper, [core.lookup_hash(n, pepper) for n in numbers], [], False
    )
    assert (reply.added, reply.budget_remaining) == (4, 6)


async def test_a_stale_profile_never_overwrites_a_newer_one(logic: ContactsLogic) -> None:
    await logic.set_discoverability(BOB, Discoverability.EVERYONE)
    stale = await logic.store.get_profile(BOB)
    assert stale is not None
    await logic.set_discoverability(BOB, Discoverability.NOBODY)
    logic._apply_profile_doc(stale)  # what a refresh poll that read before the switch would apply
    assert logic.index.discoverability(BOB) is Discoverability.NOBODY
    assert BOB not in {m.user_id for m in (await logic.upload(ALICE, True, [BOB_NO], [], "CN")).matches}


async def test_an_upload_answers_before_its_rows_are_written_and_its_owner_reads_the_book(
    logic: ContactsLogic,
) -> None:
    """The rows of a big book cost seconds on a busy store; writing them all inside the caller's
    deadline made a 10,000-number upload 504. Here the store never finishes them until the test
    lets it: the upload still answers, and everything its owner does next reads the committed book."""
    store = logic.store
    assert isinstance(store, FakeContactsStore)
    await logic.set_discoverability(BOB, Discoverability.EVERYONE)
    logic.settings = dataclasses.replace(logic.settings, book_inline_seconds=0.0)
    store.rows_gate = asyncio.Event()
    book = [BOB_NO, *fresh(9)]

    first = await asyncio.wait_for(logic.upload(ALICE, True, book, [], "CN"), HANG_BOUND)
    assert (first.added, first.budget_remaining, [m.user_id for m in first.matches]) == (10, 0, [BOB])
    bob_key = logic.keyring.number_key(BOB_NO)
    assert (await store.load_book(ALICE)).pending_at_ms is not None
    assert ALICE not in {owner for owner, _, _ in await store.holders([bob_key])}  # its row is not written
    # The match may be asked at once, and is listed, though its row is not written yet.
    assert await asyncio.wait_for(logic.send_request(ALICE, BOB, "hi"), HANG_BOUND) == "pending"
    assert [s.user_id for s in await logic.list_matches(ALICE)] == [BOB]
    # The same book again is free, and a fresh number over budget is refused, without waiting for the rows.
    again = await asyncio.wait_for(logic.upload(ALICE, True, book, [], "CN"), HANG_BOUND)
    assert (again.added, again.removed) == (0, 0)
    with refused("M_LIMIT_EXCEEDED"):
        await asyncio.wait_for(logic.upload(ALICE, False, fresh(1, 500), [], "CN"), HANG_BOUND)

    store.rows_gate.set()
    await asyncio.wait_for(asyncio.gather(*logic._entry_writes), HANG_BOUND)
    assert (await store.load_book(ALICE)).pending_at_ms is None
    assert len([key for owner, key in store.entries if owner == ALICE]) == 10
    assert ALICE in {owner for owner, _, _ in await store.holders([bob_key])}
