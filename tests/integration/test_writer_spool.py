"""The settlement writer and its durable spool (I4) against a real PostgreSQL.

* The database is unreachable (a stopped extra cluster): records go to an
  fsync'd spool file; once the server is back, replay settles each exactly
  once, and replaying the same records again changes nothing (I1).
* The server stops in the middle of a run of the background writer: nothing
  submitted is lost or doubled.
* The spool outlives the process: a new Writer on the same directory replays it.
* A torn last line (a crash mid-append) is skipped; a record the database
  refuses as invalid is set aside in ``rejected/`` while the rest settle.
* Records the writer holds in memory survive a shutdown.

Every test ends with ``reconcile`` clean.
"""

from __future__ import annotations

import asyncio
import json
import os
import stat
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from devtools.pg import ClusterFactory, PgCluster
from litellm_credits import errors
from litellm_credits.ledger import Ledger
from litellm_credits.reconcile import format_report, reconcile
from litellm_credits.settlement.record import SettlementRecord
from litellm_credits.settlement.spool import Spool
from litellm_credits.settlement.writer import Writer
from litellm_credits.store.db import Database

D = Decimal


# --- helpers -------------------------------------------------------------------------------


def record(rid: str, user: str = "alice", credits: str = "0.25", *,
           success: bool = True) -> SettlementRecord:
    """A settlement record shaped like settlement.build.success_record / failure_record."""
    return SettlementRecord(
        request_id=rid, user_id=user, model="openai/stand-in-model",
        model_group="chat", provider="openai", api_base="http://127.0.0.1:9/v1",
        power_level="balanced", byok_key_id=None, prompt_tokens=12,
        completion_tokens=5, cached_tokens=0, total_tokens=17,
        provider_cost_usd=D("0.000022"), credits_charged=D(credits) if success else D(0),
        cost_multiplier=D("1.0"), latency_ms=12, time_to_first_token_ms=None,
        success=success, status_code=200 if success else 500,
        error_type=None if success else "InternalServerError",
        error_message=None if success else "upstream said no", app_id=None,
        session_id=None, request_metadata={"stream": False},
        response_metadata={"deployment_id": "chat-openai"},
        created_at=datetime.now(UTC),
    )


def rids(n: int, prefix: str = "r") -> list[str]:
    return [f"{prefix}-{i}-{uuid.uuid4().hex[:8]}" for i in range(n)]


