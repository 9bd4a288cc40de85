"""Purchases: starting a checkout, crediting a paid one, taking back a refund.

The HTTP surface parses a request or a verified Stripe event and calls
:class:`Purchases`; every decision about money is made here:

* :meth:`Purchases.start_checkout` sells only active packages, at OUR price;
* :meth:`Purchases.on_checkout` credits a paid session exactly once per
  PaymentIntent (the ledger function refuses a second ``purchase`` with the
  same key), from OUR package row, never more than the session offered or the
  money covers (:func:`credits_for_payment`);
* :meth:`Purchases.on_refund` takes back the refunded share of the credits;
  ``charge.refunded`` is cumulative, so replays and out-of-order events take
  back nothing twice.

The database and Stripe are reached through two small protocols,
:class:`~litellm_credits.billing.records.PurchaseStore` and
:class:`~litellm_credits.billing.records.PaymentGateway`, so the rules are
tested against in-memory fakes; the records they exchange live there too.
:class:`~litellm_credits.billing.store.DbPurchaseStore` is the real store.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from litellm_credits import errors
from litellm_credits.billing.amounts import CURRENCY, refund_credits, to_cents
from litellm_credits.billing.events import ChargeRefunded, CheckoutCompleted
from litellm_credits.billing.records import (
    Checkout,
    Package,
    PaymentGateway,
    PurchaseStore,
    WebhookOutcome,
)
from litellm_credits.billing.stripe import StripeGateway
from litellm_credits.errors import PaymentError
from litellm_credits.settings import Settings
from litellm_credits.values import money

__all__ = [
    "CHARGE_LOOKUP_SECONDS",
    "Purchases",
    "StripeNotConfigured",
    "checkout_idempotency_key",
    "credits_for_payment",
    "gateway_from_settings",
]

log = logging.getLogger("litellm_credits.billing.purchases")

#: How long crediting waits for Stripe to name a payment's charge.
CHARGE_LOOKUP_SECONDS = 5.0


class StripeNotConfigured(errors.ConfigError):
    """Stripe keys are missing or wrong on this proxy: purchases are unavailable (503)."""

    http_status = 503
    code = "not_configured"


def gateway_from_settings(settings: Settings) -> StripeGateway:
    """The Stripe gateway the settings describe, or :class:`StripeNotConfigured` naming
    what to set."""
    missing = [
        name
        for name, value in (
            ("CREDITS_STRIPE_API_KEY", settings.stripe_api_key),
            ("CREDITS_STRIPE_WEBHOOK_SECRET", settings.stripe_webhook_secret),
        )
        if not value
    ]
    if missing:
        raise StripeNotConfigured(
            f"Stripe is not configured on this proxy: set {' and '.join(missing)} "
            "(and stripe.api_base in CREDITS_CONFIG or CREDITS_STRIPE_API_BASE for a "
            "stand-in)"
        )
    assert settings.stripe_api_key and settings.stripe_webhook_secret
    try:
        return StripeGateway(
            settings.stripe_api_key,
            settings.stripe_webhook_secret,
            api_base=settings.stripe_api_base,
        )
    except PaymentError as exc:
        raise StripeNotConfigured(f"Stripe is misconfigured: {exc.message}") from None


def checkout_idempotency_key(user_id: str, package_id: int, nonce: str) -> str:
    """The same user, package and nonce give the same key, so Stripe returns one session."""
    digest = hashlib.sha256(f"{user_id}\x00{package_id}\x00{nonce}".encode()).hexdigest()
    return f"litellm-credits-checkout-{digest}"


# --- the rules --------------------------------------------------------------------------


def credits_for_payment(
    package: Package, event: CheckoutCompleted
) -> tuple[Decimal, dict[str, Any]]:
    """Credits for a paid checkout: from OUR package row, checked against the money.

    The session's metadata says which package and how many credits were offered;
    the package row says what the package gives now. The smaller of the two is
    credited when the payment covers the package's price; a payment below the
    price gets the proportional share, rounded down. Never more than either.
    Also returns the notes stored with the transaction.
    """
    if event.currency != CURRENCY:
        raise PaymentError(
            f"checkout session {event.session_id} was paid in {event.currency.upper()}; "
            f"packages are sold in {CURRENCY.upper()}"
        )
    expected = to_cents(package.price_usd)
    offered: Decimal = min(package.credits, event.credits)
    paid = event.amount_total_cents
    notes: dict[str, Any] = {
        "checkout_session_id": event.session_id,
        "event_type": event.event_type,
        "paid_cents": paid,
        "price_cents": expected,
    }
    if event.credits != package.credits:
        notes["metadata_credits"] = money(event.credits)
        notes["package_credits"] = money(package.credits)
        log.warning(
            "checkout %s: session offered %s credits but package %s now gives %s; "
            "crediting the smaller", event.session_id, event.credits, package.id,
            package.credits,
        )
    if paid >= expected:
        return offered, notes
    # Exact integer arithmetic on hundred-millionths, rounded down.
    share = Decimal((int(offered.scaleb(8)) * paid) // expected).scaleb(-8)
    notes["prorated"] = True
    log.warning(
        "checkout %s: paid %d cents for package %s priced %d cents; crediting %s of %s",
        event.session_id, paid, package.id, expected, share, offered,
    )
    return share, notes


@dataclass(slots=True)
class Purchases:
    """Checkouts, credits and refunds for one store and one gateway."""

    store: PurchaseStore
    #: Returns the gateway; called only once Stripe is needed, so a request that is
    #: refused anyway (an unknown package) says so even where Stripe is not configured.
    gateway: Callable[[], PaymentGateway]
    success_url: str
    cancel_url: str
    charge_lookup_seconds: float = field(default=CHARGE_LOOKUP_SECONDS)

    async def start_checkout(self, user_id: str, package_id: int, nonce: str | None) -> Checkout:
        """A Checkout Session for an active package; ``nonce`` makes retries idempotent."""
        package = await self.store.package(package_id)
        if package is None:
            raise errors.NotFound(
                f"there is no credit package {package_id}; see GET /credits/packages"
            )
        if not package.is_active:
            raise errors.Conflict(
                f"credit package {package_id} is no longer on sale; see GET /credits/packages"
            )
        nonce = nonce or secrets.token_urlsafe(16)
        session = await self.gateway().create_checkout_session_async(
            user_id=user_id,
            package_id=package.id,
            package_name=package.name,
            credits=package.credits,
            price_usd=package.price_usd,
            success_url=self.success_url,
            cancel_url=self.cancel_url,
            idempotency_key=checkout_idempotency_key(user_id, package.id, nonce),
        )
        return Checkout(url=session.url, session_id=session.id, user_id=user_id,
                        package=package, nonce=nonce)

    async def on_checkout(self, event: CheckoutCompleted) -> WebhookOutcome:
        """Credit a paid checkout once; anything else is acknowledged and changes nothing."""
        if event.payment_status == "no_payment_required":
            return WebhookOutcome("ignored", reason="nothing was paid")
        if not event.is_paid:
            return WebhookOutcome("pending", reason="payment not completed yet")
        if event.payment_intent_id is None:
            return WebhookOutcome("ignored", reason="no payment intent (nothing was paid)")
        done = await self.store.purchase(event.payment_intent_id)
        if done is not None:
            return WebhookOutcome("duplicate", transaction_id=done.transaction_id)
        package = await self.store.package(event.package_id)
        if package is None:
            raise PaymentError(
                f"checkout session {event.session_id} names credit package {event.package_id}, "
                "which does not exist in the credits database; nothing was credited"
            )
        credits, notes = credits_for_payment(package, event)
        if credits <= 0:
            return WebhookOutcome("ignored", reason="nothing was paid")
        charge_id = await self._charge_id(event.payment_intent_id)
        result = await self.store.credit_purchase(event, package, credits, charge_id, notes)
        log.info("credited %s credits to %r for payment %s (event %s)", credits, event.user_id,
                 event.payment_intent_id, event.event_id)
        return WebhookOutcome(
            "credited",
            user_id=event.user_id,
            credits=credits,
            transaction_id=result.transaction_id,
            balance=result.new_balance,
        )

    async def on_refund(self, event: ChargeRefunded) -> WebhookOutcome:
        """Take back the refunded share of a purchase's credits, cumulatively."""
        if event.payment_intent_id is None:
            return WebhookOutcome("ignored", reason="charge has no payment intent")
        purchase = await self.store.purchase(event.payment_intent_id)
        if purchase is None:
            log.warning("refund of %s: no purchase recorded for that payment; ignored",
                        event.payment_intent_id)
            return WebhookOutcome("ignored", reason="no purchase recorded for this payment")
        if event.currency != CURRENCY:
            raise PaymentError(
                f"refund of {event.payment_intent_id} is in {event.currency.upper()}"
            )
        target = refund_credits(purchase.credits, event.amount_cents, event.amount_refunded_cents)
        refunded_usd = Decimal(event.amount_refunded_cents).scaleb(-2)
        share_usd = refunded_usd - await self.store.refunded_usd(event.payment_intent_id)
        result, taken = await self.store.refund(
            event, target, share_usd if share_usd > 0 else None
        )
        if taken <= 0:
            return WebhookOutcome("duplicate", credits_taken_back_total=target)
        log.info("refund of %s: took back %s credits from %r", event.payment_intent_id, taken,
                 purchase.user_id)
        return WebhookOutcome(
            "refunded",
            user_id=purchase.user_id,
            credits_taken_back=taken,
            credits_taken_back_total=target,
            transaction_id=result.transaction_id,
            balance=result.new_balance,
        )

    async def _charge_id(self, payment_intent_id: str) -> str | None:
        # Best effort: a refund stores the charge id later if Stripe is slow now.
        try:
            return await asyncio.wait_for(
                self.gateway().fetch_charge_id_async(payment_intent_id), self.charge_lookup_seconds
            )
        except (PaymentError, TimeoutError) as exc:
            log.warning("charge id of %s not fetched (stored later by a refund): %s",
                        payment_intent_id, getattr(exc, "message", type(exc).__name__))
            return None
