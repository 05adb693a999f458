"""AA money rules: splitting a bill, the append-only ledger, balances and "who owes whom".

Pure functions, no I/O. Money is integer fen (CNY): a float cannot hold 0.1 exactly, so none is
accepted anywhere, not even for weights (they are integers and shares come from integer division).
Every result is deterministic: participants are taken in one canonical order (sorted by id), so the
same bill splits the same way whatever order a client listed its participants in.

Wrong types get M_BAD_JSON, wrong values M_INVALID_PARAM (both 400; a total over the cap is a value
the client may fix, so it is 400 too, not 413).
"""

from __future__ import annotations

import enum
import heapq
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from plumbing.domain_errors import bad_json, invalid, not_found

DEFAULT_CAP_FEN = 5_000_000  # 50,000.00 yuan: the default most one bill may be; the app passes its configured cap
MAX_PARTICIPANTS = 200
MAX_WEIGHT = 10_000


@dataclass(frozen=True)
class Share:
    participant: str
    amount_fen: int


class SplitMode(enum.StrEnum):
    EQUAL = "equal"
    FIXED = "fixed"
    WEIGHTS = "weights"


def parse_mode(value: object) -> SplitMode:
    if not isinstance(value, str):
        raise bad_json("mode must be a string")
    try:
        return SplitMode(value)
    except ValueError:
        raise invalid(f"mode must be one of {', '.join(SplitMode)}") from None


# -- validation --------------------------------------------------------------------------------------


def _integer(value: object, field: str) -> int:
    # `type(...) is int`: bool is an int subclass (True would be 1 fen) and a float is not exact money.
    if type(value) is not int:
        raise bad_json(f"{field} must be an integer")
    return value


def _total(value: object, cap_fen: int) -> int:
    total = _integer(value, "total_fen")
    if total <= 0:
        raise invalid("total_fen must be positive")
    if total > cap_fen:
        raise invalid(f"total_fen must be at most {cap_fen}")
    return total


def _participants(values: Sequence[object]) -> list[str]:
    if isinstance(values, str | bytes) or not isinstance(values, Sequence):
        raise bad_json("participants must be a list")
    if not values:
        raise invalid("a bill needs at least one participant")
    if len(values) > MAX_PARTICIPANTS:
        raise invalid(f"a bill has at most {MAX_PARTICIPANTS} participants")
    seen: set[str] = set()
    for value in values:
        if not isinstance(value, str):
            raise bad_json("every participant must be a string")
        if not value:
            raise invalid("a participant must not be empty")
        if value in seen:
            raise invalid(f"participant {value} is listed twice")
        seen.add(value)
    return [str(v) for v in values]


def _pairs(pairs: Sequence[tuple[object, object]], field: str) -> list[tuple[str, int]]:
    if isinstance(pairs, str | bytes) or not isinstance(pairs, Sequence):
        raise bad_json(f"{field} must be a list")
    for pair in pairs:
        if not isinstance(pair, tuple | list) or len(pair) != 2:
            raise bad_json(f"every entry of {field} is a participant and a number")
    people = _participants([p[0] for p in pairs])
    return [(person, _integer(p[1], field)) for person, p in zip(people, pairs, strict=True)]


# -- splits --------------------------------------------------------------------------------------------


def split_equal(
    total_fen: object, participants: Sequence[object], *, cap_fen: int = DEFAULT_CAP_FEN
) -> tuple[Share, ...]:
    """Equal shares; the remainder fen go one each to the first participants in sorted order."""
    total = _total(total_fen, cap_fen)
    people = sorted(_participants(participants))
    base, extra = divmod(total, len(people))
    return tuple(Share(p, base + (1 if i < extra else 0)) for i, p in enumerate(people))


def split_fixed(
    total_fen: object, amounts: Sequence[tuple[object, object]], *, cap_fen: int = DEFAULT_CAP_FEN
) -> tuple[Share, ...]:
    """Amounts given per person (0 allowed, e.g. for someone who ate nothing); they must add up exactly."""
    total = _total(total_fen, cap_fen)
    pairs = _pairs(amounts, "amounts")
    if any(amount < 0 for _, amount in pairs):
        raise invalid("an amount must not be negative")
    if sum(amount for _, amount in pairs) != total:
        raise invalid("the amounts must add up to total_fen")
    return tuple(Share(p, a) for p, a in sorted(pairs))


