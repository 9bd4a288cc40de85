"""The price of a call from LiteLLM's own cost engine, in exact Decimal (I5, I7).

This module owns three things:

* **Settlement cost.** LiteLLM computes ``response_cost`` for every logged call with every
  pricing dimension it knows (cache writes and reads, audio in and out, reasoning, images,
  characters, seconds, queries, tiered prices, the deployment's custom prices). The charge is
  that cost, converted exactly (:func:`litellm_cost_to_decimal`), times credits per USD and the
  level's multiplier, quantized once to 1e-8 credits (:func:`credits_for_cost`). A served call
  with usage, no cache hit and an engine cost of 0 is billed its hold instead
  (:func:`settled_usd`): never free by accident. :func:`priced_dimensions` names what the
  usage was priced on, for the settlement's metadata.
* **Exact conversion** of any number LiteLLM holds (:func:`exact_decimal`), shared with the
  hold prices of :mod:`litellm_credits.hold_prices`.
* **Registration** of the credits config's ``model_prices`` into LiteLLM
  (:func:`register_model_prices`), so the same engine prices them.

Per-deployment unit prices and hold estimates are :mod:`litellm_credits.hold_prices`'s.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Mapping
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Final

import litellm

__all__ = [
    "CREDIT_QUANTUM",
    "byok_share",
    "cache_price_defaults",
    "credits_for_cost",
    "exact_decimal",
    "full_credits",
    "litellm_cost_to_decimal",
    "priced_dimensions",
    "register_model_prices",
    "settled_usd",
]

CREDIT_QUANTUM: Final = Decimal("0.00000001")
_ZERO: Final = Decimal(0)
_HUNDRED: Final = Decimal(100)
# Products of a few 28-digit factors are exact at 100 digits: the only rounding is the final
# quantize of the credits (rounding the USD first would lose up to 0.5e-8 x credits_per_usd).
_EXACT: Final = decimal.Context(prec=100, rounding=ROUND_HALF_EVEN)


def exact_decimal(value: object, what: str) -> Decimal:
    """A LiteLLM number as the decimal literal it was written as (floats via shortest repr)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str, Decimal)):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"{what} must be finite, got {value!r}")
        return Decimal(repr(value))
    try:
        result = Decimal(value)
    except decimal.InvalidOperation:
        raise ValueError(f"{what} is not a number: {value!r}") from None
    if not result.is_finite():
        raise ValueError(f"{what} must be finite, got {value!r}")
    return result


def litellm_cost_to_decimal(x: float) -> Decimal:
    """LiteLLM's float cost in USD as an exact Decimal: the float's shortest repr, unrounded.

    Not quantized: the quantum applies to credits (:func:`credits_for_cost`), so USD keeps
    every digit the engine produced. Negative, NaN and infinite costs are refused.
    """
    usd = exact_decimal(x, "response_cost")
    if usd < 0:
        raise ValueError(f"response_cost cannot be negative, got {x!r}")
    return usd


def full_credits(usd: Decimal, credits_per_usd: Decimal, multiplier: Decimal) -> Decimal:
    """Credits for ``usd``: USD x credits_per_usd x multiplier, quantized once to 1e-8."""
    full = _EXACT.multiply(_EXACT.multiply(usd, credits_per_usd), multiplier)
    return full.quantize(CREDIT_QUANTUM, context=_EXACT)


def byok_share(full: Decimal, byok_fee_percent: Decimal) -> Decimal:
    """What a BYOK request pays: ``byok_fee_percent`` of its full credits, quantized."""
    share = _EXACT.divide(_EXACT.multiply(full, byok_fee_percent), _HUNDRED)
    return share.quantize(CREDIT_QUANTUM, context=_EXACT)


def credits_for_cost(usd: Decimal, credits_per_usd: Decimal, multiplier: Decimal,
                     byok_fee_percent: Decimal | None = None) -> Decimal:
    """Credits charged: USD x credits_per_usd x multiplier, quantized to 1e-8 credits; with a
    BYOK fee, that percentage of it. The one place this arithmetic lives
    (``pricing.to_credits`` and ``pricing.byok_fee`` are these two steps)."""
    full = full_credits(usd, credits_per_usd, multiplier)
    return full if byok_fee_percent is None else byok_share(full, byok_fee_percent)


def settled_usd(response_cost: float | None, hold_usd: Decimal, *, has_usage: bool,
                cache_hit: bool) -> tuple[Decimal, bool]:
    """(USD to bill, True when the zero-cost rule applied).

    A served call with usage and no cache hit whose engine cost is 0 or missing is billed its
    hold, never 0 (I5); the caller counts it in a metric. A cache hit or a call without usage
    costs what the engine says (0).
    """
    usd = _ZERO if response_cost is None else litellm_cost_to_decimal(response_cost)
    if usd == 0 and has_usage and not cache_hit:
        return hold_usd, True
    return usd, False


# --- which dimensions were priced ---------------------------------------------------------

def _int(mapping: Mapping[str, Any] | None, key: str) -> int:
    value = mapping.get(key) if mapping else None
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _details(usage: Mapping[str, Any], key: str) -> Mapping[str, Any] | None:
    value = usage.get(key)
    return value if isinstance(value, Mapping) else None


