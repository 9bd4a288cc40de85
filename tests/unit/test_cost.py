"""``litellm_credits.cost``: the charge equals LiteLLM's own cost to 1e-8 credits for every
pricing dimension, holds from the same prices never fall below it, and the zero-cost rule."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import litellm
import pytest
from litellm.types.utils import (
    CompletionTokensDetailsWrapper,
    ImageObject,
    ImageResponse,
    PromptTokensDetailsWrapper,
    Usage,
)

from litellm_credits.cost import (
    CREDIT_QUANTUM,
    credits_for_cost,
    litellm_cost_to_decimal,
    priced_dimensions,
    register_model_prices,
    settled_usd,
)
from litellm_credits.hold_prices import HoldRequest, UnitPrices, build_catalog, unit_prices

CREDITS_PER_USD = Decimal("10")
MULTIPLIERS = (Decimal("0.7"), Decimal("1.0"), Decimal("1.5"))


def sheet(model: str, key: str) -> Decimal:
    """A price from LiteLLM's map, as the decimal literal it was written as."""
    return Decimal(repr(litellm.model_cost[model][key]))


def credits(usd: Decimal, multiplier: Decimal) -> Decimal:
    return (usd * CREDITS_PER_USD * multiplier).quantize(CREDIT_QUANTUM, ROUND_HALF_EVEN)


@dataclass(frozen=True)
class Case:
    name: str
    engine_usd: float  # LiteLLM's cost, as the float its logging carries
    sheet_usd: Decimal  # the same cost from the price sheet, in exact Decimal
    usage: dict[str, Any]
    call_type: str
    dimensions: tuple[str, ...]
    deployment: dict[str, Any]
    hold: HoldRequest


def _usage_cost(model: str, usage: Usage, **kwargs: Any) -> float:
    prompt, completion = litellm.cost_per_token(model=model, usage_object=usage, **kwargs)
    return prompt + completion  # LiteLLM's response_cost is this float sum


def dep(model: str, **params: Any) -> dict[str, Any]:
    return {"litellm_params": {"model": model, **params},
            "model_info": {"id": f"{model}-{uuid.uuid4().hex[:6]}"}}


