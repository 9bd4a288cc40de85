"""Low-balance alerts: detected after settlement, recorded once, delivered as signed webhooks.

How it works (see ``docs/monitoring.md`` for the operator's view):

* **Threshold.** Each account has one: ``user_credits.low_balance_threshold``,
  or when that is NULL, its tier's ``low_balance_threshold`` from the credits
  config, or else 0 (then only the zero-balance alert applies).
* **Detection, off the request path.** :func:`install` subscribes the
  dispatcher to the runtime (:meth:`Runtime.subscribe`; it is a
  :class:`RuntimeObserver` using ``on_batch`` and ``on_refresh``). A batch
  that debited some accounts only adds their user ids to a set; a background
  task then runs ONE set-based statement for all of them (``credits_claim_balance_alerts`` in
  ``0004_alerts.sql``). A timer sweep runs the same function over every
  account whose last ledger movement was a debit, which catches refunds,
  admin debits and batches settled by a process that died before checking.
* **Once per episode, with any number of proxies.** The function sets
  ``low_balance_alerted_at`` under the account's row lock and writes the alert
  to the ``credit_alerts`` outbox, whose unique index on (user, kind, episode)
  lets each alert exist once. A trigger clears ``low_balance_alerted_at`` when
  a credit brings the balance back to the threshold, which re-arms the
  account. A balance at zero is its own kind, ``zero_balance``, sent at most
  once per episode too.
* **Delivery.** A background task claims due outbox rows (``FOR UPDATE SKIP
  LOCKED`` plus a lease), POSTs each as JSON to ``alerts.webhook_url`` signed
  with ``CREDITS_ALERT_WEBHOOK_SECRET``, and on failure schedules a retry with
  exponential backoff and jitter, up to :data:`MAX_ATTEMPTS`, after which the
  row is ``failed``. The schedule lives in the database, so it survives
  restarts. Delivery is at-least-once (a proxy that dies after the POST but
  before marking the row sent leaves it to be sent again once the lease
  expires); the ``id`` in the body and the ``X-Credits-Event-Id`` header let
  the receiver drop duplicates.

The body, the signature (like Stripe's, ``X-Credits-Signature``), the one
POST and the backoff are :mod:`.alert_webhook`; which threshold applies is
:mod:`.thresholds`. Their public names are re-exported here.

Without a webhook URL (or without a secret) alerts are still detected and
recorded, with status ``unconfigured``; nothing is sent unsigned.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from litellm_credits import errors
from litellm_credits.observe import metrics
from litellm_credits.observe.alert_webhook import (
    BASE_DELAY_SECONDS,
    MAX_DELAY_SECONDS,
    DeliveryResult,
    backoff_seconds,
    post,
)
from litellm_credits.observe.thresholds import tier_thresholds
from litellm_credits.runtime import Runtime, RuntimeObserver
from litellm_credits.settlement.record import SettlementRecord
from litellm_credits.store.db import Row

__all__ = ["AlertDispatcher", "dispatcher_of", "install"]

log = logging.getLogger("litellm_credits.observe.alerts")

#: Attempts per alert before it is marked ``failed``.
MAX_ATTEMPTS = 10
#: How long one sender owns a claimed alert; longer than one HTTP attempt.
LEASE_SECONDS = 60
HTTP_TIMEOUT_SECONDS = 10.0
#: How often the outbox is polled for due retries (new alerts wake it at once).
POLL_SECONDS = 5.0
#: How often every account is swept for alerts the batch checks did not see.
SWEEP_SECONDS = 60.0
#: At most one detection statement per this many seconds; accounts of the batches in
#: between are checked together.
DETECT_INTERVAL_SECONDS = 1.0
#: Accounts per detection statement.
CHUNK = 1000
#: Outbox rows claimed per round.
CLAIM_LIMIT = 50


async def _wait(event: asyncio.Event, seconds: float) -> None:
    """Wait until ``event`` is set, at most ``seconds``.

    Not ``asyncio.wait_for``: on Python 3.11 it returns normally when it is cancelled
    in the same loop turn as the event fires, so the cancellation is lost and a loop
    built on it never ends (``aclose`` then hung in the test suite on a busy machine).
    ``asyncio.timeout`` lets the cancellation through.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()


# --- the dispatcher ----------------------------------------------------------------------


