"""Part 2: settlement throughput of one PostgreSQL, and the reserve round trip's capacity.

Settling one request = one ``llm_usage_log`` row + one usage debit (a chained
``credit_transactions`` row and the balance update) + its hold released.

* **writer**: the package's own :class:`~litellm_credits.settlement.writer.Writer` (the
  background task every proxy runs), fed with typed
  :class:`~litellm_credits.settlement.record.SettlementRecord` objects built by
  :func:`litellm_credits.settlement.build.success_record`; it takes them in
  batches (``batch_size`` 500, as configured by default) and settles each
  batch in one transaction through ``Ledger.settle`` (SQL ``settle_usage(jsonb)``).
  With ``writers`` > 1, that many writers run at once, each in its own process
  with its own pool, as several proxy processes would.
* **baseline**: one transaction per request, the way a naive plugin would do
  it: ``debit_user_credits(..., 'usage', request_id)`` + ``INSERT`` of the usage
  row + ``release_hold``, from 16 connections at once (so PostgreSQL can group
  commits).

Both run spread over 1,000 users and for one hot user, in the same run, on a
fresh database each (holds placed in bulk beforehand, not timed). The same
module measures the hook's database side: ``reserve_credits`` calls per second
from 16 connections (spread and hot), and the cost of one ``settle_usage``
call by batch size, which the scaling arithmetic in docs/benchmarks.md uses.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.common import level_of, percentile, rnd

if TYPE_CHECKING:
    from litellm_credits.settlement.record import SettlementRecord

HOLD = Decimal("0.01")
HOT_USER = "set-hot-0000"  # seeded like everyone else, with prefix "set-hot-"
BASELINE_CONNECTIONS = 16
RESERVE_CONNECTIONS = 16

# The baseline's usage row: the same columns settle_usage writes.
INSERT_USAGE = """
INSERT INTO llm_usage_log (
    request_id, user_id, model, model_group, provider, api_base, power_level, byok_key_id,
    prompt_tokens, completion_tokens, cached_tokens, total_tokens, provider_cost_usd,
    credits_charged, cost_multiplier, latency_ms, time_to_first_token_ms, success, status_code,
    error_type, error_message, app_id, session_id, request_metadata, response_metadata,
    created_at)
VALUES (
    %(request_id)s, %(user_id)s, %(model)s, %(model_group)s, %(provider)s, %(api_base)s,
    %(power_level)s, %(byok_key_id)s, %(prompt_tokens)s, %(completion_tokens)s,
    %(cached_tokens)s, %(total_tokens)s, %(provider_cost_usd)s, %(credits_charged)s,
    %(cost_multiplier)s, %(latency_ms)s, %(time_to_first_token_ms)s, %(success)s,
    %(status_code)s, %(error_type)s, %(error_message)s, %(app_id)s, %(session_id)s,
    %(request_metadata)s, %(response_metadata)s, %(created_at)s)
"""


# -- records -------------------------------------------------------------------------------


def make_records(users: list[str], n: int, key_ids: dict[str, int],
                 seed: int) -> list[SettlementRecord]:
    """``n`` settlement records as the hook builds them, for users drawn at random."""
    from litellm_credits.context import RequestContext
    from litellm_credits.settlement.build import Charge, success_record

    rng = random.Random(seed)
    records = []
    for _ in range(n):
        user = rng.choice(users)
        key_id = key_ids.get(user)
        level = level_of(int(user[-4:]))
        provider = "openrouter" if level == "eco" else "openai"
        multiplier = {"eco": "0.7", "balanced": "1", "precision": "1.5"}[level]
        ctx = RequestContext(request_id=f"req_{uuid.uuid4().hex}", user_id=user,
                             model_group="chat", power_level=level,
                             multiplier=Decimal(multiplier), hold=HOLD,
                             credits_per_usd=Decimal(10), route=(f"chat-{provider}",),
                             route_rule="preferred")
        now = time.time()
        slo = {"model_group": "chat", "model_id": f"chat-{provider}",
               "model": f"{provider}-bench-model", "api_base": "http://127.0.0.1:61100/v1",
               "prompt_tokens": 25, "completion_tokens": 10, "total_tokens": 35,
               "startTime": now - 0.05, "endTime": now, "completionStartTime": now - 0.01,
               "litellm_call_id": str(uuid.uuid4()), "end_user": user, "stream": False,
               "call_type": "acompletion", "response_cost": 0.000045, "cache_hit": False}
        credits = (Decimal("0.00045") * Decimal(multiplier)).quantize(Decimal("0.00000001"))
        charge = Charge(Decimal("0.000045"), credits, Decimal(0) if key_id else credits,
                        "deployment")
        records.append(success_record(ctx, slo, provider=provider, charge=charge,
                                      byok_key_id=key_id, app_id=None, session_id=None))
    return records


def place_holds(url: str, records: list[SettlementRecord]) -> None:
    """The holds the hook would have placed, in bulk (setup, not timed)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn, conn.cursor() as cur:
        with cur.copy("COPY credit_holds (request_id, user_id, amount, expires_at) "
                      "FROM STDIN") as copy:
            for r in records:
                copy.write_row((r.request_id, r.user_id, HOLD,
                                datetime(2100, 1, 1, tzinfo=UTC)))
        conn.execute("ANALYZE credit_holds")


