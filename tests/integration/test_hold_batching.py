"""Concurrent reserves share one statement (litellm_credits.holds, 0005), against a
real PostgreSQL: each request still gets its own status or its own error, a busy
account does not hold up the batch, and nothing is lost or placed twice."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from decimal import Decimal

import psycopg
import pytest

from litellm_credits import errors
from litellm_credits.ledger import Ledger, Reservation
from litellm_credits.store.db import Database

D = Decimal


def grant(conn: psycopg.Connection, user: str, amount: str) -> None:
    conn.execute("SELECT * FROM add_user_credits(%s, %s, 'purchase', NULL, NULL)",
                 (user, amount))


def held(conn: psycopg.Connection) -> dict[str, tuple[str, Decimal]]:
    rows = conn.execute("SELECT request_id, user_id, amount FROM credit_holds").fetchall()
    return {r[0]: (r[1], r[2]) for r in rows}



async def reserve_all(ledger: Ledger, calls: Sequence[tuple[str, str, str, str | None]],
                      ) -> list[Reservation | BaseException]:
    """Start every reserve in the same tick, so they queue behind one another."""
    return await asyncio.gather(
        *(ledger.reserve(user, rid, D(base), level, 600) for user, rid, base, level in calls),
        return_exceptions=True)


async def test_concurrent_reserves_go_in_few_statements_with_exact_results(
    database: Database, db_conn: psycopg.Connection
) -> None:
    for i in range(40):
        grant(db_conn, f"u{i:02d}", "100")
    db_conn.execute("UPDATE user_credits SET power_level = 'eco' WHERE user_id < 'u10'")
    ledger = Ledger(database)
    calls = [(f"u{i:02d}", f"req-{i}", f"{i + 1}", None) for i in range(40)]
    results = await reserve_all(ledger, calls)

    assert all(isinstance(r, Reservation) for r in results), results
    # All forty arrived before the sender's first turn: one statement.
    assert ledger.holds.batches == 1 and ledger.holds.batched == 40
    placed = held(db_conn)
    assert len(placed) == 40
    for i, res in enumerate(results):
        assert isinstance(res, Reservation)
        eco = i < 10
        want = (D(i + 1) * (D("0.7") if eco else D(1))).quantize(D("0.00000001"))
        assert res.status == "placed" and res.power_level == ("eco" if eco else "balanced")
        assert res.hold_amount == want and res.held == want and res.balance == D(100)
        assert placed[f"req-{i}"] == (f"u{i:02d}", want)


async def test_a_bad_item_fails_alone_with_the_error_it_would_get_alone(
    database: Database, db_conn: psycopg.Connection
) -> None:
    grant(db_conn, "ann", "100")
    grant(db_conn, "bob", "100")
    grant(db_conn, "cat", "1")
    db_conn.execute("UPDATE user_credits SET level_override_allowed = FALSE WHERE user_id = 'bob'")
    ledger = Ledger(database)
    results = await reserve_all(ledger, [
        ("ann", "warm", "1", None),
        ("nobody", "r-1", "1", None),        # no account
        ("ann", "r-2", "1", "precision"),
        ("bob", "r-3", "1", "eco"),          # may not choose a level
        ("cat", "r-4", "5", None),           # not enough credits: a status, not an error
        ("ann", "r-5", "1", None),
    ])
    assert ledger.holds.batches == 1
    assert isinstance(results[1], errors.AccountNotFound)
    assert "nobody" in results[1].message and "grant" in results[1].message  # hint kept
    assert isinstance(results[3], errors.LevelNotAllowed)
    ok = {i: r for i, r in enumerate(results) if isinstance(r, Reservation)}
    assert sorted(ok) == [0, 2, 4, 5]
    assert ok[2].status == "placed" and ok[2].power_level == "precision"
    assert ok[4].status == "insufficient"
    assert ok[5].status == "placed"
    assert sorted(held(db_conn)) == ["r-2", "r-5", "warm"]


async def test_one_account_gets_exactly_what_its_balance_covers_within_a_batch(
    database: Database, db_conn: psycopg.Connection
) -> None:
    grant(db_conn, "hot", "10")
    ledger = Ledger(database)
    results = await reserve_all(ledger, [("hot", f"h-{i}", "1", None) for i in range(25)])
    statuses = [r.status for r in results if isinstance(r, Reservation)]
    assert len(statuses) == 25
    assert statuses.count("placed") == 10 and statuses.count("insufficient") == 15
    # Taken in arrival order: the first ten requests got the credit.
    assert [r.status for r in results[:10] if isinstance(r, Reservation)] == ["placed"] * 10
    assert sum(amount for _, amount in held(db_conn).values()) == D(10)


async def test_a_locked_account_does_not_hold_up_the_rest_of_the_batch(
    database: Database, db_url: str, db_conn: psycopg.Connection
) -> None:
    for user in ("ann", "bob", "cat", "locked"):
        grant(db_conn, user, "100")
    ledger = Ledger(database)
    with psycopg.connect(db_url) as blocker:  # an open transaction holds the row
        blocker.execute("SELECT 1 FROM user_credits WHERE user_id = 'locked' FOR UPDATE")
        started = time.monotonic()
        tasks = [asyncio.create_task(ledger.reserve(u, f"r-{u}", D(1), None, 600))
                 for u in ("ann", "locked", "bob", "cat")]
        done, pending = await asyncio.wait(tasks, timeout=2.0)
        quick = time.monotonic() - started
        assert {t for t in tasks if t in done} == {tasks[0], tasks[2], tasks[3]}, quick
        assert pending == {tasks[1]}  # waits for the lock on its own, alone
        assert all(t.result().status == "placed" for t in done)
        # Reserves arriving while it waits are not queued behind it.
        later = asyncio.gather(*(ledger.reserve(u, f"r2-{u}", D(1), None, 600)
                                 for u in ("ann", "bob")))
        assert [r.status for r in await asyncio.wait_for(later, 1.0)] == ["placed"] * 2
        assert not tasks[1].done()
        blocker.rollback()
    locked = await asyncio.wait_for(tasks[1], 5)
    assert locked.status == "placed"
    assert sorted(held(db_conn)) == ["r-ann", "r-bob", "r-cat", "r-locked", "r2-ann", "r2-bob"]


async def test_a_lone_reserve_on_a_locked_account_does_not_stall_the_queue(
    database: Database, db_url: str, db_conn: psycopg.Connection
) -> None:
    for user in ("ann", "locked"):
        grant(db_conn, user, "100")
    ledger = Ledger(database)
    with psycopg.connect(db_url) as blocker:
        blocker.execute("SELECT 1 FROM user_credits WHERE user_id = 'locked' FOR UPDATE")
        waiting = asyncio.create_task(ledger.reserve("locked", "l-1", D(1), None, 600))
        await asyncio.sleep(0.2)  # sent alone, found the lock, now retried on its own
        assert not waiting.done()
        quick = await asyncio.wait_for(ledger.reserve("ann", "a-1", D(1), None, 600), 1.0)
        assert quick.status == "placed"
        blocker.rollback()
    assert (await asyncio.wait_for(waiting, 5)).status == "placed"


async def test_batches_from_two_proxies_on_the_same_accounts_do_not_deadlock(
    db_url: str, db_conn: psycopg.Connection
) -> None:
    users = [f"s{i}" for i in range(6)]
    for user in users:
        grant(db_conn, user, "1000")
    one, two = (Database(db_url, min_size=1, max_size=4) for _ in range(2))
    await one.open(wait=True)
    await two.open(wait=True)
    try:
        a, b = Ledger(one), Ledger(two)
        calls = []
        for n in range(300):
            ledger = a if n % 2 else b
            k = (n // 2) % 6
            user = users[k] if n % 2 else users[5 - k]  # opposite orders
            calls.append(ledger.reserve(user, f"x-{n}", D(1), None, 600))
        results = await asyncio.wait_for(asyncio.gather(*calls), 60)
    finally:
        await one.close()
        await two.close()
    assert [r.status for r in results] == ["placed"] * 300
    assert a.holds.batches > 0 and b.holds.batches > 0
    assert len(held(db_conn)) == 300
    counts: dict[str, int] = dict(db_conn.execute(
        "SELECT user_id, count(*) FROM credit_holds GROUP BY user_id").fetchall())
    assert counts == {u: 50 for u in users}


async def test_a_statement_refused_as_a_whole_is_retried_item_by_item(
    database: Database, db_conn: psycopg.Connection
) -> None:
    grant(db_conn, "ann", "100")
    ledger = Ledger(database)
    first = asyncio.create_task(ledger.reserve("ann", "a-0", D(1), None, 600))
    # A ttl past INTEGER fails the whole jsonb_to_recordset, not just its item; the
    # five share one statement (they all queue before the sender's first turn).
    bad = asyncio.create_task(ledger.reserve("ann", "a-bad", D(1), None, 10**12))
    rest = [asyncio.create_task(ledger.reserve("ann", f"a-{i}", D(1), None, 600))
            for i in range(1, 4)]
    assert (await first).status == "placed"
    with pytest.raises(errors.InvalidInput):
        await bad
    assert [(await t).status for t in rest] == ["placed"] * 3
    assert sorted(held(db_conn)) == ["a-0", "a-1", "a-2", "a-3"]


async def test_bad_text_is_refused_before_it_reaches_a_shared_statement(database: Database) -> None:
    ledger = Ledger(database)
    with pytest.raises(errors.InvalidUserId):
        await ledger.reserve("bad\x00user", "r", D(1), None, 600)
    with pytest.raises(errors.InvalidUserId):
        await ledger.reserve("surrogate\ud800", "r", D(1), None, 600)
    with pytest.raises(errors.InvalidInput):
        await ledger.reserve("ann", "rid\x00", D(1), None, 600)
    with pytest.raises(errors.InvalidPowerLevel):
        await ledger.reserve("ann", "r", D(1), "turbo", 600)
    with pytest.raises(errors.InvalidAmount):
        await ledger.reserve("ann", "r", D("NaN"), None, 600)
    assert ledger.holds.batches == 0


async def test_a_caller_that_gives_up_does_not_disturb_the_others(
    database: Database, db_conn: psycopg.Connection
) -> None:
    for user in ("ann", "bob"):
        grant(db_conn, user, "100")
    ledger = Ledger(database)
    first = asyncio.create_task(ledger.reserve("ann", "c-0", D(1), None, 600))
    gone = asyncio.create_task(ledger.reserve("bob", "c-gone", D(1), None, 600))
    stays = asyncio.create_task(ledger.reserve("bob", "c-stays", D(1), None, 600))
    await asyncio.sleep(0)
    gone.cancel()
    assert (await first).status == "placed"
    assert (await stays).status == "placed"
    assert gone.cancelled()
    # The cancelled request never reached the database: its slot was skipped.
    assert sorted(held(db_conn)) == ["c-0", "c-stays"]


async def test_a_lost_database_fails_every_waiting_reserve_then_recovers(
    db_url: str, db_conn: psycopg.Connection
) -> None:
    grant(db_conn, "ann", "100")
    database = Database(db_url, min_size=1, max_size=2, timeout=1.0)
    await database.open(wait=True)
    try:
        ledger = Ledger(database)
        pid = db_conn.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() "
            "AND pid <> pg_backend_pid() AND application_name = 'litellm-credits'").fetchall()
        assert pid
        # Terminate the pool's connections: the next statement fails mid-flight.
        for (p,) in pid:
            db_conn.execute("SELECT pg_terminate_backend(%s)", (p,))
        results = await reserve_all(ledger, [("ann", f"l-{i}", "1", None) for i in range(6)])
        failed = [r for r in results if isinstance(r, BaseException)]
        assert failed, results
        assert all(isinstance(r, errors.DatabaseUnavailable) for r in failed), failed
        # The queue is not stuck: the next reserves go through on fresh connections.
        again = await reserve_all(ledger, [("ann", f"m-{i}", "1", None) for i in range(6)])
        assert [getattr(r, "status", r) for r in again] == ["placed"] * 6
    finally:
        await database.close()


async def test_batching_off_sends_each_reserve_alone(
    database: Database, db_conn: psycopg.Connection
) -> None:
    grant(db_conn, "ann", "100")
    ledger = Ledger(database, reserve_batch=1)
    results = await reserve_all(ledger, [("ann", f"o-{i}", "1", None) for i in range(8)])
    assert [getattr(r, "status", r) for r in results] == ["placed"] * 8
    assert ledger.holds.batches == 0
    with pytest.raises(errors.ConfigError):
        Ledger(database, reserve_batch=0)


async def test_batch_size_is_bounded(database: Database, db_conn: psycopg.Connection) -> None:
    grant(db_conn, "ann", "1000")
    ledger = Ledger(database, reserve_batch=5)
    results = await reserve_all(ledger, [("ann", f"b-{i}", "1", None) for i in range(21)])
    assert [getattr(r, "status", r) for r in results] == ["placed"] * 21
    # Statements of at most 5: 5, 5, 5, 5, 1.
    assert ledger.holds.batches == 5 and ledger.holds.batched == 21
