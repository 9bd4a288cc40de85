"""Which low-balance threshold applies to an account: its own, else its tier's, else 0.

The SQL functions of ``0004_alerts.sql`` apply the same rule in the database;
this module gives them the tiers' thresholds (:func:`tier_thresholds`) and
answers the same question in Python (:func:`threshold_of`).
"""

from __future__ import annotations

from decimal import Decimal

from litellm_credits.settings import Settings

__all__ = ["threshold_of", "tier_thresholds"]


def tier_thresholds(settings: Settings) -> dict[str, str]:
    """``{tier: threshold}`` for the tiers that set one, as exact text for the SQL."""
    return {
        name: str(tier.low_balance_threshold)
        for name, tier in settings.tiers.items()
        if tier.low_balance_threshold is not None
    }


def threshold_of(settings: Settings, tier: str, own: Decimal | None) -> Decimal:
    """The threshold that applies to an account (same rule as the SQL)."""
    if own is not None:
        return own
    configured = settings.tiers.get(tier)
    if configured is not None and configured.low_balance_threshold is not None:
        return configured.low_balance_threshold
    return Decimal(0)
