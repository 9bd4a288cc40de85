"""Unit tests for litellm_credits.pricing: exact prices, per-request USD, price
precedence, credit conversion and rounding, and the prompt-token estimate."""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from litellm_credits.config_schema import ModelPrice
from litellm_credits.pricing import (
    Price,
    byok_fee,
    completion_budget,
    estimate_prompt_tokens,
    exact,
    price_for,
    to_credits,
)

D = Decimal
FAST = settings(max_examples=100, deadline=None)


def half_even(value: Fraction, places: int) -> Decimal:
    """Exact rational rounding to ``places`` decimals, half to even."""
    scaled = value * 10**places
    floor = scaled.numerator // scaled.denominator
    rest = scaled - floor
    if rest > Fraction(1, 2) or (rest == Fraction(1, 2) and floor % 2 == 1):
        floor += 1
    return D(floor).scaleb(-places)


# --- exact ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1.5e-07, D("1.5E-7")),
        (0.1, D("0.1")),
        (2.5e-06, D("0.0000025")),
        (3e-05, D("0.00003")),
        (1e-10, D("1E-10")),
        (0.30000000000000004, D("0.30000000000000004")),
        (7, D("7")),
        ("0.000015", D("0.000015")),
        ("1.25E-6", D("0.00000125")),
        (D("0.1000"), D("0.1000")),
    ],
)
def test_exact_reads_floats_through_their_repr(value: Any, expected: Decimal) -> None:
    result = exact(value)
    assert isinstance(result, Decimal)
    assert result == expected
    if isinstance(value, float) and value != 7:
        # Not the binary approximation that Decimal(float) would give.
        assert result != Decimal(value)


def test_exact_keeps_a_decimal_as_is() -> None:
    value = D("0.00000150")
    assert exact(value) is value


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_exact_refuses_non_finite_floats(value: float) -> None:
    with pytest.raises(ValueError, match="finite"):
        exact(value)


def test_exact_refuses_booleans() -> None:
    with pytest.raises(TypeError, match="boolean"):
        exact(True)


@FAST
@given(st.floats(allow_nan=False, allow_infinity=False))
def test_exact_round_trips_every_finite_float(value: float) -> None:
    assert float(exact(value)) == value
    assert exact(value) == Decimal(repr(value))


# --- Price.usd -------------------------------------------------------------------------------


def test_usd_with_and_without_cached_tokens() -> None:
    price = Price(exact(1.5e-07), exact(6e-07), exact(7.5e-08))
    assert price.usd(1000, 500) == D("0.0004500000")
    # 200 of the 1000 prompt tokens were read from the cache at half price.
    assert price.usd(1000, 500, 200) == D("0.0004350000")
    assert price.usd(0, 0) == D("0E-10")
    # Cached tokens beyond the prompt, or negative, are clipped.
    assert price.usd(100, 0, 1000) == price.usd(100, 0, 100) == D("0.0000075000")
    assert price.usd(100, 0, -5) == price.usd(100, 0) == D("0.0000150000")


def test_usd_without_a_cache_price_charges_cached_tokens_as_input() -> None:
    price = Price(D("0.000003"), D("0.000015"))
    assert price.usd(1000, 100, 400) == price.usd(1000, 100) == D("0.0045000000")


def test_usd_rounds_half_even_at_ten_places() -> None:
    price = Price(D("0.00000000005"), D("0"))  # half of the 10th decimal place per token
    assert price.usd(1, 0) == D("0E-10")            # 0.5e-10 -> 0 (even)
    assert price.usd(3, 0) == D("2E-10")            # 1.5e-10 -> 2e-10 (even)
    assert price.usd(5, 0) == D("2E-10")            # 2.5e-10 -> 2e-10 (even)


@FAST
@given(prompt=st.integers(0, 2_000_000), completion=st.integers(0, 200_000),
       cached=st.integers(-10, 2_000_000),
       inp=st.decimals(D("0"), D("0.001"), places=12),
       out=st.decimals(D("0"), D("0.001"), places=12),
       cache=st.one_of(st.none(), st.decimals(D("0"), D("0.001"), places=12)))
