"""The price of a call from LiteLLM's own cost engine, in exact Decimal (I5, I7).

This module owns three things:

* **Settlement cost.** LiteLLM computes ``response_cost`` for every logged call with every
  pricing dimension it knows (cache writes and reads, audio in and out, reasoning, images,
  characters, seconds, queries, tiered prices, the deployment's custom prices). The charge is
  that cost, converted exactly (:func:`litellm_cost_to_decimal`), times credits per USD and the
  level's multiplier, quantized once to 1e-8 credits (:func:`credits_for_cost`). A served call
  with usage, no cache hit and an engine cost of 0 is billed its hold instead
  (:func:`settled_usd`): never free by accident.
* **Holds.** Per-deployment unit prices (:class:`UnitPrices`) read ONCE from LiteLLM's model
  info plus the deployment's own custom prices when the catalog is built; a hold is then a few
  Decimal products (:meth:`UnitPrices.hold_usd`), because the engine itself costs ~60 us per
  call and the hot path's budget is ~0.1 ms.
* **Registration** of the credits config's ``model_prices`` into LiteLLM
  (:func:`register_model_prices`), so the same engine prices them.
"""

from __future__ import annotations

import decimal
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any, Final

import litellm

__all__ = [
    "CREDIT_QUANTUM",
    "HoldDefaults",
    "HoldRequest",
    "UnitPrices",
    "build_catalog",
    "byok_share",
    "cache_price_defaults",
    "credits_for_cost",
    "full_credits",
    "litellm_cost_to_decimal",
    "priced_dimensions",
    "register_model_prices",
    "settled_usd",
    "unit_prices",
]

CREDIT_QUANTUM: Final = Decimal("0.00000001")
_ZERO: Final = Decimal(0)
_HUNDRED: Final = Decimal(100)
# Products of a few 28-digit factors are exact at 100 digits: the only rounding is the final
# quantize of the credits (rounding the USD first would lose up to 0.5e-8 x credits_per_usd).
_EXACT: Final = decimal.Context(prec=100, rounding=ROUND_HALF_EVEN)


def _exact(value: object, what: str) -> Decimal:
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
    usd = _exact(x, "response_cost")
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


# --- per-deployment unit prices for holds -------------------------------------------------

@dataclass(frozen=True, slots=True)
class HoldDefaults:
    """Assumptions where a request does not say how much it will use (proposed YAML keys
    under ``holds:`` of the same names)."""

    max_output_tokens: int = 4096
    transcription_seconds: int = 600  # the audio's length is unknown before the call
    speech_audio_tokens_per_character: Decimal = Decimal(2)  # ~1.4 for English speech
    image_tokens: int = 6240  # gpt-image-1's largest output (high quality, 1536x1024)
    image_pixels: int = 1792 * 1024  # dall-e-3's largest size


@dataclass(frozen=True, slots=True)
class HoldRequest:
    """What the pre-call hook knows about a request, per mode."""

    prompt_tokens: int = 0
    max_output_tokens: int | None = None
    images: int = 1
    pixels: int | None = None
    characters: int = 0
    seconds: float | None = None
    documents: int = 0


