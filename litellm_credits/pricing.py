"""Prices per deployment and estimates per request, for the hold and for routing (I5, I7).

The charge itself is LiteLLM's own cost for the call (:mod:`litellm_credits.cost`); this
module holds what the hot path needs before the call, built once per catalog refresh:

* :func:`catalog_price`: one deployment's :class:`Price` - its base per-token prices (for
  the eco level's cheapest-first order) and :class:`~litellm_credits.hold_prices.UnitPrices` (for
  the hold, every mode: tokens, images, seconds, characters, queries), from LiteLLM's model
  info overlaid with ``model_prices`` of the credits config and then with the deployment's
  own custom prices (LiteLLM's precedence). None when the engine has no price for the
  deployment's mode: such a deployment is refused before the call (I5).
* :func:`hold_request`: what a request says about its size (prompt text, output limit,
  images and size, speech characters, rerank documents), read without a tokenizer.
* :func:`deployment_cache_defaults`: cache prices for a custom-priced deployment LiteLLM
  would price cached tokens of at 0 (see :func:`litellm_credits.cost.cache_price_defaults`).
* :func:`provider_reported_usd` / :func:`engine_cost_usd`: a provider's own stated cost
  (OpenRouter's ``usage.cost``) and the price map's cost of the same usage, for the drift
  metric.

Prices that LiteLLM stores as floats are converted through ``repr``, which gives back the
decimal literal they were written as (``1.5e-07``), not the binary approximation. The credit
arithmetic (``to_credits``, ``byok_fee``) is :mod:`litellm_credits.cost`'s, in one place.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

from litellm_credits import cost, hold_prices
from litellm_credits.config_schema import ModelPrice

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
    # The hold's unit prices, every mode (set by catalog_price; None for a bare token price).
    units: hold_prices.UnitPrices | None = dataclasses.field(default=None, compare=False)

    def hold_units(self) -> hold_prices.UnitPrices:
        """The unit prices a hold uses: the catalog's, else this token price as a chat model."""
        if self.units is not None:
            return self.units
        return hold_prices.UnitPrices(mode="chat", input_per_token=self.input_per_token,
                               output_per_token=self.output_per_token,
                               max_output_tokens=self.max_output_tokens)

    def usd(self, prompt_tokens: int, completion_tokens: int, cached_tokens: int = 0) -> Decimal:
        cached = min(max(cached_tokens, 0), max(prompt_tokens, 0))
        cache_price = (self.cache_read_per_token if self.cache_read_per_token is not None
                       else self.input_per_token)
        usd = ((prompt_tokens - cached) * self.input_per_token + cached * cache_price
               + completion_tokens * self.output_per_token)
        return usd.quantize(USD_PLACES, rounding=ROUND_HALF_EVEN)


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


def to_credits(usd: Decimal, credits_per_usd: Decimal, multiplier: Decimal) -> Decimal:
    """Credits charged = provider cost in USD x credits_per_usd x the level's multiplier."""
    return cost.full_credits(usd, credits_per_usd, multiplier)


def byok_fee(full_credits: Decimal, fee_percent: Decimal) -> Decimal:
    """What a BYOK request pays: a percentage of what it would have cost."""
    return cost.byok_share(full_credits, fee_percent)


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


# --- the hold: what the request says about its size ------------------------------------------

def _positive_int(value: Any) -> int | None:
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    return None


def _pixels(size: Any) -> int | None:
    """``"1024x1536"`` -> 1572864; anything else (``"auto"``, junk) -> None (the default)."""
    if not isinstance(size, str) or "x" not in size:
        return None
    width, _, height = size.partition("x")
    if width.isdigit() and height.isdigit() and 0 < len(width) <= 5 and 0 < len(height) <= 5:
        return int(width) * int(height)
    return None


def hold_request(data: Mapping[str, Any],
                 default_max: int | None = None) -> hold_prices.HoldRequest:
    """What a request says about its size, for every mode at once (the deployment's mode
    picks what it uses): prompt text (chat ``messages``, ``input`` of embeddings, responses
    and speech, completions ``prompt``, ``system``, rerank ``query`` + ``documents``), the
    output limit, ``n``/``size`` of images, the characters of speech input, the number of
    rerank documents. The file length of a transcription is unknown here: the hold's
    default seconds apply."""
    text = data.get("messages") or data.get("input") or data.get("prompt")
    prompt = estimate_prompt_tokens(text)
    if data.get("system"):  # Anthropic-style /v1/messages
        prompt += estimate_prompt_tokens(data.get("system"))
    documents = data.get("documents")
    n_documents = 0
    if isinstance(documents, Sequence) and not isinstance(documents, str):
        n_documents = len(documents)
        prompt += estimate_prompt_tokens(
            [d if isinstance(d, (str, Mapping)) else str(d) for d in documents])
    if isinstance(data.get("query"), str):
        prompt += estimate_prompt_tokens(data["query"]) * max(n_documents, 1)
    speech = data.get("input")
    max_out = None
    for key in ("max_completion_tokens", "max_tokens", "max_output_tokens"):
        max_out = _positive_int(data.get(key))
        if max_out is not None:
            break
    return hold_prices.HoldRequest(
        prompt_tokens=prompt,
        max_output_tokens=max_out if max_out is not None else default_max,
        images=_positive_int(data.get("n")) or 1,
        pixels=_pixels(data.get("size")),
        characters=len(speech) if isinstance(speech, str) else 0,
        documents=n_documents,
    )