def split_weighted(
    total_fen: object, weights: Sequence[tuple[object, object]], *, cap_fen: int = DEFAULT_CAP_FEN
) -> tuple[Share, ...]:
    """Shares proportional to positive integer weights, by the largest-remainder method.

    Everyone gets floor(total * w / W); the fen left over go one each to the largest remainders,
    ties to the earlier participant in sorted order. So every share is within one fen of its exact
    proportion, and equal weights give exactly the equal split.
    """
    total = _total(total_fen, cap_fen)
    pairs = sorted(_pairs(weights, "weights"))
    if any(not 0 < weight <= MAX_WEIGHT for _, weight in pairs):
        raise invalid(f"a weight must be between 1 and {MAX_WEIGHT}")
    weight_sum = sum(weight for _, weight in pairs)
    quotas = [divmod(total * weight, weight_sum) for _, weight in pairs]
    left_over = total - sum(q for q, _ in quotas)
    by_remainder = sorted(range(len(pairs)), key=lambda i: (-quotas[i][1], i))
    lucky = set(by_remainder[:left_over])
    return tuple(Share(p, quotas[i][0] + (1 if i in lucky else 0)) for i, (p, _) in enumerate(pairs))


# -- the ledger ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BillCreated:
    bill_id: str
    group_id: str
    creditor: str  # paid the merchant; owed every other participant's share
    total_fen: int
    shares: tuple[Share, ...]


@dataclass(frozen=True)
class PaymentReceived:
    bill_id: str
    participant: str
    amount_fen: int
    payment_id: str  # the partner's order: a duplicate notification carries the same one


@dataclass(frozen=True)
class ShareDeclined:
    bill_id: str
    participant: str


@dataclass(frozen=True)
class BillCancelled:
    bill_id: str


@dataclass(frozen=True)
class Refunded:
    bill_id: str
    participant: str
    amount_fen: int
    refund_id: str


Entry = BillCreated | PaymentReceived | ShareDeclined | BillCancelled | Refunded


class LineStatus(enum.StrEnum):
    OWED = "owed"
    PAID = "paid"
    DECLINED = "declined"
    CANCELLED = "cancelled"  # the bill was cancelled; anything paid is refunded separately


@dataclass(frozen=True)
class Line:
    participant: str
    share_fen: int
    paid_fen: int
    refunded_fen: int
    status: LineStatus


class _Bill:
    def __init__(self, created: BillCreated) -> None:
        self.created = created
        self.shares = {s.participant: s.amount_fen for s in created.shares}
        self.payments: dict[str, PaymentReceived] = {}  # payment id -> entry
        self.paid: dict[str, int] = {}
        self.declined: set[str] = set()
        self.refunds: dict[str, Refunded] = {}
        self.refunded: dict[str, int] = {}
        self.cancelled = False

    def settled_at_creation(self, person: str) -> bool:
        # The creditor paid the merchant, and a zero share owes nothing.
        return person == self.created.creditor or self.shares[person] == 0


