"""The Stripe side of credit purchases: checkout sessions in, typed events out.

This module never touches the database. It does three things:

* :meth:`StripeGateway.create_checkout_session_async` asks
  Stripe for a hosted Checkout page for one credit package and returns its
  ``id`` and ``url``;
* :meth:`StripeGateway.parse_event` verifies a webhook's ``Stripe-Signature``
  and turns the event into a frozen, typed value (:class:`CheckoutCompleted`,
  :class:`ChargeRefunded` or :class:`IgnoredEvent`) -- money as ``int`` minor
  units and ``Decimal``, never ``float``;
* :func:`refund_credits` computes how many credits a (cumulative) refund takes
  back.

The ledger decides what the money means. Things it must know:

* Credit exactly once per *checkout session* (``session_id``), not per event:
  Stripe delivers events at least once, and a delayed payment method (bank
  debit) sends ``checkout.session.completed`` with ``payment_status="unpaid"``
  first and ``checkout.session.async_payment_succeeded`` (also mapped to
  :class:`CheckoutCompleted`, see ``event_type``) when the money arrives.
  Credit only when ``payment_status == "paid"``.
* ``checkout.session.completed`` carries the PaymentIntent id but not the
  Charge id, so :attr:`CheckoutCompleted.charge_id` is always ``None`` here.
  Match later refunds by ``payment_intent_id`` (present on both events), or
  fetch the charge with :meth:`StripeGateway.fetch_charge_id_async`.
* ``charge.refunded`` carries the *cumulative* ``amount_refunded``. Take back
  ``refund_credits(purchased, amount, amount_refunded)`` minus what was already
  taken back, and only if positive: replays and out-of-order delivery of
  partial refunds then change nothing.
* A checkout session whose metadata has none of our keys (``user_id``,
  ``package_id``, ``credits``) was made by something else sharing the Stripe
  account; it maps to :class:`IgnoredEvent` (acknowledge with 2xx). A session
  with *some* of our keys but invalid values raises :class:`PaymentError`.
"""

from __future__ import annotations

import ipaddress
import json
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from fractions import Fraction
from typing import Any, Final
from urllib.parse import urlsplit

import stripe

from litellm_credits.errors import PaymentError, WebhookSignatureError
from litellm_credits.values import CREDIT_PLACES

__all__ = [
    "CURRENCY",
    "ChargeRefunded",
    "CheckoutCompleted",
    "CheckoutSession",
    "IgnoredEvent",
    "PaymentError",
    "PaymentProviderError",
    "StripeGateway",
    "WebhookEvent",
    "WebhookSignatureError",
    "refund_credits",
    "to_cents",
]

#: The one currency packages are sold in (Stripe's lower-case ISO code).
CURRENCY: Final = "usd"
#: Credits are computed to as many decimal places as the ledger stores.
_CREDIT_DIGITS: Final = -int(CREDIT_PLACES.as_tuple().exponent)
#: Longest ``user_id`` we put into (and accept from) Stripe metadata.
MAX_USER_ID_LENGTH: Final = 255
#: Stripe's documented ceiling for an amount: eight digits of minor units.
MAX_AMOUNT_MINOR_UNITS: Final = 99_999_999
#: Stripe limits idempotency keys to 255 characters.
MAX_IDEMPOTENCY_KEY_LENGTH: Final = 255

_CURRENCY_RE: Final = re.compile(r"[a-z]{3}")
_PACKAGE_ID_RE: Final = re.compile(r"[1-9][0-9]{0,18}")
_TIMESTAMP_RE: Final = re.compile(r"[0-9]{1,12}")
_MAX_BIGINT: Final = 2**63 - 1
_MAX_METADATA_VALUE: Final = 500  # Stripe's limit per metadata value
_META_KEYS: Final = ("user_id", "package_id", "credits")

_CHECKOUT_EVENTS: Final = frozenset(
    {"checkout.session.completed", "checkout.session.async_payment_succeeded"}
)
_REFUND_EVENT: Final = "charge.refunded"


class PaymentProviderError(PaymentError):
    """Stripe could not be reached or refused a request we made (not the user's fault)."""

    http_status = 502
    code = "payment_provider_error"


