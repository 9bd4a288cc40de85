"""Buying credits: ``POST /credits/purchase`` and the Stripe webhook.

Both only parse and delegate to :class:`~litellm_credits.billing.purchases.Purchases`.
The webhook (``POST /credits/stripe/webhook``) has no LiteLLM auth: the
``Stripe-Signature`` header is the authentication, checked by the ``stripe``
library in :meth:`~litellm_credits.billing.stripe.StripeGateway.parse_event`.
A bad, missing or stale signature is 400 and nothing is written.
"""

from __future__ import annotations

from typing import Any

from fastapi import Request

from litellm_credits.api.auth import Auth, UserIdQuery, subject
from litellm_credits.api.bodies import MAX_WEBHOOK_BYTES, PayloadTooLarge, PurchaseBody
from litellm_credits.api.route import new_router
from litellm_credits.api.services import current
from litellm_credits.billing.events import ChargeRefunded, CheckoutCompleted
from litellm_credits.billing.records import WebhookOutcome

__all__ = ["router"]

router = new_router()


@router.post("/purchase", summary="Start a Stripe Checkout for a package")
async def post_purchase(
    body: PurchaseBody, auth: Auth, user_id: UserIdQuery = None
) -> dict[str, Any]:
    services = await current()
    who = subject(auth, user_id, write=True)
    checkout = await services.purchases.start_checkout(who, body.package_id, body.nonce)
    return checkout.to_dict()


@router.post(
    "/stripe/webhook",
    summary="Stripe webhook (authenticated by the Stripe-Signature header, not a key)",
)
async def stripe_webhook(request: Request) -> dict[str, Any]:
    services = await current()
    gateway = services.gateway
    payload = await request.body()
    if len(payload) > MAX_WEBHOOK_BYTES:
        raise PayloadTooLarge(f"webhook body is over {MAX_WEBHOOK_BYTES} bytes")
    event = gateway.parse_event(payload, request.headers.get("stripe-signature"))
    if isinstance(event, CheckoutCompleted):
        kind, outcome = event.event_type, await services.purchases.on_checkout(event)
    elif isinstance(event, ChargeRefunded):
        kind, outcome = "charge.refunded", await services.purchases.on_refund(event)
    else:
        kind, outcome = event.type, WebhookOutcome("ignored", reason=event.reason)
    return {"received": True, "event_id": event.event_id, "type": kind, **outcome.to_dict()}
