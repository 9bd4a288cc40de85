"""Prices, cost estimates and the settlement arithmetic, all in Decimal (I7).

LiteLLM reports ``response_cost`` as a float; we never bill from it. The cost
is recomputed from token counts and per-token prices, which come, in order,
from the deployment's own ``input_cost_per_token``/``output_cost_per_token``,
from ``model_prices`` in the credits config, or from LiteLLM's cost map. A
model with no price from any of these is refused before the call (I5).

Prices that LiteLLM stores as floats are converted through ``repr``, which
gives back the decimal literal they were written as (``1.5e-07``), not the
binary approximation.
"""

from __future__ import annotations

import decimal
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from litellm_credits.settings import ModelPrice
from litellm_credits.values import CREDIT_PLACES

USD_PLACES = Decimal("0.0000000001")


def exact(value: Any) -> Decimal:
    """A price from config or LiteLLM as an exact Decimal (floats via their repr)."""
    if isinstance(value, Decimal):
        return value
    if isinstance(value, bool):
        raise TypeError("a price cannot be a boolean")
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError("a price must be finite")
        return Decimal(repr(value))
    return Decimal(str(value))


@dataclass(frozen=True)
class Price:
    input_per_token: Decimal
    output_per_token: Decimal
    cache_read_per_token: Decimal | None = None
    max_output_tokens: int | None = None
    source: str = "config"

    def usd(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> Decimal:
        cached = min(max(cached_tokens, 0), max(prompt_tokens, 0))
        cache_price = (self.cache_read_per_token if self.cache_read_per_token is not None
                       else self.input_per_token)
        cost = ((prompt_tokens - cached) * self.input_per_token + cached * cache_price
                + completion_tokens * self.output_per_token)
        return cost.quantize(USD_PLACES, rounding=ROUND_HALF_EVEN)


def price_for(
    litellm_params: Mapping[str, Any],
    model_group: str,
    configured: Mapping[str, ModelPrice],
    cost_map: Mapping[str, Mapping[str, Any]],
) -> Price | None:
    """The price of one deployment, or None when nothing prices it."""
    inp = litellm_params.get("input_cost_per_token")
    out = litellm_params.get("output_cost_per_token")
    if inp is not None and out is not None:
        return Price(exact(inp), exact(out), source="deployment")
    model = str(litellm_params.get("model", ""))
    for name in (model_group, model):
        if name in configured:
            p = configured[name]
            return Price(p.input_per_token, p.output_per_token, source="config")
    bare = model.split("/", 1)[1] if "/" in model else model
    for name in (model, bare):
        entry = cost_map.get(name)
        if entry and entry.get("input_cost_per_token") is not None \
                and entry.get("output_cost_per_token") is not None:
            cache = entry.get("cache_read_input_token_cost")
            max_out = entry.get("max_output_tokens") or entry.get("max_tokens")
            return Price(
                exact(entry["input_cost_per_token"]),
                exact(entry["output_cost_per_token"]),
                None if cache is None else exact(cache),
                int(max_out) if isinstance(max_out, int) else None,
                source="litellm",
            )
    return None


# Products of a few 28-digit factors are exact at 100 digits, so the only
# rounding is the final quantize (no double rounding). Used through its methods
# rather than decimal.localcontext, which costs more than the arithmetic.
_EXACT = decimal.Context(prec=100, rounding=ROUND_HALF_EVEN)


def to_credits(usd: Decimal, credits_per_usd: Decimal, multiplier: Decimal) -> Decimal:
    """Credits charged = provider cost in USD x credits_per_usd x the level's multiplier."""
    product = _EXACT.multiply(_EXACT.multiply(usd, credits_per_usd), multiplier)
    return product.quantize(CREDIT_PLACES, context=_EXACT)


def byok_fee(full_credits: Decimal, fee_percent: Decimal) -> Decimal:
    """What a BYOK request pays: a percentage of what it would have cost."""
    share = _EXACT.divide(_EXACT.multiply(full_credits, fee_percent), _HUNDRED)
    return share.quantize(CREDIT_PLACES, context=_EXACT)


_HUNDRED = Decimal(100)


def estimate_prompt_tokens(messages: Any) -> int:
    """A cheap upper estimate of prompt tokens, without a tokenizer on the hot path.

    English averages about 4 bytes of UTF-8 per token; counting one token per
    2 bytes (plus a little per message) errs on the side of holding too much,
    which only delays a concurrent request, while holding too little would
    widen the I3 overspend bound.
    """
    if isinstance(messages, str):
        return len(messages.encode("utf-8")) // 2 + 8
    if not isinstance(messages, Sequence):
        return 8
    total = 8
    for message in messages:
        if isinstance(message, str):
            total += len(message.encode("utf-8")) // 2 + 8
        elif isinstance(message, Mapping):
            content = message.get("content")
            if isinstance(content, str):
                total += len(content.encode("utf-8")) // 2 + 8
            elif isinstance(content, Sequence):
                for part in content:
                    text = part.get("text") if isinstance(part, Mapping) else None
                    total += (len(text.encode("utf-8")) // 2 if isinstance(text, str) else 800)
                total += 8
            if message.get("tool_calls") or message.get("function_call"):
                calls = message.get("tool_calls") or message.get("function_call")
                total += len(json.dumps(calls, default=str).encode("utf-8")) // 2
        elif isinstance(message, int):
            total += 1  # a token id (completions prompt given as ids)
        else:
            total += len(message) + 8 if isinstance(message, Sequence) else 8
    return total


def completion_budget(data: Mapping[str, Any], price: Price, default_max: int) -> int:
    """The most completion tokens this request can produce."""
    for key in ("max_completion_tokens", "max_tokens"):
        value = data.get(key)
        if isinstance(value, int) and not isinstance(value, bool) and value > 0:
            return value
    return price.max_output_tokens or default_max
