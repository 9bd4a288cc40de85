"""Unit tests for litellm_credits.billing.purchases: the rules of crediting checkouts and
refunds, against an in-memory store and gateway. The same flows run against real
PostgreSQL and the Stripe stand-in in tests/e2e/test_stripe_flow.py."""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

from litellm_credits import errors
from litellm_credits.billing.events import ChargeRefunded, CheckoutCompleted
from litellm_credits.billing.purchases import (
    Purchases,
    checkout_idempotency_key,
    credits_for_payment,
)
from litellm_credits.billing.records import Package, Purchase, WebhookOutcome
from litellm_credits.billing.stripe import CheckoutSession
from litellm_credits.errors import PaymentError
from litellm_credits.ledger import TxResult

STARTER = Package(id=1, name="Starter", credits=Decimal("1000"), price_usd=Decimal("10.00"),
                  is_active=True)
RETIRED = Package(id=2, name="Old", credits=Decimal("5"), price_usd=Decimal("1"),
                  is_active=False)


@dataclass
class FakeStore:
    """Packages and purchases in dicts; credits and refunds recorded, balances kept."""

    packages: dict[int, Package] = field(default_factory=lambda: {1: STARTER, 2: RETIRED})
    purchases: dict[str, Purchase] = field(default_factory=dict)
    taken_back: dict[str, Decimal] = field(default_factory=dict)
    refunded: dict[str, Decimal] = field(default_factory=dict)
    balances: dict[str, Decimal] = field(default_factory=dict)
    credited: list[tuple[str, Decimal, str | None, dict[str, Any]]] = field(default_factory=list)
    next_tx: int = 100

    async def package(self, package_id: int) -> Package | None:
        return self.packages.get(package_id)

    async def purchase(self, payment_intent_id: str) -> Purchase | None:
        return self.purchases.get(payment_intent_id)

    async def refunded_usd(self, payment_intent_id: str) -> Decimal:
        return self.refunded.get(payment_intent_id, Decimal(0))

    async def credit_purchase(
        self, event: CheckoutCompleted, package: Package, credits: Decimal,
        charge_id: str | None, notes: dict[str, Any],
    ) -> TxResult:
        assert event.payment_intent_id is not None
        self.next_tx += 1
        balance = self.balances.get(event.user_id, Decimal(0)) + credits
        self.balances[event.user_id] = balance
        self.purchases[event.payment_intent_id] = Purchase(self.next_tx, event.user_id, credits)
        self.credited.append((event.user_id, credits, charge_id, notes))
        return TxResult(success=True, new_balance=balance, transaction_id=self.next_tx)

    async def refund(
        self, event: ChargeRefunded, target: Decimal, amount_usd: Decimal | None
    ) -> tuple[TxResult, Decimal]:
        intent = event.payment_intent_id
        assert intent is not None
        user = self.purchases[intent].user_id
        taken = max(Decimal(0), target - self.taken_back.get(intent, Decimal(0)))
        if taken <= 0:
            return TxResult(True, self.balances[user], None), Decimal(0)
        self.taken_back[intent] = target
        self.refunded[intent] = self.refunded.get(intent, Decimal(0)) + (amount_usd or 0)
        self.balances[user] -= taken
        self.next_tx += 1
        return TxResult(True, self.balances[user], self.next_tx), taken


@dataclass
class FakeGateway:
    sessions: list[dict[str, Any]] = field(default_factory=list)
    charge: str | None = "ch_1"
    fail_charge: bool = False

    async def create_checkout_session_async(self, **kwargs: Any) -> CheckoutSession:
        self.sessions.append(kwargs)
        return CheckoutSession(id=f"cs_{len(self.sessions)}", url="https://pay.example/x")

    async def fetch_charge_id_async(self, payment_intent_id: str) -> str | None:
        if self.fail_charge:
            raise PaymentError("stripe is down")
        return self.charge


def service(store: FakeStore | None = None, gateway: FakeGateway | None = None) -> Purchases:
    gw = gateway or FakeGateway()
    return Purchases(store=store or FakeStore(), gateway=lambda: gw,
                     success_url="https://app/ok", cancel_url="https://app/cancel")


def paid(**overrides: Any) -> CheckoutCompleted:
    values: dict[str, Any] = {
        "event_id": "evt_1", "session_id": "cs_1", "payment_intent_id": "pi_1",
        "charge_id": None, "user_id": "alice", "package_id": 1, "credits": Decimal("1000"),
        "amount_total_cents": 1000, "currency": "usd", "payment_status": "paid",
    }
    values.update(overrides)
    return CheckoutCompleted(**values)


def refund(refunded_cents: int, **overrides: Any) -> ChargeRefunded:
    values: dict[str, Any] = {
        "event_id": f"evt_r{refunded_cents}", "charge_id": "ch_1", "payment_intent_id": "pi_1",
        "amount_cents": 1000, "amount_refunded_cents": refunded_cents, "currency": "usd",
        "refund_ids": (),
    }
    values.update(overrides)
    return ChargeRefunded(**values)


# --- checkout -----------------------------------------------------------------------------


async def test_start_checkout_sells_our_package_at_our_price() -> None:
    gateway = FakeGateway()
    checkout = await service(gateway=gateway).start_checkout("alice", 1, "n1")
    (sent,) = gateway.sessions
    assert sent["price_usd"] == Decimal("10.00") and sent["credits"] == Decimal("1000")
    assert sent["idempotency_key"] == checkout_idempotency_key("alice", 1, "n1")
    assert checkout.to_dict() == {
        "checkout_url": "https://pay.example/x", "session_id": "cs_1", "user_id": "alice",
        "package_id": 1, "credits": "1000", "price_usd": "10.00", "currency": "usd",
        "nonce": "n1",
    }


