"""Builds settlement records from what LiteLLM reports about a call.

Pure functions, so the record is testable without a proxy. The charge is LiteLLM's own cost
for the call, ``slo["response_cost"]``, priced by :mod:`litellm_credits.settlement.charge`
(re-exported here: ``Charge``, ``PricingPolicy``, ``charge_from_slo``, ``compute_charge``).
No message content and no secret is ever copied: the metadata are allow-lists of small
fields, capped in size.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from litellm_credits import pricing
from litellm_credits.context import RequestContext, metadata_of
from litellm_credits.routing import Deployment
from litellm_credits.settings import Settings
from litellm_credits.settlement.charge import (
    Charge,
    PricingPolicy,
    charge_from_slo,
    compute_charge,
    insured,
    set_default_policy,
)
from litellm_credits.settlement.record import SettlementRecord

__all__ = [
    "MAX_METADATA_BYTES", "Charge", "PricingPolicy", "Served", "capped_json", "charge_from_slo",
    "compute_charge", "failed", "failure_record", "hold_record", "insured", "scrub", "served",
    "set_default_policy", "short", "success_record",
]

MAX_ERROR_CHARS = 500
MAX_TEXT_CHARS = 255
MAX_METADATA_BYTES = 4096

# Things that look like provider keys or bearer tokens, in case a provider
# echoes one back in an error message.
_SECRETISH = re.compile(
    r"(?i)(bearer\s+\S+|\b(sk|pk|rk|ak)[-_][A-Za-z0-9*_\-]{6,}|\b[A-Za-z0-9_\-]{32,}\b)"
)


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
    charge: Charge | None = None,
    byok_key_id: int | None,
    app_id: str | None,
    session_id: str | None,
    policy: PricingPolicy | None = None,
) -> SettlementRecord:
    """THE builder of a served request's record, for every path that settles one.

    Contract: ``slo`` is LiteLLM's standard logging object, or a stand-in with the same keys
    (``response_cost``: LiteLLM's float cost for the call - the price; ``call_type``,
    ``prompt_tokens``, ``completion_tokens``, ``total_tokens``, ``cache_hit``,
    ``metadata.usage_object``: the usage as LiteLLM logs it; ``response`` with the finish
    reason, for zero-completion insurance; ``model``, ``model_group``, ``model_id``,
    ``api_base``, ``custom_llm_provider``, ``hidden_params``, timing fields). Leave
    ``charge`` None and the charge is priced from ``slo["response_cost"]``
    (:func:`charge_from_slo`) with ``policy`` (default: the runtime's settings). A path
    that must bill what a client received passes a ``slo`` whose usage and
    ``response_cost`` are those of what was received.
    """
    if charge is None:
        charge = charge_from_slo(slo, ctx, byok=byok_key_id is not None, policy=policy)
    start, end = slo.get("startTime"), slo.get("endTime")
    first = slo.get("completionStartTime")
    latency = _ms(end - start) if isinstance(start, float) and isinstance(end, float) else None
    ttft = _ms(first - start) if isinstance(first, float) and isinstance(start, float) else None
    prompt = _int(slo.get("prompt_tokens"))
    completion = _int(slo.get("completion_tokens"))
    response_metadata: dict[str, Any] = {
        "deployment_id": short(slo.get("model_id")),
        "full_credits": str(charge.full_credits),
        "priced_from": charge.priced_from,
        "priced_dimensions": list(charge.dimensions),
        "litellm_response_cost": charge.litellm_response_cost,
        "cache_hit": bool(slo.get("cache_hit")),
        "status_detail": short(slo.get("error_str")),
    }
    if charge.insured:
        response_metadata["insured"] = True
    if charge.provider_reported_usd is not None:
        response_metadata["provider_reported_cost_usd"] = str(charge.provider_reported_usd)
        response_metadata["engine_cost_usd"] = (None if charge.engine_usd is None
                                                else str(charge.engine_usd))
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
        # The column keeps 10 places; the exact engine cost is in response_metadata.
        provider_cost_usd=charge.provider_cost_usd.quantize(pricing.USD_PLACES),
        credits_charged=charge.credits,
        cost_multiplier=ctx.multiplier if ctx.multiplier is not None else Decimal(1),
        latency_ms=latency,
        time_to_first_token_ms=ttft,
        success=True,
        status_code=200,
        app_id=app_id,
        session_id=session_id,
        # Both metadata are fixed allow-lists of short() texts (NUL-free, <= 255 chars),
        # flags, our own names and Decimal strings: JSON-safe and far below
        # MAX_METADATA_BYTES as built, so capped_json's round trip is not needed here.
        request_metadata={
            "litellm_call_id": short(slo.get("litellm_call_id")),
            "end_user": short(slo.get("end_user")),
            "stream": bool(slo.get("stream")),
            "route_rule": ctx.route_rule,
            "call_type": short(slo.get("call_type")),
            # Ids checked by values.py (no control characters) and a cleaned alias: safe too.
            "payer": payer_entry(ctx),
        },
        response_metadata=response_metadata,
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
    headers = (params.get("proxy_server_request") or {}).get("headers") or {}
    app_id, session_id = app_and_session(params.get("metadata") or {}, headers)
    record = success_record(ctx, slo, provider=provider, byok_key_id=byok_key_id,
                            app_id=app_id, session_id=session_id,
                            policy=PricingPolicy.of(rt.settings))
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
