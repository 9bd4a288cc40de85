"""The Stripe gateway: checkout sessions out, verified webhook events in.

This module never touches the database. :class:`StripeGateway`

* asks Stripe for a hosted Checkout page for one credit package
  (:meth:`~StripeGateway.create_checkout_session_async`) and returns its
  ``id`` and ``url``;
* looks up a payment's charge (:meth:`~StripeGateway.fetch_charge_id_async`);
* verifies a webhook's ``Stripe-Signature`` (:mod:`litellm_credits.billing.signature`)
  and turns the event into a typed value (:meth:`~StripeGateway.parse_event`;
  the values and their rules are :mod:`litellm_credits.billing.events`).

The HTTP client under it is :mod:`litellm_credits.billing.stripe_http`. What
the money means is decided by :mod:`litellm_credits.billing.purchases`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import stripe

from litellm_credits.billing.amounts import CURRENCY, require_decimal, to_cents
from litellm_credits.billing.events import (
    MAX_BIGINT,
    WebhookEvent,
    decode_event,
    validate_credits,
    validate_user_id,
)
from litellm_credits.billing.signature import verify_signature
from litellm_credits.billing.stripe_http import make_client, validate_api_base, validate_url
from litellm_credits.errors import PaymentError

__all__ = [
    "MAX_IDEMPOTENCY_KEY_LENGTH",
    "CheckoutSession",
    "PaymentProviderError",
    "StripeGateway",
]

#: Stripe limits idempotency keys to 255 characters.
MAX_IDEMPOTENCY_KEY_LENGTH: Final = 255

_MAX_METADATA_VALUE: Final = 500  # Stripe's limit per metadata value


class PaymentProviderError(PaymentError):
    """Stripe could not be reached or refused a request we made (not the user's fault)."""

    http_status = 502
    code = "payment_provider_error"


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    """A freshly created Checkout Session: send the user to ``url``."""

    id: str
    url: str


class StripeGateway:
    """Talks to Stripe for one configuration (API key, webhook secret, API base).

    Each instance owns a :class:`stripe.StripeClient`; nothing is read from or
    written to the ``stripe`` module globals, so two gateways never interfere.
    ``api_base`` (e.g. ``"http://127.0.0.1:57001"``) points the client at a
    local stand-in such as :mod:`devtools.stripe_stub`; plain http is accepted
    for loopback hosts only. Call :meth:`aclose` (or :meth:`close`) when done.

    The async methods share one ``httpx.AsyncClient``: use a gateway from one
    event loop only.
    """

    def __init__(
        self,
        api_key: str,
        webhook_secret: str,
        api_base: str | None = None,
        tolerance_seconds: int = 300,
        *,
        max_network_retries: int = 2,
        timeout_seconds: float = 30.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not isinstance(api_key, str) or not api_key.strip():
            raise PaymentError("Stripe api_key is empty; set it to your sk_... secret key")
        if not isinstance(webhook_secret, str) or not webhook_secret.strip():
            raise PaymentError(
                "Stripe webhook_secret is empty; set it to the endpoint's whsec_... secret"
            )
        if (
            isinstance(tolerance_seconds, bool)
            or not isinstance(tolerance_seconds, int)
            or tolerance_seconds <= 0
        ):
            raise PaymentError(
                f"tolerance_seconds must be a positive integer, got {tolerance_seconds!r}"
            )
        if not math.isfinite(timeout_seconds) or timeout_seconds <= 0:
            raise PaymentError(f"timeout_seconds must be positive, got {timeout_seconds!r}")
        self._webhook_secret = webhook_secret
        self.tolerance_seconds = tolerance_seconds
        self._clock = clock
        self.api_base = None if api_base is None else validate_api_base(api_base)
        self._http, self._client = make_client(
            api_key,
            self.api_base,
            max_network_retries=max_network_retries,
            timeout_seconds=timeout_seconds,
        )

    def __repr__(self) -> str:  # never show the secrets
        return f"StripeGateway(api_base={self.api_base!r})"

    # -- lifecycle --

    def close(self) -> None:
        """Close the blocking HTTP client (the async one needs :meth:`aclose`)."""
        self._http.close()  # type: ignore[no-untyped-call]

    async def aclose(self) -> None:
        """Close both HTTP clients; call from the event loop that used the gateway."""
        await self._http.close_async()  # type: ignore[no-untyped-call]
        self._http.close()  # type: ignore[no-untyped-call]

    # -- checkout --

    def _checkout_params(
        self,
        *,
        user_id: str,
        package_id: int,
        package_name: str,
        credits: Decimal,
        price_usd: Decimal,
        success_url: str,
        cancel_url: str,
        idempotency_key: str,
    ) -> tuple[dict[str, Any], dict[str, Any]]:
        validate_user_id(user_id, "checkout")
        if isinstance(package_id, bool) or not isinstance(package_id, int):
            raise PaymentError(f"package_id must be an int, got {type(package_id).__name__}")
        if not 1 <= package_id <= MAX_BIGINT:
            raise PaymentError(f"package_id must be a positive integer, got {package_id}")
        if not isinstance(package_name, str) or not package_name.strip():
            raise PaymentError("package_name must be a non-empty string")
        credits = validate_credits(require_decimal(credits, "credits"), "checkout")
        credits_text = format(credits, "f")
        if len(credits_text) > _MAX_METADATA_VALUE:
            raise PaymentError("credits has too many digits to store in Stripe metadata")
        unit_amount = to_cents(price_usd)
        if (
            not isinstance(idempotency_key, str)
            or not idempotency_key
            or len(idempotency_key) > MAX_IDEMPOTENCY_KEY_LENGTH
        ):
            raise PaymentError(
                f"idempotency_key must be 1 to {MAX_IDEMPOTENCY_KEY_LENGTH} characters"
            )
        metadata = {
            "user_id": user_id,
            "package_id": str(package_id),
            "credits": credits_text,
        }
        params: dict[str, Any] = {
            "mode": "payment",
            "line_items": [
                {
                    "quantity": 1,
                    "price_data": {
                        "currency": CURRENCY,
                        "unit_amount": unit_amount,
                        "product_data": {"name": package_name},
                    },
                }
            ],
            "success_url": validate_url(success_url, "success_url"),
            "cancel_url": validate_url(cancel_url, "cancel_url"),
            "metadata": dict(metadata),
            "payment_intent_data": {"metadata": dict(metadata)},
        }
        return params, {"idempotency_key": idempotency_key}

    @staticmethod
    def _session_result(session: Any) -> CheckoutSession:
        session_id = getattr(session, "id", None)
        url = getattr(session, "url", None)
        if not isinstance(session_id, str) or not isinstance(url, str) or not url:
            raise PaymentProviderError("Stripe returned a checkout session without an id or url")
        return CheckoutSession(id=session_id, url=url)

    @staticmethod
    def _provider_error(action: str, exc: stripe.StripeError) -> PaymentProviderError:
        status = f" (HTTP {exc.http_status})" if exc.http_status else ""
        message = exc.user_message or type(exc).__name__
        return PaymentProviderError(
            f"Stripe {action} failed{status}: {message}",
            stripe_error=type(exc).__name__,
        )

    async def create_checkout_session_async(
        self,
        *,
        user_id: str,
        package_id: int,
        package_name: str,
        credits: Decimal,
        price_usd: Decimal,
        success_url: str,
        cancel_url: str,
        idempotency_key: str,
    ) -> CheckoutSession:
        """Create a one-off payment Checkout Session for a credit package.

        ``price_usd`` is in dollars (converted exactly to cents; a fraction of
        a cent raises :class:`PaymentError`). Packages are sold in USD only.
        ``user_id``, ``package_id`` and ``credits`` go into both the session's
        and the PaymentIntent's metadata. Reusing ``idempotency_key`` with the
        same arguments returns the same session (Stripe keeps keys ~24 h);
        reusing it with different arguments makes Stripe refuse the request.
        Stripe failures raise :class:`PaymentProviderError` (HTTP 502).
        """
        params, options = self._checkout_params(
            user_id=user_id,
            package_id=package_id,
            package_name=package_name,
            credits=credits,
            price_usd=price_usd,
            success_url=success_url,
            cancel_url=cancel_url,
            idempotency_key=idempotency_key,
        )
        try:
            session = await self._client.v1.checkout.sessions.create_async(
                params=params,  # type: ignore[arg-type]
                options=options,  # type: ignore[arg-type]
            )
        except stripe.StripeError as exc:
            raise self._provider_error("checkout session creation", exc) from exc
        return self._session_result(session)

    @staticmethod
    def _charge_of(payment_intent: Any) -> str | None:
        latest = getattr(payment_intent, "latest_charge", None)
        if latest is None or isinstance(latest, str):
            return latest
        charge_id = getattr(latest, "id", None)
        return charge_id if isinstance(charge_id, str) else None

    async def fetch_charge_id_async(self, payment_intent_id: str) -> str | None:
        """The PaymentIntent's latest charge id, or ``None`` if it has none yet.

        Optional: only needed to fill :attr:`CheckoutCompleted.charge_id`
        before the first ``charge.refunded`` arrives.
        """
        try:
            intent = await self._client.v1.payment_intents.retrieve_async(payment_intent_id)
        except stripe.StripeError as exc:
            raise self._provider_error("payment intent lookup", exc) from exc
        return self._charge_of(intent)

    # -- webhooks --

    def verify_signature(self, payload: bytes, signature_header: str | None) -> None:
        """Raise :class:`WebhookSignatureError` unless ``payload`` is signed with
        this gateway's webhook secret within ``tolerance_seconds`` of now
        (see :mod:`litellm_credits.billing.signature`)."""
        verify_signature(
            payload,
            signature_header,
            secret=self._webhook_secret,
            tolerance_seconds=self.tolerance_seconds,
            clock=self._clock,
        )

    def parse_event(self, payload: bytes, signature_header: str | None) -> WebhookEvent:
        """Verify a webhook and map it to a typed value.

        ``payload`` must be the raw request body, byte for byte (re-serialised
        JSON will not match the signature). A missing, malformed, wrong or stale
        signature raises :class:`WebhookSignatureError`; a verified payload that
        is not a well-formed event, or a checkout of ours with bad metadata,
        raises :class:`PaymentError`. Unknown event types give
        :class:`IgnoredEvent`.
        """
        self.verify_signature(payload, signature_header)
        return decode_event(payload)
