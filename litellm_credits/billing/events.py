"""Stripe's webhook events as typed values, decoded from a verified event body.

:func:`decode_event` turns a verified event body into a frozen value
(:class:`CheckoutCompleted`, :class:`ChargeRefunded` or :class:`IgnoredEvent`):
money as ``int`` cents and ``Decimal``, never ``float``. It does not check the
signature; :meth:`litellm_credits.billing.stripe.StripeGateway.parse_event`
does that first (:mod:`litellm_credits.billing.signature`).
:func:`validate_user_id` and :func:`validate_credits` are the rules for our
metadata both ways: what the gateway puts into a checkout and what comes back.
The arithmetic on the amounts is :mod:`litellm_credits.billing.amounts`.

What crediting must know (see :mod:`litellm_credits.billing.purchases`):

* Credit exactly once per payment, not per event: Stripe delivers events at
  least once, and a delayed payment method (bank debit) sends
  ``checkout.session.completed`` with ``payment_status="unpaid"`` first and
  ``checkout.session.async_payment_succeeded`` (also mapped to
  :class:`CheckoutCompleted`, see ``event_type``) when the money arrives.
  Credit only when ``payment_status == "paid"``.
* ``checkout.session.completed`` carries the PaymentIntent id but not the
  Charge id, so :attr:`CheckoutCompleted.charge_id` is always ``None`` here.
  Match later refunds by ``payment_intent_id`` (present on both events), or
  fetch the charge with ``StripeGateway.fetch_charge_id_async``.
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

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from litellm_credits.errors import PaymentError

__all__ = [
    "MAX_BIGINT",
    "MAX_USER_ID_LENGTH",
    "ChargeRefunded",
    "CheckoutCompleted",
    "IgnoredEvent",
    "WebhookEvent",
    "decode_event",
    "validate_credits",
    "validate_user_id",
]

#: Longest ``user_id`` we put into (and accept from) Stripe metadata.
MAX_USER_ID_LENGTH: Final = 255
#: Largest package id (PostgreSQL bigint).
MAX_BIGINT: Final = 2**63 - 1

_CURRENCY_RE: Final = re.compile(r"[a-z]{3}")
_PACKAGE_ID_RE: Final = re.compile(r"[1-9][0-9]{0,18}")
_META_KEYS: Final = ("user_id", "package_id", "credits")
_CHECKOUT_EVENTS: Final = frozenset(
    {"checkout.session.completed", "checkout.session.async_payment_succeeded"}
)
_REFUND_EVENT: Final = "charge.refunded"


# --- values ----------------------------------------------------------------------


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


def validate_user_id(user_id: object, where: str) -> str:
    if not isinstance(user_id, str) or not user_id:
        raise PaymentError(f"{where} user_id must be a non-empty string")
    if len(user_id) > MAX_USER_ID_LENGTH:
        raise PaymentError(
            f"{where} user_id is {len(user_id)} characters long; "
            f"at most {MAX_USER_ID_LENGTH} are allowed"
        )
    return user_id


def validate_credits(credits: object, where: str) -> Decimal:
    if isinstance(credits, str):
        try:
            credits = Decimal(credits)
        except InvalidOperation:
            raise PaymentError(f"{where} credits {credits!r} is not a decimal number") from None
    if not isinstance(credits, Decimal) or not credits.is_finite() or credits <= 0:
        raise PaymentError(f"{where} credits must be a positive finite decimal, got {credits!r}")
    return credits


def _parse_package_id(raw: object, where: str) -> int:
    if not isinstance(raw, str) or not _PACKAGE_ID_RE.fullmatch(raw) or int(raw) > MAX_BIGINT:
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
    user_id = validate_user_id(metadata["user_id"], meta_where)
    if "package_id" not in metadata:
        raise PaymentError(f"{meta_where} package_id is missing")
    package_id = _parse_package_id(metadata["package_id"], meta_where)
    if "credits" not in metadata:
        raise PaymentError(f"{meta_where} credits is missing")
    credits = validate_credits(metadata["credits"], meta_where)
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


def decode_event(payload: bytes) -> WebhookEvent:
    """Map a verified webhook body to a typed value.

    A payload that is not a well-formed event, or a checkout of ours with bad
    metadata, raises :class:`PaymentError`. Unknown event types give
    :class:`IgnoredEvent`.
    """
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