# --- values ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CheckoutSession:
    """A freshly created Checkout Session: send the user to ``url``."""

    id: str
    url: str


@dataclass(frozen=True, slots=True)
class CheckoutCompleted:
    """A checkout session of ours finished (``checkout.session.completed`` or
    ``checkout.session.async_payment_succeeded``).

    Credit the user only when ``payment_status == "paid"``, and only once per
    ``session_id``. ``charge_id`` is always ``None`` from these events (Stripe
    does not put the charge on the session); see the module docstring.
    ``payment_intent_id`` is ``None`` only when no payment was needed.
    ``amount_total_cents`` is in the currency's minor unit (cents for USD) and
    may differ from the package price (discounts, tax).
    """

    event_id: str
    session_id: str
    payment_intent_id: str | None
    charge_id: str | None
    user_id: str
    package_id: int
    credits: Decimal
    amount_total_cents: int
    currency: str
    payment_status: str
    event_type: str = "checkout.session.completed"

    @property
    def is_paid(self) -> bool:
        return self.payment_status == "paid"


@dataclass(frozen=True, slots=True)
class ChargeRefunded:
    """``charge.refunded``: ``amount_refunded_cents`` is cumulative over all refunds.

    ``refund_ids`` is best effort: since API version 2022-11-15 Stripe no longer
    includes the refund list on a Charge, so it is usually empty.
    """

    event_id: str
    charge_id: str
    payment_intent_id: str | None
    amount_cents: int
    amount_refunded_cents: int
    currency: str
    refund_ids: tuple[str, ...]

    @property
    def fully_refunded(self) -> bool:
        return self.amount_refunded_cents >= self.amount_cents


@dataclass(frozen=True, slots=True)
class IgnoredEvent:
    """A verified event we have no use for; acknowledge it with 2xx."""

    event_id: str
    type: str
    reason: str = "event type not handled"


WebhookEvent = CheckoutCompleted | ChargeRefunded | IgnoredEvent


# --- money -------------------------------------------------------------------------


def _require_decimal(value: object, what: str) -> Decimal:
    if not isinstance(value, Decimal):
        raise PaymentError(
            f"{what} must be a decimal.Decimal, not {type(value).__name__} "
            "(floats cannot represent money exactly)"
        )
    if not value.is_finite():
        raise PaymentError(f"{what} must be a finite number, got {value}")
    return value


