"""Unit tests for litellm_credits.api.services: the per-runtime objects the routes share."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

import pytest

from litellm_credits import errors
from litellm_credits.api.services import Services, SummaryRefresher
from litellm_credits.billing.purchases import StripeNotConfigured
from litellm_credits.settings import Settings


class FakeDb:
    def __init__(self, fail: bool = False, delay: float = 0.0) -> None:
        self.calls: list[str] = []
        self.fail = fail
        self.delay = delay

    async def execute(self, name: str, params: Any = None) -> None:
        self.calls.append(name)
        await asyncio.sleep(self.delay)
        if self.fail:
            raise errors.DatabaseUnavailable("the database is down")


async def test_summary_is_refreshed_at_most_once_per_max_age() -> None:
    db = FakeDb()
    refresher = SummaryRefresher(max_age_seconds=3600)
    await refresher.maybe_refresh(db)  # type: ignore[arg-type]
    await refresher.maybe_refresh(db)  # type: ignore[arg-type]
    assert db.calls == ["refresh_usage_summary"]
    assert refresher.refreshed_at is not None
    refresher.max_age_seconds = 0
    await refresher.maybe_refresh(db)  # type: ignore[arg-type]
    assert len(db.calls) == 2


async def test_concurrent_requests_do_not_wait_for_a_refresh() -> None:
    db = FakeDb(delay=0.05)
    refresher = SummaryRefresher(max_age_seconds=0)
    await asyncio.gather(*(refresher.maybe_refresh(db) for _ in range(5)))  # type: ignore[arg-type]
    assert db.calls == ["refresh_usage_summary"]


async def test_failed_refresh_serves_the_previous_summary() -> None:
    refresher = SummaryRefresher()
    await refresher.maybe_refresh(FakeDb(fail=True))  # type: ignore[arg-type]
    assert refresher.refreshed_at is None  # nothing raised; the view is served as it is


def runtime(settings: Settings) -> Any:
    return SimpleNamespace(db=object(), ledger=object(), settings=settings)


def test_stripe_is_needed_only_by_purchases(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CREDITS_ENCRYPTION_KEYS", raising=False)
    services = Services(runtime(Settings()))
    assert services.keys is not None  # BYOK listing works without Stripe or a vault
    purchases = services.purchases  # built; Stripe is asked for only when needed
    with pytest.raises(StripeNotConfigured, match="CREDITS_STRIPE_API_KEY"):
        purchases.gateway()
    with pytest.raises(StripeNotConfigured):
        _ = services.gateway


def test_gateway_is_built_once() -> None:
    settings = Settings(stripe_api_key="sk_test_x", stripe_webhook_secret="whsec_x")
    services = Services(runtime(settings))
    gateway = services.gateway
    assert services.gateway is gateway
    assert services.purchases.gateway() is gateway
    gateway.close()
