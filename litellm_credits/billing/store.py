"""The purchase store on the credits database: named queries and the ledger's functions.

:class:`DbPurchaseStore` is the real
:class:`~litellm_credits.billing.records.PurchaseStore`: it reads packages and
purchases with named queries and moves credits only through
:class:`~litellm_credits.ledger.Ledger` (``add_credits`` for a purchase,
``refund_purchase`` for a refund), whose SQL functions keep both exactly once.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from litellm_credits.billing.events import ChargeRefunded, CheckoutCompleted
from litellm_credits.billing.records import Package, Purchase
from litellm_credits.ledger import Ledger, TxResult
from litellm_credits.store.db import Database

__all__ = ["DbPurchaseStore"]


class DbPurchaseStore:
    """:class:`PurchaseStore` on the credits database and its ledger functions."""

    def __init__(self, db: Database, ledger: Ledger) -> None:
        self.db = db
        self.ledger = ledger

    async def package(self, package_id: int) -> Package | None:
        row = await self.db.fetchone("api_package", {"id": package_id})
        return None if row is None else Package.from_row(row)

    async def purchase(self, payment_intent_id: str) -> Purchase | None:
        row = await self.db.fetchone(
            "purchase_by_payment_intent", {"payment_intent_id": payment_intent_id}
        )
        if row is None:
            return None
        return Purchase(transaction_id=int(row["id"]), user_id=str(row["user_id"]),
                        credits=row["amount"])

    async def refunded_usd(self, payment_intent_id: str) -> Decimal:
        row = await self.db.fetchone(
            "api_refunded_usd", {"payment_intent_id": payment_intent_id}
        )
        return Decimal(0) if row is None else Decimal(row["refunded_usd"])

    async def credit_purchase(
        self, event: CheckoutCompleted, package: Package, credits: Decimal,
        charge_id: str | None, notes: dict[str, Any],
    ) -> TxResult:
        return await self.ledger.add_credits(
            event.user_id,
            credits,
            type="purchase",
            payment_id=event.payment_intent_id,
            package_id=package.id,
            amount_usd=Decimal(event.amount_total_cents).scaleb(-2),
            stripe_event_id=event.event_id,
            charge_id=charge_id,
            description=f"Stripe purchase: {package.name}"[:1000],
            created_by="stripe",
            metadata=notes,
        )

    async def refund(
        self, event: ChargeRefunded, target: Decimal, amount_usd: Decimal | None
    ) -> tuple[TxResult, Decimal]:
        assert event.payment_intent_id is not None
        return await self.ledger.refund_purchase(
            event.payment_intent_id,
            target,
            charge_id=event.charge_id,
            stripe_event_id=event.event_id,
            amount_usd=amount_usd,
        )
