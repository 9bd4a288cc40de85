"""The typed records of a purchase, and the two ports the purchase service talks through.

Records: :class:`Package` (a credit package as sold), :class:`Purchase` (a
credited purchase), :class:`Checkout` (a started Checkout Session) and
:class:`WebhookOutcome` (what one Stripe event did), money as ``Decimal``.
Ports: :class:`PurchaseStore` (packages, purchases and the ledger movements)
and :class:`PaymentGateway` (the part of the Stripe gateway purchases use), so
:class:`~litellm_credits.billing.purchases.Purchases` is tested against
in-memory fakes; the real ones are
:class:`~litellm_credits.billing.store.DbPurchaseStore` and
:class:`~litellm_credits.billing.stripe.StripeGateway`.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Literal, Protocol

from litellm_credits.billing.amounts import CURRENCY
from litellm_credits.billing.events import ChargeRefunded, CheckoutCompleted
from litellm_credits.billing.stripe import CheckoutSession
from litellm_credits.ledger import TxResult
from litellm_credits.store.db import Row
from litellm_credits.values import money

__all__ = [
    "Checkout",
    "Package",
    "PaymentGateway",
    "Purchase",
    "PurchaseStore",
    "Status",
    "WebhookOutcome",
]


@dataclass(frozen=True, slots=True)
class Package:
    """A credit package as sold: what it gives and what it costs."""

    id: int
    name: str
    credits: Decimal
    price_usd: Decimal
    is_active: bool

    @classmethod
    def from_row(cls, row: Row) -> Package:
        return cls(
            id=int(row["id"]),
            name=str(row["name"]),
            credits=row["credits"],
            price_usd=row["price_usd"],
            is_active=bool(row["is_active"]),
        )


@dataclass(frozen=True, slots=True)
class Purchase:
    """A credited purchase, found by its PaymentIntent."""

    transaction_id: int
    user_id: str
    credits: Decimal


@dataclass(frozen=True, slots=True)
class Checkout:
    """A started Checkout Session for one package: send the user to ``url``."""

    url: str
    session_id: str
    user_id: str
    package: Package
    nonce: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "checkout_url": self.url,
            "session_id": self.session_id,
            "user_id": self.user_id,
            "package_id": self.package.id,
            "credits": money(self.package.credits),
            "price_usd": money(self.package.price_usd),
            "currency": CURRENCY,
            "nonce": self.nonce,
        }


Status = Literal["credited", "refunded", "duplicate", "pending", "ignored"]


@dataclass(frozen=True, slots=True)
class WebhookOutcome:
    """What one Stripe event did. Fields that do not apply stay ``None``."""

    status: Status
    reason: str | None = None
    user_id: str | None = None
    credits: Decimal | None = None
    credits_taken_back: Decimal | None = None
    credits_taken_back_total: Decimal | None = None
    transaction_id: int | None = None
    balance: Decimal | None = None

    def to_dict(self) -> dict[str, Any]:
        """The fields that apply, money as exact text."""
        out: dict[str, Any] = {"status": self.status}
        for name in ("reason", "user_id", "credits", "credits_taken_back",
                     "credits_taken_back_total", "transaction_id", "balance"):
            value = getattr(self, name)
            if value is not None:
                out[name] = money(value) if isinstance(value, Decimal) else value
        return out


# --- what the service needs from the outside ---------------------------------------------


class PurchaseStore(Protocol):
    """Packages, purchases and the two ledger movements of a purchase."""

    async def package(self, package_id: int) -> Package | None: ...

    async def purchase(self, payment_intent_id: str) -> Purchase | None: ...

    async def refunded_usd(self, payment_intent_id: str) -> Decimal: ...

    async def credit_purchase(
        self, event: CheckoutCompleted, package: Package, credits: Decimal,
        charge_id: str | None, notes: dict[str, Any],
    ) -> TxResult: ...

    async def refund(
        self, event: ChargeRefunded, target: Decimal, amount_usd: Decimal | None
    ) -> tuple[TxResult, Decimal]: ...


class PaymentGateway(Protocol):
    """The part of :class:`StripeGateway` purchases use."""

    async def create_checkout_session_async(
        self, *, user_id: str, package_id: int, package_name: str, credits: Decimal,
        price_usd: Decimal, success_url: str, cancel_url: str, idempotency_key: str,
    ) -> CheckoutSession: ...

    async def fetch_charge_id_async(self, payment_intent_id: str) -> str | None: ...