def check_settled(url: str, records: list[SettlementRecord]) -> dict[str, Any]:
    """Every request: one usage row, one usage debit, no hold left."""
    import psycopg

    ids = [r.request_id for r in records]
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM llm_usage_log WHERE request_id = ANY(%(ids)s)),"
            " (SELECT count(*) FROM credit_transactions WHERE transaction_type = 'usage'"
            "    AND request_id = ANY(%(ids)s)),"
            " (SELECT count(*) FROM credit_holds WHERE request_id = ANY(%(ids)s))",
            {"ids": ids}).fetchone()
    assert row is not None
    ok = row[0] == len(ids) and row[1] == len(ids) and row[2] == 0
    return {"usage_rows": row[0], "debits": row[1], "holds_left": row[2], "complete": ok}


# -- the writer path ---------------------------------------------------------------------------


async def _writer_settle(url: str, records: list[SettlementRecord], batch_size: int,
                         flush_ms: int) -> dict[str, Any]:
    from litellm_credits.ledger import Ledger
    from litellm_credits.settlement.spool import Spool
    from litellm_credits.settlement.writer import Writer
    from litellm_credits.store.db import Database

    db = Database(url, min_size=1, max_size=2)
    await db.open(wait=True)
    try:
        with tempfile.TemporaryDirectory(prefix="credits-bench-spool-") as tmp:
            writer = Writer(Ledger(db), Spool(Path(tmp)), batch_size=batch_size,
                            flush_seconds=flush_ms / 1000)
            for record in records:
                writer.submit(record)
            cpu0 = time.process_time()
            started = time.perf_counter()
            writer.start()
            target = len(records)
            while writer.stats.settled + writer.stats.spooled + writer.stats.rejected < target:
                await asyncio.sleep(0.002)
            elapsed = time.perf_counter() - started
            cpu = time.process_time() - cpu0
            await writer.close()
            stats = writer.stats
    finally:
        await db.close()
    return {"records": target, "seconds": elapsed, "client_cpu_s": cpu,
            "batches": stats.batches, "spooled": stats.spooled, "rejected": stats.rejected,
            "outcomes": dict(stats.outcomes)}


def _writer_process(url: str, path: str, batch_size: int, flush_ms: int,
                    start_at: float) -> dict[str, Any]:
    """One writer, as its own process would run it (``python -m bench.settle_bench writer``)."""
    from litellm_credits.settlement.record import SettlementRecord

    # What the hook hands the writer: typed records (the file holds their spool form).
    records = [SettlementRecord.from_json(obj) for obj in json.loads(Path(path).read_text())]
    delay = start_at - time.time()
    if delay > 0:
        time.sleep(delay)
    result: dict[str, Any] = _run(lambda: _writer_settle(url, records, batch_size, flush_ms))
    return result


def writer_throughput(url: str, records: list[SettlementRecord], *, writers: int,
                      batch_size: int = 500, flush_ms: int = 50) -> dict[str, Any]:
    """Settle ``records`` with ``writers`` Writer instances, each in its own process."""
    chunks = [records[i::writers] for i in range(writers)]
    with tempfile.TemporaryDirectory(prefix="credits-bench-records-") as tmp:
        paths = []
        for i, chunk in enumerate(chunks):
            path = Path(tmp) / f"chunk{i}.json"
            path.write_text(json.dumps([r.to_json() for r in chunk]))
            paths.append(str(path))
        start_at = time.time() + 2.5  # every process loaded and connected by then
        env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
        procs = [subprocess.Popen(
            [sys.executable, "-m", "bench.settle_bench", "writer", "--url", url, "--records", p,
             "--batch-size", str(batch_size), "--flush-ms", str(flush_ms),
             "--start-at", repr(start_at)],
            stdout=subprocess.PIPE, text=True, env=env) for p in paths]
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=900)
            if proc.returncode != 0:
                raise RuntimeError(f"settlement writer process failed ({proc.returncode})")
            results.append(json.loads(out.strip().splitlines()[-1]))
    # Throughput over the wall time of the slowest writer (all started together).
    seconds = max(r["seconds"] for r in results)
    settled = sum(r["records"] for r in results)
    outcomes: dict[str, int] = {}
    for r in results:
        for k, v in r["outcomes"].items():
            outcomes[k] = outcomes.get(k, 0) + v
    return {
        "per_s": rnd(settled / seconds, 1),
        "records": settled,
        "seconds": rnd(seconds, 3),
        "writers": writers,
        "batch_size": batch_size,
        "batches": sum(r["batches"] for r in results),
        "spooled": sum(r["spooled"] for r in results),
        "rejected": sum(r["rejected"] for r in results),
        "outcomes": outcomes,
        "writer_cpu_ms_per_record": rnd(sum(r["client_cpu_s"] for r in results) * 1000
                                        / max(settled, 1), 4),
    }


