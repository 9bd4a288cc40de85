"""The charge of one served call, from LiteLLM's own cost for it (I5, I7).

The price is ``slo["response_cost"]``: LiteLLM's cost engine with every pricing dimension it
knows (cache writes and reads, audio, reasoning, images, seconds, characters, queries, tiers,
the deployment's custom prices), converted to Decimal exactly and multiplied out once
(:func:`charge_from_slo`, arithmetic in :mod:`litellm_credits.cost`). Rules on top, in
order: a cache hit costs 0; zero output tokens with an error or blank finish reason cost 0
(zero-completion insurance, a setting; never for a client that hung up); a served call with
usage whose engine cost is 0 or unusable is billed its hold, never 0, and counted
(``credits_zero_cost_billed_hold_total``). Where the provider states its own cost
(OpenRouter), the engine's cost of the same usage is computed beside it for the drift metric.

:func:`compute_charge` is the two-price token formula LiteLLM's cost equals for plain token
traffic; tests hold settlement to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from litellm_credits import cost, pricing
from litellm_credits.context import RequestContext
from litellm_credits.observe import metrics
from litellm_credits.pricing import Price, byok_fee, to_credits
from litellm_credits.settings import Settings


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0


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
                    policy: PricingPolicy | None = None) -> Charge:
    """The charge of a served call from LiteLLM's ``response_cost`` (see the module doc);
    ``policy`` defaults to the runtime's (:func:`set_default_policy`)."""
    policy = policy or _default_policy
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