async def test_start_checkout_without_nonce_makes_a_fresh_one() -> None:
    purchases = service()
    first = await purchases.start_checkout("alice", 1, None)
    second = await purchases.start_checkout("alice", 1, None)
    assert first.nonce != second.nonce


async def test_unknown_or_retired_package_is_refused_before_stripe_is_needed() -> None:
    def no_stripe() -> FakeGateway:
        raise AssertionError("Stripe was asked although the request is refused")

    purchases = Purchases(store=FakeStore(), gateway=no_stripe, success_url="https://a/ok",
                          cancel_url="https://a/no")
    with pytest.raises(errors.NotFound):
        await purchases.start_checkout("alice", 9, None)
    with pytest.raises(errors.Conflict):
        await purchases.start_checkout("alice", 2, None)


def test_idempotency_key_depends_on_user_package_and_nonce() -> None:
    key = checkout_idempotency_key("alice", 1, "n")
    assert key.startswith("litellm-credits-checkout-") and len(key) <= 255
    assert key == checkout_idempotency_key("alice", 1, "n")
    others = {checkout_idempotency_key(*args) for args in
              (("bob", 1, "n"), ("alice", 2, "n"), ("alice", 1, "m"))}
    assert key not in others and len(others) == 3


# --- crediting ---------------------------------------------------------------------------------


async def test_paid_checkout_is_credited_once() -> None:
    store = FakeStore()
    purchases = service(store)
    outcome = await purchases.on_checkout(paid())
    assert outcome == WebhookOutcome("credited", user_id="alice", credits=Decimal("1000"),
                                     transaction_id=101, balance=Decimal("1000"))
    assert outcome.to_dict() == {"status": "credited", "user_id": "alice", "credits": "1000",
                                 "transaction_id": 101, "balance": "1000"}
    assert store.credited[0][2] == "ch_1"  # the charge id, for matching refunds
    again = await purchases.on_checkout(paid(event_id="evt_2"))
    assert again.to_dict() == {"status": "duplicate", "transaction_id": 101}
    assert store.balances == {"alice": Decimal("1000")}


@pytest.mark.parametrize(
    ("event", "status", "reason"),
    [
        (paid(payment_status="no_payment_required"), "ignored", "nothing was paid"),
        (paid(payment_status="unpaid"), "pending", "payment not completed yet"),
        (paid(payment_intent_id=None), "ignored", "no payment intent (nothing was paid)"),
    ],
)
async def test_unpaid_checkouts_change_nothing(
    event: CheckoutCompleted, status: str, reason: str
) -> None:
    store = FakeStore()
    outcome = await service(store).on_checkout(event)
    assert outcome.to_dict() == {"status": status, "reason": reason}
    assert store.credited == []


async def test_charge_lookup_failure_still_credits() -> None:
    store = FakeStore()
    outcome = await service(store, FakeGateway(fail_charge=True)).on_checkout(paid())
    assert outcome.status == "credited"
    assert store.credited[0][2] is None


async def test_checkout_for_a_missing_package_is_an_error() -> None:
    store = FakeStore()
    with pytest.raises(PaymentError, match="does not exist"):
        await service(store).on_checkout(paid(package_id=77))
    assert store.credited == []


def test_credits_are_the_smaller_offer() -> None:
    credits, notes = credits_for_payment(STARTER, paid(credits=Decimal("2000")))
    assert credits == Decimal("1000")
    assert notes["metadata_credits"] == "2000" and notes["package_credits"] == "1000"


def test_underpayment_is_prorated_rounding_down() -> None:
    credits, notes = credits_for_payment(STARTER, paid(amount_total_cents=333))
    assert credits == Decimal("333.00000000")
    assert notes["prorated"] is True
    third = Package(id=3, name="t", credits=Decimal("1"), price_usd=Decimal("3"), is_active=True)
    assert credits_for_payment(third, paid(amount_total_cents=100))[0] == Decimal("0.33333333")


def test_other_currency_is_refused() -> None:
    with pytest.raises(PaymentError, match="EUR"):
        credits_for_payment(STARTER, paid(currency="eur"))


# --- refunds ----------------------------------------------------------------------------------


async def test_refunds_are_cumulative_and_replays_take_nothing() -> None:
    store = FakeStore()
    purchases = service(store)
    await purchases.on_checkout(paid())
    half = await purchases.on_refund(refund(500))
    assert half.to_dict() == {
        "status": "refunded", "user_id": "alice", "credits_taken_back": "500.00000000",
        "credits_taken_back_total": "500.00000000", "transaction_id": 102,
        "balance": "500.00000000",
    }
    replay = await purchases.on_refund(refund(500))
    assert replay.to_dict() == {"status": "duplicate",
                                "credits_taken_back_total": "500.00000000"}
    rest = await purchases.on_refund(refund(1000))
    assert rest.credits_taken_back == Decimal("500") and rest.balance == Decimal(0)
    assert store.refunded["pi_1"] == Decimal("10.00")  # each refund recorded its own share


async def test_refund_without_purchase_or_intent_is_ignored() -> None:
    purchases = service()
    assert (await purchases.on_refund(refund(100))).to_dict() == {
        "status": "ignored", "reason": "no purchase recorded for this payment"}
    assert (await purchases.on_refund(refund(100, payment_intent_id=None))).to_dict() == {
        "status": "ignored", "reason": "charge has no payment intent"}


async def test_refund_in_other_currency_is_an_error() -> None:
    store = FakeStore()
    purchases = service(store)
    await purchases.on_checkout(paid())
    with pytest.raises(PaymentError, match="EUR"):
        await purchases.on_refund(refund(100, currency="eur"))
    assert store.balances["alice"] == Decimal("1000")
