"""Builds settlement records from what LiteLLM hands the hook after a call.

Pure functions, so the money arithmetic is testable without a proxy. The
charge is recomputed from tokens and Decimal prices; LiteLLM's float
``response_cost`` is kept only for reference in the response metadata. No
message content and no secret is ever copied: the request metadata is an
allow-list of small fields, capped in size.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from litellm_credits.context import RequestContext, metadata_of
from litellm_credits.pricing import Price, byok_fee, to_credits
from litellm_credits.routing import Deployment
from litellm_credits.settings import Settings
from litellm_credits.settlement.record import SettlementRecord

MAX_ERROR_CHARS = 500
MAX_TEXT_CHARS = 255
MAX_METADATA_BYTES = 4096

# Things that look like provider keys or bearer tokens, in case a provider
# echoes one back in an error message.
_SECRETISH = re.compile(
    r"(?i)(bearer\s+\S+|\b(sk|pk|rk|ak)[-_][A-Za-z0-9*_\-]{6,}|\b[A-Za-z0-9_\-]{32,}\b)"
)


@dataclass(frozen=True, slots=True)
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


def payer_entry(ctx: RequestContext) -> dict[str, str | None] | None:
    """``request_metadata.payer``: which rule, key (hash and alias) and member spent."""
    return ctx.payer.describe(ctx.user_id) if ctx.payer is not None else None


def success_record(
    ctx: RequestContext,
    slo: Mapping[str, Any],
    *,
    provider: str | None,
    charge: Charge,
    byok_key_id: int | None,
    app_id: str | None,
    session_id: str | None,
) -> SettlementRecord:
    start, end = slo.get("startTime"), slo.get("endTime")
    first = slo.get("completionStartTime")
    latency = _ms(end - start) if isinstance(start, float) and isinstance(end, float) else None
    ttft = _ms(first - start) if isinstance(first, float) and isinstance(start, float) else None
    prompt = _int(slo.get("prompt_tokens"))
    completion = _int(slo.get("completion_tokens"))
    return SettlementRecord(
        request_id=ctx.request_id,
        user_id=ctx.user_id,
        model=short(slo.get("model")),
        model_group=short(slo.get("model_group") or ctx.model_group),
        provider=short(provider),
        api_base=short(slo.get("api_base")),
        power_level=ctx.power_level,
        byok_key_id=byok_key_id,
        prompt_tokens=prompt,
        completion_tokens=completion,
        cached_tokens=cached_tokens_of(slo),
        total_tokens=_int(slo.get("total_tokens")) or prompt + completion,
        provider_cost_usd=charge.provider_cost_usd,
        credits_charged=charge.credits,
        cost_multiplier=ctx.multiplier if ctx.multiplier is not None else Decimal(1),
        latency_ms=latency,
        time_to_first_token_ms=ttft,
        success=True,
        status_code=200,
        app_id=app_id,
        session_id=session_id,
        request_metadata=capped_json({
            "litellm_call_id": short(slo.get("litellm_call_id")),
            "end_user": short(slo.get("end_user")),
            "stream": bool(slo.get("stream")),
            "route_rule": ctx.route_rule,
            "call_type": short(slo.get("call_type")),
            "payer": payer_entry(ctx),
        }),
        response_metadata=capped_json({
            "deployment_id": short(slo.get("model_id")),
            "full_credits": str(charge.full_credits),
            "priced_from": charge.priced_from,
            "litellm_response_cost": slo.get("response_cost"),
            "cache_hit": bool(slo.get("cache_hit")),
            "status_detail": short(slo.get("error_str")),
        }),
    )


def failure_record(
    ctx: RequestContext,
    *,
    error_type: str,
    status_code: int | None,
    message: str | None,
    secrets: tuple[str, ...] = (),
    provider: str | None = None,
    app_id: str | None = None,
    session_id: str | None = None,
) -> SettlementRecord:
    return SettlementRecord(
        request_id=ctx.request_id,
        user_id=ctx.user_id,
        model_group=short(ctx.model_group),
        provider=short(provider),
        power_level=ctx.power_level,
        success=False,
        status_code=status_code,
        error_type=short(error_type),
        error_message=scrub(message, secrets),
        credits_charged=Decimal(0),
        app_id=app_id,
        session_id=session_id,
        request_metadata=capped_json({"route_rule": ctx.route_rule, "payer": payer_entry(ctx)}),
    )


def hold_record(ctx: RequestContext, error: Exception) -> SettlementRecord:
    """A served request whose record could not be built: bill what was held."""
    return failure_record(
        ctx, error_type="record_error", status_code=200, message=type(error).__name__,
    ).replace(success=True, credits_charged=ctx.hold or Decimal(0),
              response_metadata={"priced_from": "hold"})


class RecordSource(Protocol):
    """What building a success record reads from the runtime."""

    settings: Settings

    def group(self, model_group: str) -> list[Deployment]: ...
    def price_of(self, model_group: str, deployment_id: str | None) -> Price | None: ...


class AttemptView(Protocol):
    def byok_key_id(self, provider: str | None) -> int | None: ...
    @property
    def secrets(self) -> tuple[str, ...]: ...


@dataclass(frozen=True, slots=True)
class Served:
    record: SettlementRecord
    provider: str | None
    byok_key_id: int | None


def served(rt: RecordSource, kwargs: Mapping[str, Any], ctx: RequestContext,
           state: AttemptView | None) -> Served:
    """The record of a request LiteLLM reports as served (``async_log_success_event``)."""
    params = kwargs.get("litellm_params") or {}
    slo = kwargs.get("standard_logging_object") or {}
    group = str(slo.get("model_group") or ctx.model_group or "")
    deployment_id = slo.get("model_id")
    provider = None
    for d in rt.group(group):
        if d.id == deployment_id:
            provider = d.provider
    provider = provider or slo.get("custom_llm_provider")
    byok_key_id = state.byok_key_id(provider) if state is not None else None
    charge = compute_charge(
        rt.price_of(group, deployment_id),
        prompt_tokens=int(slo.get("prompt_tokens") or 0),
        completion_tokens=int(slo.get("completion_tokens") or 0),
        cached_tokens=cached_tokens_of(slo),
        credits_per_usd=ctx.credits_per_usd or Decimal(0),
        multiplier=ctx.multiplier if ctx.multiplier is not None else Decimal(1),
        byok=byok_key_id is not None,
        byok_fee_percent=rt.settings.byok_fee_percent,
        hold_amount=ctx.hold or Decimal(0),
        cache_hit=bool(slo.get("cache_hit")),
    )
    headers = (params.get("proxy_server_request") or {}).get("headers") or {}
    app_id, session_id = app_and_session(params.get("metadata") or {}, headers)
    record = success_record(ctx, slo, provider=provider, charge=charge,
                            byok_key_id=byok_key_id, app_id=app_id, session_id=session_id)
    return Served(record, provider, byok_key_id)


def failed(ctx: RequestContext, request_data: Mapping[str, Any], error: Exception,
           state: AttemptView | None) -> SettlementRecord:
    """The record of an admitted request that failed as a whole."""
    status = getattr(error, "status_code", None)
    headers = (request_data.get("proxy_server_request") or {}).get("headers") or {}
    app_id, session_id = app_and_session(metadata_of(request_data), headers)
    return failure_record(
        ctx,
        error_type=type(error).__name__,
        status_code=status if isinstance(status, int) else None,
        message=str(error),
        secrets=state.secrets if state is not None else (),
        app_id=app_id,
        session_id=session_id,
    )
