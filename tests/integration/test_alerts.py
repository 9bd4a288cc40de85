"""Low-balance alerts against a real PostgreSQL: detection, once-per-episode, re-arming,
zero balance, several proxies at once, and signed delivery with retries and backoff.

Each test builds one or more in-process :class:`Runtime` objects on a fresh database (no proxy)
and wires them with :func:`litellm_credits.observe.alerts.install`. Webhook deliveries go to an
``httpx.MockTransport``, so no port is opened.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from litellm_credits.config_schema import Tier
from litellm_credits.observe import alert_webhook, alerts
from litellm_credits.observe.alert_webhook import build_payload, sign, verify_signature
from litellm_credits.observe.alerts import AlertDispatcher
from litellm_credits.runtime import Runtime
from litellm_credits.settings import Settings
from litellm_credits.settlement.record import SettlementRecord

D = Decimal
SECRET = "whsec_alerts_test"
URL = "https://alerts.example.test/hook"
TIERS = {"free": Tier(), "pro": Tier(low_balance_threshold=D("50"))}

RuntimeFactory = Callable[..., Any]


@pytest.fixture
async def make_runtime(db_url: str, tmp_path: Path) -> AsyncIterator[RuntimeFactory]:
    made: list[tuple[Runtime, AlertDispatcher]] = []

    async def make(**options: Any) -> tuple[Runtime, AlertDispatcher]:
        settings = Settings(
            database_url=db_url, tiers=TIERS, spool_dir=tmp_path / f"spool-{len(made)}",
            pool_min_size=1, pool_max_size=4, alert_webhook_url=options.pop("url", URL),
            alert_webhook_secret=options.pop("secret", SECRET),
        )
        runtime = Runtime(settings, model_list=lambda: [], cost_map=lambda: {})
        await runtime.db.open(wait=True)
        options.setdefault("base_delay", 0.01)
        options.setdefault("max_delay", 0.05)
        dispatcher = alerts.install(runtime, **options)
        made.append((runtime, dispatcher))
        return runtime, dispatcher

    yield make
    # Bounded: a close that hangs must fail this test, not stall the suite.
    async with asyncio.timeout(30):
        for runtime, dispatcher in made:
            await dispatcher.aclose()
            await runtime.db.close()


def grant(conn: psycopg.Connection, user: str, amount: str, kind: str = "admin_adjustment") -> None:
    conn.execute("SELECT * FROM add_user_credits(%s, %s::numeric, %s, NULL, 'test grant')",
                 (user, amount, kind))


def usage(user: str, credits: str) -> SettlementRecord:
    return SettlementRecord(request_id=f"req_{uuid.uuid4().hex}", user_id=user, success=True,
                            credits_charged=Decimal(credits), model="m", provider="openai",
                            power_level="balanced", status_code=200)


async def spend(runtime: Runtime, *records: SettlementRecord) -> None:
    for record in records:
        runtime.writer.submit(record)
    await runtime.writer.flush()


def alert_rows(conn: psycopg.Connection, user: str | None = None) -> list[tuple[Any, ...]]:
    return conn.execute(
        "SELECT user_id, kind, balance, threshold, status FROM credit_alerts "
        "WHERE %(u)s::text IS NULL OR user_id = %(u)s ORDER BY id", {"u": user}).fetchall()


def alerted_at(conn: psycopg.Connection, user: str) -> Any:
    row = conn.execute("SELECT low_balance_alerted_at FROM user_credits WHERE user_id = %s",
                       (user,)).fetchone()
    assert row is not None
    return row[0]


def set_threshold(conn: psycopg.Connection, user: str, value: str | None) -> None:
    conn.execute("UPDATE user_credits SET low_balance_threshold = %s::numeric WHERE user_id = %s",
                 (value, user))


# --- detection -----------------------------------------------------------------------------


async def test_one_alert_per_crossing_and_rearmed_by_a_top_up(
        make_runtime: RuntimeFactory, db_conn: psycopg.Connection) -> None:
    runtime, dispatcher = await make_runtime()
    grant(db_conn, "ann", "100")
    set_threshold(db_conn, "ann", "20")

    await spend(runtime, usage("ann", "50"))  # 50 left: above the threshold
    assert await dispatcher.detect_pending() == []

    await spend(runtime, usage("ann", "35"))  # 15 left: crossed
    new = await dispatcher.detect_pending()
    assert [(r["user_id"], r["kind"], r["balance"], r["threshold"]) for r in new] == [
        ("ann", "low_balance", D("15"), D("20"))]
    episode = alerted_at(db_conn, "ann")
    assert episode is not None

    # Further debits below the threshold: no second alert.
    await spend(runtime, usage("ann", "1"), usage("ann", "2"))
    assert await dispatcher.detect_pending() == []
    assert await dispatcher.detect(None) == []  # nor from the sweep
    assert alerted_at(db_conn, "ann") == episode

    # A top-up that stays below the threshold does not re-arm...
    grant(db_conn, "ann", "5")  # 17
    assert alerted_at(db_conn, "ann") == episode
    # ...one that reaches it does, and the next crossing alerts again.
    grant(db_conn, "ann", "3")  # 20 = threshold
    assert alerted_at(db_conn, "ann") is None
    await spend(runtime, usage("ann", "0.5"))
    again = await dispatcher.detect_pending()
    assert [(r["kind"], r["balance"]) for r in again] == [("low_balance", D("19.5"))]
    assert alerted_at(db_conn, "ann") not in (None, episode)
    assert [r[:2] for r in alert_rows(db_conn, "ann")] == [("ann", "low_balance")] * 2


async def test_zero_balance_is_its_own_event_once(
        make_runtime: RuntimeFactory, db_conn: psycopg.Connection) -> None:
    runtime, dispatcher = await make_runtime()
    grant(db_conn, "bob", "30")
    set_threshold(db_conn, "bob", "10")
    await spend(runtime, usage("bob", "25"))  # 5: low
    assert [r["kind"] for r in await dispatcher.detect_pending()] == ["low_balance"]
    await spend(runtime, usage("bob", "9"))  # takes the 5 left: zero (4 uncollected)
    zero = await dispatcher.detect_pending()
    assert [(r["kind"], r["balance"]) for r in zero] == [("zero_balance", D("0"))]
    # Same episode for both kinds; not repeated.
    episodes = db_conn.execute(
        "SELECT DISTINCT episode FROM credit_alerts WHERE user_id = 'bob'").fetchall()
    assert len(episodes) == 1
    await spend(runtime, usage("bob", "1"))
    assert await dispatcher.detect_pending() == []
    assert await dispatcher.detect(None) == []

    # Straight from above the threshold to zero: one zero_balance alert, no low_balance.
    grant(db_conn, "cy", "3")
    set_threshold(db_conn, "cy", "1")
    await spend(runtime, usage("cy", "3"))
    assert [r["kind"] for r in await dispatcher.detect_pending()] == ["zero_balance"]
    assert [r[1] for r in alert_rows(db_conn, "cy")] == ["zero_balance"]


async def test_threshold_defaults_to_the_tier_and_changes_rearm(
        make_runtime: RuntimeFactory, db_conn: psycopg.Connection) -> None:
    runtime, dispatcher = await make_runtime()
    grant(db_conn, "pro-user", "100")
    db_conn.execute("UPDATE user_credits SET tier = 'pro' WHERE user_id = 'pro-user'")
    grant(db_conn, "free-user", "100")  # free tier: no threshold, only the zero alert
    await spend(runtime, usage("pro-user", "60"), usage("free-user", "60"))
    new = await dispatcher.detect_pending()
    assert [(r["user_id"], r["kind"], r["threshold"], r["tier"]) for r in new] == [
        ("pro-user", "low_balance", D("50"), "pro")]

    # An own threshold below the balance re-arms at once (the trigger sees the change)...
    set_threshold(db_conn, "pro-user", "30")
    assert alerted_at(db_conn, "pro-user") is None
    # ...and the account's own threshold is what counts from now on.
    await spend(runtime, usage("pro-user", "15"))  # 25 < 30
    assert [(r["kind"], r["threshold"]) for r in await dispatcher.detect_pending()] == [
        ("low_balance", D("30"))]


async def test_the_sweep_catches_other_debits_but_not_fresh_small_grants(
        make_runtime: RuntimeFactory, db_conn: psycopg.Connection) -> None:
    runtime, dispatcher = await make_runtime()
    # A refund-like debit outside the writer (admin adjustment) takes dee below 50.
    grant(db_conn, "dee", "60")
    db_conn.execute("UPDATE user_credits SET tier = 'pro' WHERE user_id = 'dee'")
    db_conn.execute("SELECT * FROM debit_user_credits('dee', 20, 'admin_adjustment', NULL, 'x')")
    # eve was only ever granted a small amount: below the threshold, but no debit crossed it.
    grant(db_conn, "eve", "10")
    db_conn.execute("UPDATE user_credits SET tier = 'pro' WHERE user_id = 'eve'")
    # fay never had anything (an account created empty).
    db_conn.execute("INSERT INTO user_credits (user_id) VALUES ('fay')")
    new = await dispatcher.detect(None)
    assert [(r["user_id"], r["kind"], r["balance"]) for r in new] == [
        ("dee", "low_balance", D("40"))]
    # eve's first spend does alert: she is below the threshold and not yet told.
    await spend(runtime, usage("eve", "1"))
    assert [r["user_id"] for r in await dispatcher.detect_pending()] == ["eve"]


async def test_several_proxies_record_each_alert_once(
        make_runtime: RuntimeFactory, db_conn: psycopg.Connection) -> None:
    proxies = [await make_runtime() for _ in range(3)]
    users = [f"u{i:02d}" for i in range(20)]
    for user in users:
        grant(db_conn, user, "10")
        set_threshold(db_conn, user, "5")
    # Every proxy settles part of the spending...
    for i, user in enumerate(users):
        runtime, _ = proxies[i % 3]
        await spend(runtime, usage(user, "6" if i % 2 else "10"))  # 4 (low) or 0 (zero)
    # ...and then all of them check all users at once, repeatedly, with the sweep too.
    results = await asyncio.gather(*(
        d.detect(users if n % 2 else None) for n in range(6) for _, d in proxies))
    recorded = [(r["user_id"], r["kind"]) for rows in results for r in rows]
    expected = {(u, "low_balance" if i % 2 else "zero_balance") for i, u in enumerate(users)}
    assert sorted(recorded) == sorted(expected)  # each exactly once across all proxies
    assert len(alert_rows(db_conn)) == len(users)


async def test_the_writer_callback_feeds_detection(
        make_runtime: RuntimeFactory, db_conn: psycopg.Connection) -> None:
    runtime, dispatcher = await make_runtime()
    again = alerts.install(runtime)
    assert again is dispatcher  # idempotent
    grant(db_conn, "gus", "10")
    set_threshold(db_conn, "gus", "8")
    record = usage("gus", "5")
    await spend(runtime, record)
    assert dispatcher._touched == {"gus"}
    failure = usage("hal", "0").replace(success=False, status_code=500)
    await spend(runtime, failure)  # failures debit nothing: not noted
    assert dispatcher._touched == {"gus"}
    assert [r["user_id"] for r in await dispatcher.detect_pending()] == ["gus"]
    assert dispatcher._touched == set()


# --- delivery --------------------------------------------------------------------------------


class Receiver:
    """A webhook receiver behind httpx.MockTransport: answers from a script, records calls."""

    def __init__(self, statuses: list[int] | None = None) -> None:
        self.statuses = list(statuses or [])
        self.calls: list[tuple[float, httpx.Request]] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append((time.monotonic(), request))
        status = self.statuses.pop(0) if self.statuses else 200
        if status < 0:
            raise httpx.ConnectError("connection refused", request=request)
        return httpx.Response(status, json={"ok": status < 300})

    @property
    def transport(self) -> httpx.MockTransport:
        return httpx.MockTransport(self)

    def bodies(self) -> list[dict[str, Any]]:
        return [json.loads(r.content) for _, r in self.calls]


async def deliver_until_done(dispatcher: AlertDispatcher, conn: psycopg.Connection,
                             timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while conn.execute("SELECT count(*) FROM credit_alerts WHERE status IN "
                       "('pending', 'sending')").fetchone() != (0,):
        assert time.monotonic() < deadline, "alerts still pending"
        await dispatcher.deliver_due()
        await asyncio.sleep(0.01)


async def test_signed_delivery_with_retries_and_backoff(
        make_runtime: RuntimeFactory, db_conn: psycopg.Connection) -> None:
    receiver = Receiver([500, -1, 503, 200])
    runtime, dispatcher = await make_runtime(transport=receiver.transport, base_delay=0.05,
                                             max_delay=1.0)
    grant(db_conn, "ivy", "10")
    set_threshold(db_conn, "ivy", "5")
    await spend(runtime, usage("ivy", "7"))
    [row] = await dispatcher.detect_pending()
    await deliver_until_done(dispatcher, db_conn)

    assert len(receiver.calls) == 4
    status, attempts, response_status, error, sent = db_conn.execute(
        "SELECT status, attempts, response_status, last_error, sent_at IS NOT NULL "
        "FROM credit_alerts WHERE id = %s", (row["id"],)).fetchone()
    assert (status, attempts, response_status, error, sent) == ("sent", 4, 200, None, True)
    # Exponential backoff: each wait at least half of base x 2^(n-1).
    times = [t for t, _ in receiver.calls]
    gaps = [b - a for a, b in zip(times, times[1:], strict=False)]
    for n, gap in enumerate(gaps, start=1):
        assert gap >= 0.05 * 2 ** (n - 1) * 0.5 - 0.005, gaps
    # Every attempt is signed, over the same body, with the attempt number in a header.
    for n, (_, request) in enumerate(receiver.calls, start=1):
        assert request.method == "POST" and str(request.url) == URL
        assert request.headers["content-type"] == "application/json"
        assert verify_signature(SECRET, request.content,
                                request.headers[alert_webhook.SIGNATURE_HEADER])
        assert not verify_signature("wrong-secret", request.content,
                                    request.headers[alert_webhook.SIGNATURE_HEADER])
        assert request.headers[alert_webhook.EVENT_ID_HEADER] == f"cra_{row['id']}"
        assert request.headers[alert_webhook.ATTEMPT_HEADER] == str(n)
    body = receiver.bodies()[0]
    assert body == {
        "id": f"cra_{row['id']}", "type": "credits.low_balance", "created": body["created"],
        "data": {"user_id": "ivy", "kind": "low_balance", "balance": "3.00000000",
                 "threshold": "5.00000000", "tier": "free",
                 "episode_started_at": body["data"]["episode_started_at"]},
    }
    assert len({r.content for _, r in receiver.calls}) == 1


async def test_gives_up_after_max_attempts(
        make_runtime: RuntimeFactory, db_conn: psycopg.Connection) -> None:
    receiver = Receiver([500] * 10)
    runtime, dispatcher = await make_runtime(transport=receiver.transport, max_attempts=3)
    grant(db_conn, "jo", "10")
    await spend(runtime, usage("jo", "10"))
    await dispatcher.detect_pending()
    await deliver_until_done(dispatcher, db_conn)
    assert len(receiver.calls) == 3
    assert db_conn.execute("SELECT status, attempts, last_error FROM credit_alerts").fetchone() \
        == ("failed", 3, "HTTP 500")


async def test_several_proxies_deliver_each_alert_once(
        make_runtime: RuntimeFactory, db_conn: psycopg.Connection) -> None:
    receiver = Receiver()
    proxies = [await make_runtime(transport=receiver.transport) for _ in range(3)]
    users = [f"w{i:02d}" for i in range(30)]
    for user in users:
        grant(db_conn, user, "1")
    runtime, dispatcher = proxies[0]
    await spend(runtime, *(usage(u, "1") for u in users))
    assert len(await dispatcher.detect_pending()) == len(users)

    async def drain(d: AlertDispatcher) -> None:
        while await d.deliver_due():
            pass

    await asyncio.gather(*(drain(d) for _, d in proxies for _ in range(2)))
    ids = [r.headers[alert_webhook.EVENT_ID_HEADER] for _, r in receiver.calls]
    assert len(ids) == len(users) == len(set(ids))
    assert db_conn.execute("SELECT count(*) FROM credit_alerts WHERE status = 'sent'"
                           ).fetchone() == (len(users),)


async def test_an_expired_lease_is_taken_over(
        make_runtime: RuntimeFactory, db_conn: psycopg.Connection) -> None:
    receiver = Receiver()
    runtime, first = await make_runtime(transport=receiver.transport)
    _, second = await make_runtime(transport=receiver.transport)
    grant(db_conn, "kim", "1")
    await spend(runtime, usage("kim", "1"))
    await first.detect_pending()
    # The first proxy claims it and "dies" before sending: the row stays 'sending'.
    claimed = await runtime.db.fetchall("alerts_take_due", {
        "lease_seconds": 60, "worker": first.worker, "limit": 10})
    assert len(claimed) == 1
    assert await second.deliver_due() == 0  # leased: not taken
    db_conn.execute("UPDATE credit_alerts SET locked_until = now() - interval '1 second'")
    assert await second.deliver_due() == 1
    assert db_conn.execute("SELECT status, attempts, locked_by FROM credit_alerts").fetchone() \
        == ("sent", 2, second.worker)
    assert len(receiver.calls) == 1


async def test_without_a_webhook_alerts_are_recorded_not_sent(
        make_runtime: RuntimeFactory, db_conn: psycopg.Connection) -> None:
    receiver = Receiver()
    runtime, dispatcher = await make_runtime(url=None, transport=receiver.transport)
    assert not dispatcher.configured
    _, no_secret = await make_runtime(secret=None, transport=receiver.transport)
    assert not no_secret.configured  # a URL without a secret never sends unsigned
    _, not_http = await make_runtime(url="file:///etc/passwd", transport=receiver.transport)
    assert not not_http.configured and not_http.webhook_url is None
    grant(db_conn, "lee", "1")
    await spend(runtime, usage("lee", "1"))
    await dispatcher.detect_pending()
    assert await dispatcher.deliver_due() == 0
    assert await no_secret.deliver_due() == 0
    assert [r[4] for r in alert_rows(db_conn)] == ["unconfigured"]
    assert receiver.calls == []


async def test_background_tasks_detect_and_deliver(
        make_runtime: RuntimeFactory, db_conn: psycopg.Connection) -> None:
    receiver = Receiver()
    runtime, dispatcher = await make_runtime(transport=receiver.transport, poll_seconds=0.05)
    dispatcher.on_refresh(runtime)  # what the runtime's refresher does
    dispatcher.on_refresh(runtime)  # twice: still one pair of tasks
    assert len(dispatcher._tasks) == 2
    grant(db_conn, "max", "2")
    await spend(runtime, usage("max", "2"))
    deadline = time.monotonic() + 10
    while not receiver.calls:
        assert time.monotonic() < deadline, "no delivery"
        await asyncio.sleep(0.02)
    assert receiver.bodies()[0]["type"] == "credits.zero_balance"


# --- signatures (no database) -------------------------------------------------------------------


def test_signature_rejects_tampering_and_stale_timestamps() -> None:
    body = build_payload({"id": 7, "kind": "low_balance", "user_id": "u", "balance": D("1.5"),
                          "threshold": D("2"), "tier": "free", "created_at": None,
                          "episode": None})
    header = sign(SECRET, body, timestamp=1_700_000_000)
    assert verify_signature(SECRET, body, header, now=1_700_000_100)
    assert not verify_signature(SECRET, body + b" ", header, now=1_700_000_100)
    assert not verify_signature(SECRET, body, header, now=1_700_000_000 + 301)
    assert not verify_signature(SECRET, body, None)
    assert not verify_signature(SECRET, body, "v1=abc")
    assert not verify_signature(SECRET, body, "t=x,v1=abc")
    # Money travels as exact text.
    assert json.loads(body)["data"]["balance"] == "1.50000000"


def test_backoff_doubles_and_is_capped() -> None:
    delays = [alert_webhook.backoff_seconds(n, base=5, cap=60, jitter=1.0) for n in range(1, 7)]
    assert delays == [5, 10, 20, 40, 60, 60]
    assert 2.5 <= alert_webhook.backoff_seconds(1, base=5, cap=60) <= 5


async def test_close_ends_the_loops_when_a_wake_and_the_cancel_coincide(
        make_runtime: RuntimeFactory) -> None:
    """The teardown hang: on Python 3.11 ``asyncio.wait_for`` drops a cancellation that
    arrives in the same loop turn as the event it waits for, and the loop then never ends.
    Here the wake (a settled batch, in production) and the close come together."""
    runtime, dispatcher = await make_runtime()
    dispatcher.start()
    await asyncio.sleep(0.05)  # both loops are waiting for their events
    tasks = list(dispatcher._tasks)
    assert dispatcher._detect_wake is not None and dispatcher._deliver_wake is not None
    dispatcher._detect_wake.set()
    dispatcher._deliver_wake.set()
    started = time.monotonic()
    await dispatcher.aclose(timeout=3.0)
    assert all(t.done() for t in tasks), [t for t in tasks if not t.done()]
    assert time.monotonic() - started < 3.0