# -- the one-transaction-per-request baseline -------------------------------------------------


async def _baseline(url: str, records: list[SettlementRecord],
                    connections: int) -> dict[str, Any]:
    import psycopg
    from psycopg.types.json import Jsonb

    from litellm_credits.settlement.record import FIELDS

    queue: asyncio.Queue[SettlementRecord] = asyncio.Queue()
    for r in records:
        queue.put_nowait(r)
    conns = [await psycopg.AsyncConnection.connect(url, autocommit=True)
             for _ in range(connections)]

    async def worker(conn: psycopg.AsyncConnection[Any]) -> None:
        while True:
            try:
                r = queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            params: dict[str, Any] = {name: getattr(r, name) for name in FIELDS}
            params.update(request_metadata=Jsonb(dict(r.request_metadata)),
                          response_metadata=Jsonb(dict(r.response_metadata)))
            async with conn.transaction():
                await conn.execute(
                    "SELECT * FROM debit_user_credits(%s, %s, 'usage', %s, 'LLM usage')",
                    (r.user_id, r.credits_charged or Decimal("0.00000001"), r.request_id))
                await conn.execute(INSERT_USAGE, params)
                await conn.execute("SELECT release_hold(%s)", (r.request_id,))

    started = time.perf_counter()
    await asyncio.gather(*(worker(c) for c in conns))
    elapsed = time.perf_counter() - started
    for c in conns:
        await c.close()
    return {"per_s": rnd(len(records) / elapsed, 1), "records": len(records),
            "seconds": rnd(elapsed, 3), "connections": connections}


# -- reserve_credits capacity, and settle cost by batch size -----------------------------------


async def _reserve_rate(url: str, users: list[str], calls: int, connections: int,
                        chunk: int = 256, batch: int = 64) -> dict[str, Any]:
    """Ledger.reserve calls per second from ``connections`` callers at once.

    ``batch`` is ``reserve_batch_max``: 64 (the default) lets callers that arrive
    together share a ``reserve_credits_many`` statement, as in the proxy; 1 makes
    every call its own ``reserve_credits`` transaction.

    Holds are cleared between chunks of ``chunk`` calls (not timed): in the proxy a hold lives
    only while its request is in flight, so a user never has thousands of them.
    """
    import psycopg

    from litellm_credits.ledger import Ledger
    from litellm_credits.store.db import Database

    db = Database(url, min_size=connections, max_size=connections)
    await db.open(wait=True)
    ledger = Ledger(db, reserve_batch=batch)
    rng = random.Random(11)
    latencies: list[float] = []
    elapsed = 0.0
    done = 0
    cleaner = await psycopg.AsyncConnection.connect(url, autocommit=True)
    try:
        while done < calls:
            remaining = [min(chunk, calls - done)]

            async def worker(left: list[int] = remaining) -> None:
                while left[0] > 0:
                    left[0] -= 1
                    user = rng.choice(users)
                    t0 = time.perf_counter()
                    res = await ledger.reserve(user, f"req_{uuid.uuid4().hex}",
                                               Decimal("0.001"), None, 900)
                    latencies.append(time.perf_counter() - t0)
                    assert res.status == "placed", res.status

            started = time.perf_counter()
            await asyncio.gather(*(worker() for _ in range(connections)))
            elapsed += time.perf_counter() - started
            done += min(chunk, calls - done)
            await cleaner.execute("DELETE FROM credit_holds")
    finally:
        await cleaner.close()
        await db.close()
    ms = sorted(x * 1000 for x in latencies)
    return {"per_s": rnd(len(ms) / elapsed, 1), "calls": len(ms), "connections": connections,
            "reserve_batch_max": batch, "statements": ledger.holds.batches,
            "batched_calls": ledger.holds.batched,
            "p50_ms": rnd(percentile(ms, 50), 3), "p99_ms": rnd(percentile(ms, 99), 3)}


