"""Which low-balance threshold applies: the account's own, else its tier's, else 0.

The same rule runs in SQL (``0004_alerts.sql``), fed by :func:`tier_thresholds`; the
integration suite checks the two agree against PostgreSQL.
"""

from __future__ import annotations

from decimal import Decimal

from litellm_credits.observe.thresholds import threshold_of, tier_thresholds
from litellm_credits.settings import Settings, Tier

D = Decimal

SETTINGS = Settings(tiers={
    "free": Tier(),
    "pro": Tier(monthly_quota=D("100"), low_balance_threshold=D("5.50")),
    "tiny": Tier(low_balance_threshold=D("0.00000001")),
    "zero": Tier(low_balance_threshold=D("0")),
})


def test_tier_thresholds_lists_only_tiers_that_set_one_as_exact_text() -> None:
    assert tier_thresholds(SETTINGS) == {"pro": "5.50", "tiny": "1E-8", "zero": "0"}
    # The text is what the SQL casts to numeric: it must round-trip exactly.
    assert {k: D(v) for k, v in tier_thresholds(SETTINGS).items()} == {
        "pro": D("5.50"), "tiny": D("0.00000001"), "zero": D(0)}


def test_default_settings_have_no_tier_thresholds() -> None:
    assert tier_thresholds(Settings()) == {}


def test_the_accounts_own_threshold_wins() -> None:
    assert threshold_of(SETTINGS, "pro", D("1")) == D("1")
    assert threshold_of(SETTINGS, "free", D("2.5")) == D("2.5")


def test_an_own_threshold_of_zero_still_wins_over_the_tier() -> None:
    # 0 is a setting (no alerts for this account), not "unset".
    assert threshold_of(SETTINGS, "pro", D("0")) == D(0)


def test_without_its_own_the_account_gets_its_tiers() -> None:
    assert threshold_of(SETTINGS, "pro", None) == D("5.50")
    assert threshold_of(SETTINGS, "tiny", None) == D("0.00000001")


def test_a_tier_without_a_threshold_or_an_unknown_tier_gives_zero() -> None:
    assert threshold_of(SETTINGS, "free", None) == D(0)
    assert threshold_of(SETTINGS, "no-such-tier", None) == D(0)
    assert isinstance(threshold_of(SETTINGS, "no-such-tier", None), Decimal)
