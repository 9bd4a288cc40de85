"""Concurrency against a real PostgreSQL: 32+ connections debiting, holding and
settling on one account at once, and batches over several accounts in different orders.

Every connection runs with a lock_timeout and a statement_timeout, so a deadlock
or a lock pile-up fails the test (PostgreSQL's deadlock detector raises 40P01,
a stuck lock raises 55P03/57014) instead of hanging it.
"""

from __future__ import annotations

import asyncio
import json
import random
import threading
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from litellm_credits.ledger import Ledger
from litellm_credits.store.db import Database

D = Decimal
WORKERS = 32
TIMEOUTS = "-c lock_timeout=10000 -c statement_timeout=20000"


def run_workers(db_url: str, work: Callable[[int, psycopg.Connection], None],
                workers: int = WORKERS) -> None:
    """Run ``work(index, conn)`` in ``workers`` threads, each on its own connection,
    released together; re-raise the first failure."""
    conns = [psycopg.connect(db_url, autocommit=True, options=TIMEOUTS) for _ in range(workers)]
    barrier = threading.Barrier(workers)
    failures: list[BaseException] = []

    def main(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            work(i, conns[i])
        except BaseException as exc:  # noqa: BLE001 - re-raised in the test thread
            failures.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=main, args=(i,), daemon=True) for i in range(workers)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=90)
        assert not any(t.is_alive() for t in threads), "a worker hung"
    finally:
        for c in conns:
            c.close()
    if failures:
        raise failures[0]


def assert_chain(conn: psycopg.Connection, user_id: str) -> Decimal:
    """I2: balance_before/after chain by id from zero and the balance is their sum."""
    rows = conn.execute(
        "SELECT id, amount, balance_before, balance_after FROM credit_transactions "
        "WHERE user_id = %s ORDER BY id", (user_id,)).fetchall()
    running = D(0)
    for tx_id, amount, before, after in rows:
        assert before == running, f"transaction {tx_id} does not chain"
        assert after == before + amount
        running = after
    row = conn.execute("SELECT balance FROM user_credits WHERE user_id = %s",
                       (user_id,)).fetchone()
    assert row is not None
    assert row[0] == running == sum((r[1] for r in rows), D(0))
    return row[0]


def grant(conn: psycopg.Connection, user: str, amount: str) -> None:
    conn.execute("SELECT * FROM add_user_credits(%s, %s, 'purchase', %s, NULL)",
                 (user, amount, f"pi-{user}"))


def usage_record(request_id: str, user_id: str, credits: str, success: bool = True) -> dict:
    return {"request_id": request_id, "user_id": user_id, "model": "m", "provider": "openai",
            "prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15,
            "credits_charged": credits, "success": success}


def settle(conn: psycopg.Connection, records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(
        "SELECT * FROM settle_usage(%s::jsonb)", (json.dumps(records),)).fetchall()]


