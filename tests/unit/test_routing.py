"""Unit tests for litellm_credits.routing.choose: the four steps, provider
preference, quality and latency filters, and the order within a step."""

from __future__ import annotations

from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from litellm_credits.config_schema import DEFAULT_PROVIDER_ALIASES
from litellm_credits.pricing import Price
from litellm_credits.routing import Deployment, LevelConfig, Route, choose, level_from_row

D = Decimal

# The seed's three levels, with LiteLLM's provider names.
ECO = LevelConfig("eco", D("0.7"), 5000, D("0.70"), ("openrouter", "together_ai", "deepinfra"))
BALANCED = LevelConfig("balanced", D("1.0"), 3000, D("0.85"), ("openai", "anthropic",
                                                                "openrouter"))
PRECISION = LevelConfig("precision", D("1.5"), 2000, D("0.95"), ("anthropic", "openai"))


def dep(id_: str, provider: str, quality: str, price: str | None = "0.000001",
        api_base: str | None = None, group: str = "chat") -> Deployment:
    p = None if price is None else Price(D(price), D(price))
    return Deployment(id=id_, model_group=group, model=f"{provider}/{id_}", provider=provider,
                      api_base=api_base, quality=D(quality), price=p)


def lat(d: Deployment, ms: int) -> dict[tuple[str, str, str], int]:
    return {d.latency_key: ms}


def test_level_from_row_applies_aliases() -> None:
    row = {"power_level": "eco", "cost_multiplier": D("0.700"), "max_latency_ms": 5000,
           "min_quality_score": D("0.700"),
           "preferred_providers": ["openrouter", "together", "deepinfra"]}
    level = level_from_row(row, DEFAULT_PROVIDER_ALIASES)
    assert level == LevelConfig("eco", D("0.7"), 5000, D("0.7"),
                                ("openrouter", "together_ai", "deepinfra"))


def test_step_1_preferred_providers_in_preference_order() -> None:
    anthropic = dep("claude", "anthropic", "0.99")
    openai = dep("gpt", "openai", "0.90")
    openrouter = dep("or", "openrouter", "0.95")
    other = dep("mistral", "mistral", "0.99")
    route = choose([other, openrouter, anthropic, openai], BALANCED, {})
    # Provider order beats quality; the non-preferred provider is not a fallback here.
    assert route == Route((openai, anthropic, openrouter), "preferred")
    assert route.ids == ["gpt", "claude", "or"]


def test_quality_filter_is_inclusive_at_the_minimum() -> None:
    exactly = dep("ok", "openai", "0.85")
    below = dep("low", "openai", "0.8499")
    route = choose([below, exactly], BALANCED, {})
    assert (route.ids, route.rule) == (["ok"], "preferred")


def test_latency_filter_and_unknown_latency_counts_as_fast() -> None:
    slow = dep("slow", "openai", "0.9", api_base="https://slow")
    fast = dep("fast", "openai", "0.9", api_base="https://fast")
    new = dep("new", "anthropic", "0.9")
    latency = {slow.latency_key: 3001, fast.latency_key: 3000}
    route = choose([slow, fast, new], BALANCED, latency)
    assert (route.ids, route.rule) == (["fast", "new"], "preferred")


def test_latency_is_keyed_by_group_and_deployment_id() -> None:
    a = dep("a", "openai", "0.9", api_base="https://x", group="g1")
    assert a.latency_key == ("g1", "a")
    assert dep("b", "openai", "0.9").latency_key == ("chat", "b")
    other_group = {("g2", "a"): 99999}
    assert choose([a], BALANCED, other_group).rule == "preferred"


def test_step_2_relaxes_latency_when_every_preferred_one_is_slow() -> None:
    slow_openai = dep("o", "openai", "0.9")
    slow_anthropic = dep("a", "anthropic", "0.96")
    fast_other = dep("m", "mistral", "0.99")  # fast and good, but not preferred
    latency = {**lat(slow_openai, 9000), **lat(slow_anthropic, 4000)}
    route = choose([fast_other, slow_anthropic, slow_openai], BALANCED, latency)
    assert (route.ids, route.rule) == (["o", "a"], "latency_relaxed")


def test_step_3_any_provider_meeting_quality_and_latency() -> None:
    weak_openai = dep("o", "openai", "0.5")
    good_mistral = dep("m", "mistral", "0.9")
    good_but_slow = dep("s", "cohere", "0.99")
    good_groq = dep("g", "groq", "0.95")
    latency = lat(good_but_slow, 10_000)
    route = choose([weak_openai, good_mistral, good_but_slow, good_groq], BALANCED, latency)
    # Not preferred: ordered by quality (best first) for a non-eco level.
    assert (route.ids, route.rule) == (["g", "m"], "any_provider")


def test_step_4_best_effort_takes_every_deployment() -> None:
    weak = [dep("o", "openai", "0.5"), dep("m", "mistral", "0.6"), dep("a", "anthropic", "0.4")]
    latency = lat(weak[1], 1)
    route = choose(weak, BALANCED, latency)
    # Preferred providers first (openai, anthropic), then the rest.
    assert (route.ids, route.rule) == (["o", "a", "m"], "best_effort")