def cases() -> list[Case]:
    out: list[Case] = []
    claude = "claude-sonnet-4-20250514"
    # Anthropic prompt caching: a 1.25x write and a 0.1x read of the input price.
    u = Usage(prompt_tokens=1000, completion_tokens=200, cache_creation_input_tokens=300,
              cache_read_input_tokens=400,
              prompt_tokens_details=PromptTokensDetailsWrapper(cached_tokens=400,
                                                               cache_creation_tokens=300))
    out.append(Case(
        "anthropic cache write+read", _usage_cost(f"anthropic/{claude}", u),
        300 * sheet(claude, "input_cost_per_token")
        + 400 * sheet(claude, "cache_read_input_token_cost")
        + 300 * sheet(claude, "cache_creation_input_token_cost")
        + 200 * sheet(claude, "output_cost_per_token"),
        u.model_dump(), "acompletion",
        ("input", "cache_read", "cache_creation", "output"),
        dep(f"anthropic/{claude}"), HoldRequest(prompt_tokens=1000, max_output_tokens=200)))
    # OpenAI prompt caching: cached_tokens at the cache-read price.
    u = Usage(prompt_tokens=1000, completion_tokens=200,
              prompt_tokens_details=PromptTokensDetailsWrapper(cached_tokens=400))
    out.append(Case(
        "openai cached tokens", _usage_cost("gpt-4o", u),
        600 * sheet("gpt-4o", "input_cost_per_token")
        + 400 * sheet("gpt-4o", "cache_read_input_token_cost")
        + 200 * sheet("gpt-4o", "output_cost_per_token"),
        u.model_dump(), "acompletion", ("input", "cache_read", "output"),
        dep("openai/gpt-4o"), HoldRequest(prompt_tokens=1000, max_output_tokens=200)))
    # Cache prices declared on a deployment (registered under its id, as LiteLLM's router does).
    dep_id = f"dep-cache-{uuid.uuid4().hex[:8]}"
    declared = {"input_cost_per_token": 2e-06, "output_cost_per_token": 8e-06,
                "cache_read_input_token_cost": 5e-07, "cache_creation_input_token_cost": 2.5e-06}
    litellm.register_model({dep_id: {**declared, "litellm_provider": "openai", "mode": "chat"}})
    u = Usage(prompt_tokens=900, completion_tokens=100, cache_creation_input_tokens=200,
              prompt_tokens_details=PromptTokensDetailsWrapper(cached_tokens=500,
                                                               cache_creation_tokens=200))
    out.append(Case(
        "declared deployment cache prices", _usage_cost(dep_id, u),
        200 * Decimal("0.000002") + 500 * Decimal("0.0000005") + 200 * Decimal("0.0000025")
        + 100 * Decimal("0.000008"),
        u.model_dump(), "acompletion", ("input", "cache_read", "cache_creation", "output"),
        dep("openai/unmapped-model-x", **declared),
        HoldRequest(prompt_tokens=900, max_output_tokens=100)))
    # Chat with audio in and out.
    m = "gpt-4o-audio-preview"
    u = Usage(prompt_tokens=100, completion_tokens=500,
              prompt_tokens_details=PromptTokensDetailsWrapper(audio_tokens=60, text_tokens=40),
              completion_tokens_details=CompletionTokensDetailsWrapper(audio_tokens=450,
                                                                       text_tokens=50))
    out.append(Case(
        "chat audio in/out", _usage_cost(m, u),
        40 * sheet(m, "input_cost_per_token") + 60 * sheet(m, "input_cost_per_audio_token")
        + 50 * sheet(m, "output_cost_per_token") + 450 * sheet(m, "output_cost_per_audio_token"),
        u.model_dump(), "acompletion", ("input", "audio_in", "output", "audio_out"),
        dep(f"openai/{m}"), HoldRequest(prompt_tokens=100, max_output_tokens=500)))
    # Rerank per query.
    m = "rerank-english-v3.0"
    p, c = litellm.cost_per_token(model=f"cohere/{m}", call_type="rerank",
                                  rerank_billed_units={"search_units": 1})
    out.append(Case("rerank per query", p + c, sheet(m, "input_cost_per_query"), {}, "arerank",
                    ("query",), dep(f"cohere/{m}"), HoldRequest(documents=3)))
    # Speech per character and per token.
    p, c = litellm.cost_per_token(model="tts-1", call_type="speech", prompt_characters=123)
    out.append(Case("tts per character", p + c, 123 * sheet("tts-1", "input_cost_per_character"),
                    {}, "aspeech", ("character",), dep("openai/tts-1"),
                    HoldRequest(characters=123)))
    m = "gpt-4o-mini-tts"
    u = Usage(prompt_tokens=30, completion_tokens=400,
              completion_tokens_details=CompletionTokensDetailsWrapper(audio_tokens=400))
    out.append(Case(
        "tts per token", _usage_cost(m, u, call_type="speech"),
        30 * sheet(m, "input_cost_per_token") + 400 * sheet(m, "output_cost_per_audio_token"),
        u.model_dump(), "aspeech", ("input", "audio_out"), dep(f"openai/{m}"),
        HoldRequest(characters=150)))
    # Transcription per second.
    p, c = litellm.cost_per_token(model="whisper-1", call_type="transcription",
                                  audio_transcription_file_duration=12.5)
    out.append(Case("transcription per second", p + c,
                    Decimal("12.5") * sheet("whisper-1", "output_cost_per_second"), {},
                    "atranscription", ("second",), dep("openai/whisper-1"),
                    HoldRequest(seconds=12.5)))
    # Image per image.
    image = ImageResponse(created=0, data=[ImageObject(url="http://x/1.png"),
                                           ImageObject(url="http://x/2.png")])
    engine = litellm.completion_cost(completion_response=image, model="dall-e-3",
                                     call_type="image_generation", size="1024-x-1024",
                                     quality="standard", n=2)
    # LiteLLM prices dall-e-3 by its size/quality entry: per pixel, not the base per image.
    per_pixel = sheet("standard/1024-x-1024/dall-e-3", "input_cost_per_pixel")
    out.append(Case("image per pixel", engine, 2 * 1024 * 1024 * per_pixel,
                    {}, "aimage_generation", ("image",), dep("openai/dall-e-3"),
                    HoldRequest(images=2)))
    return out


CASES = cases()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
@pytest.mark.parametrize("multiplier", MULTIPLIERS)
def test_charge_equals_engine_cost(case: Case, multiplier: Decimal) -> None:
    assert case.engine_usd > 0
    charged = credits_for_cost(litellm_cost_to_decimal(case.engine_usd), CREDITS_PER_USD,
                               multiplier)
    assert abs(charged - credits(case.sheet_usd, multiplier)) <= CREDIT_QUANTUM, case.name
    assert charged == charged.quantize(CREDIT_QUANTUM)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_dimensions(case: Case) -> None:
    by_char = case.name == "tts per character"
    assert priced_dimensions(case.usage, case.call_type, speech_by_character=by_char) == \
        case.dimensions


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hold_covers_engine_cost(case: Case) -> None:
    prices = unit_prices(case.deployment)
    assert prices.priced, prices
    assert prices.hold_usd(case.hold) >= litellm_cost_to_decimal(case.engine_usd), prices


def test_image_hold_covers_the_dearest_size() -> None:
    image = ImageResponse(created=0, data=[ImageObject(url="http://x/1.png")])
    engine = litellm.completion_cost(completion_response=image, model="dall-e-3",
                                     call_type="image_generation", size="1792-x-1024",
                                     quality="hd", n=1)
    hold = unit_prices(dep("openai/dall-e-3")).hold_usd(HoldRequest(images=1))
    assert hold >= litellm_cost_to_decimal(engine) > Decimal("0.1")


