"""The per-runtime objects the ``/credits`` routes share, built once per Runtime.

:func:`current` starts the runtime (as every route did before it) and returns
its :class:`Services`: the purchases service with its Stripe gateway (built on
first use, so a proxy without Stripe keys still serves everything else), the
BYOK key store, and the usage-summary refresher. They are rebuilt when the
runtime is replaced (tests, a reloaded configuration), never shared between
two runtimes.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import UTC, datetime

from litellm_credits import errors
from litellm_credits.billing.purchases import Purchases, gateway_from_settings
from litellm_credits.billing.store import DbPurchaseStore
from litellm_credits.billing.stripe import StripeGateway
from litellm_credits.byok.keys import KeyStore
from litellm_credits.byok.vault import Vault
from litellm_credits.runtime import Runtime, get_runtime
from litellm_credits.store.db import Database

__all__ = ["SUMMARY_MAX_AGE_SECONDS", "Services", "SummaryRefresher", "current"]

log = logging.getLogger("litellm_credits.api.services")

#: The daily summary view is refreshed at most this often per process.
SUMMARY_MAX_AGE_SECONDS = 60.0


class SummaryRefresher:
    """Refreshes ``usage_daily_summary`` at most once a minute in this process."""

    def __init__(self, max_age_seconds: float = SUMMARY_MAX_AGE_SECONDS) -> None:
        self.max_age_seconds = max_age_seconds
        self.last_attempt: float | None = None
        self.refreshed_at: datetime | None = None
        self._lock = asyncio.Lock()

    async def maybe_refresh(self, db: Database) -> None:
        now = time.monotonic()
        if self.last_attempt is not None and now - self.last_attempt < self.max_age_seconds:
            return
        if self._lock.locked():
            return  # another request is refreshing; serve what the view holds
        async with self._lock:
            self.last_attempt = now
            try:
                await db.execute("refresh_usage_summary")
            except errors.CreditsError as exc:
                log.warning("usage summary not refreshed, serving the previous one: %s",
                            exc.message)
                return
            self.refreshed_at = datetime.now(UTC)


def _vault() -> Vault | None:
    try:
        return Vault.from_env()
    except errors.VaultNotConfigured:
        return None  # listing and revoking still work; adding says how to fix it


class Services:
    """What the routes of one runtime use besides the runtime itself."""

    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.summary = SummaryRefresher()
        self.keys = KeyStore(runtime.db, _vault(), aliases=runtime.settings.provider_aliases)
        self._gateway: StripeGateway | None = None
        self._purchases: Purchases | None = None

    @property
    def gateway(self) -> StripeGateway:
        """The Stripe gateway; 503 naming the setting when Stripe is not configured."""
        if self._gateway is None:
            self._gateway = gateway_from_settings(self.runtime.settings)
        return self._gateway

    @property
    def purchases(self) -> Purchases:
        """The purchases service (it asks for :attr:`gateway` when it needs Stripe)."""
        if self._purchases is None:
            settings = self.runtime.settings
            self._purchases = Purchases(
                store=DbPurchaseStore(self.runtime.db, self.runtime.ledger),
                gateway=lambda: self.gateway,
                success_url=settings.stripe_success_url,
                cancel_url=settings.stripe_cancel_url,
            )
        return self._purchases


_current: Services | None = None


async def current() -> Services:
    """The started runtime's services (built on first use after a runtime change)."""
    global _current
    runtime = get_runtime()
    await runtime.ensure_started()
    if _current is None or _current.runtime is not runtime:
        _current = Services(runtime)
    return _current
