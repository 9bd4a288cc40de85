"""The metrics that only the monitor feeds (the core ones are in :mod:`.metrics`).

Definitions only, registered in the plugin's private registry
(:data:`litellm_credits.observe.metrics.REGISTRY`) on import; :mod:`.monitor`
updates them and :mod:`.monitoring` serves them. Names and labels are part of
the operator's interface (dashboards, alert rules): they do not change.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from litellm_credits.observe import metrics

__all__ = [
    "ALERTS_OLDEST",
    "ALERTS_PENDING",
    "DB_REFRESHED",
    "DB_UP",
    "HOLDS_IN_DB",
    "REFUNDS_USD",
    "SETTLEMENTS",
    "SPOOL_OLDEST",
    "TAKEN_BACK",
    "USERS_ALERTED",
    "USERS_AT_ZERO",
    "WRITER_LAST_BATCH",
    "WRITER_REJECTED",
    "WRITER_REPLAYED",
    "WRITER_SPOOLED",
]

R = metrics.REGISTRY

SETTLEMENTS = Counter(
    "credits_settlements_total",
    "Settlement records written by this process's writer, by outcome "
    "(debited, failure_logged, duplicate)",
    ["outcome"], registry=R,
)
TAKEN_BACK = Counter(
    "credits_taken_back_total",
    "Credits taken out of accounts other than by usage, through this process, by type "
    "(refund, admin_adjustment)",
    ["type"], registry=R,
)
REFUNDS_USD = Counter(
    "credits_refunds_usd_total", "Money refunded on purchases through this process (USD)",
    registry=R,
)
WRITER_SPOOLED = Counter(
    "credits_writer_spooled_total",
    "Settlement records this process put in the durable spool (database unavailable)",
    registry=R,
)
WRITER_REPLAYED = Counter(
    "credits_writer_replayed_total", "Spooled settlement records replayed into the database",
    registry=R,
)
WRITER_REJECTED = Counter(
    "credits_writer_rejected_total",
    "Settlement records the database refused as invalid (kept in spool/rejected/)",
    registry=R,
)
WRITER_LAST_BATCH = Gauge(
    "credits_writer_last_batch_timestamp_seconds",
    "Unix time of the last batch this process settled", registry=R,
)
SPOOL_OLDEST = Gauge(
    "credits_spool_oldest_seconds",
    "Age of the oldest segment in the durable spool (0 when empty)", registry=R,
)
USERS_AT_ZERO = Gauge(
    "credits_users_at_zero_balance",
    "Accounts with a balance of zero or less (database-wide; aggregate with max)", registry=R,
)
USERS_ALERTED = Gauge(
    "credits_users_alerted",
    "Accounts in a low-balance alert episode (database-wide; aggregate with max)", registry=R,
)
HOLDS_IN_DB = Gauge(
    "credits_holds_in_db",
    "Hold rows in the database by state: active, or expired and not yet swept "
    "(database-wide; aggregate with max)",
    ["state"], registry=R,
)
ALERTS_PENDING = Gauge(
    "credits_alerts_pending",
    "Low-balance alerts waiting for delivery (database-wide; aggregate with max)", registry=R,
)
ALERTS_OLDEST = Gauge(
    "credits_alerts_oldest_pending_seconds",
    "Age of the oldest alert waiting for delivery (database-wide)", registry=R,
)
DB_UP = Gauge(
    "credits_monitoring_db_up",
    "1 when the last monitoring query reached the credits database, else 0", registry=R,
)
DB_REFRESHED = Gauge(
    "credits_monitoring_db_refresh_timestamp_seconds",
    "Unix time the database-wide gauges were last refreshed", registry=R,
)
