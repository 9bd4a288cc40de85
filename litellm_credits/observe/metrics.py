"""Prometheus metrics of the plugin, served at ``/credits/metrics``.

Labels are bounded: power level, provider (from the config), outcome, type.
Never a user id. Credits are exported as floats because Prometheus has no
other number type; the ledger itself stays Decimal and the database is the
source of truth for money.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

_children: dict[tuple[int, tuple[str, ...]], Any] = {}


def count(metric: Counter, *labels: str, amount: float = 1) -> None:
    """``metric.labels(*labels).inc(amount)`` for the request path.

    ``labels()`` takes a lock and re-validates every call; the label sets here
    are few and bounded, so their children are looked up once and kept.
    """
    key = (id(metric), labels)
    child = _children.get(key)
    if child is None:
        child = _children[key] = metric.labels(*labels)
    child.inc(amount)

REQUESTS = Counter(
    "credits_requests_total",
    "Requests seen by the plugin, by power level, provider and outcome "
    "(served, rejected_402, rejected_429, rejected_401, rejected_other, failed, unavailable_503)",
    ["power_level", "provider", "outcome"],
    registry=REGISTRY,
)
BYOK_REQUESTS = Counter(
    "credits_byok_requests_total",
    "Served requests by key source (byok or platform)",
    ["key_source", "provider"],
    registry=REGISTRY,
)
CREDITS_DEBITED = Counter(
    "credits_debited_total",
    "Credits charged for served requests, as settled by this process",
    ["power_level"],
    registry=REGISTRY,
)
CREDITS_GRANTED = Counter(
    "credits_granted_total",
    "Credits added through this process, by transaction type",
    ["type"],
    registry=REGISTRY,
)
PURCHASE_REVENUE = Counter(
    "credits_purchase_revenue_usd_total",
    "Money received for credit purchases through the Stripe webhook (USD)",
    registry=REGISTRY,
)
HOLDS = Counter(
    "credits_holds_total",
    "Holds by event: placed, settled, expired",
    ["event"],
    registry=REGISTRY,
)
WRITER_QUEUE = Gauge(
    "credits_writer_queue_depth", "Settlement records waiting in memory", registry=REGISTRY
)
WRITER_BATCH_SIZE = Histogram(
    "credits_writer_batch_size",
    "Records per settlement batch",
    buckets=(1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500),
    registry=REGISTRY,
)
WRITER_BATCH_SECONDS = Histogram(
    "credits_writer_batch_seconds",
    "Time to settle one batch",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
    registry=REGISTRY,
)
WRITER_FAILURES = Counter(
    "credits_writer_failures_total", "Batches the database did not take", registry=REGISTRY
)
SPOOL_DEPTH = Gauge(
    "credits_spool_depth", "Settlement records waiting in the durable spool", registry=REGISTRY
)
HOOK_SECONDS = Histogram(
    "credits_pre_call_hook_seconds",
    "Time spent in the pre-call hook, database round trip included",
    buckets=(0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.025, 0.05, 0.1, 0.25, 1),
    registry=REGISTRY,
)
USERS_BELOW_THRESHOLD = Gauge(
    "credits_users_below_threshold",
    "Accounts whose balance is below their low-balance threshold",
    registry=REGISTRY,
)
ALERTS_SENT = Counter(
    "credits_alerts_total", "Low-balance alerts by kind and delivery result",
    ["kind", "result"], registry=REGISTRY,
)
UNBILLED_SUCCESSES = Counter(
    "credits_unbilled_successes_total",
    "Successful calls that never passed the pre-call hook (health checks; anything else is a bug)",
    registry=REGISTRY,
)
EARLY_SETTLEMENT_FALLBACKS = Counter(
    "credits_early_settlement_fallbacks_total",
    "Served requests settled from LiteLLM's success event (after the response) instead of "
    "being journaled before it, by reason",
    ["reason"], registry=REGISTRY,
)
STREAMS_CUT_BILLED = Counter(
    "credits_streams_cut_billed_total",
    "Streams the provider cut short after text reached the client, billed for that text",
    registry=REGISTRY,
)
ZERO_COST_BILLED_HOLD = Counter(
    "credits_zero_cost_billed_hold_total",
    "Served calls with usage, no cache hit and an engine cost of 0 (or none): billed their "
    "hold instead of 0 (I5); any of these means a price is missing in LiteLLM's engine",
    ["call_type"],
    registry=REGISTRY,
)
ZERO_COMPLETION_INSURED = Counter(
    "credits_zero_completion_insured_total",
    "Calls with zero output tokens and an error or blank finish reason, not billed "
    "(zero-completion insurance)",
    ["call_type"],
    registry=REGISTRY,
)
ROUTE_REFUSALS = Counter(
    "credits_route_refusals_total",
    "Requests the route guard refused because the plugin cannot bill their route family",
    ["family"],
    registry=REGISTRY,
)
COST_DRIFT_RATIO = Histogram(
    "credits_cost_drift_ratio",
    "Provider-reported cost / the engine's cost of the same usage, per call where the "
    "provider reports one (OpenRouter's usage.cost); 1 is no drift",
    ["provider"],
    buckets=(0.5, 0.8, 0.9, 0.95, 0.99, 0.999, 1.001, 1.01, 1.05, 1.1, 1.25, 2),
    registry=REGISTRY,
)
COST_DRIFT_USD = Counter(
    "credits_cost_drift_usd_total",
    "Sum of |provider-reported cost - engine cost| in USD, per provider",
    ["provider"],
    registry=REGISTRY,
)


def cost_drift(provider: str, reported: Decimal, engine: Decimal) -> None:
    """Note one call's drift (Decimal -> float only here, for Prometheus)."""
    count(COST_DRIFT_USD, provider, amount=float(abs(reported - engine)))
    if engine > 0:
        key = (id(COST_DRIFT_RATIO), (provider,))
        child = _children.get(key)
        if child is None:
            child = _children[key] = COST_DRIFT_RATIO.labels(provider)
        child.observe(float(reported / engine))
