"""AA money rules (apps/aa/money.py): splits, the ledger's balances and the simplified transfers."""

from __future__ import annotations

import contextlib
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.aa.money import (
    BillCancelled,
    BillCreated,
    Ledger,
    LineStatus,
    PaymentReceived,
    Refunded,
    Share,
    ShareDeclined,
    Transfer,
    simplify,
    split_equal,
    split_fixed,
    split_weighted,
)
from plumbing.domain_errors import DomainError
from tests.unit.refusals import refused

pytestmark = pytest.mark.unit

CAP = 5_000_000
people = st.lists(st.text(alphabet="abcdefgh", min_size=1, max_size=4), min_size=1, max_size=12, unique=True)
totals = st.integers(min_value=1, max_value=CAP)


def amounts(shares: tuple[Share, ...]) -> list[int]:
    return [s.amount_fen for s in shares]


# -- splits: examples ----------------------------------------------------------------------------------


def test_the_issues_dinner_100_yuan_among_three_friends() -> None:
    shares = split_equal(10_000, ["@carol:l", "@alice:l", "@bob:l"])
    assert shares == (Share("@alice:l", 3334), Share("@bob:l", 3333), Share("@carol:l", 3333))


def test_weights_use_the_largest_remainder() -> None:
    # 100 fen by 1:1:1 -> 33.33 each; by 2:1 -> 66.67 / 33.33, the larger remainder gets the fen
    assert amounts(split_weighted(100, [("a", 1), ("b", 1), ("c", 1)])) == [34, 33, 33]
    assert amounts(split_weighted(100, [("b", 1), ("a", 2)])) == [67, 33]
    assert amounts(split_weighted(10, [("a", 1), ("b", 3), ("c", 3)])) == [2, 4, 4]  # 1.43, 4.29, 4.29: a's .43 wins
    assert amounts(split_weighted(6, [("c", 2), ("a", 1), ("b", 2)])) == [1, 3, 2]  # 1.2, 2.4, 2.4: the tie goes to b


def test_fixed_amounts_are_kept() -> None:
    assert split_fixed(300, [("b", 100), ("a", 200)]) == (Share("a", 200), Share("b", 100))


@pytest.mark.parametrize(
    ("call", "errcode"),
    [
        (lambda: split_equal(0, ["a"]), "M_INVALID_PARAM"),
        (lambda: split_equal(-5, ["a"]), "M_INVALID_PARAM"),
        (lambda: split_equal(CAP + 1, ["a"]), "M_INVALID_PARAM"),
        (lambda: split_equal(100.0, ["a"]), "M_BAD_JSON"),
        (lambda: split_equal(True, ["a"]), "M_BAD_JSON"),
        (lambda: split_equal("100", ["a"]), "M_BAD_JSON"),
        (lambda: split_equal(100, []), "M_INVALID_PARAM"),
        (lambda: split_equal(100, ["a", "a"]), "M_INVALID_PARAM"),
        (lambda: split_equal(100, ["a", ""]), "M_INVALID_PARAM"),
        (lambda: split_equal(100, ["a", 7]), "M_BAD_JSON"),
        (lambda: split_equal(100, "ab"), "M_BAD_JSON"),
        (lambda: split_fixed(100, [("a", 50), ("b", 49)]), "M_INVALID_PARAM"),
        (lambda: split_fixed(100, [("a", 150), ("b", -50)]), "M_INVALID_PARAM"),
        (lambda: split_fixed(100, [("a", 50.0), ("b", 50)]), "M_BAD_JSON"),
        (lambda: split_fixed(100, [("a", 50), ("a", 50)]), "M_INVALID_PARAM"),
        (lambda: split_weighted(100, [("a", 0), ("b", 1)]), "M_INVALID_PARAM"),
        (lambda: split_weighted(100, [("a", -1), ("b", 1)]), "M_INVALID_PARAM"),
        (lambda: split_weighted(100, [("a", 1.5), ("b", 1)]), "M_BAD_JSON"),
        (lambda: split_weighted(100, [("a", True), ("b", 1)]), "M_BAD_JSON"),
    ],
)
def test_bad_input_is_refused_with_its_errcode(call, errcode) -> None:
    with refused(errcode) as caught:
        call()
    assert caught.value.kind.http_status == 400


def test_the_cap_is_configurable() -> None:
    assert amounts(split_equal(200, ["a"], cap_fen=200)) == [200]
    with refused("M_INVALID_PARAM"):
        split_equal(201, ["a"], cap_fen=200)


