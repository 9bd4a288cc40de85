"""The :class:`Monitor`: the runtime observer that feeds the Prometheus metrics.

:func:`install` subscribes one to the runtime (:meth:`Runtime.subscribe`); its
events feed the metrics:

* ``on_batch`` (batch size and latency, settlement outcomes, credits debited
  by power level, holds settled or released),
* ``on_sweep`` (holds expired),
* ``on_refresh`` (writer and spool counters and the database gauges,
  refreshed every :data:`DB_REFRESH_SECONDS` in a background task),
* ``on_ledger_event``: credits granted by type, purchase revenue, refunds and
  admin debits as they are written, and holds the hook releases itself.

Every callback catches its own errors: monitoring must never break settlement.
Counters and histograms count what *this* process did; the database gauges
describe the whole deployment (see :mod:`.monitoring`).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from decimal import Decimal
from typing import Any

from litellm_credits import errors
from litellm_credits.observe import metrics
from litellm_credits.observe.monitor_metrics import (
    ALERTS_OLDEST,
    ALERTS_PENDING,
    DB_REFRESHED,
    DB_UP,
    HOLDS_IN_DB,
    REFUNDS_USD,
    SETTLEMENTS,
    SPOOL_OLDEST,
    TAKEN_BACK,
    USERS_ALERTED,
    USERS_AT_ZERO,
    WRITER_LAST_BATCH,
    WRITER_REJECTED,
    WRITER_REPLAYED,
    WRITER_SPOOLED,
)
from litellm_credits.observe.thresholds import tier_thresholds
from litellm_credits.runtime import Runtime, RuntimeObserver
from litellm_credits.settlement.record import SettlementRecord

__all__ = ["DB_REFRESH_SECONDS", "REFRESH_ENV", "Monitor", "install", "monitor_of"]

log = logging.getLogger("litellm_credits.observe.monitoring")

#: How often the database-wide gauges are refreshed (per process); the environment
#: variable CREDITS_METRICS_REFRESH_SECONDS overrides it (read by :func:`install`).
DB_REFRESH_SECONDS = 15.0
REFRESH_ENV = "CREDITS_METRICS_REFRESH_SECONDS"
#: The spool directory is re-read at most this often.
SPOOL_REFRESH_SECONDS = 2.0


def _float(value: Any) -> float:
    """Money for Prometheus (a float by nature); the ledger itself stays Decimal."""
    try:
        return float(Decimal(str(value)))
    except (ArithmeticError, ValueError):
        return 0.0


class Monitor(RuntimeObserver):
    """Feeds the metrics for one :class:`Runtime`."""

    def __init__(self, runtime: Runtime, *, db_refresh_seconds: float | None = None) -> None:
        self.runtime = runtime
        self.db_refresh_seconds = (
            _refresh_seconds_from_env() if db_refresh_seconds is None else db_refresh_seconds)
        self._stats_seen: dict[str, int] = {}
        self._spool_checked = 0.0
        self._db_task: asyncio.Task[None] | None = None
        self._db_refreshed = 0.0
        # Transactions already counted, so an idempotent replay is not counted twice.
        self._counted: OrderedDict[int, None] = OrderedDict()

    # -- the writer ------------------------------------------------------------------

    def on_batch(self, batch: Sequence[SettlementRecord], results: Sequence[Mapping[str, Any]],
                 elapsed: float) -> None:
        try:
            metrics.WRITER_BATCH_SIZE.observe(len(batch))
            metrics.WRITER_BATCH_SECONDS.observe(elapsed)
            WRITER_LAST_BATCH.set(time.time())
            records = {r.request_id: r for r in batch}
            for result in results:
                outcome = str(result.get("outcome"))
                metrics.count(SETTLEMENTS, outcome)
                record = records.get(str(result.get("request_id")))
                if outcome == "debited":
                    level = (record.power_level if record else None) or "unknown"
                    metrics.count(metrics.CREDITS_DEBITED, level,
                                  amount=_float(result.get("debited")))
                    metrics.count(metrics.HOLDS, "settled")
                elif outcome == "failure_logged" and record is not None and record.had_hold:
                    metrics.count(metrics.HOLDS, "released")
            self.sync()
        except Exception:  # noqa: BLE001 - monitoring must never break settlement
            log.exception("monitoring: could not count a settled batch")

    def on_sweep(self, expired: int) -> None:
        with contextlib.suppress(Exception):
            metrics.HOLDS.labels("expired").inc(expired)

    def on_refresh(self, runtime: Runtime) -> None:
        try:
            self.sync()
            due = time.monotonic() - self._db_refreshed >= self.db_refresh_seconds
            if due and (self._db_task is None or self._db_task.done()):
                self._db_task = asyncio.get_running_loop().create_task(
                    self.refresh_db(), name="credits-monitoring-db")
        except Exception:  # noqa: BLE001 - a callback must never break the refresher
            log.exception("monitoring: refresh callback failed")

    # -- in-process sources ------------------------------------------------------------

    def sync(self) -> None:
        """Bring the writer and spool metrics up to date (cheap; called on every scrape)."""
        writer = self.runtime.writer
        metrics.WRITER_QUEUE.set(writer.depth)
        stats = writer.stats
        for name, counter in (("failures", metrics.WRITER_FAILURES),
                              ("spooled", WRITER_SPOOLED),
                              ("replayed", WRITER_REPLAYED),
                              ("rejected", WRITER_REJECTED)):
            now = int(getattr(stats, name))
            delta = now - self._stats_seen.get(name, 0)
            if delta > 0:
                counter.inc(delta)
            self._stats_seen[name] = now
        if time.monotonic() - self._spool_checked >= SPOOL_REFRESH_SECONDS:
            self._spool_checked = time.monotonic()
            spool = writer.spool
            segments = spool.segments()
            metrics.SPOOL_DEPTH.set(spool.depth() if segments else 0)
            SPOOL_OLDEST.set(_segment_age(segments[0].name) if segments else 0)

    # -- database-wide gauges ----------------------------------------------------------

    async def refresh_db(self) -> None:
        """Read the database-wide gauges (a few aggregate queries, on a timer)."""
        db = self.runtime.db
        try:
            low = await db.fetchone(
                "alerts_accounts_low",
                {"tiers": json.dumps(tier_thresholds(self.runtime.settings))})
            holds = await db.fetchone("alerts_holds_in_flight")
            backlog = await db.fetchone("alerts_backlog")
        except errors.CreditsError as exc:
            DB_UP.set(0)
            log.info("monitoring: database gauges not refreshed: %s", exc.message)
            return
        finally:
            self._db_refreshed = time.monotonic()
        if low is not None:
            metrics.USERS_BELOW_THRESHOLD.set(int(low["below_threshold"]))
            USERS_AT_ZERO.set(int(low["at_zero"]))
            USERS_ALERTED.set(int(low["alerted"]))
        if holds is not None:
            HOLDS_IN_DB.labels("active").set(int(holds["active"]))
            HOLDS_IN_DB.labels("expired").set(int(holds["expired_unswept"]))
        if backlog is not None:
            ALERTS_PENDING.set(int(backlog["pending"]))
            ALERTS_OLDEST.set(float(backlog["oldest_seconds"]))
        DB_UP.set(1)
        DB_REFRESHED.set(time.time())

    # -- the ledger ----------------------------------------------------------------------

    def _first_time(self, transaction_id: Any) -> bool:
        if transaction_id is None:
            return False
        key = int(transaction_id)
        if key in self._counted:
            return False
        self._counted[key] = None
        if len(self._counted) > 10_000:
            self._counted.popitem(last=False)
        return True

    def on_ledger_event(self, event: str, fields: dict[str, Any]) -> None:
        with _logged(f"ledger event {event}"):
            if event == "released":
                # A hold given back by the hook itself (it refused after placing it).
                metrics.HOLDS.labels("released").inc()
                return
            result = fields["result"]
            if event == "refunded":
                taken = fields["amount"]
                if taken and taken > 0:
                    TAKEN_BACK.labels("refund").inc(_float(taken))
                    if fields.get("amount_usd") is not None:
                        REFUNDS_USD.inc(_float(fields["amount_usd"]))
                return
            if not result.success or not self._first_time(result.transaction_id):
                return  # refused, or a repeat answered with the original transaction
            kind = str(fields["type"])
            if event == "added":
                metrics.CREDITS_GRANTED.labels(kind).inc(_float(fields["amount"]))
                if kind == "purchase" and fields.get("amount_usd") is not None:
                    metrics.PURCHASE_REVENUE.inc(_float(fields["amount_usd"]))
            elif event == "debited" and kind != "usage":
                TAKEN_BACK.labels(kind).inc(_float(fields["amount"]))


def _refresh_seconds_from_env() -> float:
    raw = os.environ.get(REFRESH_ENV)
    if not raw:
        return DB_REFRESH_SECONDS
    try:
        value = float(raw)
    except ValueError:
        log.error("%s=%r is not a number; using %s", REFRESH_ENV, raw, DB_REFRESH_SECONDS)
        return DB_REFRESH_SECONDS
    return min(max(value, 0.5), 3600.0)


@contextlib.contextmanager
def _logged(what: str) -> Iterator[None]:
    try:
        yield
    except Exception:  # noqa: BLE001 - counting must never fail a money movement
        log.exception("monitoring: could not count %s", what)


def _segment_age(name: str) -> float:
    """Seconds since a spool segment was started (its name begins with time_ns)."""
    try:
        return max(time.time() - int(name.split("-", 1)[0]) / 1e9, 0.0)
    except ValueError:
        return 0.0


# --- wiring ------------------------------------------------------------------------------


def monitor_of(runtime: Runtime) -> Monitor | None:
    return runtime.observer(Monitor)


def install(runtime: Runtime, **options: Any) -> Monitor:
    """Register the metric callbacks on ``runtime``. Calling it again does nothing more."""
    existing = monitor_of(runtime)
    if existing is not None:
        return existing
    monitor = Monitor(runtime, **options)
    return runtime.subscribe(monitor)