async def _batch_cost(url: str, users: list[str], key_ids: dict[str, int],
                      sizes: list[int], rounds: int) -> dict[str, Any]:
    """Wall time of one Ledger.settle call by batch size (one writer, back to back)."""
    from litellm_credits.ledger import Ledger
    from litellm_credits.store.db import Database

    db = Database(url, min_size=1, max_size=1)
    await db.open(wait=True)
    ledger = Ledger(db)
    result: dict[str, Any] = {}
    try:
        for size in sizes:
            batches = [make_records(users, size, key_ids, seed=size * 100 + i)
                       for i in range(rounds)]
            await asyncio.to_thread(place_holds, url, [r for b in batches for r in b])
            times = []
            for batch in batches:
                payload = [r.to_json() for r in batch]  # as the writer hands it over
                t0 = time.perf_counter()
                await ledger.settle(payload)
                times.append(time.perf_counter() - t0)
            times.sort()
            median = times[len(times) // 2]
            result[str(size)] = {"batch_ms": rnd(median * 1000, 3),
                                 "per_record_ms": rnd(median * 1000 / size, 4),
                                 "records_per_s": rnd(size / median, 1)}
    finally:
        await db.close()
    return result


def preload_history(url: str, users: list[str], n: int, key_ids: dict[str, int] | None = None,
                    batch: int = 500) -> float:
    """``n`` settled requests of history through ``Ledger.settle`` (setup, not timed).

    A running system has a ledger and a usage log with history and statistics that
    describe it; a freshly migrated database has neither, and plans made for empty
    tables are not the plans production runs.
    """
    from litellm_credits.ledger import Ledger
    from litellm_credits.store.db import Database

    if n <= 0:
        return 0.0
    ids = key_ids if key_ids is not None else _key_ids(url)
    records = make_records(users, n, ids, seed=12345)
    place_holds(url, records)

    async def settle_all() -> None:
        db = Database(url, min_size=1, max_size=1)
        await db.open(wait=True)
        try:
            ledger = Ledger(db)
            for start in range(0, len(records), batch):
                await ledger.settle([r.to_json() for r in records[start:start + batch]])
        finally:
            await db.close()

    started = time.perf_counter()
    _run(settle_all)
    return time.perf_counter() - started


# -- orchestration ----------------------------------------------------------------------------


def _watch(postmaster_pid: int | None) -> Any:
    from bench.proxy_bench import CpuWatch

    watch = CpuWatch({"postgres": postmaster_pid})
    watch.start()
    return watch


def _foreign(watch: Any) -> float | None:
    used = watch.stop()
    return rnd(used["foreign"] / used["wall"], 2) if used["wall"] else None


def _key_ids(url: str) -> dict[str, int]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT user_id, min(id) FROM user_provider_keys WHERE is_active GROUP BY 1"
        ).fetchall()
    return {str(u): int(i) for u, i in rows}


def _run(coro_factory: Callable[[], Any]) -> Any:
    try:
        import uvloop

        return uvloop.run(coro_factory())
    except ImportError:
        return asyncio.run(coro_factory())


