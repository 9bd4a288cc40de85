"""Before/after experiments for the fixes proposed in docs/benchmarks.md.

``python -m bench.experiments [--only settle_plans,reserve_commit,reserve_coalesce,proxy]``
writes ``bench/results/experiments.json``. Nothing here changes the package:
SQL fixes are applied with ``CREATE OR REPLACE FUNCTION`` to scratch databases
of the benchmark's own cluster, and Python fixes to a scratch copy of the
package in a temporary directory that a proxy loads first on its PYTHONPATH.
Each patch is a text replacement that must match the current source; if the
source has moved on, the experiment says so instead of measuring something else.

* ``settle_plans``: ``settle_usage`` as shipped against two rewrites of its
  ``deb`` step (see ``SETTLE_PATCHES``), with warm statistics (a ledger with
  history, analyzed) and with cold ones (analyzed while the ledger was empty).
* ``reserve_commit``: ``reserve_credits`` with the hold's commit synchronous (as
  shipped) and asynchronous (``synchronous_commit`` off for that transaction only).
* ``reserve_coalesce``: client CPU per reserve when each request makes its own
  round trip, against several reserves in one statement.
* ``proxy``: the proxy benchmark with the stock plugin, a knock-out variant, and
  the patched plugin, all against the bare proxy, alternated in one run.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from decimal import Decimal
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from bench.common import (  # noqa: E402
    PROXY_OFF_PORT,
    PROXY_ON_PORT,
    REPO_ROOT,
    RESULTS_DIR,
    WORK_DIR,
    bench_cluster,
    fresh_database,
    new_encryption_keys,
    percentile,
    rnd,
    seed_users,
)
from bench.settle_bench import (  # noqa: E402
    HOT_USER,
    _key_ids,
    _run,
    make_records,
    place_holds,
    preload_history,
    writer_throughput,
)

# -- patches ------------------------------------------------------------------------------------

# settle_usage's debit step. "lateral": the idempotency check as a per-row index probe
# (LATERAL ... LIMIT 1) instead of NOT EXISTS, which the planner may turn into a hash anti
# join over every usage transaction ever written. "order": the running balance ordered by the
# usage row's created_at (the success event's time) and request id, instead of joining the
# inserted rows back to the input to get its ordinal, a join the planner runs as a nested
# loop over the whole batch squared.
SETTLE_LATERAL = [(
    """         WHERE i.success
           AND NOT EXISTS (SELECT 1 FROM credit_transactions t
                            WHERE t.transaction_type = 'usage'
                              AND t.idempotency_key = i.request_id)""",
    """          LEFT JOIN LATERAL (SELECT 1 AS found FROM credit_transactions t
                              WHERE t.transaction_type = 'usage'
                                AND t.idempotency_key = i.request_id
                              LIMIT 1) seen ON TRUE
         WHERE i.success AND seen.found IS NULL""")]
SETTLE_ORDER = [
    ("RETURNING l.request_id, l.user_id, l.success, l.credits_charged, l.byok_key_id\n",
     "RETURNING l.request_id, l.user_id, l.success, l.credits_charged, l.byok_key_id,"
     " l.created_at\n"),
    ("SELECT i.request_id, i.user_id, i.credits_charged, r.ord, u.balance AS b0,",
     "SELECT i.request_id, i.user_id, i.credits_charged, i.created_at, u.balance AS b0,"),
    ("PARTITION BY i.user_id ORDER BY r.ord ROWS UNBOUNDED PRECEDING",
     "PARTITION BY i.user_id ORDER BY i.created_at, i.request_id ROWS UNBOUNDED PRECEDING"),
    ("          JOIN r ON r.request_id = i.request_id\n"
     "          JOIN user_credits u ON u.user_id = i.user_id",
     "          JOIN user_credits u ON u.user_id = i.user_id"),
    ("ORDER BY c.user_id, c.ord", "ORDER BY c.user_id, c.created_at, c.request_id"),
]
SETTLE_PATCHES: dict[str, list[tuple[str, str]]] = {
    "as_shipped": [],
    "lateral": SETTLE_LATERAL,
    "lateral_and_order": SETTLE_LATERAL + SETTLE_ORDER,
}
RESERVE_ASYNC_COMMIT = [(
    "\nBEGIN\n",
    "\nBEGIN\n    -- A hold is not money: losing the last few on a database crash only widens\n"
    "    -- the in-flight bound of I3. Do not wait for the WAL flush.\n"
    "    PERFORM set_config('synchronous_commit', 'off', true);\n")]
# Python: settle_usage is one statement, so autocommit makes it atomic on its own; the
# explicit transaction only adds a BEGIN and a COMMIT round trip per batch.
PY_SETTLE_ONE_ROUND_TRIP = ("ledger.py", [(
    '        async with self.db.transaction() as conn:\n'
    '            return await run(conn, "settle_usage", {"records": payload})',
    '        async with self.db.connection() as conn:\n'
    '            return await run(conn, "settle_usage", {"records": payload})')])
# F2, as a scratch implementation: reserves that arrive while one is on its way to the
# database wait for it and then go together in one statement (like group commit); an idle
# proxy sends each reserve at once. Errors stay per request.
RESERVE_MANY_SQL = """
CREATE OR REPLACE FUNCTION reserve_credits_many(p_items JSONB)
RETURNS TABLE (ord INTEGER, status TEXT, power_level TEXT, cost_multiplier NUMERIC,
               hold_amount NUMERIC, balance NUMERIC, held NUMERIC, tier TEXT,
               monthly_quota NUMERIC, quota_used NUMERIC, byok_keys JSONB,
               err_state TEXT, err_message TEXT)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    it RECORD;
    r RECORD;