class Ledger:
    """One group's (room's) entries, in order. `append` checks an entry against what came before;
    an exact repeat (same id, same content) is accepted and changes nothing, so replays are harmless."""

    def __init__(self, group_id: str, entries: Iterable[Entry] = ()) -> None:
        self.group_id = group_id
        self._entries: list[Entry] = []
        self._bills: dict[str, _Bill] = {}
        for entry in entries:
            self.append(entry)

    @property
    def entries(self) -> tuple[Entry, ...]:
        return tuple(self._entries)

    def _bill(self, bill_id: str) -> _Bill:
        bill = self._bills.get(bill_id)
        if bill is None:
            raise not_found(f"no bill {bill_id}")
        return bill

    def append(self, entry: Entry) -> bool:
        """Record `entry`; False when it is a repeat of one already recorded. Refusals raise DomainError."""
        recorded = self._check(entry)
        if recorded:
            self._entries.append(entry)
        return recorded

    def _check(self, entry: Entry) -> bool:
        if isinstance(entry, BillCreated):
            return self._create(entry)
        bill = self._bill(entry.bill_id)
        if isinstance(entry, BillCancelled):
            if bill.cancelled:
                return False
            bill.cancelled = True
            return True
        if entry.participant not in bill.shares:
            raise invalid(f"{entry.participant} is not a participant of bill {entry.bill_id}")
        if isinstance(entry, PaymentReceived):
            return self._pay(bill, entry)
        if isinstance(entry, ShareDeclined):
            return self._decline(bill, entry)
        return self._refund(bill, entry)

    def _create(self, entry: BillCreated) -> bool:
        if entry.group_id != self.group_id:
            raise invalid(f"bill {entry.bill_id} belongs to another group")
        existing = self._bills.get(entry.bill_id)
        if existing is not None:
            if existing.created != entry:
                raise invalid(f"bill {entry.bill_id} exists with other content")
            return False
        total = _integer(entry.total_fen, "total_fen")
        _participants([s.participant for s in entry.shares])  # no duplicate or empty participant
        amounts = [_integer(s.amount_fen, "amount_fen") for s in entry.shares]
        if total <= 0 or any(a < 0 for a in amounts) or sum(amounts) != total:
            raise invalid("the shares must be non-negative and add up to a positive total")
        if not entry.creditor:
            raise invalid("a bill needs a creditor")
        self._bills[entry.bill_id] = _Bill(entry)
        return True

    def _pay(self, bill: _Bill, entry: PaymentReceived) -> bool:
        earlier = bill.payments.get(entry.payment_id)
        if earlier is not None:
            if earlier != entry:
                raise invalid(f"payment {entry.payment_id} was recorded with other content")
            return False
        if bill.cancelled:
            raise invalid(f"bill {entry.bill_id} is cancelled")
        person = entry.participant
        if bill.settled_at_creation(person) or person in bill.declined or person in bill.paid:
            raise invalid(f"{person} owes nothing on bill {entry.bill_id}")
        if _integer(entry.amount_fen, "amount_fen") != bill.shares[person]:
            raise invalid(f"a payment must be exactly {person}'s share of {bill.shares[person]} fen")
        bill.payments[entry.payment_id] = entry
        bill.paid[person] = entry.amount_fen
        return True

    def _decline(self, bill: _Bill, entry: ShareDeclined) -> bool:
        person = entry.participant
        if person in bill.declined:
            return False
        if bill.cancelled or bill.settled_at_creation(person) or person in bill.paid:
            raise invalid(f"{person} has no open share on bill {entry.bill_id} to decline")
        bill.declined.add(person)
        return True

    def _refund(self, bill: _Bill, entry: Refunded) -> bool:
        earlier = bill.refunds.get(entry.refund_id)
        if earlier is not None:
            if earlier != entry:
                raise invalid(f"refund {entry.refund_id} was recorded with other content")
            return False
        if not bill.cancelled:
            raise invalid(f"bill {entry.bill_id} is not cancelled")
        amount = _integer(entry.amount_fen, "amount_fen")
        person = entry.participant
        if amount <= 0 or amount > bill.paid.get(person, 0) - bill.refunded.get(person, 0):
            raise invalid(f"a refund must be positive and at most what {person} paid and was not refunded")
        bill.refunds[entry.refund_id] = entry
        bill.refunded[person] = bill.refunded.get(person, 0) + amount
        return True

    def lines(self, bill_id: str) -> tuple[Line, ...]:
        """Each participant's line of the bill's card."""
        bill = self._bill(bill_id)
        result = []
        for share in bill.created.shares:
            person = share.participant
            if bill.cancelled:
                status = LineStatus.CANCELLED
            elif person in bill.declined:
                status = LineStatus.DECLINED
            elif person in bill.paid or bill.settled_at_creation(person):
                status = LineStatus.PAID
            else:
                status = LineStatus.OWED
            result.append(
                Line(person, share.amount_fen, bill.paid.get(person, 0), bill.refunded.get(person, 0), status)
            )
        return tuple(result)

    def balances(self) -> dict[str, int]:
        """What each person is owed (positive) or owes (negative) across the group; the sum is 0.

        Every effect moves the same fen between a participant and the bill's creditor, which is why
        the sum cannot drift from 0.
        """
        balance: dict[str, int] = {}

        def move(debtor: str, creditor: str, fen: int) -> None:
            balance[debtor] = balance.get(debtor, 0) - fen
            balance[creditor] = balance.get(creditor, 0) + fen

        for bill in self._bills.values():
            creditor = bill.created.creditor
            balance.setdefault(creditor, 0)
            for person, share in bill.shares.items():
                balance.setdefault(person, 0)
                if person == creditor:
                    continue
                owes = share
                if person in bill.declined or bill.cancelled:
                    owes = 0
                owes -= bill.paid.get(person, 0) - bill.refunded.get(person, 0)
                move(person, creditor, owes)
        return balance


def balances(group_id: str, entries: Iterable[Entry]) -> dict[str, int]:
    return Ledger(group_id, entries).balances()


# -- who owes whom ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Transfer:
    debtor: str
    creditor: str
    amount_fen: int


def simplify(balances: Mapping[str, int]) -> tuple[Transfer, ...]:
    """At most n-1 transfers (n people with a non-zero balance) that settle every balance.

    The largest debtor pays the largest creditor as much as settles one of them; ties go to the
    smaller id, so the answer depends only on the balances. Each step settles at least one person
    and the last settles two, hence n-1.
    """
    if sum(balances.values()) != 0:
        raise ValueError("balances must sum to 0")
    debtors = [(fen, person) for person, fen in balances.items() if fen < 0]  # most negative first
    creditors = [(-fen, person) for person, fen in balances.items() if fen > 0]  # largest first
    heapq.heapify(debtors)
    heapq.heapify(creditors)
    transfers: list[Transfer] = []
    while debtors:
        debt, debtor = heapq.heappop(debtors)
        credit, creditor = heapq.heappop(creditors)
        amount = min(-debt, -credit)
        transfers.append(Transfer(debtor, creditor, amount))
        if -debt > amount:
            heapq.heappush(debtors, (debt + amount, debtor))
        if -credit > amount:
            heapq.heappush(creditors, (credit + amount, creditor))
    return tuple(transfers)