def _require_int(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise PaymentError(f"{what} must be an integer, not {type(value).__name__}")
    return value


def to_cents(amount: Decimal) -> int:
    """A USD price as Stripe's integer cents, exactly: ``Decimal("12.50")`` -> ``1250``.

    A fraction of a cent (``4.999``), a non-positive amount or one above
    Stripe's 8-digit ceiling raises :class:`PaymentError`.
    """
    amount = _require_decimal(amount, "price")
    if amount <= 0:
        raise PaymentError(f"price must be positive, got {amount}")
    if amount.adjusted() > 12:  # keeps the arithmetic below far from any rounding
        raise PaymentError(f"price {amount} is too large")
    scaled = amount.scaleb(2)  # exact: well within the context precision
    if scaled != scaled.to_integral_value():
        raise PaymentError(
            f"price {amount} USD has a fraction of the smallest currency unit; "
            "use at most 2 decimal places"
        )
    cents = int(scaled)
    if cents > MAX_AMOUNT_MINOR_UNITS:
        raise PaymentError(
            f"price {amount} USD exceeds Stripe's maximum amount "
            f"({MAX_AMOUNT_MINOR_UNITS} minor units)"
        )
    return cents


def _quantize_half_even(value: Fraction, places: int) -> Decimal:
    scaled = value * 10**places
    quotient, remainder = divmod(scaled.numerator, scaled.denominator)
    twice = 2 * remainder
    if twice > scaled.denominator or (twice == scaled.denominator and quotient % 2):
        quotient += 1
    sign = 1 if quotient < 0 else 0
    digits = tuple(int(c) for c in str(abs(quotient)))
    return Decimal((sign, digits, -places))  # built from a tuple: no context rounding


def refund_credits(
    purchased_credits: Decimal, amount_cents: int, amount_refunded_cents: int
) -> Decimal:
    """Credits to take back, cumulatively, after ``amount_refunded_cents`` of
    ``amount_cents`` were refunded.

    ``purchased * refunded / amount``, computed exactly and rounded to
    :data:`~litellm_credits.values.CREDIT_PLACES` (half to even). A full refund returns
    ``purchased_credits`` unchanged; the result never exceeds it and is
    non-decreasing in ``amount_refunded_cents``, so the ledger can apply
    ``max(0, refund_credits(...) - already_taken_back)`` on every event.
    """
    purchased = _require_decimal(purchased_credits, "purchased_credits")
    if purchased < 0:
        raise PaymentError(f"purchased_credits must not be negative, got {purchased}")
    amount = _require_int(amount_cents, "amount_cents")
    refunded = _require_int(amount_refunded_cents, "amount_refunded_cents")
    if amount <= 0:
        raise PaymentError(f"amount_cents must be positive, got {amount}")
    if not 0 <= refunded <= amount:
        raise PaymentError(
            f"amount_refunded_cents must be between 0 and amount_cents ({amount}), got {refunded}"
        )
    if refunded == amount:
        return purchased
    share = _quantize_half_even(Fraction(purchased) * refunded / amount, _CREDIT_DIGITS)
    return min(share, purchased)


# --- signatures --------------------------------------------------------------------


def _parse_signature_header(header: str) -> int:
    """Return the header's timestamp; raise if the header is not ``t=..,v1=..``."""
    timestamps: list[str] = []
    signatures = 0
    for part in header.split(","):
        key, sep, value = part.partition("=")
        if not sep:
            continue
        if key == "t":
            timestamps.append(value)
        elif key == "v1" and value:
            signatures += 1
    if len(timestamps) != 1 or not _TIMESTAMP_RE.fullmatch(timestamps[0]):
        raise WebhookSignatureError(
            "malformed Stripe-Signature header: expected exactly one 't=<unix time>' "
            "element, as in 't=1700000000,v1=<hex>'"
        )
    if not signatures:
        raise WebhookSignatureError("malformed Stripe-Signature header: no 'v1=' signature in it")
    return int(timestamps[0])


# --- payload mapping -----------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _field(obj: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in obj:
        raise PaymentError(f"{where} has no {key!r} field")
    return obj[key]


def _str_field(obj: Mapping[str, Any], key: str, where: str) -> str:
    value = _field(obj, key, where)
    if not isinstance(value, str) or not value:
        raise PaymentError(f"{where}.{key} must be a non-empty string")
    return value


def _int_field(obj: Mapping[str, Any], key: str, where: str, *, minimum: int = 0) -> int:
    value = _field(obj, key, where)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise PaymentError(f"{where}.{key} must be an integer >= {minimum}, got {value!r}")
    return value


def _currency_field(obj: Mapping[str, Any], where: str) -> str:
    value = _field(obj, "currency", where)
    if not isinstance(value, str) or not _CURRENCY_RE.fullmatch(value):
        raise PaymentError(f"{where}.currency must be a lower-case ISO code, got {value!r}")
    return value


def _optional_id(obj: Mapping[str, Any], key: str, where: str) -> str | None:
    """An expandable id: absent/None, a string, or an expanded object with ``id``."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, Mapping):
        value = value.get("id")
    if not isinstance(value, str) or not value:
        raise PaymentError(f"{where}.{key} must be an id string or null, got {value!r}")
    return value


def _validate_user_id(user_id: object, where: str) -> str:
    if not isinstance(user_id, str) or not user_id:
        raise PaymentError(f"{where} user_id must be a non-empty string")
    if len(user_id) > MAX_USER_ID_LENGTH:
        raise PaymentError(
            f"{where} user_id is {len(user_id)} characters long; "
            f"at most {MAX_USER_ID_LENGTH} are allowed"
        )
    return user_id


def _validate_credits(credits: object, where: str) -> Decimal:
    if isinstance(credits, str):
        try:
            credits = Decimal(credits)
        except InvalidOperation:
            raise PaymentError(f"{where} credits {credits!r} is not a decimal number") from None
    if not isinstance(credits, Decimal) or not credits.is_finite() or credits <= 0:
        raise PaymentError(f"{where} credits must be a positive finite decimal, got {credits!r}")
    return credits


def _parse_package_id(raw: object, where: str) -> int:
    if not isinstance(raw, str) or not _PACKAGE_ID_RE.fullmatch(raw) or int(raw) > _MAX_BIGINT:
        raise PaymentError(
            f"{where} package_id must be a positive integer written in digits, got {raw!r}"
        )
    return int(raw)


def _metadata_of(obj: Mapping[str, Any], where: str) -> Mapping[str, Any]:
    metadata = obj.get("metadata")
    if metadata is None:
        return {}
    if not isinstance(metadata, Mapping):
        raise PaymentError(f"{where}.metadata must be an object")
    return metadata


def _map_checkout(event_id: str, event_type: str, session: Mapping[str, Any]) -> WebhookEvent:
    where = "checkout session"
    metadata = _metadata_of(session, where)
    if not any(key in metadata for key in _META_KEYS):
        return IgnoredEvent(
            event_id,
            event_type,
            "checkout session has no litellm-credits metadata (not created by this plugin)",
        )
    meta_where = "checkout session metadata:"
    if "user_id" not in metadata:
        raise PaymentError(f"{meta_where} user_id is missing")
    user_id = _validate_user_id(metadata["user_id"], meta_where)
    if "package_id" not in metadata:
        raise PaymentError(f"{meta_where} package_id is missing")
    package_id = _parse_package_id(metadata["package_id"], meta_where)
    if "credits" not in metadata:
        raise PaymentError(f"{meta_where} credits is missing")
    credits = _validate_credits(metadata["credits"], meta_where)
    payment_status = _str_field(session, "payment_status", where)
    return CheckoutCompleted(
        event_id=event_id,
        session_id=_str_field(session, "id", where),
        payment_intent_id=_optional_id(session, "payment_intent", where),
        charge_id=None,
        user_id=user_id,
        package_id=package_id,
        credits=credits,
        amount_total_cents=_int_field(session, "amount_total", where),
        currency=_currency_field(session, where),
        payment_status=payment_status,
        event_type=event_type,
    )


def _refund_ids(charge: Mapping[str, Any]) -> tuple[str, ...]:
    refunds = charge.get("refunds")
    if not isinstance(refunds, Mapping):
        return ()
    data = refunds.get("data")
    if not isinstance(data, list):
        return ()
    return tuple(r["id"] for r in data if isinstance(r, Mapping) and isinstance(r.get("id"), str))


def _map_refund(event_id: str, charge: Mapping[str, Any]) -> ChargeRefunded:
    where = "charge"
    amount = _int_field(charge, "amount", where, minimum=1)
    refunded = _int_field(charge, "amount_refunded", where)
    if refunded > amount:
        raise PaymentError(f"charge.amount_refunded ({refunded}) exceeds charge.amount ({amount})")
    return ChargeRefunded(
        event_id=event_id,
        charge_id=_str_field(charge, "id", where),
        payment_intent_id=_optional_id(charge, "payment_intent", where),
        amount_cents=amount,
        amount_refunded_cents=refunded,
        currency=_currency_field(charge, where),
        refund_ids=_refund_ids(charge),
    )


# --- the gateway ---------------------------------------------------------------------


class _HttpxClient(stripe.HTTPXClient):
    """stripe's httpx client, sending the form body as ``content=``.

    stripe 16.1.0 passes its already-encoded body as ``data=<str>``, which
    httpx 0.28 deprecates (one DeprecationWarning per request).
    """

    def _get_request_args_kwargs(
        self, method: str, url: str, headers: Mapping[str, str], post_data: Any
    ) -> Any:
        args, kwargs = super()._get_request_args_kwargs(method, url, headers, post_data)
        data = kwargs.pop("data", None)
        if isinstance(data, str):
            kwargs["content"] = data.encode("utf-8")
        elif isinstance(data, bytes):
            kwargs["content"] = data
        elif data:
            kwargs["data"] = data
        return [args, kwargs]


def _validate_api_base(api_base: str) -> str:
    parts = urlsplit(api_base)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise PaymentError(f"api_base must be an http(s) URL, got {api_base!r}")
    if parts.path.rstrip("/") or parts.query or parts.fragment:
        raise PaymentError(
            f"api_base must be scheme://host[:port] only (the client adds /v1/...), "
            f"got {api_base!r}"
        )
    if parts.scheme == "http":
        host = parts.hostname
        try:
            loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = False
        if not loopback:
            raise PaymentError(
                "api_base may use plain http only for a loopback host (a local stand-in); "
                f"the API key would travel unencrypted to {host!r}"
            )
    return api_base.rstrip("/")


def _validate_url(url: object, what: str) -> str:
    if not isinstance(url, str):
        raise PaymentError(f"{what} must be a string")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise PaymentError(f"{what} must be an absolute http(s) URL, got {url!r}")
    return url


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
        self.api_base = None if api_base is None else _validate_api_base(api_base)
        self._http = _HttpxClient(timeout=timeout_seconds, allow_sync_methods=True)
        self._client = stripe.StripeClient(
            api_key,
            base_addresses={"api": self.api_base} if self.api_base else None,
            max_network_retries=max_network_retries,
            http_client=self._http,
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
        _validate_user_id(user_id, "checkout")
        if isinstance(package_id, bool) or not isinstance(package_id, int):
            raise PaymentError(f"package_id must be an int, got {type(package_id).__name__}")
        if not 1 <= package_id <= _MAX_BIGINT:
            raise PaymentError(f"package_id must be a positive integer, got {package_id}")
        if not isinstance(package_name, str) or not package_name.strip():
            raise PaymentError("package_name must be a non-empty string")
        credits = _validate_credits(_require_decimal(credits, "credits"), "checkout")
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
            "success_url": _validate_url(success_url, "success_url"),
            "cancel_url": _validate_url(cancel_url, "cancel_url"),
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
        this gateway's webhook secret within ``tolerance_seconds`` of now.

        The HMAC is checked by :meth:`stripe.WebhookSignature.verify_header`.
        The time check is done here and is symmetric: a timestamp more than
        ``tolerance_seconds`` in the future is refused as well (stripe only
        refuses old ones).
        """
        if not isinstance(payload, bytes | bytearray):
            raise PaymentError("webhook payload must be the raw request body as bytes")
        if signature_header is None or not signature_header.strip():
            raise WebhookSignatureError(
                "missing Stripe-Signature header: the request was not signed by Stripe"
            )
        timestamp = _parse_signature_header(signature_header)
        try:
            text = bytes(payload).decode("utf-8")
        except UnicodeDecodeError:
            raise WebhookSignatureError(
                "webhook payload is not valid UTF-8, so its signature cannot be verified"
            ) from None
        try:
            stripe.WebhookSignature.verify_header(
                text, signature_header, self._webhook_secret, tolerance=None
            )
        except stripe.SignatureVerificationError:
            raise WebhookSignatureError(
                "bad webhook signature: no v1 signature matches the payload (wrong webhook "
                "secret, or the body was changed after signing)"
            ) from None
        skew = self._clock() - timestamp
        if abs(skew) > self.tolerance_seconds:
            when = f"{int(skew)} s ago" if skew > 0 else f"{int(-skew)} s in the future"
            raise WebhookSignatureError(
                f"webhook timestamp outside tolerance: signed {when}, tolerance is "
                f"{self.tolerance_seconds} s (stale or replayed event, or clock skew)"
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
        try:
            event = json.loads(
                bytes(payload).decode("utf-8"),
                parse_float=Decimal,
                parse_constant=_reject_constant,
            )
        except (ValueError, RecursionError) as exc:
            raise PaymentError(f"webhook payload is not valid JSON: {exc}") from None
        if not isinstance(event, dict) or event.get("object") != "event":
            raise PaymentError("webhook payload is not a Stripe event (object != 'event')")
        event_id = _str_field(event, "id", "event")
        event_type = _str_field(event, "type", "event")
        data = event.get("data")
        obj = data.get("object") if isinstance(data, dict) else None
        if not isinstance(obj, dict):
            raise PaymentError(f"event {event_id} has no data.object")
        if event_type in _CHECKOUT_EVENTS:
            return _map_checkout(event_id, event_type, obj)
        if event_type == _REFUND_EVENT:
            return _map_refund(event_id, obj)
        return IgnoredEvent(event_id, event_type)
