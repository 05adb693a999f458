"""Contacts' use-case layer (services.contacts.logic) over an in-memory repository."""

from __future__ import annotations

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