def test_good_but_slow_non_preferred_falls_to_best_effort() -> None:
    slow = dep("s", "cohere", "0.99")
    route = choose([slow], BALANCED, lat(slow, 10_000))
    assert (route.ids, route.rule) == (["s"], "best_effort")


def test_nothing_to_choose_from() -> None:
    assert choose([], BALANCED, {}) == Route((), "none")
    assert choose(iter([]), ECO, {}).ids == []


def test_eco_orders_by_price_within_a_provider() -> None:
    pricey = dep("pricey", "openrouter", "0.99", price="0.00001")
    cheap = dep("cheap", "openrouter", "0.71", price="0.000001")
    unpriced = dep("unpriced", "openrouter", "0.99", price=None)
    together = dep("tg", "together_ai", "0.9", price="0.0000001")
    route = choose([pricey, unpriced, together, cheap], ECO, {})
    # Provider order first, then cheapest; a deployment with no price sorts last.
    assert (route.ids, route.rule) == (["cheap", "pricey", "unpriced", "tg"], "preferred")


def test_eco_breaks_price_ties_by_quality() -> None:
    a = dep("a", "deepinfra", "0.75", price="0.000002")
    b = dep("b", "deepinfra", "0.95", price="0.000002")
    assert choose([a, b], ECO, {}).ids == ["b", "a"]


def test_precision_orders_by_quality_then_price() -> None:
    good = dep("good", "anthropic", "0.96", price="0.000001")
    best = dep("best", "anthropic", "0.99", price="0.0001")
    best_cheaper = dep("best-cheap", "anthropic", "0.99", price="0.00005")
    openai = dep("gpt", "openai", "0.999", price="0.0000001")
    too_weak = dep("weak", "anthropic", "0.94")
    route = choose([good, openai, best, too_weak, best_cheaper], PRECISION, {})
    assert (route.ids, route.rule) == (["best-cheap", "best", "good", "gpt"], "preferred")


def test_precision_latency_limit_is_stricter_than_eco() -> None:
    d = dep("d", "openrouter", "0.99")
    latency = lat(d, 2500)
    assert choose([d], ECO, latency).rule == "preferred"
    assert choose([d], PRECISION, latency).rule == "best_effort"  # not preferred, too slow


providers = st.sampled_from(["openai", "anthropic", "openrouter", "together_ai", "deepinfra",
                             "mistral", "groq"])


@settings(max_examples=100, deadline=None)
@given(
    specs=st.lists(st.tuples(providers, st.decimals(D("0"), D("1"), places=2),
                             st.one_of(st.none(), st.integers(1, 10_000)),
                             st.one_of(st.none(), st.decimals(D("0"), D("0.001"), places=8))),
                   max_size=8),
    level=st.sampled_from([ECO, BALANCED, PRECISION]),
)
def test_choose_properties(specs: list[tuple[str, Decimal, int | None, Decimal | None]],
                           level: LevelConfig) -> None:
    deployments = []
    latency: dict[tuple[str, str, str], int] = {}
    for i, (provider, quality, ms, price) in enumerate(specs):
        d = Deployment(f"d{i}", "chat", f"m{i}", provider, f"https://{i}", quality,
                       None if price is None else Price(price, price))
        deployments.append(d)
        if ms is not None:
            latency[d.latency_key] = ms
    route = choose(deployments, level, latency)
    if not deployments:
        assert route.rule == "none"
        return
    chosen = list(route.deployments)
    assert len(set(route.ids)) == len(chosen) > 0
    assert set(chosen) <= set(deployments)

    def fast(d: Deployment) -> bool:
        return latency.get(d.latency_key, 0) <= level.max_latency_ms

    def good(d: Deployment) -> bool:
        return d.quality >= level.min_quality

    preferred = [d for d in deployments if d.provider in level.providers]
    if any(good(d) and fast(d) for d in preferred):
        assert route.rule == "preferred"
        assert all(d.provider in level.providers and good(d) and fast(d) for d in chosen)
    elif any(good(d) for d in preferred):
        assert route.rule == "latency_relaxed"
    elif any(good(d) and fast(d) for d in deployments):
        assert route.rule == "any_provider"
    else:
        assert route.rule == "best_effort"
        assert len(chosen) == len(deployments)
    # Provider preference never goes backwards along the route.
    ranks = [level.providers.index(d.provider) if d.provider in level.providers
             else len(level.providers) for d in chosen]
    assert ranks == sorted(ranks)


@pytest.mark.parametrize("level", [ECO, BALANCED, PRECISION])
def test_seed_levels_pick_their_own_providers_first(level: LevelConfig) -> None:
    pool = [dep(p, p, "0.99") for p in ("openai", "anthropic", "openrouter", "together_ai",
                                        "deepinfra")]
    route = choose(pool, level, {})
    assert route.rule == "preferred"
    assert tuple(d.provider for d in route.deployments) == level.providers
