"""What goes in and out of the ``/credits`` API: request bodies, body size caps, JSON shaping.

Bodies are strict pydantic models (no "5" for 5, unknown fields refused). Money
is always a JSON string (``"12.50000000"``), never a number, in and out. Size
caps are checked before LiteLLM's auth or pydantic reads a body, and while the
body streams in: a chunked upload (no ``Content-Length``) is refused as soon as
it passes the cap, not after it has been buffered whole.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from litellm_credits import errors
from litellm_credits.values import PowerLevel, money

__all__ = [
    "MAX_BODY_BYTES",
    "MAX_INT4",
    "MAX_WEBHOOK_BYTES",
    "GrantBody",
    "KeyAddBody",
    "PackageCreateBody",
    "PackageUpdateBody",
    "PayloadTooLarge",
    "PowerLevelBody",
    "PurchaseBody",
    "TierBody",
    "check_length",
    "jsonable",
    "plain",
    "read_capped",
    "require_json_object",
    "window",
]

#: Largest JSON body accepted on the authenticated routes, in bytes.
MAX_BODY_BYTES = 64 * 1024
#: Largest webhook body accepted (Stripe events are a few KiB).
MAX_WEBHOOK_BYTES = 1024 * 1024
#: PostgreSQL's int4, the type of package ids and sort orders.
MAX_INT4 = 2**31 - 1


class PayloadTooLarge(errors.InvalidInput):
    http_status = 413
    code = "payload_too_large"


# --- size and shape, before anything parses the body ---------------------------------


def check_length(request: Request, limit: int) -> None:
    """Refuse a declared ``Content-Length`` over ``limit`` without reading the body."""
    declared = request.headers.get("content-length")
    if declared is None:
        return
    try:
        size = int(declared)
    except ValueError:
        raise errors.InvalidInput("the Content-Length header is not a number") from None
    if size > limit:
        raise PayloadTooLarge(f"the request body is {size} bytes; the limit is {limit}")


async def read_capped(request: Request, limit: int) -> bytes:
    """Read the body chunk by chunk, refusing it as soon as it passes ``limit`` bytes.

    A declared ``Content-Length`` over the limit is refused before anything is
    read. A chunked body is counted as it arrives, so a client streaming
    megabytes is stopped after ``limit`` bytes instead of being buffered whole
    (``request.body()`` would read it all first). The body read is cached on the
    request, so FastAPI, LiteLLM's auth and the route reuse it.
    """
    check_length(request, limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise PayloadTooLarge(f"the request body is over {limit} bytes")
        chunks.append(chunk)
    body = b"".join(chunks)
    # Starlette's own cache for request.body(): everything after us reads this.
    request._body = body
    return body


def require_json_object(body: bytes) -> None:
    """Refuse a JSON body that is not an object before LiteLLM's auth sees it.

    LiteLLM 1.102.4's ``user_api_key_auth`` calls ``.get`` on the parsed body and
    answers a JSON array or string with HTTP 500. Malformed JSON is left to FastAPI
    (422). ``body`` is what :func:`read_capped` read (and cached on the request).
    """
    if not body.strip():
        return
    try:
        parsed = json.loads(body)
    except (ValueError, RecursionError):
        return
    if not isinstance(parsed, dict):
        raise RequestValidationError(
            [{"type": "model_attributes_type", "loc": ("body",),
              "msg": "the request body must be a JSON object"}]
        )


# --- JSON out ---------------------------------------------------------------------------


def plain(value: Any) -> Any:
    """One value for JSON: Decimal as exact text, times as ISO 8601."""
    if isinstance(value, Decimal):
        return money(value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    return value


def jsonable(row: Mapping[str, Any]) -> dict[str, Any]:
    """A database row for JSON: Decimal as exact text, times as ISO 8601."""
    return {key: plain(value) for key, value in row.items()}


def _utc(value: datetime | None) -> datetime | None:
    if value is None or value.tzinfo is not None:
        return value
    return value.replace(tzinfo=UTC)  # a time without an offset is UTC


def window(
    since: datetime | None, until: datetime | None
) -> tuple[datetime | None, datetime | None]:
    """A ``since``/``until`` query window in UTC; refused if it is empty."""
    since, until = _utc(since), _utc(until)
    if since is not None and until is not None and since >= until:
        raise errors.InvalidInput("since must be earlier than until")
    return since, until


# --- request bodies ---------------------------------------------------------------------


class StrictBody(BaseModel):
    """Strict types (no "5" for 5, no 5 for "5"), unknown fields refused."""

    model_config = ConfigDict(strict=True, extra="forbid", str_max_length=4096)


Id255 = Annotated[str, Field(min_length=1, max_length=255)]
Text1000 = Annotated[str, Field(max_length=1000)]
MoneyText = Annotated[
    str,
    Field(
        min_length=1,
        max_length=64,
        description="A decimal number written as a JSON string, e.g. \"10.50\".",
        examples=["100", "-2.5"],
    ),
]
class PurchaseBody(StrictBody):
    package_id: int = Field(ge=1, le=MAX_INT4)
    nonce: str | None = Field(
        default=None,
        min_length=1,
        max_length=64,
        pattern=r"^[A-Za-z0-9_-]+$",
        description=(
            "Makes retries idempotent: the same user, package and nonce return the same "
            "Checkout Session. Omitted: a fresh session each time."
        ),
    )


class GrantBody(StrictBody):
    user_id: Id255
    amount: MoneyText
    description: Text1000 | None = None
    idempotency_key: Id255 | None = None


class PowerLevelBody(StrictBody):
    level: PowerLevel


class TierBody(StrictBody):
    tier: str = Field(min_length=1, max_length=64)


class PackageCreateBody(StrictBody):
    name: Id255
    credits: MoneyText
    price_usd: MoneyText
    description: Text1000 | None = None
    discount_percentage: MoneyText = "0"
    badge: str | None = Field(default=None, max_length=64)
    stripe_price_id: Id255 | None = None
    is_active: bool = True
    sort_order: int = Field(default=0, ge=-MAX_INT4, le=MAX_INT4)


class PackageUpdateBody(StrictBody):
    name: Id255 | None = None
    credits: MoneyText | None = None
    price_usd: MoneyText | None = None
    description: Text1000 | None = None
    discount_percentage: MoneyText | None = None
    badge: str | None = Field(default=None, max_length=64)
    stripe_price_id: Id255 | None = None
    is_active: bool | None = None
    sort_order: int | None = Field(default=None, ge=-MAX_INT4, le=MAX_INT4)


class KeyAddBody(StrictBody):
    provider: str = Field(min_length=1, max_length=64, examples=["openai"])
    name: str = Field(min_length=1, max_length=64, examples=["default"])
    secret: SecretStr = Field(
        min_length=1,
        max_length=4096,
        description="The provider API key. Stored encrypted; never returned or logged.",
    )
    default: bool = False
    fallback_to_platform: bool = False