BEGIN
    -- One order for every batch of every proxy: accounts are locked by user id.
    FOR it IN SELECT x.ord::INTEGER AS ord, x.u, x.rid, x.amt, x.lvl, x.ttl
                FROM ROWS FROM (jsonb_to_recordset(p_items)
                     AS (u TEXT, rid TEXT, amt NUMERIC, lvl TEXT, ttl INTEGER))
                     WITH ORDINALITY AS x(u, rid, amt, lvl, ttl, ord)
               ORDER BY x.u, x.ord
    LOOP
        BEGIN
            SELECT * INTO r FROM reserve_credits(it.u, it.rid, it.amt, it.lvl, it.ttl);
            RETURN QUERY SELECT it.ord, r.status, r.power_level, r.cost_multiplier,
                r.hold_amount, r.balance, r.held, r.tier, r.monthly_quota, r.quota_used,
                r.byok_keys, NULL::TEXT, NULL::TEXT;
        EXCEPTION WHEN OTHERS THEN
            RETURN QUERY SELECT it.ord, NULL::TEXT, NULL::TEXT, NULL::NUMERIC, NULL::NUMERIC,
                NULL::NUMERIC, NULL::NUMERIC, NULL::TEXT, NULL::NUMERIC, NULL::NUMERIC,
                NULL::JSONB, SQLSTATE::TEXT, SQLERRM::TEXT;
        END;
    END LOOP;
