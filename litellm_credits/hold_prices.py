"""Per-deployment unit prices and the hold estimates made from them (I5).

A hold must never be below what LiteLLM's engine will charge, yet the engine costs ~60 us
per call and the hot path's budget is ~0.1 ms. So the unit prices of every deployment
(:class:`UnitPrices`) are read ONCE from LiteLLM's model info plus the deployment's own
custom prices when the catalog is built (:func:`unit_prices`, :func:`build_catalog`),
taking the highest price of each dimension; a hold is then a few Decimal products
(:meth:`UnitPrices.hold_usd`) from what the pre-call hook knows (:class:`HoldRequest`) and
the assumptions where it knows nothing (:class:`HoldDefaults`).

The charge itself, and the exact conversion of LiteLLM's numbers, are
:mod:`litellm_credits.cost`'s.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Final

import litellm

from litellm_credits.cost import exact_decimal

__all__ = [
    "HoldDefaults",
    "HoldRequest",
    "UnitPrices",
    "build_catalog",
    "unit_prices",
]

_ZERO: Final = Decimal(0)


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
            best = max(best, exact_decimal(value, key))
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