@dataclass(eq=False)
class AlertDispatcher(RuntimeObserver):
    """Detection and delivery for one :class:`Runtime` (one per proxy process)."""

    runtime: Runtime
    webhook_url: str | None = None
    secret: str | None = None
    max_attempts: int = MAX_ATTEMPTS
    base_delay: float = BASE_DELAY_SECONDS
    max_delay: float = MAX_DELAY_SECONDS
    lease_seconds: int = LEASE_SECONDS
    poll_seconds: float = POLL_SECONDS
    sweep_seconds: float = SWEEP_SECONDS
    detect_interval: float = DETECT_INTERVAL_SECONDS
    http_timeout: float = HTTP_TIMEOUT_SECONDS
    transport: httpx.AsyncBaseTransport | None = None
    worker: str = field(
        default_factory=lambda: f"{socket.gethostname()[:64]}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    )
    _touched: set[str] = field(default_factory=set)
    _detect_wake: asyncio.Event | None = None
    _deliver_wake: asyncio.Event | None = None
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)
    _client: httpx.AsyncClient | None = None
    _last_sweep: float = 0.0

    @property
    def configured(self) -> bool:
        return bool(self.webhook_url and self.secret)

    @property
    def new_status(self) -> str:
        return "pending" if self.configured else "unconfigured"

    # -- callbacks (sync, called from the writer and the refresher; never raise) ---------

    def on_batch(self, batch: Sequence[SettlementRecord], results: Sequence[Mapping[str, Any]],
                 elapsed: float) -> None:
        try:
            users = {str(r["user_id"]) for r in results if r.get("outcome") == "debited"}
            if users:
                self._touched.update(users)
                if self._detect_wake is not None:
                    self._detect_wake.set()
        except Exception:  # noqa: BLE001 - a callback must never break the writer
            log.exception("alerts: could not note the accounts of a settled batch")

    def on_refresh(self, runtime: Runtime) -> None:
        try:
            self.start()
        except Exception:  # noqa: BLE001 - a callback must never break the refresher
            log.exception("alerts: could not start the background tasks")

    # -- lifecycle -------------------------------------------------------------------

    def start(self) -> None:
        """Start the detection and delivery tasks in the running loop (idempotent)."""
        if self._tasks and not all(t.done() for t in self._tasks):
            return
        self._detect_wake = asyncio.Event()
        self._deliver_wake = asyncio.Event()
        if self._touched:
            self._detect_wake.set()
        self._tasks = [
            asyncio.create_task(self._detect_loop(), name="credits-alerts-detect"),
            asyncio.create_task(self._deliver_loop(), name="credits-alerts-deliver"),
        ]

    async def aclose(self, timeout: float = 5.0) -> None:
        """Stop the background tasks; never waits more than ``timeout`` for them."""
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if tasks:
            done, stuck = await asyncio.wait(tasks, timeout=timeout)
            for task in done:
                if not task.cancelled():
                    task.exception()  # retrieved; a loop only ends by cancellation
            for task in stuck:
                log.error("alerts: task %s did not stop within %.0f s of being cancelled; "
                          "left behind", task.get_name(), timeout)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    # -- detection -----------------------------------------------------------------

    def _tiers(self) -> str:
        return json.dumps(tier_thresholds(self.runtime.settings))

    async def detect(self, user_ids: Iterable[str] | None) -> list[Row]:
        """Record due alerts for ``user_ids`` (None: sweep every account). New rows only."""
        params: dict[str, Any] = {"tiers": self._tiers(), "status": self.new_status}
        db = self.runtime.db
        if user_ids is None:
            rows = await db.fetchall("alerts_claim_sweep", params)
        else:
            ids = sorted(set(user_ids))
            rows = []
            for start in range(0, len(ids), CHUNK):
                rows += await db.fetchall(
                    "alerts_claim_users", {**params, "user_ids": ids[start:start + CHUNK]})
        for row in rows:
            metrics.ALERTS_SENT.labels(row["kind"], "recorded").inc()
            log.info("low-balance alert %s recorded: user %r, %s, balance %s, threshold %s",
                     row["id"], row["user_id"], row["kind"], row["balance"], row["threshold"])
        if rows and self._deliver_wake is not None and self.configured:
            self._deliver_wake.set()
        return rows

    async def detect_pending(self) -> list[Row]:
        """Check the accounts noted by :meth:`on_batch` since the last call."""
        users, self._touched = self._touched, set()
        if not users:
            return []
        try:
            return await self.detect(users)
        except errors.CreditsError:
            self._touched |= users  # try again next round
            raise

    async def _detect_loop(self) -> None:
        assert self._detect_wake is not None
        while True:
            await _wait(self._detect_wake, self.sweep_seconds)
            await asyncio.sleep(self.detect_interval)  # let the next batches join this one
            self._detect_wake.clear()
            try:
                await self.detect_pending()
                if time.monotonic() - self._last_sweep >= self.sweep_seconds:
                    self._last_sweep = time.monotonic()
                    await self.detect(None)
            except errors.CreditsError as exc:
                log.warning("alerts: detection waits for the database: %s", exc.message)
                await asyncio.sleep(min(self.poll_seconds, 5.0))
            except Exception:  # noqa: BLE001 - keep the loop alive, say what happened
                log.exception("alerts: detection failed")
                await asyncio.sleep(min(self.poll_seconds, 5.0))

    # -- delivery ------------------------------------------------------------------

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            self._client = httpx.AsyncClient(
                timeout=self.http_timeout, follow_redirects=False, transport=self.transport,
                headers={"User-Agent": "litellm-credits-alerts/1"},
            )
        return self._client

    async def send(self, row: Mapping[str, Any]) -> DeliveryResult:
        """One POST of one alert; never raises."""
        assert self.webhook_url and self.secret
        return await post(self._http(), self.webhook_url, self.secret, row)

    async def deliver_due(self) -> int:
        """Claim and send what is due now; returns how many were claimed."""
        if not self.configured:
            return 0
        db = self.runtime.db
        rows = await db.fetchall("alerts_take_due", {
            "lease_seconds": self.lease_seconds, "worker": self.worker, "limit": CLAIM_LIMIT})
        if not rows:
            return 0
        results = await asyncio.gather(*(self.send(r) for r in rows))
        kinds = {int(r["id"]): str(r["kind"]) for r in rows}
        attempts = {int(r["id"]): int(r["attempts"]) for r in rows}
        for result in results:
            kind = kinds[result.alert_id]
            if result.ok:
                await db.fetchone("alerts_mark_sent", {
                    "id": result.alert_id, "status": result.status, "worker": self.worker})
                metrics.ALERTS_SENT.labels(kind, "sent").inc()
                continue
            delay = backoff_seconds(attempts[result.alert_id], base=self.base_delay,
                                    cap=self.max_delay)
            marked = await db.fetchone("alerts_mark_retry", {
                "id": result.alert_id, "status": result.status, "error": result.error,
                "delay_seconds": delay, "max_attempts": self.max_attempts,
                "worker": self.worker})
            gave_up = marked is not None and marked["status"] == "failed"
            metrics.ALERTS_SENT.labels(kind, "failed" if gave_up else "retry").inc()
            log.warning("alert %s to the webhook failed (attempt %d, %s); %s",
                        result.alert_id, attempts[result.alert_id], result.error,
                        "giving up" if gave_up else f"retrying in {delay:.1f}s")
        return len(rows)

    async def _deliver_loop(self) -> None:
        assert self._deliver_wake is not None
        while True:
            await _wait(self._deliver_wake, self.poll_seconds)
            self._deliver_wake.clear()
            try:
                while await self.deliver_due() >= CLAIM_LIMIT:
                    pass
            except errors.CreditsError as exc:
                log.warning("alerts: delivery waits for the database: %s", exc.message)
            except Exception:  # noqa: BLE001 - keep the loop alive, say what happened
                log.exception("alerts: delivery failed")


