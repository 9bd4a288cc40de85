"""Alert webhooks on the wire: the JSON body, the signature, one POST, the retry delay.

Signature (like Stripe's)::

    X-Credits-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

:func:`verify_signature` is the receiver's side, with a timestamp tolerance.
:func:`post` sends one alert and reports how it went without raising; what to
send when, and the retry schedule in the outbox, are :mod:`.alerts`' business.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import random
import time
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx

from litellm_credits.values import CREDIT_PLACES, money

__all__ = [
    "ATTEMPT_HEADER",
    "BASE_DELAY_SECONDS",
    "DEFAULT_TOLERANCE_SECONDS",
    "EVENT_ID_HEADER",
    "EVENT_TYPES",
    "MAX_DELAY_SECONDS",
    "SIGNATURE_HEADER",
    "DeliveryResult",
    "backoff_seconds",
    "build_payload",
    "post",
    "sign",
    "verify_signature",
]

SIGNATURE_HEADER = "X-Credits-Signature"
EVENT_ID_HEADER = "X-Credits-Event-Id"
ATTEMPT_HEADER = "X-Credits-Delivery-Attempt"
EVENT_TYPES = {"low_balance": "credits.low_balance", "zero_balance": "credits.zero_balance"}

#: First retry delay; doubled per attempt (with jitter), capped at MAX_DELAY_SECONDS.
BASE_DELAY_SECONDS = 5.0
MAX_DELAY_SECONDS = 3600.0
#: Receivers should refuse signatures older than this.
DEFAULT_TOLERANCE_SECONDS = 300


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``X-Credits-Signature`` header value for ``body``."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    digest = hmac.new(secret.encode("utf-8"), f"{ts}.".encode() + body, hashlib.sha256)
    return f"t={ts},v1={digest.hexdigest()}"


def verify_signature(
    secret: str,
    body: bytes,
    header: str | None,
    *,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """True when ``header`` is a valid, fresh signature of ``body`` (the receiver's check)."""
    if not header:
        return False
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(key, []).append(value)
    try:
        ts = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance:
        return False
    expected = sign(secret, body, ts).split("v1=", 1)[1]
    # compare_digest refuses non-ASCII str; a forged header is a mismatch, not a crash.
    return any(hmac.compare_digest(expected.encode(), v.encode("utf-8", "replace"))
               for v in parts.get("v1", []))


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _credits(value: Any) -> str | None:
    return money(Decimal(str(value)).quantize(CREDIT_PLACES)) if value is not None else None


def build_payload(row: Mapping[str, Any]) -> bytes:
    """The JSON body of one alert. Money is exact text, never a JSON number."""
    kind = str(row["kind"])
    body = {
        "id": f"cra_{row['id']}",
        "type": EVENT_TYPES.get(kind, f"credits.{kind}"),
        "created": _iso(row.get("created_at")),
        "data": {
            "user_id": row["user_id"],
            "kind": kind,
            "balance": _credits(row["balance"]),
            "threshold": _credits(row["threshold"]),
            "tier": row.get("tier"),
            "episode_started_at": _iso(row.get("episode")),
        },
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8")


def backoff_seconds(attempts: int, *, base: float = BASE_DELAY_SECONDS,
                    cap: float = MAX_DELAY_SECONDS, jitter: float | None = None) -> float:
    """Delay after ``attempts`` failed attempts: base x 2^(attempts-1), capped, 50-100 %."""
    # The exponent is capped first: 2.0 ** 1024 overflows a float.
    raw = min(cap, base * (2.0 ** min(max(attempts - 1, 0), 64)))
    factor = (0.5 + random.random() / 2) if jitter is None else jitter  # noqa: S311
    return max(raw * factor, 0.0)


@dataclass
class DeliveryResult:
    alert_id: int
    ok: bool
    status: int | None
    error: str | None


async def post(http: httpx.AsyncClient, url: str, secret: str,
               row: Mapping[str, Any]) -> DeliveryResult:
    """One signed POST of one alert (an outbox row); never raises."""
    body = build_payload(row)
    headers = {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: sign(secret, body),
        EVENT_ID_HEADER: f"cra_{row['id']}",
        ATTEMPT_HEADER: str(row.get("attempts") or 1),
    }
    try:
        response = await http.post(url, content=body, headers=headers)
    except httpx.HTTPError as exc:
        return DeliveryResult(int(row["id"]), False, None,
                              f"{type(exc).__name__}: {str(exc)[:200]}")
    if 200 <= response.status_code < 300:
        return DeliveryResult(int(row["id"]), True, response.status_code, None)
    return DeliveryResult(int(row["id"]), False, response.status_code,
                          f"HTTP {response.status_code}")