# -- splits: properties ---------------------------------------------------------------------------------


@given(totals, people)
def test_equal_splits_add_up_differ_by_at_most_one_fen_and_ignore_input_order(total, names) -> None:
    shares = split_equal(total, names)
    assert sum(amounts(shares)) == total
    assert min(amounts(shares)) >= 0
    assert max(amounts(shares)) - min(amounts(shares)) <= 1
    assert shares == split_equal(total, list(reversed(names))) == split_equal(total, names)


@given(totals, people, st.data())
def test_weighted_splits_add_up_and_stay_within_a_fen_of_the_exact_proportion(total, names, data) -> None:
    weights = [(n, data.draw(st.integers(min_value=1, max_value=10_000))) for n in names]
    shares = split_weighted(total, weights)
    weight_sum = sum(w for _, w in weights)
    assert sum(amounts(shares)) == total
    for share in shares:
        exact_times_sum = total * dict(weights)[share.participant]
        # floor <= share <= ceil of total * w / W, in integers
        assert exact_times_sum // weight_sum <= share.amount_fen <= -(-exact_times_sum // weight_sum)
    shuffled = list(weights)
    random.Random(total).shuffle(shuffled)
    assert split_weighted(total, shuffled) == shares


@given(totals, people, st.integers(min_value=1, max_value=10_000))
def test_equal_weights_give_the_equal_split(total, names, weight) -> None:
    assert split_weighted(total, [(n, weight) for n in names]) == split_equal(total, names)


@given(totals, people, st.data())
def test_fixed_splits_that_add_up_are_accepted_as_given(total, names, data) -> None:
    cuts = sorted(data.draw(st.lists(st.integers(0, total), min_size=len(names) - 1, max_size=len(names) - 1)))
    parts = [b - a for a, b in zip([0, *cuts], [*cuts, total], strict=True)]
    shares = split_fixed(total, list(zip(names, parts, strict=True)))
    assert sum(amounts(shares)) == total
    assert dict((s.participant, s.amount_fen) for s in shares) == dict(zip(names, parts, strict=True))


# -- the ledger -------------------------------------------------------------------------------------------


def dinner() -> Ledger:
    ledger = Ledger("!room")
    ledger.append(BillCreated("b1", "!room", "alice", 10_000, split_equal(10_000, ["alice", "bob", "carol"])))
    return ledger


def test_a_dinner_paid_by_alice_then_paid_back() -> None:
    ledger = dinner()
    assert ledger.balances() == {"alice": 6666, "bob": -3333, "carol": -3333}
    assert [line.status for line in ledger.lines("b1")] == [LineStatus.PAID, LineStatus.OWED, LineStatus.OWED]
    assert ledger.append(PaymentReceived("b1", "bob", 3333, "order-1"))
    assert not ledger.append(PaymentReceived("b1", "bob", 3333, "order-1"))  # a duplicate notification: once
    assert ledger.balances() == {"alice": 3333, "bob": 0, "carol": -3333}
    assert simplify(ledger.balances()) == (Transfer("carol", "alice", 3333),)
    assert ledger.append(ShareDeclined("b1", "carol"))
    assert ledger.balances() == {"alice": 0, "bob": 0, "carol": 0}
    assert len(ledger.entries) == 3


def test_a_cancelled_bill_owes_refunds_to_those_who_paid() -> None:
    ledger = dinner()
    ledger.append(PaymentReceived("b1", "bob", 3333, "order-1"))
    ledger.append(BillCancelled("b1"))
    assert ledger.balances() == {"alice": -3333, "bob": 3333, "carol": 0}
    with refused("M_INVALID_PARAM"):
        ledger.append(Refunded("b1", "bob", 3334, "r1"))  # more than paid
    ledger.append(Refunded("b1", "bob", 3333, "r1"))
    assert not ledger.append(Refunded("b1", "bob", 3333, "r1"))
    assert ledger.balances() == {"alice": 0, "bob": 0, "carol": 0}
    assert {line.status for line in ledger.lines("b1")} == {LineStatus.CANCELLED}