def test_usd_is_exact_rational_arithmetic(prompt: int, completion: int, cached: int,
                                          inp: Decimal, out: Decimal,
                                          cache: Decimal | None) -> None:
    got = Price(inp, out, cache).usd(prompt, completion, cached)
    hit = min(max(cached, 0), prompt)
    cache_price = inp if cache is None else cache
    want = (Fraction(prompt - hit) * Fraction(inp) + Fraction(hit) * Fraction(cache_price)
            + Fraction(completion) * Fraction(out))
    assert got == half_even(want, 10)
    assert got >= 0


# --- price_for ------------------------------------------------------------------------------

COST_MAP: dict[str, dict[str, Any]] = {
    "gpt-4o-mini": {"input_cost_per_token": 1.5e-07, "output_cost_per_token": 6e-07,
                    "cache_read_input_token_cost": 7.5e-08, "max_output_tokens": 16384},
    "openrouter/some/model": {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06,
                              "max_tokens": 4096},
    "half-priced": {"input_cost_per_token": 1e-06},
    "with-float-max": {"input_cost_per_token": 1e-06, "output_cost_per_token": 1e-06,
                       "max_output_tokens": 1000.0},
}
CONFIGURED = {
    "my-group": ModelPrice(D("0.000001"), D("0.000002")),
    "ollama/llama3": ModelPrice(D("0.0000001"), D("0.0000002")),
}


def test_deployment_params_win_over_everything() -> None:
    price = price_for({"model": "gpt-4o-mini", "input_cost_per_token": 2e-06,
                       "output_cost_per_token": "0.000004"}, "my-group", CONFIGURED, COST_MAP)
    assert price == Price(D("0.000002"), D("0.000004"), source="deployment")


def test_half_set_deployment_params_fall_through() -> None:
    price = price_for({"model": "gpt-4o-mini", "input_cost_per_token": 2e-06},
                      "other", CONFIGURED, COST_MAP)
    assert price is not None and price.source == "litellm"
    assert price.input_per_token == D("1.5E-7")


def test_config_by_model_group_then_model_beats_the_cost_map() -> None:
    by_group = price_for({"model": "gpt-4o-mini"}, "my-group", CONFIGURED, COST_MAP)
    assert by_group == Price(D("0.000001"), D("0.000002"), source="config")
    by_model = price_for({"model": "ollama/llama3"}, "local", CONFIGURED, COST_MAP)
    assert by_model == Price(D("0.0000001"), D("0.0000002"), source="config")


def test_cost_map_by_full_name_then_bare_name() -> None:
    full = price_for({"model": "openrouter/some/model"}, "g", {}, COST_MAP)
    assert full == Price(D("0.000001"), D("0.000002"), None, 4096, source="litellm")
    bare = price_for({"model": "openai/gpt-4o-mini"}, "g", {}, COST_MAP)
    assert bare == Price(D("1.5E-7"), D("6E-7"), D("7.5E-8"), 16384, source="litellm")
    assert bare.usd(1000, 1000, 1000) == D("0.0006750000")


def test_no_price_anywhere_is_none() -> None:
    assert price_for({"model": "mystery/model"}, "mystery", CONFIGURED, COST_MAP) is None
    assert price_for({}, "", {}, {}) is None
    # An entry without an output price is no price at all (never billed as 0, I5).
    assert price_for({"model": "half-priced"}, "g", {}, COST_MAP) is None


def test_cost_map_max_tokens_must_be_an_integer() -> None:
    price = price_for({"model": "with-float-max"}, "g", {}, COST_MAP)
    assert price is not None and price.max_output_tokens is None


# --- to_credits / byok_fee ------------------------------------------------------------------


def test_to_credits_examples() -> None:
    assert to_credits(D("0.000435"), D("100"), D("1.5")) == D("0.06525000")
    assert to_credits(D("0.0000000001"), D("10"), D("1")) == D("1E-9").quantize(D("1E-8"))
    assert to_credits(D("0.0000000005"), D("10"), D("1")) == D("0E-8")   # 5e-9 -> 0 (even)
    assert to_credits(D("0.0000000015"), D("10"), D("1")) == D("2E-8")   # 1.5e-8 -> 2e-8
    assert to_credits(D("0.0000000025"), D("10"), D("1")) == D("2E-8")   # 2.5e-8 -> 2e-8
    assert to_credits(D("1"), D("10"), D("0.7")) == D("7.00000000")
    assert str(to_credits(D("0"), D("10"), D("1.5"))) == "0E-8"


