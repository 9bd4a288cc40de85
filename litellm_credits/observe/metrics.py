"""Prometheus metrics of the plugin, served at ``/credits/metrics``.

Labels are bounded: power level, provider (from the config), outcome, type.
Never a user id. Credits are exported as floats because Prometheus has no
other number type; the ledger itself stays Decimal and the database is the
source of truth for money.
"""

from __future__ import annotations

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