@pytest.mark.parametrize(
    "entry",
    [
        PaymentReceived("b1", "bob", 3334, "o"),  # not the share
        PaymentReceived("b1", "dave", 3333, "o"),  # not a participant
        PaymentReceived("b1", "alice", 3334, "o"),  # the creditor owes nothing
        Refunded("b1", "bob", 1, "r"),  # the bill is not cancelled
        BillCreated("b1", "!room", "alice", 10_000, (Share("alice", 10_000),)),  # the id is taken
        BillCreated("b2", "!other", "alice", 100, (Share("bob", 100),)),  # another group
        BillCreated("b2", "!room", "alice", 100, (Share("bob", 60), Share("carol", 50))),  # does not add up
        BillCreated("b2", "!room", "alice", 100, (Share("bob", 50), Share("bob", 50))),  # twice
    ],
)
def test_the_ledger_refuses_entries_that_break_its_rules(entry) -> None:
    ledger = dinner()
    with pytest.raises(DomainError):
        ledger.append(entry)
    assert len(ledger.entries) == 1


def test_an_unknown_bill_is_not_found() -> None:
    with refused("M_NOT_FOUND"):
        dinner().append(BillCancelled("nope"))


names_pool = ["ann", "ben", "cat", "dan", "eve"]


@st.composite
def histories(draw: st.DrawFn) -> list[object]:
    """Random actions; the ledger refuses those that break a rule, which is part of what is tested."""
    actions: list[object] = []
    for number in range(draw(st.integers(1, 6))):
        participants = draw(st.lists(st.sampled_from(names_pool), min_size=1, max_size=5, unique=True))
        total = draw(st.integers(1, 100_000))
        creditor = draw(st.sampled_from(names_pool))
        bill = f"b{number}"
        actions.append(BillCreated(bill, "!g", creditor, total, split_equal(total, participants)))
        for _ in range(draw(st.integers(0, 6))):
            who = draw(st.sampled_from(participants))
            kind = draw(st.sampled_from(["pay", "decline", "cancel", "refund"]))
            actions.append((kind, bill, who, draw(st.integers(1, 3))))
    return actions


@settings(max_examples=200)
@given(histories())
def test_balances_always_sum_to_zero_and_replaying_gives_the_same_ledger(actions) -> None:
    ledger = Ledger("!g")
    for action in actions:
        if isinstance(action, BillCreated):
            ledger.append(action)
            continue
        kind, bill, who, n = action  # type: ignore[misc]
        share = next(line.share_fen for line in ledger.lines(bill) if line.participant == who)
        entry = {
            "pay": PaymentReceived(bill, who, share, f"{bill}-{who}-{n}"),
            "decline": ShareDeclined(bill, who),
            "cancel": BillCancelled(bill),
            "refund": Refunded(bill, who, share, f"r-{bill}-{who}"),
        }[kind]
        with contextlib.suppress(DomainError):  # a refused action must change nothing: the sums below
            ledger.append(entry)
        assert sum(ledger.balances().values()) == 0
    assert Ledger("!g", ledger.entries).balances() == ledger.balances()
    assert sum(ledger.balances().values()) == 0


# -- who owes whom --------------------------------------------------------------------------------------


@st.composite
def zero_sum_balances(draw: st.DrawFn) -> dict[str, int]:
    names = draw(st.lists(st.text(alphabet="abcdef", min_size=1, max_size=3), min_size=1, max_size=15, unique=True))
    values = [draw(st.integers(-1_000_000, 1_000_000)) for _ in names[1:]]
    return dict(zip(names, [-sum(values), *values], strict=True))


@given(zero_sum_balances())
def test_simplifying_keeps_every_net_balance_in_at_most_n_minus_one_transfers(balances) -> None:
    transfers = simplify(balances)
    net = dict.fromkeys(balances, 0)
    for transfer in transfers:
        assert transfer.amount_fen > 0 and transfer.debtor != transfer.creditor
        net[transfer.debtor] -= transfer.amount_fen
        net[transfer.creditor] += transfer.amount_fen
    assert net == balances
    nonzero = sum(1 for v in balances.values() if v)
    assert len(transfers) <= max(nonzero - 1, 0)
    assert simplify(dict(reversed(list(balances.items())))) == transfers


def test_the_largest_debtor_pays_the_largest_creditor_first() -> None:
    assert simplify({"a": 50, "b": 30, "c": -60, "d": -20}) == (
        Transfer("c", "a", 50),
        Transfer("d", "b", 20),
        Transfer("c", "b", 10),
    )


def test_balances_that_do_not_sum_to_zero_are_a_bug() -> None:
    with pytest.raises(ValueError):
        simplify({"a": 1})