@dataclass(frozen=True, slots=True)
class UnitPrices:
    """The highest USD unit prices of one deployment, per dimension, for a hold that is
    never below the engine's cost (tiered, priority and cache-write prices included)."""

    mode: str
    input_per_token: Decimal = _ZERO
    output_per_token: Decimal = _ZERO
    per_image: Decimal = _ZERO
    per_pixel: Decimal = _ZERO
    per_image_token: Decimal = _ZERO
    per_second: Decimal = _ZERO
    per_character: Decimal = _ZERO
    per_query: Decimal = _ZERO
    max_output_tokens: int | None = None

    @property
    def priced(self) -> bool:
        """True when the engine has a price for this mode (I5: unpriced is refused)."""
        if self.mode == "moderation":
            return True  # free by the provider's price sheet, not by accident
        if self.mode == "image_generation":
            return self.per_image > 0 or self.per_pixel > 0 or self.per_image_token > 0
        if self.mode == "audio_transcription":
            return self.per_second > 0 or self.input_per_token > 0
        if self.mode == "audio_speech":
            return self.per_character > 0 or self.input_per_token > 0 or self.per_second > 0
        if self.mode == "rerank":
            return self.per_query > 0 or self.input_per_token > 0
        if self.mode == "embedding":
            return self.input_per_token > 0
        return self.input_per_token > 0 or self.output_per_token > 0

    def hold_usd(self, request: HoldRequest, defaults: HoldDefaults = HoldDefaults()) -> Decimal:
        """An upper estimate of the call's USD cost (exact Decimal arithmetic, no engine call)."""
        mode = self.mode
        prompt = Decimal(max(request.prompt_tokens, 0))
        if mode == "image_generation":
            pixels = request.pixels or defaults.image_pixels
            one = max(self.per_image, self.per_pixel * pixels,
                      self.per_image_token * defaults.image_tokens)
            return prompt * self.input_per_token + one * max(request.images, 1)
        if mode == "audio_transcription":
            seconds = (Decimal(repr(request.seconds)) if request.seconds is not None
                       else Decimal(defaults.transcription_seconds))
            # token-priced transcription models see ~10 audio tokens per second
            audio_tokens = seconds * 10
            return (seconds * self.per_second + audio_tokens * self.input_per_token
                    + self._output(request, defaults))
        if mode == "audio_speech":
            chars = Decimal(max(request.characters, 0))
            audio_tokens = chars * defaults.speech_audio_tokens_per_character
            by_seconds = self.per_second * (chars / 10)  # speech runs ~15 characters/s: 10 is safe
            return (chars * self.per_character + chars * self.input_per_token
                    + audio_tokens * self.output_per_token + by_seconds)
        if mode == "rerank":
            queries = max(1, -(-request.documents // 100))  # Cohere: 1 unit per 100 documents
            return queries * self.per_query + prompt * self.input_per_token
        if mode == "embedding":
            return prompt * self.input_per_token
        return prompt * self.input_per_token + self._output(request, defaults)

    def _output(self, request: HoldRequest, defaults: HoldDefaults) -> Decimal:
        limit = request.max_output_tokens or self.max_output_tokens or defaults.max_output_tokens
        if self.max_output_tokens:
            limit = min(limit, self.max_output_tokens)
        return Decimal(limit) * self.output_per_token


_INPUT_TOKEN_PREFIXES: Final = ("input_cost_per_token", "cache_creation_input_token_cost",
                                "cache_read_input_token_cost", "input_cost_per_audio_token")
_OUTPUT_TOKEN_PREFIXES: Final = ("output_cost_per_token", "output_cost_per_audio_token",
                                 "output_cost_per_reasoning_token")


def _max_price(info: Mapping[str, Any], prefixes: Iterable[str]) -> Decimal:
    """The highest of the prices whose key starts with one of ``prefixes`` (batch prices
    apply only to batches, which are refused, so they are left out)."""
    best = _ZERO
    for key, value in info.items():
        if value is None or key.endswith("_batches") or not key.startswith(tuple(prefixes)):
            continue
        if isinstance(value, (int, float, str, Decimal)) and not isinstance(value, bool):
            best = max(best, _exact(value, key))
    return best


def _price(info: Mapping[str, Any], *keys: str) -> Decimal:
    return _max_price(info, keys)


def _engine_info(model: str) -> dict[str, Any]:
    """LiteLLM's own model info for ``model`` ("provider/name" or a registered name)."""
    try:
        info = litellm.get_model_info(model=model)
    except Exception:  # noqa: BLE001 - LiteLLM raises a bare Exception for an unmapped model;
        # an empty info leaves the deployment unpriced, so it is refused, never free.
        return {}
    return dict(info)


def _size_variant_pixel_price(model: str) -> Decimal:
    """The highest per-pixel price of an image model's size/quality entries
    (``hd/1792-x-1024/dall-e-3``...): LiteLLM prices an image by the entry of its size and
    quality, so the hold takes the dearest one."""
    base = model.split("/")[-1]
    suffix = f"/{base}"
    best = _ZERO
    for key, entry in litellm.model_cost.items():
        if key.endswith(suffix) and isinstance(entry, Mapping):
            best = max(best, _price(entry, "input_cost_per_pixel", "output_cost_per_pixel"))
    return best


def unit_prices(deployment: Mapping[str, Any]) -> UnitPrices:
    """Unit prices of one router deployment (``{"litellm_params": ..., "model_info": ...}``):
    LiteLLM's model info, overlaid with the cost keys of ``model_info`` and then of
    ``litellm_params`` (LiteLLM's own precedence for custom prices)."""
    params = deployment.get("litellm_params") or {}
    model_info = deployment.get("model_info") or {}
    info = _engine_info(str(params.get("model", "")))
    for source in (model_info, params):
        info.update({k: v for k, v in source.items() if "cost" in k and v is not None})
    mode = str(model_info.get("mode") or info.get("mode") or "chat")
    per_pixel = _price(info, "input_cost_per_pixel", "output_cost_per_pixel")
    if mode == "image_generation":
        per_pixel = max(per_pixel, _size_variant_pixel_price(str(params.get("model", ""))))
    max_out = info.get("max_output_tokens")
    return UnitPrices(
        mode=mode,
        input_per_token=_max_price(info, _INPUT_TOKEN_PREFIXES),
        output_per_token=_max_price(info, _OUTPUT_TOKEN_PREFIXES),
        per_image=_price(info, "input_cost_per_image", "output_cost_per_image"),
        per_pixel=per_pixel,
        per_image_token=_price(info, "output_cost_per_image_token"),
        per_second=_price(info, "input_cost_per_second", "output_cost_per_second"),
        per_character=_price(info, "input_cost_per_character"),
        per_query=_price(info, "input_cost_per_query"),
        max_output_tokens=max_out if isinstance(max_out, int) and max_out > 0 else None,
    )


def build_catalog(model_list: Iterable[Mapping[str, Any]]) -> dict[str, UnitPrices]:
    """Unit prices for every deployment, keyed by ``model_info.id``; built once per catalog
    refresh so the hot path only does dict lookups."""
    catalog: dict[str, UnitPrices] = {}
    for deployment in model_list:
        model_id = (deployment.get("model_info") or {}).get("id")
        if model_id is not None:
            catalog[str(model_id)] = unit_prices(deployment)
    return catalog


# --- model_prices from the credits config -------------------------------------------------

def _as_float(value: object, what: str) -> float:
    exact = _exact(value, what)
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
