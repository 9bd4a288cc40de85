"""Builds settlement records from what LiteLLM reports about a call.

Pure functions (apart from counting metrics), so the money arithmetic is testable without a
proxy. The charge is LiteLLM's own cost for the call, ``slo["response_cost"]`` (every
pricing dimension its engine knows, the deployment's custom prices included), converted to
Decimal exactly and multiplied out once (:func:`charge_from_slo`, :mod:`litellm_credits.cost`).
Rules on top, in order: a cache hit costs 0; zero output tokens with an error or blank finish
reason cost 0 (zero-completion insurance, a setting); a served call with usage whose engine
cost is 0 or missing is billed its hold (I5, counted). No message content and no secret is
ever copied: the metadata are allow-lists of small fields, capped in size.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from litellm_credits import cost, pricing
from litellm_credits.context import RequestContext, metadata_of
from litellm_credits.observe import metrics
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
    priced_from: str  # litellm | hold | cache_hit | insured (| deployment/config/litellm: tokens)
    dimensions: tuple[str, ...] = ()  # the pricing dimensions the usage had
    litellm_response_cost: str | None = None  # LiteLLM's float, as its shortest repr
    insured: bool = False  # zero-completion insurance applied
    provider_reported_usd: Decimal | None = None  # the provider's own cost (OpenRouter)
    engine_usd: Decimal | None = None  # the price map's cost of the same usage, beside it


@dataclass(frozen=True, slots=True)
class PricingPolicy:
    """The settings the charge depends on besides the context."""

    byok_fee_percent: Decimal = Decimal(0)
    zero_completion_insurance: bool = True

    @classmethod
    def of(cls, settings: Settings) -> PricingPolicy:
        return cls(settings.byok_fee_percent, settings.zero_completion_insurance)


_default_policy = PricingPolicy()


def set_default_policy(policy: PricingPolicy) -> None:
    """The policy :func:`success_record` uses when its caller passes none (set by the
    runtime from the settings at start-up)."""
    global _default_policy
    _default_policy = policy


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
    """The charge from token counts and a two-price token formula: the reference that
    LiteLLM's cost equals for plain token traffic (tests hold settlement to it). Settlement
    itself prices from LiteLLM's cost (:func:`charge_from_slo`)."""
    if cache_hit:
        return Charge(Decimal(0), Decimal(0), Decimal(0), "cache_hit")
    if price is None:
        # The deployment vanished from the config mid-request. Bill what was held.
        return Charge(Decimal(0), hold_amount, hold_amount, "hold")
    usd = price.usd(max(prompt_tokens, 0), max(completion_tokens, 0), max(cached_tokens, 0))
    full = to_credits(usd, credits_per_usd, multiplier)
    credits = byok_fee(full, byok_fee_percent) if byok else full
    return Charge(usd, full, credits, price.source)


# Call types that produce output tokens, where zero output with no proper finish means the
# client got nothing (embeddings, images, audio, rerank never have output tokens).
_OUTPUT_CALLS = frozenset({"completion", "acompletion", "text_completion", "atext_completion",
                           "anthropic_messages", "responses", "aresponses"})
# Call types whose usage is not (or not always) in LiteLLM's token counts: a served one
# always consumed something (a pass-through call's usage is whatever LiteLLM could parse).
_MEDIA_CALLS = frozenset({"image_generation", "aimage_generation", "aimage_edit", "image_edit",
                          "speech", "aspeech", "transcription", "atranscription", "rerank",
                          "arerank", "pass_through_endpoint"})
_BLANK_FINISH = frozenset({"", "error", "failed", "cancelled", "incomplete"})


def _finish_reason(slo: Mapping[str, Any]) -> str | None:
    """The response's finish reason (OpenAI ``finish_reason``, Anthropic ``stop_reason``,
    Responses ``status``), or None when it has none."""
    response = slo.get("response")
    if not isinstance(response, Mapping):
        return None
    choices = response.get("choices")
    if isinstance(choices, list) and choices and isinstance(choices[0], Mapping):
        reason = choices[0].get("finish_reason")
    else:
        reason = response.get("stop_reason", response.get("status"))
    return reason if isinstance(reason, str) else None


def insured(slo: Mapping[str, Any]) -> bool:
    """Zero-completion insurance: zero output tokens with an error or blank finish reason.

    Not for a client that hung up (LiteLLM's ``error_str`` "Client disconnected the
    request"): the provider processed the prompt on the client's word, so that is billed
    like any other hang-up."""
    if str(slo.get("call_type") or "") not in _OUTPUT_CALLS or _int(slo.get("completion_tokens")):
        return False
    error = str(slo.get("error_str") or "")
    if "client disconnected" in error.lower():
        return False
    reason = _finish_reason(slo)
    return reason is None or reason in _BLANK_FINISH or bool(error)


def _response_cost(slo: Mapping[str, Any]) -> tuple[float | None, str | None]:
    raw = slo.get("response_cost")
    if isinstance(raw, str):
        text = raw
        try:
            raw = float(text)
        except ValueError:
            return None, text[:40]
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        return None, None
    return float(raw), repr(float(raw))


def charge_from_slo(slo: Mapping[str, Any], ctx: RequestContext, *, byok: bool,
                    policy: PricingPolicy) -> Charge:
    """The charge of a served call from LiteLLM's ``response_cost`` (see the module doc)."""
    call_type = str(slo.get("call_type") or "")
    usage = (slo.get("metadata") or {}).get("usage_object")
    dims = cost.priced_dimensions(usage if isinstance(usage, Mapping) else None, call_type)
    response_cost, shown = _response_cost(slo)
    zero = Decimal(0)
    if slo.get("cache_hit"):
        return Charge(zero, zero, zero, "cache_hit", dims, shown)
    if policy.zero_completion_insurance and insured(slo):
        metrics.count(metrics.ZERO_COMPLETION_INSURED, call_type or "unknown")
        return Charge(zero, zero, zero, "insured", dims, shown, insured=True)
    has_usage = (_int(slo.get("prompt_tokens")) > 0 or _int(slo.get("completion_tokens")) > 0
                 or call_type in _MEDIA_CALLS)
    try:
        usd, billed_hold = cost.settled_usd(response_cost, zero, has_usage=has_usage,
                                            cache_hit=False)
    except (TypeError, ValueError):  # a negative or non-finite cost: never trusted, never 0
        usd, billed_hold = zero, True
    if billed_hold:
        metrics.count(metrics.ZERO_COST_BILLED_HOLD, call_type or "unknown")
        full = ctx.hold or zero
        credits = cost.byok_share(full, policy.byok_fee_percent) if byok else full
        return Charge(zero, full, credits, "hold", dims, shown)
    full = cost.full_credits(usd, ctx.credits_per_usd or zero,
                             ctx.multiplier if ctx.multiplier is not None else Decimal(1))
    credits = cost.byok_share(full, policy.byok_fee_percent) if byok else full
    reported = pricing.provider_reported_usd(slo)
    engine = pricing.engine_cost_usd(slo) if reported is not None else None
    if reported is not None and engine is not None:
        metrics.cost_drift(str(slo.get("custom_llm_provider") or "unknown"), reported, engine)
    return Charge(usd, full, credits, "litellm", dims, shown,
                  provider_reported_usd=reported, engine_usd=engine)


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
        charge = charge_from_slo(slo, ctx, byok=byok_key_id is not None,
                                 policy=policy or _default_policy)
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