END;
$$;
"""
PY_COALESCE = ("ledger.py", [(
    """    async def reserve(
        self,
        user_id: str,""",
    """    async def reserve(
        self,
        user_id: str,
        request_id: str,
        base_amount: Decimal,
        level: str | None,
        ttl_seconds: int,
    ) -> Reservation:
        import asyncio

        loop = asyncio.get_running_loop()
        future: asyncio.Future[Reservation] = loop.create_future()
        pending = self.__dict__.setdefault("_pending", [])
        pending.append(({"u": user_id, "rid": request_id, "amt": str(base_amount),
                         "lvl": level, "ttl": ttl_seconds}, future))
        if not self.__dict__.get("_flushing"):
            self._flushing = True
            loop.create_task(self._flush_reserves())
        return await future

    async def _flush_reserves(self) -> None:
        from litellm_credits.store.db import _SQLSTATE_ERRORS, translate

        try:
            while self._pending:
                batch, self._pending = self._pending, []
                try:
                    async with self.db.connection() as conn:
                        cur = await conn.execute(
                            "SELECT * FROM reserve_credits_many(%(items)s)",
                            {"items": json.dumps([item for item, _ in batch])})
                        rows = await cur.fetchall()
                except Exception as exc:  # noqa: BLE001
                    try:
                        err = translate(exc)
                    except Exception as raw:  # noqa: BLE001
                        err = raw
                    for _, fut in batch:
                        if not fut.done():
                            fut.set_exception(err)
                    continue
                by_ord = {int(r["ord"]): r for r in rows}
                for i, (_, fut) in enumerate(batch, start=1):
                    row = by_ord.get(i)
                    if fut.done():
                        continue
                    if row is None:
                        fut.set_exception(errors.CreditsError("reserve result missing"))
                    elif row["err_state"]:
                        kind = _SQLSTATE_ERRORS.get(row["err_state"])
                        fut.set_exception(kind(row["err_message"]) if kind else
                                          errors.CreditsError(
                                              f"database error {row['err_state']}: "
                                              f"{row['err_message']}"))
                    else:
                        fut.set_result(_reservation_of(row))
        finally:
            self._flushing = False

    async def _reserve_one(
        self,
        user_id: str,""")]), ("ledger.py", [(
    """def _b64(text: str) -> bytes:""",
    """def _reservation_of(row: dict[str, Any]) -> Reservation:
    keys = tuple(
        ByokKeyRef(
            id=int(k["id"]), provider=k["provider"], key_name=k["key_name"],
            is_default=bool(k["is_default"]), fallback=bool(k["fallback"]),
            key_id=k["key_id"], blob=_b64(k["blob"]),
        )
        for k in (row["byok_keys"] or [])
    )
    return Reservation(
        status=row["status"], power_level=row["power_level"],
        cost_multiplier=row["cost_multiplier"], hold_amount=row["hold_amount"],
        balance=row["balance"], held=row["held"], tier=row["tier"],
        monthly_quota=row["monthly_quota"], quota_used=row["quota_used"], byok_keys=keys)


def _b64(text: str) -> bytes:""")])
PY_NO_OBSERVERS = ("hook.py", [(
    "    monitoring.install(runtime)\n    alerts.install(runtime)\n",
    "    return  # knock-out: no metrics callbacks, no low-balance alert tasks\n")])


class PatchMissing(RuntimeError):
    pass


def patched_text(text: str, replacements: list[tuple[str, str]], what: str) -> str:
    for old, new in replacements:
        if old not in text:
            raise PatchMissing(f"{what}: the code to patch is not there any more "
                               f"(looked for {old.strip()[:60]!r})")
        text = text.replace(old, new, 1)
    return text


def patch_function(url: str, signature: str, replacements: list[tuple[str, str]]) -> None:
    import psycopg

    if not replacements:
        return
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_get_functiondef(%s::regprocedure)", (signature,)).fetchone()
        assert row is not None
        if replacements is RESERVE_ASYNC_COMMIT and "'synchronous_commit'" in row[0]:
            return  # the package has F1 already
        conn.execute(patched_text(row[0], replacements, signature))


def scratch_package(patches: list[tuple[str, list[tuple[str, str]]]]) -> Path:
    """A copy of litellm_credits with ``patches`` applied; returns the PYTHONPATH entry."""
    root = Path(tempfile.mkdtemp(prefix="credits-scratch-"))
    target = root / "litellm_credits"
    shutil.copytree(REPO_ROOT / "litellm_credits", target,
                    ignore=shutil.ignore_patterns("__pycache__"))
    for filename, replacements in patches:
        path = target / filename
        path.write_text(patched_text(path.read_text(), replacements, filename))
    return root


def _analyze(url: str) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")


def _autovacuum(url: str, enabled: bool) -> None:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        for table in ("credit_transactions", "llm_usage_log", "credit_holds", "user_credits"):
            conn.execute(f"ALTER TABLE {table} SET (autovacuum_enabled = {str(enabled).lower()})")


def _seeded(cluster: Any, name: str, keys: str | None, prefix: str = "set-u",
            hot: bool = True) -> tuple[str, list[str]]:
    url = fresh_database(cluster, name)
    seeded = _run(lambda: seed_users(url, 1000, keys, prefix=prefix))
    if hot:
        _run(lambda: seed_users(url, 1, None, prefix="set-hot-"))
    return url, seeded.users


# -- settle_plans -------------------------------------------------------------------------------


async def _batch_times(url: str, batches: list[list[dict[str, Any]]]) -> list[float]:
    from litellm_credits.ledger import Ledger
    from litellm_credits.store.db import Database

    db = Database(url, min_size=1, max_size=1)
    await db.open(wait=True)
    try:
        ledger = Ledger(db)
        times = []
        for batch in batches:
            t0 = time.perf_counter()
            await ledger.settle(batch)
            times.append((time.perf_counter() - t0) * 1000)
        return times
    finally:
        await db.close()


def exp_settle_plans(cluster: Any, keys: str, quick: bool, log: Callable[[str], None]
                     ) -> dict[str, Any]:
    history = 20_000 if quick else 50_000
    spread_n = 10_000 if quick else 30_000
    hot_n = 4_000 if quick else 10_000
    cold_n = 10_000 if quick else 15_000
    out: dict[str, Any] = {"history_rows": history}
    for variant, patches in SETTLE_PATCHES.items():
        res: dict[str, Any] = {}
        # Warm statistics: a ledger with history, analyzed.
        url, users = _seeded(cluster, "exp_settle", keys)
        patch_function(url, "settle_usage(jsonb)", patches)
        key_ids = _key_ids(url)
        preload_history(url, users, history, key_ids)
        _analyze(url)
        spread = make_records(users, spread_n, key_ids, seed=1)
        place_holds(url, spread)
        res["writer_spread_per_s"] = writer_throughput(url, spread, writers=1)["per_s"]
        hot = make_records([HOT_USER], hot_n, {}, seed=2)
        place_holds(url, hot)
        res["writer_hot_user_per_s"] = writer_throughput(url, hot, writers=1)["per_s"]
        curve = {}
        for size in (1, 10, 100, 500):
            batches = [make_records(users, size, key_ids, seed=size * 10 + i) for i in range(7)]
            place_holds(url, [r for b in batches for r in b])
            curve[str(size)] = rnd(statistics.median(
                _run(lambda u=url, b=batches: _batch_times(u, b))), 3)
        res["batch_ms"] = curve
        # Cold statistics: analyzed while the ledger held no usage yet, then history grows.
        url, users = _seeded(cluster, "exp_settle_cold", keys)
        patch_function(url, "settle_usage(jsonb)", patches)
        _analyze(url)
        _autovacuum(url, False)  # the state until autovacuum's next pass: stale statistics
        key_ids = _key_ids(url)
        records = make_records(users, cold_n, key_ids, seed=3)
        place_holds(url, records)
        batches = [records[i:i + 500] for i in range(0, len(records), 500)]
        times = _run(lambda u=url, b=batches: _batch_times(u, b))
        res["cold_stats_batch500_ms_first"] = rnd(statistics.median(times[1:4]), 1)
        res["cold_stats_batch500_ms_last"] = rnd(statistics.median(times[-3:]), 1)
        res["cold_stats_ledger_rows_at_end"] = cold_n
        out[variant] = res
        log(f"  settle_usage {variant:>17}: writer {res['writer_spread_per_s']:8.0f}/s spread, "
            f"{res['writer_hot_user_per_s']:8.0f}/s hot; batch ms {curve}; cold stats: "
            f"{res['cold_stats_batch500_ms_first']} -> {res['cold_stats_batch500_ms_last']} ms "
            f"per 500 over {cold_n} rows")
    return out


# -- reserve_commit -----------------------------------------------------------------------------


async def _reserve_latency(url: str, users: list[str], calls: int) -> dict[str, Any]:
    from litellm_credits.ledger import Ledger
    from litellm_credits.store.db import Database

    db = Database(url, min_size=1, max_size=1)
    await db.open(wait=True)
    ledger = Ledger(db)
    rng = random.Random(5)
    lat = []
    try:
        for _ in range(50):
            await ledger.reserve(rng.choice(users), f"req_{uuid.uuid4().hex}", Decimal("0.001"),
                                 None, 900)
        for _ in range(calls):
            t0 = time.perf_counter()
            await ledger.reserve(rng.choice(users), f"req_{uuid.uuid4().hex}", Decimal("0.001"),
                                 None, 900)
            lat.append((time.perf_counter() - t0) * 1000)
    finally:
        await db.close()
    lat.sort()
    return {"p50_ms": rnd(percentile(lat, 50), 3), "p90_ms": rnd(percentile(lat, 90), 3),
            "p99_ms": rnd(percentile(lat, 99), 3)}


def exp_reserve_commit(cluster: Any, keys: str, quick: bool, log: Callable[[str], None]
                       ) -> dict[str, Any]:
    from bench.settle_bench import _reserve_rate

    calls = 1_000 if quick else 3_000
    url, users = _seeded(cluster, "exp_reserve", keys)
    _analyze(url)
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT pg_get_functiondef("
                           "'reserve_credits(text,text,numeric,text,integer)'::regprocedure)"
                           ).fetchone()
    assert row is not None
    original = row[0]
    line = "PERFORM set_config('synchronous_commit', 'off', true);"
    if line in original:  # the package has F1 already: "before" is the function without it
        asynchronous = original
        synchronous = original.replace(line, "NULL;")
    else:
        synchronous = original
        asynchronous = patched_text(original, RESERVE_ASYNC_COMMIT, "reserve_credits")
    out: dict[str, Any] = {"package_has_it": line in original}
    for rnd_i in range(2):
        for variant in ("synchronous", "asynchronous"):
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute(synchronous if variant == "synchronous" else asynchronous)
                conn.execute("DELETE FROM credit_holds")
            lat = _run(lambda: _reserve_latency(url, users, calls))
            with psycopg.connect(url, autocommit=True) as conn:
                conn.execute("DELETE FROM credit_holds")
            rate = _run(lambda: _reserve_rate(url, users, calls, 16))
            out.setdefault(variant, []).append({"one_connection": lat, "16_connections": rate})
            log(f"  reserve_credits {variant:>12} (round {rnd_i + 1}): p50 {lat['p50_ms']} ms, "
                f"p99 {lat['p99_ms']} ms alone; {rate['per_s']}/s from 16 connections")
    summary = {}
    for variant, rounds in out.items():
        if not isinstance(rounds, list):
            continue
        summary[variant] = {
            "p50_ms": rnd(statistics.median(r["one_connection"]["p50_ms"] for r in rounds), 3),
            "p99_ms": rnd(statistics.median(r["one_connection"]["p99_ms"] for r in rounds), 3),
            "per_s_16_connections": rnd(statistics.median(r["16_connections"]["per_s"]
                                                          for r in rounds), 1),
        }
    return {"rounds": out, "summary": summary}


# -- reserve_coalesce ---------------------------------------------------------------------------

COALESCED = """
SELECT x.ord, r.status, r.power_level, r.cost_multiplier, r.hold_amount, r.balance, r.held,
       r.tier, r.monthly_quota, r.quota_used, r.byok_keys
  FROM unnest(%(users)s::text[], %(rids)s::text[], %(amounts)s::numeric[])
       WITH ORDINALITY AS x(u, rid, amount, ord)
 CROSS JOIN LATERAL reserve_credits(x.u, x.rid, x.amount, NULL, 900) r
"""


async def _coalesce(url: str, users: list[str], calls: int, k: int) -> dict[str, Any]:
    from litellm_credits.ledger import Ledger
    from litellm_credits.store.db import Database

    db = Database(url, min_size=1, max_size=1)
    await db.open(wait=True)
    ledger = Ledger(db)
    rng = random.Random(k)
    try:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        if k == 1:
            for _ in range(calls):
                await ledger.reserve(rng.choice(users), f"req_{uuid.uuid4().hex}",
                                     Decimal("0.001"), None, 900)
        else:
            for _ in range(calls // k):
                # Sorted by user: concurrent batches then lock accounts in one order.
                chosen = sorted(rng.sample(users, k))
                async with db.connection() as conn:
                    cur = await conn.execute(COALESCED, {
                        "users": chosen, "rids": [f"req_{uuid.uuid4().hex}" for _ in chosen],
                        "amounts": [Decimal("0.001")] * k})
                    rows = await cur.fetchall()
                assert len(rows) == k and all(r["status"] == "placed" for r in rows)
        cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    finally:
        await db.close()
    n = calls if k == 1 else (calls // k) * k
    return {"k": k, "client_cpu_ms_per_reserve": rnd(cpu * 1000 / n, 4),
            "wall_ms_per_reserve": rnd(wall * 1000 / n, 4)}


def exp_reserve_coalesce(cluster: Any, keys: str, quick: bool, log: Callable[[str], None]
                         ) -> dict[str, Any]:
    import psycopg

    calls = 800 if quick else 2_400
    url, users = _seeded(cluster, "exp_coalesce", keys)
    _analyze(url)
    out = []
    for k in (1, 4, 8, 16):
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("DELETE FROM credit_holds")
        r = _run(lambda k=k: _coalesce(url, users, calls, k))
        out.append(r)
        log(f"  reserve x{k:<2} per round trip: client CPU {r['client_cpu_ms_per_reserve']} ms, "
            f"wall {r['wall_ms_per_reserve']} ms per reserve")
    return {"by_reserves_per_round_trip": out}


# -- proxy --------------------------------------------------------------------------------------


def exp_proxy(cluster: Any, keys: str, quick: bool, log: Callable[[str], None]
              ) -> dict[str, Any]:
    from bench.proxy_bench import CALLBACK, Arm, alternate, compare, plugin_env, proxy_set

    history = 20_000 if quick else 50_000
    stock_url, users = _seeded(cluster, "exp_proxy_stock", keys, prefix="bench-u", hot=False)
    preload_history(stock_url, users, history)
    _analyze(stock_url)
    fixed_url, _ = _seeded(cluster, "exp_proxy_fixed", keys, prefix="bench-u", hot=False)
    patch_function(fixed_url, "settle_usage(jsonb)", SETTLE_LATERAL + SETTLE_ORDER)
    patch_function(fixed_url, "reserve_credits(text,text,numeric,text,integer)",
                   RESERVE_ASYNC_COMMIT)
    preload_history(fixed_url, users, history)
    _analyze(fixed_url)
    fixed_pkg = scratch_package([PY_SETTLE_ONE_ROUND_TRIP])
    noobs_pkg = scratch_package([PY_NO_OBSERVERS])
    spool = WORK_DIR / "proxy"
    arms = [
        Arm("off", PROXY_OFF_PORT),
        Arm("on", PROXY_ON_PORT, (CALLBACK,), plugin_env(stock_url, keys, spool / "s1")),
        Arm("on_noobs", PROXY_OFF_PORT + 2, (CALLBACK,),
            plugin_env(stock_url, keys, spool / "s2", str(noobs_pkg))),
        Arm("on_fixed", PROXY_OFF_PORT + 3, (CALLBACK,),
            plugin_env(fixed_url, keys, spool / "s3", str(fixed_pkg))),
    ]
    names = [a.name for a in arms]
    try:
        with proxy_set(arms) as pset:
            runs = alternate(pset, names, users, concurrencies=[1, 16],
                             pairs=3, duration=5 if quick else 8, warmup=5, pause=0.5,
                             postmaster_pid=cluster._postmaster_pid(),  # noqa: SLF001
                             extra_pairs=0 if quick else 2, log=log)
    finally:
        shutil.rmtree(fixed_pkg, ignore_errors=True)
        shutil.rmtree(noobs_pkg, ignore_errors=True)
    out: dict[str, Any] = {"quick": quick, "arms": {
        "on": "the plugin as shipped",
        "on_noobs": "knock-out: the plugin without its metrics and alert callbacks",
        "on_fixed": "the plugin with the proposed fixes: settle_usage LATERAL + order, "
                    "reserve_credits asynchronous commit, settle in one round trip",
    }}
    for key, rs in runs.items():
        out[key] = {}
        for arm in names[1:]:
            c = compare(rs, arm, "off")
            out[key][arm] = {k: v for k, v in c.items() if k not in (arm, "off")}
            out[key][arm]["proxy_cpu_ms_per_request"] = c[arm]["cpu_ms_per_request"].get("proxy")
            out[key][arm]["pg_cpu_ms_per_request"] = c[arm]["cpu_ms_per_request"].get("postgres")
        out[key]["off_proxy_cpu_ms_per_request"] = compare(rs, "on", "off")["off"][
            "cpu_ms_per_request"].get("proxy")
        out[key]["runs"] = rs
        log(f"  {key}: " + "; ".join(
            f"{arm} ratio {out[key][arm]['throughput_ratio']} p50+ {out[key][arm]['p50_added_ms']}"
            f" ms cpu {out[key][arm]['proxy_cpu_ms_per_request']}" for arm in names[1:]))
    return out


# F5 "before": the refresher's query until the incremental window replaced it.
WHOLE_WINDOW_LATENCY_SQL = """
SELECT model_group, response_metadata->>'deployment_id' AS deployment_id,
       avg(latency_ms)::integer AS latency_ms, count(*) AS n
  FROM llm_usage_log
 WHERE created_at > now() - make_interval(secs => %(window_seconds)s)
   AND success AND latency_ms IS NOT NULL AND model_group IS NOT NULL
 GROUP BY 1, 2
"""


def exp_refresh_query(cluster: Any, keys: str, quick: bool, log: Callable[[str], None]
                      ) -> dict[str, Any]:
    """F5: reading the whole 5-minute window against reading only the rows since the last
    refresh (``latency_since``), with that many rows in the window and 600 new ones (5 s at
    120 req/s)."""
    from litellm_credits.store.db import query

    incremental = query("latency_since")
    url, users = _seeded(cluster, "exp_refresh", keys, hot=False)
    import psycopg

    def median_ms(conn: psycopg.Connection[Any], sql: str, params: dict[str, Any]) -> float:
        conn.execute(sql, params).fetchall()
        times = []
        for _ in range(7):
            t0 = time.perf_counter()
            conn.execute(sql, params).fetchall()
            times.append((time.perf_counter() - t0) * 1000)
        return statistics.median(times)

    out = []
    done = 0
    for rows in ((10_000, 50_000) if quick else (10_000, 50_000, 150_000)):
        preload_history(url, users, rows - done - 600)
        with psycopg.connect(url, autocommit=True) as conn:
            row = conn.execute("SELECT coalesce(max(id), 0) FROM llm_usage_log").fetchone()
            before_new = int(row[0]) if row else 0
        preload_history(url, users, 600)
        done = rows
        _analyze(url)
        with psycopg.connect(url, autocommit=True) as conn:
            whole = median_ms(conn, WHOLE_WINDOW_LATENCY_SQL, {"window_seconds": 300})
            since = median_ms(conn, incremental, {"window_seconds": 300, "after_id": before_new})
        out.append({"rows_in_window": rows, "query_ms": rnd(whole, 2),
                    "incremental_600_new_rows_ms": rnd(since, 2)})
        log(f"  latency over {rows:>7} rows in the window: whole {whole:.1f} ms, "
            f"600 new rows {since:.2f} ms")
    return {"by_rows": out, "interval_s": 5}


def exp_proxy_coalesce(cluster: Any, keys: str, quick: bool, log: Callable[[str], None]
                       ) -> dict[str, Any]:
    """F2 end to end: the plugin with coalesced reserves, alone and with F1+F3+F4."""
    import psycopg

    from bench.proxy_bench import CALLBACK, Arm, alternate, compare, plugin_env, proxy_set

    history = 20_000 if quick else 50_000
    stock_url, users = _seeded(cluster, "exp_proxy_stock", keys, prefix="bench-u", hot=False)
    preload_history(stock_url, users, history)
    with psycopg.connect(stock_url, autocommit=True) as conn:
        conn.execute(RESERVE_MANY_SQL)  # a new function; the stock proxy does not call it
    _analyze(stock_url)
    fixed_url, _ = _seeded(cluster, "exp_proxy_fixed", keys, prefix="bench-u", hot=False)
    patch_function(fixed_url, "settle_usage(jsonb)", SETTLE_LATERAL + SETTLE_ORDER)
    patch_function(fixed_url, "reserve_credits(text,text,numeric,text,integer)",
                   RESERVE_ASYNC_COMMIT)
    with psycopg.connect(fixed_url, autocommit=True) as conn:
        conn.execute(RESERVE_MANY_SQL)
    preload_history(fixed_url, users, history)
    _analyze(fixed_url)
    coalesce_pkg = scratch_package(list(PY_COALESCE))
    all_pkg = scratch_package([*PY_COALESCE, PY_SETTLE_ONE_ROUND_TRIP])
    spool = WORK_DIR / "proxy"
    arms = [
        Arm("off", PROXY_OFF_PORT),
        Arm("on", PROXY_ON_PORT, (CALLBACK,), plugin_env(stock_url, keys, spool / "s1")),
        Arm("on_coalesce", PROXY_OFF_PORT + 2, (CALLBACK,),
            plugin_env(stock_url, keys, spool / "s2", str(coalesce_pkg))),
        Arm("on_all", PROXY_OFF_PORT + 3, (CALLBACK,),
            plugin_env(fixed_url, keys, spool / "s3", str(all_pkg))),
    ]
    names = [a.name for a in arms]
    try:
        with proxy_set(arms) as pset:
            runs = alternate(pset, names, users, concurrencies=[1, 16, 64],
                             pairs=3, duration=5 if quick else 7, warmup=5, pause=0.5,
                             postmaster_pid=cluster._postmaster_pid(),  # noqa: SLF001
                             extra_pairs=0 if quick else 2, log=log)
    finally:
        shutil.rmtree(coalesce_pkg, ignore_errors=True)
        shutil.rmtree(all_pkg, ignore_errors=True)
    out: dict[str, Any] = {"quick": quick, "arms": {
        "on": "the plugin as shipped",
        "on_coalesce": "F2: reserves that arrive while one is in flight go together "
                       "(reserve_credits_many)",
        "on_all": "F1 + F2 + F3 + F4",
    }}
    for key, rs in runs.items():
        out[key] = {"off_proxy_cpu_ms_per_request": compare(rs, "on", "off")["off"][
            "cpu_ms_per_request"].get("proxy")}
        for arm in names[1:]:
            c = compare(rs, arm, "off")
            out[key][arm] = {k: v for k, v in c.items() if k not in (arm, "off")}
            out[key][arm]["proxy_cpu_ms_per_request"] = c[arm]["cpu_ms_per_request"].get("proxy")
            out[key][arm]["pg_cpu_ms_per_request"] = c[arm]["cpu_ms_per_request"].get("postgres")
        out[key]["runs"] = rs
        log(f"  {key}: " + "; ".join(
            f"{arm} ratio {out[key][arm]['throughput_ratio']} p50+ {out[key][arm]['p50_added_ms']}"
            f" ms cpu {out[key][arm]['proxy_cpu_ms_per_request']}" for arm in names[1:]))
    return out


# Knock-outs for the remaining proxy CPU (not fixes: each removes something needed).
PY_NO_NUM_RETRIES = ("hook.py", [(
    '        data["num_retries"] = max(len(route.ids) - 1, 0) + sum(',
    '        _ = max(len(route.ids) - 1, 0) + sum(')])
PY_NO_ROUTER_HOOKS = ("hook.py", [
    ("    async def async_filter_deployments(", "    async def _off_filter_deployments("),
    ("    async def async_pre_call_deployment_hook(", "    async def _off_deployment_hook("),
])


def exp_proxy_knockouts(cluster: Any, keys: str, quick: bool, log: Callable[[str], None]
                        ) -> dict[str, Any]:
    """What the plugin's remaining proxy CPU is made of, by knocking parts out."""
    from bench.proxy_bench import CALLBACK, Arm, alternate, compare, plugin_env, proxy_set

    url, users = _seeded(cluster, "exp_knockouts", keys, prefix="bench-u", hot=False)
    preload_history(url, users, 20_000)
    _analyze(url)
    no_retries = scratch_package([PY_NO_NUM_RETRIES])
    no_router = scratch_package([PY_NO_ROUTER_HOOKS])
    spool = WORK_DIR / "proxy"
    arms = [
        Arm("off", PROXY_OFF_PORT),
        Arm("on", PROXY_ON_PORT, (CALLBACK,), plugin_env(url, keys, spool / "k1")),
        Arm("on_no_num_retries", PROXY_OFF_PORT + 2, (CALLBACK,),
            plugin_env(url, keys, spool / "k2", str(no_retries))),
        Arm("on_no_router_hooks", PROXY_OFF_PORT + 3, (CALLBACK,),
            plugin_env(url, keys, spool / "k3", str(no_router))),
    ]
    names = [a.name for a in arms]
    try:
        with proxy_set(arms) as pset:
            runs = alternate(pset, names, users, concurrencies=[16], pairs=3,
                             duration=5 if quick else 8, warmup=5, pause=0.5,
                             postmaster_pid=cluster._postmaster_pid(),  # noqa: SLF001
                             extra_pairs=0, log=log)
    finally:
        shutil.rmtree(no_retries, ignore_errors=True)
        shutil.rmtree(no_router, ignore_errors=True)
    out: dict[str, Any] = {"quick": quick}
    for key, rs in runs.items():
        out[key] = {"off_proxy_cpu_ms_per_request": compare(rs, "on", "off")["off"][
            "cpu_ms_per_request"].get("proxy")}
        for arm in names[1:]:
            c = compare(rs, arm, "off")
            out[key][arm] = {"throughput_ratio": c.get("throughput_ratio"),
                             "proxy_cpu_ms_per_request": c[arm]["cpu_ms_per_request"].get("proxy")}
        log(f"  {key}: " + "; ".join(
            f"{arm} ratio {out[key][arm]['throughput_ratio']} cpu "
            f"{out[key][arm]['proxy_cpu_ms_per_request']}" for arm in names[1:])
            + f"; off cpu {out[key]['off_proxy_cpu_ms_per_request']}")
    return out


EXPERIMENTS: dict[str, Callable[..., dict[str, Any]]] = {
    "refresh_query": exp_refresh_query,
    "proxy_knockouts": exp_proxy_knockouts,
    "settle_plans": exp_settle_plans,
    "reserve_commit": exp_reserve_commit,
    "reserve_coalesce": exp_reserve_coalesce,
    "proxy": exp_proxy,
    "proxy_coalesce": exp_proxy_coalesce,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.experiments", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", default=",".join(EXPERIMENTS))
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--output", type=Path, default=RESULTS_DIR / "experiments.json")
    args = parser.parse_args(argv)
    chosen = [x.strip() for x in args.only.split(",") if x.strip()]
    previous: dict[str, Any] = {}
    if args.output.exists():
        previous = json.loads(args.output.read_text())
    keys = new_encryption_keys()
    started = time.perf_counter()
    results: dict[str, Any] = dict(previous)

    def log(message: str) -> None:
        print(message, flush=True)

    with bench_cluster() as cluster:
        for name in chosen:
            log(f"[{name}]")
            try:
                results[name] = EXPERIMENTS[name](cluster, keys, args.quick, log)
            except PatchMissing as exc:
                results[name] = {"skipped": str(exc)}
                log(f"  skipped: {exc}")
            results[name]["measured_at"] = time.strftime("%Y-%m-%d %H:%M:%S")
            args.output.write_text(json.dumps(results, indent=2) + "\n")
    log(f"wrote {args.output} in {time.perf_counter() - started:.0f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