_DETAIL_KEYS: Final = frozenset({"prompt_tokens_details", "completion_tokens_details",
                                 "cache_read_input_tokens", "cache_creation_input_tokens"})
_BY_CALL_TYPE: Final[dict[str, str]] = {
    "image_generation": "image", "aimage_generation": "image", "aimage_edit": "image",
    "transcription": "second", "atranscription": "second",
    "rerank": "query", "arerank": "query",
}


def priced_dimensions(usage: Mapping[str, Any] | None, call_type: str = "acompletion",
                      *, speech_by_character: bool = False) -> tuple[str, ...]:
    """The pricing dimensions present in a call's usage, in a fixed order (recorded in
    ``response_metadata``): input, cache_read, cache_creation, audio_in, output, reasoning,
    audio_out, then image / second / character / query by call type.

    ``usage`` is the OpenAI-shaped usage LiteLLM logs (``slo["metadata"]["usage_object"]``),
    which also carries Anthropic's ``cache_creation_input_tokens``/``cache_read_input_tokens``.
    """
    usage = usage or {}
    extra = _BY_CALL_TYPE.get(call_type)
    if call_type in ("speech", "aspeech") and speech_by_character:
        extra = "character"
    if not usage.keys() & _DETAIL_KEYS:  # plain token usage (most calls): two lookups
        plain = tuple(name for name, key in (("input", "prompt_tokens"),
                                             ("output", "completion_tokens"))
                      if _int(usage, key) > 0)
        return plain if extra is None else (*plain, extra)
    prompt_d = _details(usage, "prompt_tokens_details")
    completion_d = _details(usage, "completion_tokens_details")
    cache_read = _int(prompt_d, "cached_tokens") or _int(usage, "cache_read_input_tokens")
    cache_creation = _int(usage, "cache_creation_input_tokens") or _int(
        prompt_d, "cache_creation_tokens")
    audio_in = _int(prompt_d, "audio_tokens")
    audio_out = _int(completion_d, "audio_tokens")
    reasoning = _int(completion_d, "reasoning_tokens")
    plain_in = _int(usage, "prompt_tokens") - cache_read - cache_creation - audio_in
    plain_out = _int(usage, "completion_tokens") - audio_out - reasoning
    found = [name for name, qty in (
        ("input", plain_in), ("cache_read", cache_read), ("cache_creation", cache_creation),
        ("audio_in", audio_in), ("output", plain_out), ("reasoning", reasoning),
        ("audio_out", audio_out)) if qty > 0]
    if extra is not None:
        found.append(extra)
    return tuple(found)


# --- model_prices from the credits config -------------------------------------------------

def _as_float(value: object, what: str) -> float:
    exact = exact_decimal(value, what)
    if exact < 0:
        raise ValueError(f"{what} cannot be negative, got {value!r}")
    as_float = float(exact)
    if Decimal(repr(as_float)) != exact:  # LiteLLM holds floats: refuse what would be rounded
        raise ValueError(f"{what} = {value} has more digits than a float keeps exactly")
    return as_float


_CACHE_KEYS: Final = ("cache_read_input_token_cost", "cache_creation_input_token_cost")


def cache_price_defaults(entry: Mapping[str, Any]) -> dict[str, Any]:
    """The cache prices to add to a cost entry so cached prompt tokens are never free by
    accident: each of ``cache_read_input_token_cost`` / ``cache_creation_input_token_cost``
    the entry lacks (missing or None) defaults to its ``input_cost_per_token``.

    LiteLLM prices the cache tokens of a custom-priced model it does not know at 0 (its
    start-up warning says so); billing them at the input price errs on the provider's side
    of the sheet for reads and below it for Anthropic-style writes, so an operator who knows
    the real prices declares them (in ``model_info``, ``litellm_params`` or ``model_prices``)
    and those win. An explicit 0 is the operator's word and is kept.
    """
    base = entry.get("input_cost_per_token")
    if base is None or isinstance(base, bool) or not isinstance(base, (int, float)) or base <= 0:
        return {}
    return {key: base for key in _CACHE_KEYS if entry.get(key) is None}


def register_model_prices(model_prices: Mapping[str, Mapping[str, object]]) -> None:
    """Register the credits config's ``model_prices`` (model -> LiteLLM cost keys such as
    ``input_cost_per_token``, ``cache_read_input_token_cost``, ``input_cost_per_query``;
    plus optional ``mode`` and ``litellm_provider``) with ``litellm.register_model``, so
    LiteLLM's engine prices those models the same way as the ones it knows. Missing cache
    prices default to the input price (:func:`cache_price_defaults`)."""
    entries: dict[str, dict[str, object]] = {}
    for model, raw in model_prices.items():
        entry: dict[str, object] = {"mode": str(raw.get("mode", "chat"))}
        provider = raw.get("litellm_provider") or (model.split("/", 1)[0] if "/" in model
                                                   else "openai")
        entry["litellm_provider"] = str(provider)
        for key, value in raw.items():
            if key in ("mode", "litellm_provider"):
                continue
            if "cost" not in key:
                raise ValueError(f"model_prices.{model}.{key} is not a LiteLLM cost key")
            entry[key] = _as_float(value, f"model_prices.{model}.{key}")
        entry.update(cache_price_defaults(entry))
        entries[model] = entry
    if entries:
        litellm.register_model(model_cost=entries)
