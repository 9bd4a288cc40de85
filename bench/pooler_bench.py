"""What working behind a transaction-mode pooler costs the hot path: reserve round trips.

``python -m bench.pooler_bench [--calls N] [--rounds R]`` starts a throwaway cluster
(``.run/pg-bench-pooler``) and a PgBouncer in transaction mode in front of it, and times
the ``reserve`` query (one ``reserve_credits`` call, what a request's hold costs when it
is not batched) from one connection, sequentially, in four shapes:

* ``prepared``      autocommit, psycopg's default automatic server-side prepared statements
                    (``prepare_threshold=5``): what the package did before; direct only,
                    since such statements break behind a transaction-mode pooler;
* ``unprepared``    autocommit, ``prepare_threshold=None`` (parse + plan on every call);
* ``set local``     ``SET LOCAL statement_timeout = N; <statement>`` in one simple-protocol
                    message (client-side binding), one implicit transaction: what
                    :class:`litellm_credits.store.db.Database` does now;
* ``pipelined``     BEGIN, the SET LOCAL, the statement and COMMIT in one psycopg pipeline
                    (server-side binding), an alternative;
* ``four trips``    the same four statements without a pipeline (for scale).

Rounds alternate the shapes, and the median round is reported, in microseconds per
call and calls per second. Users are spread (64) and holds deleted between rounds, so
every shape sees the same table.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from decimal import Decimal
from pathlib import Path

import psycopg
from psycopg.rows import dict_row

from devtools.pg import PgCluster
from devtools.pgbouncer import PgBouncer
from litellm_credits.store.db import _timed, query
from litellm_credits.store.migrate import migrate

REPO_ROOT = Path(__file__).resolve().parents[1]
USERS = [f"bench-pooler-{i}" for i in range(64)]
Conn = psycopg.AsyncConnection[dict[str, object]]


def _params(i: int) -> dict[str, object]:
    return {"user_id": USERS[i % len(USERS)], "request_id": f"r-{uuid.uuid4().hex}",
            "base_amount": Decimal("0.01"), "level": None, "ttl": 600}


async def _plain(conn: Conn, i: int) -> None:
    cur = await conn.execute(query("reserve"), _params(i))
    await cur.fetchone()


_SET = "SELECT set_config('statement_timeout', '3000', true)"


async def _pipelined(conn: Conn, i: int) -> None:
    async with conn.pipeline(), conn.transaction():
        await conn.execute(_SET)
        cur = await conn.execute(query("reserve"), _params(i))
    await cur.fetchone()


async def _four_trips(conn: Conn, i: int) -> None:
    async with conn.transaction():
        await conn.execute(_SET)
        cur = await conn.execute(query("reserve"), _params(i))
        await cur.fetchone()


async def _set_local(conn: Conn, i: int) -> None:
    cur = psycopg.AsyncClientCursor(conn)
    await cur.execute(_timed("reserve"), {**_params(i), "credits_statement_timeout_ms": "3000"})
    cur.nextset()
    await cur.fetchone()


SHAPES: dict[str, tuple[int | None, Callable[[Conn, int], Awaitable[None]]]] = {
    "prepared": (5, _plain),
    "unprepared": (None, _plain),
    "pipelined": (None, _pipelined),
    "four trips": (None, _four_trips),
    "set local": (None, _set_local),
}


async def _time(url: str, shape: str, calls: int) -> tuple[float, float]:
    threshold, call = SHAPES[shape]
    conn: Conn = await psycopg.AsyncConnection.connect(
        url, autocommit=True, prepare_threshold=threshold, row_factory=dict_row)
    try:
        for i in range(50):  # warm up (and let "prepared" prepare)
            await call(conn, i)
        started, cpu = time.perf_counter(), time.process_time()
        for i in range(calls):
            await call(conn, i)
        return (time.perf_counter() - started) / calls, (time.process_time() - cpu) / calls
    finally:
        await conn.close()


async def _run(direct: str, pooled: str, calls: int, rounds: int) -> None:
    targets = {"direct": direct, "pgbouncer (transaction)": pooled}
    results: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for _ in range(rounds):
        for target, url in targets.items():
            for shape in SHAPES:
                if shape == "prepared" and target != "direct":
                    continue
                results.setdefault((target, shape), []).append(await _time(url, shape, calls))
                with psycopg.connect(direct, autocommit=True) as conn:
                    conn.execute("DELETE FROM credit_holds")
    print(f"reserve, one connection, sequential; median of {rounds} rounds of {calls} calls")
    print(f"{'target':26} {'shape':12} {'us/call':>9} {'calls/s':>9} {'client CPU us':>14}")
    for (target, shape), values in results.items():
        median = statistics.median(v[0] for v in values)
        cpu = statistics.median(v[1] for v in values)
        print(f"{target:26} {shape:12} {median * 1e6:9.0f} {1 / median:9.0f} {cpu * 1e6:14.0f}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--port", type=int, default=55471)
    args = parser.parse_args(argv)
    cluster = PgCluster(REPO_ROOT / ".run" / "pg-bench-pooler", args.port, "bench-pooler")
    cluster.start()
    name = f"bench_pooler_{uuid.uuid4().hex[:6]}"
    try:
        url = cluster.create_database(name)
        migrate(url)
        with psycopg.connect(url, autocommit=True) as conn:
            for user in USERS:
                conn.execute("SELECT add_user_credits(%s, 1000000, 'admin_adjustment', NULL,"
                             " 'bench', 'bench')", (user,))
        with PgBouncer(cluster.port, mode="transaction") as bouncer:
            asyncio.run(_run(url, bouncer.url(name), args.calls, args.rounds))
    finally:
        cluster.drop_database(name)
        cluster.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