# --- the catalog: one deployment's price ------------------------------------------------------

def _costs(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if "cost" in k and v is not None}


def configured_price(model_prices: Mapping[str, ModelPrice], model_group: str,
                     model: str) -> ModelPrice | None:
    """The ``model_prices`` entry for a deployment: by model group, then by model."""
    return model_prices.get(model_group) or model_prices.get(model)


def catalog_price(entry: Mapping[str, Any], model_prices: Mapping[str, ModelPrice],
                  cost_map: Mapping[str, Mapping[str, Any]]) -> Price | None:
    """A router deployment's price, or None when nothing prices its mode (I5).

    Precedence, as LiteLLM's own: the deployment's ``litellm_params`` costs, then its
    ``model_info`` costs, then ``model_prices`` of the credits config (by group, then model),
    then LiteLLM's model info for the model."""
    params = entry.get("litellm_params") or {}
    info = dict(entry.get("model_info") or {})
    group = str(entry.get("model_name", ""))
    model = str(params.get("model", ""))
    configured = configured_price(model_prices, group, model)
    if configured is not None:
        info = {**{k: float(v) for k, v in configured.costs.items()}, **info}
        if configured.mode and "mode" not in info:
            info["mode"] = configured.mode
    units = hold_prices.unit_prices({"litellm_params": params, "model_info": info})
    if not units.priced:
        return None
    base = price_for(params, group, model_prices, cost_map)
    if base is None:
        return Price(units.input_per_token, units.output_per_token,
                     max_output_tokens=units.max_output_tokens, source="litellm", units=units)
    return dataclasses.replace(base, units=units)


def custom_priced(entry: Mapping[str, Any]) -> bool:
    """LiteLLM prices this deployment from its own prices (``use_custom_pricing_for_model``):
    a cost key in ``litellm_params`` or ``model_info``."""
    return bool(_costs(entry.get("litellm_params") or {})
                or _costs(entry.get("model_info") or {}))


def deployment_cache_defaults(entry: Mapping[str, Any],
                              registered: Mapping[str, Any] | None) -> dict[str, Any]:
    """The cache prices to add to the cost entry LiteLLM's router registered for a
    custom-priced deployment (``litellm.model_cost[model_info.id]``, ``registered``), so its
    cached prompt tokens are billed at the input price instead of 0; {} when nothing is
    missing or the deployment is priced by LiteLLM's map."""
    if registered is None or not custom_priced(entry):
        return {}
    declared = {**_costs(entry.get("model_info") or {}), **_costs(entry.get("litellm_params")
                                                                   or {})}
    return {k: v for k, v in cost.cache_price_defaults({**registered, **declared}).items()
            if k not in declared}


# --- cost drift: the provider's own cost beside the price map's ------------------------------

_PROVIDER_COST_HEADER = "llm_provider-x-litellm-response-cost"


def provider_reported_usd(slo: Mapping[str, Any]) -> Decimal | None:
    """The cost the provider itself reported for the call (OpenRouter's ``usage.cost``, which
    LiteLLM keeps as the response header ``llm_provider-x-litellm-response-cost`` in its
    hidden params, and which then becomes its ``response_cost``)."""
    hidden = slo.get("hidden_params") or {}
    headers = hidden.get("additional_headers") if isinstance(hidden, Mapping) else None
    value = headers.get(_PROVIDER_COST_HEADER) if isinstance(headers, Mapping) else None
    # Not usage_object["cost"]: LiteLLM fills that with its own cost for any provider.
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float, str)):
        return None
    try:
        return cost.litellm_cost_to_decimal(float(value))
    except (ValueError, TypeError):
        return None


def engine_cost_usd(slo: Mapping[str, Any]) -> Decimal | None:
    """The engine's cost of the call's token usage from the prices it holds (the
    deployment's custom prices, registered under its id, else the map's), ignoring any
    provider-stated cost. About 60 us, so only called when the provider stated one; None if
    the engine cannot price it."""
    import litellm
    from litellm.types.utils import Usage

    usage = dict((slo.get("metadata") or {}).get("usage_object") or {})
    usage.pop("cost", None)
    model_id = slo.get("model_id")
    entry = litellm.model_cost.get(model_id) if isinstance(model_id, str) else None
    custom = isinstance(entry, Mapping) and entry.get("input_cost_per_token") is not None
    model = str(model_id if custom else slo.get("model") or "")
    try:
        prompt, completion = litellm.cost_per_token(
            model=model, custom_llm_provider=None if custom else slo.get("custom_llm_provider"),
            usage_object=Usage(**usage))
        return cost.litellm_cost_to_decimal(prompt + completion)
    except Exception:  # noqa: BLE001 - LiteLLM raises bare Exceptions; drift is only a metric
        return None
