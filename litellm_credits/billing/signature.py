"""Verifying a Stripe webhook's ``Stripe-Signature`` header.

:func:`verify_signature` refuses, with a :class:`WebhookSignatureError` saying
which, a missing or malformed header, a body that is not UTF-8, an HMAC that
does not match the webhook secret (checked by
:meth:`stripe.WebhookSignature.verify_header`), and a timestamp outside the
tolerance. The time check is done here and is symmetric: a timestamp too far
in the future is refused as well (stripe only refuses old ones).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Final

import stripe

from litellm_credits.errors import PaymentError, WebhookSignatureError

__all__ = ["parse_signature_header", "verify_signature"]

_TIMESTAMP_RE: Final = re.compile(r"[0-9]{1,12}")


def parse_signature_header(header: str) -> int:
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


def verify_signature(
    payload: bytes,
    signature_header: str | None,
    *,
    secret: str,
    tolerance_seconds: int,
    clock: Callable[[], float],
) -> None:
    """Raise :class:`WebhookSignatureError` unless ``payload`` is signed with
    ``secret`` within ``tolerance_seconds`` of ``clock()``."""
    if not isinstance(payload, bytes | bytearray):
        raise PaymentError("webhook payload must be the raw request body as bytes")
    if signature_header is None or not signature_header.strip():
        raise WebhookSignatureError(
            "missing Stripe-Signature header: the request was not signed by Stripe"
        )
    timestamp = parse_signature_header(signature_header)
    try:
        text = bytes(payload).decode("utf-8")
    except UnicodeDecodeError:
        raise WebhookSignatureError(
            "webhook payload is not valid UTF-8, so its signature cannot be verified"
        ) from None
    try:
        stripe.WebhookSignature.verify_header(text, signature_header, secret, tolerance=None)
    except stripe.SignatureVerificationError:
        raise WebhookSignatureError(
            "bad webhook signature: no v1 signature matches the payload (wrong webhook "
            "secret, or the body was changed after signing)"
        ) from None
    skew = clock() - timestamp
    if abs(skew) > tolerance_seconds:
        when = f"{int(skew)} s ago" if skew > 0 else f"{int(-skew)} s in the future"
        raise WebhookSignatureError(
            f"webhook timestamp outside tolerance: signed {when}, tolerance is "
            f"{tolerance_seconds} s (stale or replayed event, or clock skew)"
        )