def counts(url: str) -> tuple[int, int, Decimal, int]:
    """(usage rows, usage debits, sum debited, holds)."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM llm_usage_log), "
            "(SELECT count(*) FROM credit_transactions WHERE transaction_type = 'usage'), "
            "(SELECT coalesce(-sum(amount), 0) FROM credit_transactions "
            " WHERE transaction_type = 'usage'), "
            "(SELECT count(*) FROM credit_holds)").fetchone()
    assert row is not None
    return int(row[0]), int(row[1]), row[2], int(row[3])


def per_request(url: str) -> dict[str, tuple[int, int]]:
    """request id -> (usage rows, usage debits)."""
    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT l.request_id, count(DISTINCT l.id), count(t.id) FROM llm_usage_log l "
            "LEFT JOIN credit_transactions t ON t.transaction_type = 'usage' "
            " AND t.idempotency_key = l.request_id GROUP BY l.request_id").fetchall()
    return {r[0]: (int(r[1]), int(r[2])) for r in rows}


def grant_and_hold(url: str, user: str, amount: str, hold_ids: list[str]) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT * FROM add_user_credits(%s, %s, 'purchase', %s, NULL)",
                     (user, amount, f"pi-{user}"))
        for rid in hold_ids:
            conn.execute("SELECT * FROM reserve_credits(%s, %s, 0.25, NULL, 600)", (user, rid))


async def open_db(url: str, timeout: float = 1.0) -> Database:
    db = Database(url, min_size=1, max_size=4, timeout=timeout, statement_timeout_ms=5000)
    await db.open(wait=False)
    return db


async def assert_reconciled(url: str) -> None:
    db = await open_db(url, timeout=10.0)
    try:
        report = await reconcile(db, hold_grace_seconds=0)
    finally:
        await db.close()
    assert report.ok, format_report(report)


async def eventually(predicate: Callable[[], Any], timeout: float = 20.0,
                     what: str = "condition") -> Any:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.05)


def spooled_ids(spool: Spool) -> list[str]:
    return [r.request_id for path in spool.segments() for r in Spool.read(path)]


@pytest.fixture
def cluster(pg_cluster_factory: ClusterFactory) -> PgCluster:
    """An extra cluster with a migrated database "credits" that tests may stop and start."""
    return pg_cluster_factory(dbname="credits", migrate=True)


@pytest.fixture
async def ledger_db(db_url: str) -> AsyncIterator[Database]:
    db = await open_db(db_url, timeout=5.0)
    yield db
    await db.close()


# --- the database is down --------------------------------------------------------------------


async def test_db_down_spools_then_replay_settles_exactly_once(
    cluster: PgCluster, tmp_path: Path,
) -> None:
    url = cluster.url("credits")
    ids = rids(6)
    grant_and_hold(url, "alice", "100", ids)
    cluster.stop("fast")

    db = await open_db(url)
    spool = Spool(tmp_path / "spool")
    writer = Writer(Ledger(db), spool, replay_interval=3600)
    try:
        batch = [record(rid) for rid in ids[:5]] + [record(ids[5], success=False)]
        for r in batch:
            writer.submit(r)
        await writer.flush()  # the database is down: DatabaseUnavailable -> spool
        assert writer.stats.spooled == 6 and writer.stats.settled == 0

        # The records are on disk, fsync'd, readable only by us, in submission order.
        (segment,) = spool.segments()
        assert stat.S_IMODE(segment.stat().st_mode) == 0o600
        on_disk = Spool.read(segment)
        assert [r.request_id for r in on_disk] == ids
        first_line = json.loads(segment.read_bytes().splitlines()[0])
        assert first_line["credits_charged"] == "0.25"  # Decimal travels as exact text
        assert spool.depth() == 6

        # Replay waits for the database: nothing is lost while it is still down.
        with pytest.raises(errors.DatabaseUnavailable):
            await writer.replay_now()
        assert spooled_ids(spool) == ids

        cluster.start()
        assert await writer.replay_now() == 6
        assert spool.segments() == [] and spool.depth() == 0
        assert counts(url) == (6, 5, D("1.25"), 0)  # 5 debits + 1 failure row, holds released

        # Replaying the very same records again (a crash between settling and deleting
        # the segment) changes nothing: still one row and one debit per request.
        spool.append(on_disk)
        assert await writer.replay_now() == 6
        assert await writer.replay_now() == 0
        assert counts(url) == (6, 5, D("1.25"), 0)
        assert set(per_request(url).values()) == {(1, 1), (1, 0)}
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT balance FROM user_credits WHERE user_id = 'alice'"
                                ).fetchone() == (D("98.75"),)
    finally:
        await writer.close()
        await db.close()
    await assert_reconciled(url)


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_db_stops_mid_run_nothing_lost_or_doubled(
    cluster: PgCluster, tmp_path: Path, mode: str,
) -> None:
    """The background writer keeps receiving records while the server goes away and back."""
    url = cluster.url("credits")
    users = ["u1", "u2", "u3"]
    for user in users:
        grant_and_hold(url, user, "1000", [])
    db = await open_db(url)
    spool = Spool(tmp_path / "spool")
    writer = Writer(Ledger(db), spool, batch_size=40, flush_seconds=0.05, replay_interval=0.2)
    writer.start()
    submitted: list[str] = []

    async def produce(n: int) -> None:
        for _ in range(n):
            rid = f"m-{len(submitted)}-{uuid.uuid4().hex[:6]}"
            submitted.append(rid)
            writer.submit(record(rid, users[len(submitted) % 3], "0.01"))
            await asyncio.sleep(0.005)

    try:
        await produce(60)
        await eventually(lambda: counts(url)[0] >= 30, what="some settled before the outage")
        stopper = asyncio.create_task(asyncio.to_thread(cluster.stop, mode))
        await produce(80)
        await stopper
        await produce(40)  # all of these hit a dead server
        await eventually(lambda: writer.depth == 0, what="the queue to drain into the spool")
        assert writer.stats.spooled > 0, "nothing was spooled; the outage was missed"
        await asyncio.to_thread(cluster.start)
        await produce(40)
        await eventually(lambda: counts(url)[0] == len(submitted) and not spool.segments(),
                         timeout=30, what="every record settled and the spool empty")
    finally:
        await writer.close()
        await db.close()
    total = len(submitted)
    assert counts(url) == (total, total, D("0.01") * total, 0)
    assert per_request(url) == {rid: (1, 1) for rid in submitted}
    await assert_reconciled(url)


async def test_spool_survives_a_restart_and_is_replayed_by_the_next_writer(
    cluster: PgCluster, tmp_path: Path,
) -> None:
    url = cluster.url("credits")
    ids = rids(4)
    grant_and_hold(url, "bob", "10", ids)
    cluster.stop("immediate")

    db = await open_db(url)
    first = Writer(Ledger(db), Spool(tmp_path / "spool"), replay_interval=3600)
    for rid in ids:
        first.submit(record(rid, "bob"))
    await first.flush()
    assert first.stats.spooled == 4
    await db.close()
    first.spool.close_segment()  # the process "dies": its file lock dies with it
    del first  # no close(), no replay

    cluster.start()
    db = await open_db(url)
    second = Writer(Ledger(db), Spool(tmp_path / "spool"), replay_interval=0.1)
    second.start()  # replays what it finds at start-up, without any new traffic
    try:
        await eventually(lambda: counts(url)[0] == 4, what="the old spool replayed")
        await eventually(lambda: not second.spool.segments(), what="the old segment deleted")
    finally:
        await second.close()
        await db.close()
    assert counts(url) == (4, 4, D("1.00"), 0)
    await assert_reconciled(url)


# --- damaged or refused records ----------------------------------------------------------------


async def test_a_torn_last_line_is_skipped(
    ledger_db: Database, db_url: str, tmp_path: Path,
) -> None:
    grant_and_hold(db_url, "carol", "10", [])
    spool = Spool(tmp_path / "spool")
    ids = rids(3)
    spool.append([record(rid, "carol") for rid in ids])
    (segment,) = spool.segments()
    torn = json.dumps(record("torn-1", "carol").to_json())[:57]  # no newline: never acked
    with segment.open("ab") as fh:
        fh.write(torn.encode())
    assert [r.request_id for r in Spool.read(segment)] == ids
    assert spool.depth() == 3

    writer = Writer(Ledger(ledger_db), spool)
    assert await writer.replay_now() == 3
    assert spool.segments() == []
    assert counts(db_url) == (3, 3, D("0.75"), 0)
    assert "torn-1" not in per_request(db_url)
    await assert_reconciled(db_url)


async def test_a_refused_record_is_set_aside_and_the_others_settle(
    ledger_db: Database, db_url: str, tmp_path: Path,
) -> None:
    grant_and_hold(db_url, "dave", "10", [])
    spool = Spool(tmp_path / "spool")
    writer = Writer(Ledger(ledger_db), spool, replay_interval=3600)
    good = rids(6, "good")
    bad = record("bad-negative", "dave")
    bad = bad.replace(credits_charged=D("-5"))  # the database's check refuses it
    batch = [record(rid, "dave") for rid in good[:3]] + [bad] + [
        record(rid, "dave") for rid in good[3:]]
    for r in batch:
        writer.submit(r)
    await writer.flush()
    assert writer.stats.rejected == 1
    assert counts(db_url) == (6, 6, D("1.50"), 0)
    kept = sorted((spool.directory / "rejected").iterdir())
    # Named <time>-<request id>.json, so two refusals of one id never overwrite each other.
    assert [p.name.split("-", 1)[1] for p in kept] == ["bad-negative.json"]
    assert json.loads(kept[0].read_text())["credits_charged"] == "-5"
    assert spool.segments() == []  # not retried forever

    # The same from a spool replay: the bad record is set aside, the others settle.
    more = rids(3, "more")
    bad2 = record("bad-too-long-user", "x" * 300)
    spool.append([record(more[0], "dave"), bad2, record(more[1], "dave"),
                  record(more[2], "dave")])
    assert await writer.replay_now() == 4
    assert counts(db_url) == (9, 9, D("2.25"), 0)
    assert sorted(p.name.split("-", 1)[1] for p in (spool.directory / "rejected").iterdir()) == [
        "bad-negative.json", "bad-too-long-user.json"]
    await assert_reconciled(db_url)


async def test_a_damaged_middle_line_does_not_block_the_rest(
    ledger_db: Database, db_url: str, tmp_path: Path,
) -> None:
    grant_and_hold(db_url, "erin", "10", [])
    spool = Spool(tmp_path / "spool")
    ids = rids(2)
    spool.append([record(ids[0], "erin")])
    (segment,) = spool.segments()
    with segment.open("ab") as fh:
        fh.write(b'{"request_id": "half-writ\n')
    spool.append([record(ids[1], "erin")])
    writer = Writer(Ledger(ledger_db), spool)
    await writer.replay_now()
    assert counts(db_url)[:2] == (2, 2)


# --- records in the writer's hands at shutdown ---------------------------------------------------


async def test_close_keeps_the_batch_the_writer_is_holding(
    ledger_db: Database, db_url: str, tmp_path: Path,
) -> None:
    grant_and_hold(db_url, "frank", "10", [])
    spool = Spool(tmp_path / "spool")
    writer = Writer(Ledger(ledger_db), spool, flush_seconds=0.5, replay_interval=3600)
    writer.start()
    ids = rids(3)
    for rid in ids:
        writer.submit(record(rid, "frank"))
    await asyncio.sleep(0.1)  # the run task now holds the records, waiting for more
    await writer.close()
    assert sorted(set(per_request(db_url)) | set(spooled_ids(spool))) == sorted(ids)


async def test_close_spools_what_it_cannot_settle(
    cluster: PgCluster, tmp_path: Path,
) -> None:
    url = cluster.url("credits")
    grant_and_hold(url, "gina", "10", [])
    cluster.stop("fast")
    db = await open_db(url)
    spool = Spool(tmp_path / "spool")
    writer = Writer(Ledger(db), spool, replay_interval=3600)
    ids = rids(3)
    for rid in ids:
        writer.submit(record(rid, "gina"))
    await writer.close(timeout=5)  # never started: everything is still queued
    writer.submit(record("late-1", "gina"))  # an event after close goes straight to disk
    await db.close()
    assert sorted(spooled_ids(spool)) == sorted([*ids, "late-1"])
    assert writer.spool_pending() == 0


# --- several processes on one spool directory ----------------------------------------------------


async def test_a_replayer_does_not_delete_records_another_process_is_appending(
    ledger_db: Database, db_url: str, tmp_path: Path,
) -> None:
    grant_and_hold(db_url, "hal", "10", [])
    directory = tmp_path / "shared-spool"
    writer_a = Spool(directory)  # proxy A, still spooling
    spool_b = Spool(directory)  # proxy B, replaying
    ledger = Ledger(ledger_db)
    writer_a.append([record("a-1", "hal")])

    async def settle(batch: list[SettlementRecord]) -> None:
        await ledger.settle([r.to_json() for r in batch])
        writer_a.append([record("a-2", "hal")])  # A's next failed batch lands meanwhile

    await spool_b.replay(settle)  # A's segment is locked while A appends to it: skipped
    writer_a.append([record("a-2", "hal")])
    settled = set(per_request(db_url))
    waiting = set(spooled_ids(Spool(directory)))
    assert {"a-1", "a-2"} <= settled | waiting


async def test_rejected_records_are_private_too(
    ledger_db: Database, db_url: str, tmp_path: Path,
) -> None:
    old = os.umask(0o022)
    try:
        spool = Spool(tmp_path / "spool")
        writer = Writer(Ledger(ledger_db), spool)
        bad = record("private-bad", "jane")
        bad = bad.replace(credits_charged=D("-1"))
        writer.submit(bad)
        await writer.flush()
    finally:
        os.umask(old)
    (kept,) = (spool.directory / "rejected").iterdir()
    assert stat.S_IMODE(kept.stat().st_mode) == 0o600


def test_spool_files_are_private(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    spool.append([record("p-1")])
    (segment,) = spool.segments()
    assert stat.S_IMODE(segment.stat().st_mode) == 0o600


class _DropsAfter(Ledger):
    """The real ledger, except that the database goes away after ``ok`` settle calls."""

    def __init__(self, db: Database, ok: int) -> None:
        super().__init__(db)
        self.calls = 0
        self.ok = ok

    async def settle(self, records: Any, deadline: float | None = None) -> list[dict[str, Any]]:
        self.calls += 1
        if self.calls > self.ok:
            raise errors.DatabaseUnavailable("the credits database is unreachable: test")
        return await super().settle(records, deadline)


async def test_an_outage_while_isolating_a_bad_record_loses_nothing(
    ledger_db: Database, db_url: str, tmp_path: Path,
) -> None:
    grant_and_hold(db_url, "ivy", "10", [])
    spool = Spool(tmp_path / "spool")
    # Call 1: the whole batch, refused (a bad record). Call 2: the first half, settled.
    # Call 3 onwards: the database is gone.
    writer = Writer(_DropsAfter(ledger_db, ok=2), spool, replay_interval=3600)
    ids = rids(4, "iso")
    bad = record("iso-bad", "ivy")
    bad = bad.replace(credits_charged=D("-1"))
    for r in [record(ids[0], "ivy"), record(ids[1], "ivy"), bad, record(ids[2], "ivy"),
              record(ids[3], "ivy")]:
        writer.submit(r)
    await writer.flush()
    kept = set(per_request(db_url)) | set(spooled_ids(spool))
    assert set(ids) <= kept