# --- wiring ------------------------------------------------------------------------------


def dispatcher_of(runtime: Runtime) -> AlertDispatcher | None:
    return runtime.observer(AlertDispatcher)


def install(runtime: Runtime, **options: Any) -> AlertDispatcher:
    """Wire low-balance alerts into ``runtime``. Calling it again returns the same dispatcher.

    ``options`` override :class:`AlertDispatcher` fields (tests: short delays, a transport).
    """
    existing = dispatcher_of(runtime)
    if existing is not None:
        return existing
    settings = runtime.settings
    dispatcher = AlertDispatcher(
        runtime,
        webhook_url=options.pop("webhook_url", settings.alert_webhook_url),
        secret=options.pop("secret", settings.alert_webhook_secret),
        **options,
    )
    if dispatcher.webhook_url and not dispatcher.webhook_url.startswith(("https://", "http://")):
        log.error("alerts.webhook_url must be an http(s) URL; alerts are recorded but not sent")
        dispatcher.webhook_url = None
    elif dispatcher.webhook_url and not dispatcher.secret:
        log.error("alerts.webhook_url is set but CREDITS_ALERT_WEBHOOK_SECRET is not: alerts are "
                  "recorded (status 'unconfigured') but never sent unsigned")
    elif not dispatcher.webhook_url:
        log.info("no alerts.webhook_url configured: low-balance alerts are recorded only")
    return runtime.subscribe(dispatcher)
