"""Checks the live database catalog against the deployed-schema report.

Prints the report's DEPLOYMENT VERIFICATION table (tables, indexes, seed
rows, triggers, functions) from what the catalog holds now, plus the support
tables this package adds. Used by ``litellm-credits verify``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import psycopg

from litellm_credits.store.db import translate

SPEC_TABLES = (
    "user_credits",
    "credit_transactions",
    "credit_packages",
    "power_level_configs",
    "user_provider_keys",
    "llm_usage_log",
)
SUPPORT_TABLES = ("schema_migrations", "credit_holds", "credit_settings")
SPEC_TRIGGERS = ("trigger_user_credits_updated_at", "trigger_credit_packages_updated_at")
SPEC_FUNCTIONS = ("add_user_credits", "debit_user_credits", "get_quota_usage_percentage")
SEED_PACKAGES = (
    ("Starter Pack", "100", "10.00", "0", None),
    ("Value Pack", "500", "45.00", "10", "MOST POPULAR"),
    ("Pro Pack", "1000", "80.00", "20", "BEST VALUE"),
    ("Enterprise Pack", "5000", "350.00", "30", None),
)
SEED_LEVELS = (
    ("eco", "Eco Mode", "0.7", 5000, "0.7", ["openrouter", "together", "deepinfra"]),
    ("balanced", "Balanced Mode", "1", 3000, "0.85", ["openai", "anthropic", "openrouter"]),
    ("precision", "Precision Mode", "1.5", 2000, "0.95", ["anthropic", "openai"]),
)


@dataclass(frozen=True)
class Check:
    component: str
    count: int
    expected: str
    ok: bool

    def to_dict(self) -> dict[str, Any]:
        return {"component": self.component, "count": self.count, "expected": self.expected,
                "status": "PASS" if self.ok else "FAIL"}


def _scalar(conn: psycopg.Connection[Any], sql: str, params: tuple[Any, ...]) -> int:
    row = conn.execute(sql, params).fetchone()
    return int(row[0]) if row else 0


def _norm(value: Any) -> str:
    return format(value.normalize(), "f") if hasattr(value, "normalize") else str(value)


def _seed_rows(conn: psycopg.Connection[Any]) -> int:
    found = 0
    for name, credits, price, discount, badge in SEED_PACKAGES:
        row = conn.execute(
            "SELECT credits, price_usd, discount_percentage, badge FROM credit_packages "
            "WHERE name = %s",
            (name,),
        ).fetchone()
        if row and (_norm(row[0]), str(row[1]), _norm(row[2]), row[3]) == (
            credits, price, discount, badge,
        ):
            found += 1
    for level, display, mult, latency, quality, providers in SEED_LEVELS:
        row = conn.execute(
            "SELECT display_name, cost_multiplier, max_latency_ms, min_quality_score, "
            "preferred_providers FROM power_level_configs WHERE power_level = %s",
            (level,),
        ).fetchone()
        if row and (row[0], _norm(row[1]), row[2], _norm(row[3]), row[4]) == (
            display, mult, latency, quality, providers,
        ):
            found += 1
    return found


def run_checks(conninfo: str) -> tuple[list[Check], dict[str, bool]]:
    """The verification table, and which support tables exist."""
    try:
        with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
            tables = _scalar(
                conn,
                "SELECT count(*) FROM pg_tables WHERE schemaname = current_schema() "
                "AND tablename = ANY(%s)",
                (list(SPEC_TABLES),),
            )
            indexes = _scalar(
                conn,
                "SELECT count(*) FROM pg_indexes WHERE schemaname = current_schema() "
                "AND tablename = ANY(%s)",
                (list(SPEC_TABLES),),
            )
            triggers = _scalar(
                conn,
                "SELECT count(*) FROM pg_trigger WHERE NOT tgisinternal AND tgname = ANY(%s)",
                (list(SPEC_TRIGGERS),),
            )
            functions = _scalar(
                conn,
                "SELECT count(DISTINCT proname) FROM pg_proc p "
                "JOIN pg_namespace n ON n.oid = p.pronamespace "
                "WHERE n.nspname = current_schema() AND proname = ANY(%s)",
                (list(SPEC_FUNCTIONS),),
            )
            seeds = _seed_rows(conn) if tables == len(SPEC_TABLES) else 0
            support = {
                name: _scalar(conn, "SELECT count(*) FROM pg_tables WHERE schemaname = "
                          "current_schema() AND tablename = %s", (name,)) == 1
                for name in SUPPORT_TABLES
            }
    except psycopg.Error as exc:
        raise translate(exc) from None
    checks = [
        Check("Tables", tables, "6", tables == 6),
        Check("Indexes", indexes, "30+", indexes >= 30),
        Check("Seed Data", seeds, "7", seeds == 7),
        Check("Triggers", triggers, "2", triggers == 2),
        Check("Functions", functions, "3", functions == 3),
    ]
    return checks, support