def run_settle_bench(make_db: Callable[[str], str], encryption_keys: str, *, spread_n: int,
                     hot_n: int, baseline_n: int, baseline_hot_n: int, writers: list[int],
                     reserve_calls: int, batch_rounds: int, history: int = 0,
                     analyze: Callable[[str], None] | None = None,
                     repeats: int = 3, postmaster_pid: int | None = None,
                     log: Any = print) -> dict[str, Any]:
    """``make_db(name)`` returns the URL of a fresh, migrated database."""
    from bench.common import seed_users

    result: dict[str, Any] = {"history_rows": history}

    def fresh(name: str) -> tuple[str, list[str], dict[str, int]]:
        url = make_db(name)
        seeded = _run(lambda: seed_users(url, 1000, encryption_keys, prefix="set-u"))
        _run(lambda: seed_users(url, 1, None, prefix="set-hot-"))  # noqa: B023
        key_ids = _key_ids(url)
        preload_history(url, seeded.users, history, key_ids)
        if analyze is not None:
            analyze(url)
        return url, seeded.users, key_ids

    def measured(url: str, users: list[str], key_ids: dict[str, int], n: int, n_writers: int,
                 seed: int) -> dict[str, Any]:
        """Median of ``repeats`` runs (the machine may be shared), each fully checked."""
        runs = []
        for i in range(repeats):
            records = make_records(users, n, key_ids, seed=seed * 100 + i)
            place_holds(url, records)
            watch = _watch(postmaster_pid)
            run = writer_throughput(url, records, writers=n_writers)
            run["foreign_cores"] = _foreign(watch)
            run["check"] = check_settled(url, records)
            runs.append(run)
        runs.sort(key=lambda r: r["per_s"])
        median = dict(runs[len(runs) // 2])
        median["per_s_runs"] = [r["per_s"] for r in runs]
        median["all_complete"] = all(r["check"]["complete"] for r in runs)
        return median

    # Writer path, spread and hot, for each number of concurrent writers.
    for n_writers in writers:
        url, users, key_ids = fresh("bench_settle")
        spread = measured(url, users, key_ids, spread_n, n_writers, seed=1)
        log(f"  writer x{n_writers} spread: {spread['per_s']:9.1f} settled/s "
            f"(median of {spread['per_s_runs']}; {spread['records']} records, "
            f"{spread['batches']} batches per run)")
        hot_result = measured(url, [HOT_USER], {}, hot_n, n_writers, seed=2)
        log(f"  writer x{n_writers} hot:    {hot_result['per_s']:9.1f} settled/s "
            f"(median of {hot_result['per_s_runs']})")
        result[f"writer_x{n_writers}"] = {"spread": spread, "hot_user": hot_result}

    def median_of(label: str, make: Callable[[int], dict[str, Any]]) -> dict[str, Any]:
        runs = []
        for i in range(repeats):
            watch = _watch(postmaster_pid)
            run = make(i)
            run["foreign_cores"] = _foreign(watch)
            runs.append(run)
        runs.sort(key=lambda r: r["per_s"])
        median = dict(runs[len(runs) // 2])
        median["per_s_runs"] = [r["per_s"] for r in runs]
        log(f"  {label:<17} {median['per_s']:9.1f}/s (median of {median['per_s_runs']})")
        return median

    # The baseline, on a fresh database too.
    url, users, key_ids = fresh("bench_settle_base")

    def baseline(records: list[SettlementRecord]) -> dict[str, Any]:
        place_holds(url, records)
        run: dict[str, Any] = _run(lambda: _baseline(url, records, BASELINE_CONNECTIONS))
        run["check"] = check_settled(url, records)
        return run

    base_spread = median_of("baseline spread:", lambda i: baseline(
        make_records(users, baseline_n, key_ids, seed=300 + i)))
    base_hot = median_of("baseline hot:", lambda i: baseline(
        make_records([HOT_USER], baseline_hot_n, {}, seed=400 + i)))
    result["baseline"] = {"spread": base_spread, "hot_user": base_hot}

    # The hook's side of the database, and the cost of one batch by size.
    result["reserve"] = {
        "spread": median_of("reserve spread:", lambda i: _run(
            lambda: _reserve_rate(url, users, reserve_calls, RESERVE_CONNECTIONS))),
        "hot_user": median_of("reserve hot:", lambda i: _run(
            lambda: _reserve_rate(url, [HOT_USER], max(reserve_calls // 2, 100),
                                  RESERVE_CONNECTIONS))),
        "spread_single": median_of("reserve spread, one statement each:", lambda i: _run(
            lambda: _reserve_rate(url, users, reserve_calls, RESERVE_CONNECTIONS, batch=1))),
        "hot_user_single": median_of("reserve hot, one statement each:", lambda i: _run(
            lambda: _reserve_rate(url, [HOT_USER], max(reserve_calls // 2, 100),
                                  RESERVE_CONNECTIONS, batch=1))),
    }
    result["batch_cost"] = _run(lambda: _batch_cost(url, users, key_ids,
                                                    [1, 10, 50, 100, 500], batch_rounds))
    log("  settle_usage by batch size: " + ", ".join(
        f"{k}: {v['batch_ms']} ms" for k, v in result["batch_cost"].items()))
    return result


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m bench.settle_bench")
    sub = parser.add_subparsers(dest="command", required=True)
    w = sub.add_parser("writer", help="settle a JSON file of records with one Writer")
    w.add_argument("--url", required=True)
    w.add_argument("--records", required=True)
    w.add_argument("--batch-size", type=int, default=500)
    w.add_argument("--flush-ms", type=int, default=50)
    w.add_argument("--start-at", type=float, default=0.0)
    args = parser.parse_args(argv)
    result = _writer_process(args.url, args.records, args.batch_size, args.flush_ms,
                             args.start_at)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
