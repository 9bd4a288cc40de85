"""Turns a finished request into one settlement record (an ``llm_usage_log`` row to be).

Pure functions over what LiteLLM hands the hook, so the money arithmetic is
testable without a proxy. The charge is recomputed from tokens and Decimal
prices; LiteLLM's float ``response_cost`` is kept only for reference in the
response metadata. No message content and no secret is ever copied: the
request metadata is an allow-list of small fields, capped in size.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from litellm_credits.pricing import Price, byok_fee, to_credits

MAX_ERROR_CHARS = 500
MAX_TEXT_CHARS = 255
MAX_METADATA_BYTES = 4096

# Things that look like provider keys or bearer tokens, in case a provider
# echoes one back in an error message.
_SECRETISH = re.compile(
    r"(?i)(bearer\s+\S+|\b(sk|pk|rk|ak)[-_][A-Za-z0-9*_\-]{6,}|\b[A-Za-z0-9_\-]{32,}\b)"
)


@dataclass(frozen=True)
class Charge:
    provider_cost_usd: Decimal
    full_credits: Decimal  # what the request would cost on a platform key
    credits: Decimal  # what is charged (the BYOK fee when BYOK)
    priced_from: str


def compute_charge(
    price: Price | None,
    *,
    prompt_tokens: int,
    completion_tokens: int,
    cached_tokens: int,
    credits_per_usd: Decimal,
    multiplier: Decimal,
    byok: bool,
    byok_fee_percent: Decimal,
    hold_amount: Decimal,
    cache_hit: bool = False,
) -> Charge:
    """The charge for one served request (I5: never 0 because a price is missing)."""
    if cache_hit:
        return Charge(Decimal(0), Decimal(0), Decimal(0), "cache_hit")
    if price is None:
        # The deployment vanished from the config mid-request. Bill what was held.
        return Charge(Decimal(0), hold_amount, hold_amount, "hold")
    usd = price.usd(max(prompt_tokens, 0), max(completion_tokens, 0), max(cached_tokens, 0))
    full = to_credits(usd, credits_per_usd, multiplier)
    credits = byok_fee(full, byok_fee_percent) if byok else full
    return Charge(usd, full, credits, price.source)


def scrub(text: str | None, secrets: tuple[str, ...] = ()) -> str | None:
    """An error message safe to store: known secrets and key-like strings removed, capped."""
    if text is None:
        return None
    for secret in secrets:
        if secret:
            text = text.replace(secret, "[redacted]")
    text = _SECRETISH.sub("[redacted]", text)
    return text[:MAX_ERROR_CHARS]


def short(value: Any) -> str | None:
    if value is None:
        return None
    text = str(value).replace("\x00", "")
    return text[:MAX_TEXT_CHARS] or None


def _without_nul(value: Any) -> Any:
    if isinstance(value, str):
        return value.replace("\x00", "")
    if isinstance(value, dict):
        return {_without_nul(str(k)): _without_nul(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_without_nul(v) for v in value]
    return value


def capped_json(value: Mapping[str, Any]) -> dict[str, Any]:
    """Metadata as stored: JSON-safe, no NUL characters, at most MAX_METADATA_BYTES."""
    text = json.dumps(value, default=str)
    if "\\u0000" in text:  # rare: walk it and drop the NULs PostgreSQL's jsonb refuses
        text = json.dumps(_without_nul(json.loads(text)))
    if len(text) <= MAX_METADATA_BYTES:
        return dict(json.loads(text))
    return {"truncated": True, "keys": sorted(_without_nul(str(k)) for k in value)[:50]}


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


def cached_tokens_of(slo: Mapping[str, Any]) -> int:
    usage = ((slo.get("metadata") or {}).get("usage_object")) or {}
    details = usage.get("prompt_tokens_details") or {}
    return _int(details.get("cached_tokens") if isinstance(details, Mapping) else 0)


def _ms(seconds: Any) -> int | None:
    if isinstance(seconds, int | float) and seconds >= 0:
        return int(round(seconds * 1000))
    return None


def app_and_session(metadata: Mapping[str, Any], headers: Mapping[str, Any]) -> tuple[
    str | None, str | None
]:
    app = metadata.get("app_id") or headers.get("x-app-id")
    session = metadata.get("session_id") or headers.get("x-session-id")
    return short(app), short(session)


def success_record(
    ctx: Mapping[str, Any],
    slo: Mapping[str, Any],
    *,
    provider: str | None,
    charge: Charge,
    byok_key_id: int | None,
    app_id: str | None,
    session_id: str | None,
) -> dict[str, Any]:
    start, end = slo.get("startTime"), slo.get("endTime")
    first = slo.get("completionStartTime")
    latency = _ms(end - start) if isinstance(start, float) and isinstance(end, float) else None
    ttft = _ms(first - start) if isinstance(first, float) and isinstance(start, float) else None
    prompt = _int(slo.get("prompt_tokens"))
    completion = _int(slo.get("completion_tokens"))
    return {
        "request_id": ctx["request_id"],
        "user_id": ctx["user_id"],
        "model": short(slo.get("model")),
        "model_group": short(slo.get("model_group") or ctx.get("model_group")),
        "provider": short(provider),
        "api_base": short(slo.get("api_base")),
        "power_level": ctx.get("power_level"),
        "byok_key_id": byok_key_id,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "cached_tokens": cached_tokens_of(slo),
        "total_tokens": _int(slo.get("total_tokens")) or prompt + completion,
        "provider_cost_usd": charge.provider_cost_usd,
        "credits_charged": charge.credits,
        "cost_multiplier": Decimal(str(ctx.get("multiplier", "1"))),
        "latency_ms": latency,
        "time_to_first_token_ms": ttft,
        "success": True,
        "status_code": 200,
        "error_type": None,
        "error_message": None,
        "app_id": app_id,
        "session_id": session_id,
        "request_metadata": capped_json({
            "litellm_call_id": short(slo.get("litellm_call_id")),
            "end_user": short(slo.get("end_user")),
            "stream": bool(slo.get("stream")),
            "route_rule": ctx.get("route_rule"),
            "call_type": short(slo.get("call_type")),
            "payer": ctx.get("payer"),  # which key and member spent (identity.Payer)
        }),
        "response_metadata": capped_json({
            "deployment_id": short(slo.get("model_id")),
            "full_credits": str(charge.full_credits),
            "priced_from": charge.priced_from,
            "litellm_response_cost": slo.get("response_cost"),
            "cache_hit": bool(slo.get("cache_hit")),
            "status_detail": short(slo.get("error_str")),
        }),
        "created_at": datetime.now(UTC),
    }


def failure_record(
    ctx: Mapping[str, Any],
    *,
    error_type: str,
    status_code: int | None,
    message: str | None,
    secrets: tuple[str, ...] = (),
    provider: str | None = None,
    app_id: str | None = None,
    session_id: str | None = None,
) -> dict[str, Any]:
    return {
        "request_id": ctx["request_id"],
        "user_id": ctx["user_id"],
        "model": None,
        "model_group": short(ctx.get("model_group")),
        "provider": short(provider),
        "api_base": None,
        "power_level": ctx.get("power_level"),
        "byok_key_id": None,
        "success": False,
        "status_code": status_code,
        "error_type": short(error_type),
        "error_message": scrub(message, secrets),
        "credits_charged": Decimal(0),
        "cost_multiplier": None,
        "app_id": app_id,
        "session_id": session_id,
        "request_metadata": capped_json({"route_rule": ctx.get("route_rule"),
                                         "payer": ctx.get("payer")}),
        "response_metadata": {},
        "created_at": datetime.now(UTC),
    }
