"""Low-balance alerts: detected after settlement, recorded once, delivered as signed webhooks.

How it works (see ``docs/monitoring.md`` for the operator's view):

* **Threshold.** Each account has one: ``user_credits.low_balance_threshold``,
  or when that is NULL, its tier's ``low_balance_threshold`` from the credits
  config, or else 0 (then only the zero-balance alert applies).
* **Detection, off the request path.** :func:`install` subscribes the
  dispatcher to the runtime (``on_batch``, ``on_refresh``). A batch that debited some accounts only
  adds their user ids to a set; a background task then runs ONE set-based
  statement for all of them (``credits_claim_balance_alerts`` in
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

Signature (like Stripe's)::

    X-Credits-Signature: t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>

:func:`verify_signature` is the receiver's side, with a timestamp tolerance.

Without a webhook URL (or without a secret) alerts are still detected and
recorded, with status ``unconfigured``; nothing is sent unsigned.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import os
import random
import socket
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx

from litellm_credits import errors
from litellm_credits.observe import metrics
from litellm_credits.runtime import Runtime, RuntimeObserver
from litellm_credits.settings import Settings
from litellm_credits.settlement.record import SettlementRecord
from litellm_credits.store.db import Row
from litellm_credits.values import CREDIT_PLACES, money

__all__ = [
    "AlertDispatcher",
    "build_payload",
    "dispatcher_of",
    "install",
    "sign",
    "verify_signature",
]

log = logging.getLogger("litellm_credits.observe.alerts")

SIGNATURE_HEADER = "X-Credits-Signature"
EVENT_ID_HEADER = "X-Credits-Event-Id"
ATTEMPT_HEADER = "X-Credits-Delivery-Attempt"
EVENT_TYPES = {"low_balance": "credits.low_balance", "zero_balance": "credits.zero_balance"}

#: Attempts per alert before it is marked ``failed``.
MAX_ATTEMPTS = 10
#: First retry delay; doubled per attempt (with jitter), capped at MAX_DELAY_SECONDS.
BASE_DELAY_SECONDS = 5.0
MAX_DELAY_SECONDS = 3600.0
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
#: Receivers should refuse signatures older than this.
DEFAULT_TOLERANCE_SECONDS = 300



# --- signing ----------------------------------------------------------------------------


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``X-Credits-Signature`` header value for ``body``."""
    ts = int(time.time()) if timestamp is None else int(timestamp)
    digest = hmac.new(secret.encode("utf-8"), f"{ts}.".encode() + body, hashlib.sha256)
    return f"t={ts},v1={digest.hexdigest()}"


def verify_signature(
    secret: str,
    body: bytes,
    header: str | None,
    *,
    tolerance: int = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> bool:
    """True when ``header`` is a valid, fresh signature of ``body`` (the receiver's check)."""
    if not header:
        return False
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(key, []).append(value)
    try:
        ts = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - ts) > tolerance:
        return False
    expected = sign(secret, body, ts).split("v1=", 1)[1]
    return any(hmac.compare_digest(expected, v) for v in parts.get("v1", []))


def _iso(value: Any) -> Any:
    return value.isoformat() if isinstance(value, datetime) else value


def _credits(value: Any) -> str | None:
    return money(Decimal(str(value)).quantize(CREDIT_PLACES)) if value is not None else None


def build_payload(row: Mapping[str, Any]) -> bytes:
    """The JSON body of one alert. Money is exact text, never a JSON number."""
    kind = str(row["kind"])
    body = {
        "id": f"cra_{row['id']}",
        "type": EVENT_TYPES.get(kind, f"credits.{kind}"),
        "created": _iso(row.get("created_at")),
        "data": {
            "user_id": row["user_id"],
            "kind": kind,
            "balance": _credits(row["balance"]),
            "threshold": _credits(row["threshold"]),
            "tier": row.get("tier"),
            "episode_started_at": _iso(row.get("episode")),
        },
    }
    return json.dumps(body, separators=(",", ":"), sort_keys=True).encode("utf-8")


def tier_thresholds(settings: Settings) -> dict[str, str]:
    """``{tier: threshold}`` for the tiers that set one, as exact text for the SQL."""
    return {
        name: str(tier.low_balance_threshold)
        for name, tier in settings.tiers.items()
        if tier.low_balance_threshold is not None
    }


def backoff_seconds(attempts: int, *, base: float = BASE_DELAY_SECONDS,
                    cap: float = MAX_DELAY_SECONDS, jitter: float | None = None) -> float:
    """Delay after ``attempts`` failed attempts: base x 2^(attempts-1), capped, 50-100 %."""
    raw = min(cap, base * (2.0 ** max(attempts - 1, 0)))
    factor = (0.5 + random.random() / 2) if jitter is None else jitter  # noqa: S311
    return max(raw * factor, 0.0)


# --- the dispatcher ----------------------------------------------------------------------


@dataclass
class DeliveryResult:
    alert_id: int
    ok: bool
    status: int | None
    error: str | None


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

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._detect_wake.wait(), self.sweep_seconds)
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
        body = build_payload(row)
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign(self.secret, body),
            EVENT_ID_HEADER: f"cra_{row['id']}",
            ATTEMPT_HEADER: str(row.get("attempts") or 1),
        }
        try:
            response = await self._http().post(self.webhook_url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return DeliveryResult(int(row["id"]), False, None,
                                  f"{type(exc).__name__}: {str(exc)[:200]}")
        if 200 <= response.status_code < 300:
            return DeliveryResult(int(row["id"]), True, response.status_code, None)
        return DeliveryResult(int(row["id"]), False, response.status_code,
                              f"HTTP {response.status_code}")

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
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._deliver_wake.wait(), self.poll_seconds)
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


def threshold_of(settings: Settings, tier: str, own: Decimal | None) -> Decimal:
    """The threshold that applies to an account (same rule as the SQL)."""
    if own is not None:
        return own
    configured = settings.tiers.get(tier)
    if configured is not None and configured.low_balance_threshold is not None:
        return configured.low_balance_threshold
    return Decimal(0)
