"""Routing by power level: which deployments of a model group serve a request, in order.

A level (eco / balanced / precision, rows of ``power_level_configs``) names
preferred providers in order, a minimum quality score and a maximum latency.
A deployment's provider is ``model_info.provider`` when the LiteLLM config
sets it, else LiteLLM's own provider for the model; its quality score is
``model_info.quality_score`` (0..1), else ``default_quality_score``; its
latency is the mean over the recent window from the usage log, per deployment
(``model_info.id``).

The rule, in order, stopping at the first step that leaves any deployment:
  1. preferred provider, quality >= minimum, latency <= maximum;
  2. the same without the latency limit (latency is observed, so it can be
     stale or missing for a new deployment);
  3. any provider meeting quality and latency;
  4. any deployment of the group (best effort).
Within a step, deployments are ordered by the level's provider order, then by
price (cheapest first) for eco and by quality (best first) otherwise. The
request goes to the first; the rest are its fallbacks, in order. The step
that chose is recorded on the request as ``route_rule``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from litellm_credits.pricing import Price


@dataclass(frozen=True)
class LevelConfig:
    level: str
    multiplier: Decimal
    max_latency_ms: int
    min_quality: Decimal
    providers: tuple[str, ...]  # LiteLLM names, aliases already applied


@dataclass(frozen=True)
class Deployment:
    id: str
    model_group: str
    model: str
    provider: str
    api_base: str | None
    quality: Decimal
    price: Price | None

    @property
    def latency_key(self) -> tuple[str, str]:
        return (self.model_group, self.id)


@dataclass(frozen=True)
class Route:
    deployments: tuple[Deployment, ...]
    rule: str

    @property
    def ids(self) -> list[str]:
        return [d.id for d in self.deployments]


def level_from_row(row: Mapping[str, Any], aliases: Mapping[str, str]) -> LevelConfig:
    providers = tuple(aliases.get(p, p) for p in row["preferred_providers"])
    return LevelConfig(
        level=row["power_level"],
        multiplier=row["cost_multiplier"],
        max_latency_ms=int(row["max_latency_ms"]),
        min_quality=row["min_quality_score"],
        providers=providers,
    )


def _order(level: LevelConfig, d: Deployment) -> tuple[int, Decimal, Decimal]:
    try:
        preference = level.providers.index(d.provider)
    except ValueError:
        preference = len(level.providers)
    price = d.price.input_per_token + d.price.output_per_token if d.price else Decimal("Infinity")
    if level.level == "eco":
        return (preference, price, -d.quality)
    return (preference, -d.quality, price)


def choose(
    deployments: Iterable[Deployment],
    level: LevelConfig,
    latency_ms: Mapping[tuple[str, str], int],
) -> Route:
    """Order a model group's (priced) deployments for a level, by the module's rule."""
    pool = list(deployments)

    def fast(d: Deployment) -> bool:
        observed = latency_ms.get(d.latency_key)
        return observed is None or observed <= level.max_latency_ms

    def good(d: Deployment) -> bool:
        return d.quality >= level.min_quality

    def preferred(d: Deployment) -> bool:
        return d.provider in level.providers

    steps: Sequence[tuple[str, Any]] = (
        ("preferred", lambda d: preferred(d) and good(d) and fast(d)),
        ("latency_relaxed", lambda d: preferred(d) and good(d)),
        ("any_provider", lambda d: good(d) and fast(d)),
        ("best_effort", lambda d: True),
    )
    for rule, keep in steps:
        chosen = sorted((d for d in pool if keep(d)), key=lambda d: _order(level, d))
        if chosen:
            return Route(tuple(chosen), rule)
    return Route((), "none")