def test_32_connections_debit_hold_and_settle_one_account(
    db_url: str, db_conn: psycopg.Connection,
) -> None:
    grant(db_conn, "hot", "10000")
    rounds = 6

    def work(i: int, conn: psycopg.Connection) -> None:
        for r in range(rounds):
            rid = f"w{i}-r{r}"
            # A usage debit, repeated: the repeat moves nothing.
            for _ in range(2):
                ok, _, _ = conn.execute(
                    "SELECT * FROM debit_user_credits('hot', 1.5, 'usage', %s, NULL)",
                    (f"{rid}-u",)).fetchone()
                assert ok
            # An admin correction.
            ok, _, _ = conn.execute(
                "SELECT * FROM debit_user_credits('hot', 0.25, 'admin_adjustment', NULL, NULL)"
            ).fetchone()
            assert ok
            # A hold, then its settlement (actual cost below the estimate).
            status = conn.execute(
                "SELECT status FROM reserve_credits('hot', %s, 2, NULL, 600)",
                (f"{rid}-h",)).fetchone()[0]
            assert status == "placed"
            settle(conn, [usage_record(f"{rid}-h", "hot", "1.75")])
            # A hold for a request that fails: released, nothing debited.
            conn.execute("SELECT status FROM reserve_credits('hot', %s, 3, NULL, 600)",
                         (f"{rid}-f",))
            settle(conn, [usage_record(f"{rid}-f", "hot", "3", success=False)])
            # The same request settled by two workers (i and i ^ 1) at once: billed once.
            settle(conn, [usage_record(f"pair{i // 2}-r{r}", "hot", "0.5")])
            # A grant now and then.
            if r % 3 == 0:
                conn.execute("SELECT * FROM add_user_credits('hot', 0.1, 'bonus', NULL, NULL)")

    run_workers(db_url, work)

    n = WORKERS * rounds
    expected = (D("10000") - n * D("1.5") - n * D("0.25") - n * D("1.75")
                - (WORKERS // 2) * rounds * D("0.5") + WORKERS * 2 * D("0.1"))
    assert expected == D("9286.4")
    assert assert_chain(db_conn, "hot") == expected
    assert db_conn.execute(
        "SELECT count(*), count(DISTINCT idempotency_key), min(balance_after) > 0 "
        "FROM credit_transactions WHERE transaction_type = 'usage'").fetchone() == (
        n * 2 + (WORKERS // 2) * rounds, n * 2 + (WORKERS // 2) * rounds, True)
    assert db_conn.execute(
        "SELECT count(*), count(*) FILTER (WHERE success) FROM llm_usage_log").fetchone() == (
        n * 2 + (WORKERS // 2) * rounds, n + (WORKERS // 2) * rounds)
    assert db_conn.execute("SELECT count(*) FROM credit_holds").fetchone() == (0,)


def test_32_connections_overspending_never_go_below_zero(
    db_url: str, db_conn: psycopg.Connection,
) -> None:
    grant(db_conn, "thin", "100")

    def work(i: int, conn: psycopg.Connection) -> None:
        for r in range(10):
            conn.execute("SELECT * FROM debit_user_credits('thin', 0.5, 'usage', %s, NULL)",
                         (f"o{i}-{r}",))
            if r % 5 == 0:
                conn.execute(
                    "SELECT * FROM debit_user_credits('thin', 1, 'admin_adjustment', NULL, NULL)")

    run_workers(db_url, work)

    assert assert_chain(db_conn, "thin") == D("0")
    admin = db_conn.execute(
        "SELECT count(*), coalesce(sum(-amount), 0) FROM credit_transactions "
        "WHERE transaction_type = 'admin_adjustment'").fetchone()
    usage = db_conn.execute(
        "SELECT count(*), sum(-amount), sum(credits_uncollected), min(balance_after), "
        "min(amount) FROM credit_transactions WHERE transaction_type = 'usage'").fetchone()
    assert admin[1] == admin[0] * 1  # admin corrections move all or nothing
    count, taken, uncollected, lowest, biggest = usage
    assert count == WORKERS * 10                # every served request is recorded
    assert taken + admin[1] == D("100")          # exactly what there was, no more
    assert taken + uncollected == WORKERS * 10 * D("0.5")
    assert lowest == 0 and biggest == D("-0.5")
    assert db_conn.execute("SELECT count(*) FROM credit_transactions "
                           "WHERE balance_after < 0 OR balance_before < 0").fetchone() == (0,)


def test_32_connections_of_holds_never_exceed_the_balance(
    db_url: str, db_conn: psycopg.Connection,
) -> None:
    grant(db_conn, "held", "100")
    statuses: list[str] = []
    lock = threading.Lock()

    def work(i: int, conn: psycopg.Connection) -> None:
        for r in range(4):
            for _ in range(2):  # the second call is a retry of the same request
                row = conn.execute(
                    "SELECT status, balance - held "
                    "FROM reserve_credits('held', %s, 2.5, NULL, 600)",
                    (f"h{i}-{r}",)).fetchone()
                assert row[1] >= 0, "a hold left available below zero"
                with lock:
                    statuses.append(row[0])

    run_workers(db_url, work)

    assert statuses.count("placed") == 40    # 100 / 2.5, exactly
    assert statuses.count("placed") + statuses.count("insufficient") + \
        statuses.count("exists") == len(statuses) == WORKERS * 8
    assert db_conn.execute("SELECT count(*), sum(amount) FROM credit_holds").fetchone() == (
        40, D("100"))
    # Holds moved no money.
    assert assert_chain(db_conn, "held") == D("100")


def test_concurrent_batches_over_many_accounts_in_any_order(
    db_url: str, db_conn: psycopg.Connection,
) -> None:
    users = [f"acct-{k:02d}" for k in range(8)]
    for u in users:
        grant(db_conn, u, "1000")
    batches = 6

    def work(i: int, conn: psycopg.Connection) -> None:
        rng = random.Random(i)
        for b in range(batches):
            order = users[:]
            rng.shuffle(order)
            records = [usage_record(f"mb{i}-{b}-{u}", u, "0.5") for u in order]
            # Requests every worker also settles: each is billed exactly once.
            shared_user = order[0]
            records.append(usage_record(f"shared-{b}-{shared_user}", shared_user, "0.25"))
            out = settle(conn, records)
            assert len(out) == len(users) + 1
            # Single-account calls in between, on a random account.
            u = rng.choice(users)
            conn.execute("SELECT * FROM add_user_credits(%s, 0.5, 'bonus', NULL, NULL)", (u,))
            conn.execute("SELECT * FROM debit_user_credits(%s, 0.5, 'usage', %s, NULL)",
                         (u, f"single{i}-{b}"))

    run_workers(db_url, work)

    shared = db_conn.execute(
        "SELECT user_id, count(*) FROM llm_usage_log WHERE request_id LIKE 'shared-%' "
        "GROUP BY user_id").fetchall()
    shared_by_user = {u: D("0.25") * n for u, n in shared}
    for u in users:
        # Each worker's batch charged 0.5 to every account; bonuses and singles cancel out.
        assert assert_chain(db_conn, u) == (
            D("1000") - WORKERS * batches * D("0.5") - shared_by_user.get(u, D(0)))
    assert db_conn.execute(
        "SELECT count(*) FROM llm_usage_log WHERE request_id LIKE 'shared-%'").fetchone()[0] \
        == sum(n for _, n in shared) <= batches * len(users)
    assert db_conn.execute(
        "SELECT count(*) - count(DISTINCT idempotency_key) FROM credit_transactions "
        "WHERE transaction_type = 'usage'").fetchone() == (0,)
    assert db_conn.execute(
        "SELECT count(*) FROM credit_transactions WHERE transaction_type = 'usage'"
    ).fetchone() == (WORKERS * batches * (len(users) + 1) + sum(n for _, n in shared),)


@pytest.mark.parametrize("ops_per_task", [4])
async def test_async_ledger_with_a_pool_of_32(db_url: str, ops_per_task: int) -> None:
    db = Database(db_url, min_size=WORKERS, max_size=WORKERS, timeout=30,
                  statement_timeout_ms=20000)
    await db.open(wait=True)
    ledger = Ledger(db)
    try:
        await ledger.add_credits("pool", "50", type="purchase", payment_id="pi-pool")

        async def task(i: int) -> list[str]:
            seen = []
            for r in range(ops_per_task):
                res = await ledger.reserve("pool", f"p{i}-{r}", D("1"), "precision", 600)
                seen.append(res.status)
                if res.ok:
                    await ledger.settle([usage_record(f"p{i}-{r}", "pool", "1.5")])
                await ledger.debit("pool", "0.25", type="usage", request_id=f"q{i}-{r}")
            return seen

        results = await asyncio.wait_for(
            asyncio.gather(*(task(i) for i in range(WORKERS * 2))), timeout=60)
    finally:
        await db.close()

    statuses = [s for r in results for s in r]
    placed = statuses.count("placed")
    assert placed + statuses.count("insufficient") == WORKERS * 2 * ops_per_task
    with psycopg.connect(db_url) as conn:
        balance = assert_chain(conn, "pool")
        taken = conn.execute(
            "SELECT sum(-amount), sum(credits_uncollected) FROM credit_transactions "
            "WHERE transaction_type = 'usage'").fetchone()
        demand = placed * D("1.5") + WORKERS * 2 * ops_per_task * D("0.25")
        assert taken[0] + taken[1] == demand
        assert balance == D("50") - taken[0] >= 0
        assert conn.execute("SELECT count(*) FROM credit_transactions "
                            "WHERE balance_after < 0").fetchone() == (0,)
        assert conn.execute("SELECT count(*) FROM credit_holds").fetchone() == (0,)
