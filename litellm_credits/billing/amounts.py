"""The exact money arithmetic of a purchase: USD prices as Stripe cents, refunds as credits.

:func:`to_cents` turns a ``Decimal`` USD price into Stripe's integer cents,
refusing a fraction of a cent; :func:`refund_credits` is the share of a
purchase's credits a cumulative refund takes back, computed with fractions and
rounded half to even to the ledger's places. No ``float`` anywhere (I7).
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Final

from litellm_credits.errors import PaymentError
from litellm_credits.values import CREDIT_PLACES

__all__ = [
    "CURRENCY",
    "MAX_AMOUNT_MINOR_UNITS",
    "refund_credits",
    "require_decimal",
    "to_cents",
]

#: The one currency packages are sold in (Stripe's lower-case ISO code).
CURRENCY: Final = "usd"
#: Credits are computed to as many decimal places as the ledger stores.
_CREDIT_DIGITS: Final = -int(CREDIT_PLACES.as_tuple().exponent)
#: Stripe's documented ceiling for an amount: eight digits of minor units.
MAX_AMOUNT_MINOR_UNITS: Final = 99_999_999


def require_decimal(value: object, what: str) -> Decimal:
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
    amount = require_decimal(amount, "price")
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
    purchased = require_decimal(purchased_credits, "purchased_credits")
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