def test_conversion_is_exact_and_refuses_garbage() -> None:
    assert litellm_cost_to_decimal(1.7e-05) == Decimal("0.000017")
    assert litellm_cost_to_decimal(0.036500000000000005) == Decimal("0.036500000000000005")
    assert litellm_cost_to_decimal(0.0) == 0
    for bad in (float("nan"), float("inf"), -1e-6):
        with pytest.raises(ValueError):
            litellm_cost_to_decimal(bad)
    with pytest.raises(TypeError):
        litellm_cost_to_decimal(True)


def test_quantum_is_on_credits_not_usd() -> None:
    # 1.23456789e-9 USD x 10 credits/USD = 1.23456789e-8 credits -> 0.00000001, whereas
    # rounding the USD to 1e-8 first would give 0.
    assert credits_for_cost(Decimal("1.23456789e-9"), CREDITS_PER_USD, Decimal(1)) == \
        Decimal("0.00000001")
    assert credits_for_cost(Decimal("0.001"), Decimal(10), Decimal("1.5"),
                            byok_fee_percent=Decimal(5)) == Decimal("0.00075000")


def test_zero_cost_rule() -> None:
    hold = Decimal("0.004")
    assert settled_usd(0.0, hold, has_usage=True, cache_hit=False) == (hold, True)
    assert settled_usd(None, hold, has_usage=True, cache_hit=False) == (hold, True)
    assert settled_usd(0.0, hold, has_usage=True, cache_hit=True) == (Decimal(0), False)
    assert settled_usd(0.0, hold, has_usage=False, cache_hit=False) == (Decimal(0), False)
    assert settled_usd(2e-05, hold, has_usage=True, cache_hit=False) == (Decimal("0.00002"),
                                                                         False)


def test_unpriced_deployments() -> None:
    assert not unit_prices(dep("openai/no-such-model-anywhere")).priced
    assert unit_prices(dep("openai/omni-moderation-latest")).priced  # free, not unknown
    assert not UnitPrices(mode="image_generation").priced
    assert not UnitPrices(mode="rerank").priced
    assert UnitPrices(mode="chat", output_per_token=Decimal("1e-6")).priced


def test_custom_prices_win_and_model_info_mode() -> None:
    d = dep("openai/gpt-4o", input_cost_per_token=1e-07, output_cost_per_token=2e-07)
    d["model_info"]["mode"] = "chat"
    prices = unit_prices(d)
    # gpt-4o's map prices stay as the other keys (cache read 1.25e-6, priority 4.25e-6), so the
    # highest input price is still the map's priority price: a hold never below any tier.
    assert prices.output_per_token >= Decimal("2e-7")
    d2 = dep("openai/unknown-custom", input_cost_per_token=1e-07, output_cost_per_token=2e-07)
    p2 = unit_prices(d2)
    assert (p2.input_per_token, p2.output_per_token) == (Decimal("1e-7"), Decimal("2e-7"))
    assert p2.hold_usd(HoldRequest(prompt_tokens=10, max_output_tokens=5)) == Decimal("2e-6")


def test_catalog_is_keyed_by_deployment_id() -> None:
    a, b = dep("openai/gpt-4o"), dep("openai/tts-1")
    catalog = build_catalog([a, b, {"litellm_params": {"model": "x"}}])
    assert set(catalog) == {a["model_info"]["id"], b["model_info"]["id"]}
    assert catalog[b["model_info"]["id"]].mode == "audio_speech"


def test_register_model_prices_feeds_the_engine() -> None:
    name = f"credits-custom-{uuid.uuid4().hex[:8]}"
    register_model_prices({name: {"input_cost_per_token": Decimal("0.0000015"),
                                  "output_cost_per_token": "0.000006",
                                  "cache_read_input_token_cost": 1.5e-07}})
    u = Usage(prompt_tokens=100, completion_tokens=10,
              prompt_tokens_details=PromptTokensDetailsWrapper(cached_tokens=40))
    usd = litellm_cost_to_decimal(_usage_cost(name, u))
    exact = 60 * Decimal("0.0000015") + 40 * Decimal("0.00000015") + 10 * Decimal("0.000006")
    assert abs(credits_for_cost(usd, CREDITS_PER_USD, Decimal(1)) - credits(exact, Decimal(1))) \
        <= CREDIT_QUANTUM
    assert unit_prices(dep(name)).priced


@pytest.mark.parametrize(("entry", "message"), [
    ({"input_cost_per_token": "-1"}, "cannot be negative"),
    ({"input_cost_per_token": "0.12345678901234567890"}, "more digits than a float"),
    ({"max_tokens": 5}, "not a LiteLLM cost key"),
    ({"input_cost_per_token": "abc"}, "not a number"),
])
def test_register_model_prices_refuses_bad_entries(entry: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        register_model_prices({"bad-model": entry})