def test_byok_fee_examples() -> None:
    assert byok_fee(D("12.5"), D("10")) == D("1.25000000")
    assert byok_fee(D("0.00000015"), D("10")) == D("2E-8")   # 1.5e-8 -> 2e-8
    assert byok_fee(D("0.00000025"), D("10")) == D("2E-8")   # 2.5e-8 -> 2e-8
    assert byok_fee(D("5"), D("0")) == D("0E-8")
    assert byok_fee(D("5"), D("100")) == D("5.00000000")


# Ranges where every product has at most 28 significant digits (Decimal's default
# context): 14 (usd) + 8 (credits per usd) + 5 (multiplier) = 27.
usd_values = st.decimals(D("0"), D("1000"), places=10)
cpu_values = st.decimals(D("0.01"), D("100000"), places=2)
multipliers = st.decimals(D("0.001"), D("99.999"), places=3)


@FAST
@given(usd=usd_values, cpu=cpu_values, mult=multipliers)
def test_to_credits_is_exact_and_rounds_half_even(usd: Decimal, cpu: Decimal,
                                                  mult: Decimal) -> None:
    got = to_credits(usd, cpu, mult)
    assert got == half_even(Fraction(usd) * Fraction(cpu) * Fraction(mult), 8)
    assert got >= 0
    assert got.as_tuple().exponent == -8


@FAST
@given(a=usd_values, b=usd_values, cpu=cpu_values, mult=multipliers)
def test_to_credits_is_monotone(a: Decimal, b: Decimal, cpu: Decimal, mult: Decimal) -> None:
    low, high = sorted((a, b))
    assert to_credits(low, cpu, mult) <= to_credits(high, cpu, mult)


@FAST
@given(full=st.decimals(D("0"), D("1000000000"), places=8),
       fee=st.decimals(D("0"), D("100"), places=2))
def test_byok_fee_is_exact_bounded_and_never_negative(full: Decimal, fee: Decimal) -> None:
    got = byok_fee(full, fee)
    assert got == half_even(Fraction(full) * Fraction(fee) / 100, 8)
    assert D(0) <= got <= full


# --- estimates ------------------------------------------------------------------------------


def test_estimate_prompt_tokens_shapes() -> None:
    assert estimate_prompt_tokens("abcd" * 10) == 20 + 8
    assert estimate_prompt_tokens([{"role": "user", "content": "x" * 40}]) == 8 + 20 + 8
    parts = [{"type": "text", "text": "y" * 10}, {"type": "image_url", "image_url": {}}]
    assert estimate_prompt_tokens([{"role": "user", "content": parts}]) == 8 + 5 + 800 + 8
    # A message without text content adds nothing; a plain string counts as text (a
    # completions prompt given as a list of strings); a token id counts as one token.
    assert estimate_prompt_tokens([{"role": "assistant", "content": None}, "odd"]) == 8 + 1 + 8
    assert estimate_prompt_tokens([101, 102, 103]) == 8 + 3
    assert estimate_prompt_tokens(None) == 8
    assert estimate_prompt_tokens("é" * 10) == 10 + 8  # counted in UTF-8 bytes


@FAST
@given(texts=st.lists(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126)),
                      min_size=1, max_size=6))
def test_estimate_upper_bounds_a_four_chars_per_token_proxy(texts: list[str]) -> None:
    messages = [{"role": "user", "content": t} for t in texts]
    proxy = sum(len(t) for t in texts) / 4
    assert estimate_prompt_tokens(messages) >= proxy
    assert estimate_prompt_tokens("".join(texts)) >= proxy
    # And it grows with the text.
    assert estimate_prompt_tokens(messages + [{"role": "user", "content": "z" * 100}]) > \
        estimate_prompt_tokens(messages)


def test_completion_budget_precedence() -> None:
    price = Price(D("1"), D("1"), max_output_tokens=8192)
    assert completion_budget({"max_completion_tokens": 100, "max_tokens": 50}, price, 4096) \
        == 100
    assert completion_budget({"max_tokens": 50}, price, 4096) == 50
    assert completion_budget({"max_tokens": 0}, price, 4096) == 8192
    assert completion_budget({"max_tokens": True}, price, 4096) == 8192
    assert completion_budget({"max_tokens": "50"}, price, 4096) == 8192
    assert completion_budget({}, Price(D("1"), D("1")), 4096) == 4096
