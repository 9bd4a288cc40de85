"""``make bench``: ``python -m bench.run [--quick]``.

Runs the four parts of the benchmark against a PostgreSQL cluster of its own
(``.run/pg-bench``, port 55499), writes the full results to
``bench/results/raw/latest-full.json`` (not in git), a summary with the same key
paths to ``bench/results/latest.json`` (committed), and regenerates
``docs/benchmarks.md``:

1. proxy overhead, plugin on versus off (``bench.proxy_bench``);
2. settlement throughput through the writer, against a one-transaction-per-request
   baseline (``bench.settle_bench``);
3. the pre-call hook alone, in process (``bench.hook_bench``);
4. the scaling arithmetic derived from 1-3 (``bench.report``).

``--quick`` keeps the method and shortens every run (about 3 minutes instead of
about 10). ``--only proxy,settlement,hook`` runs a subset (the JSON then holds
only those parts). ``--diagnose`` adds a third proxy with a do-nothing callback, to
separate LiteLLM's own cost of having a callback from the plugin's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from bench.common import (  # noqa: E402
    RAW_RESULTS_PATH,
    RESULTS_DIR,
    SUMMARY_PATH,
    WORK_DIR,
    bench_cluster,
    fresh_database,
    machine_info,
    new_encryption_keys,
    seed_users,
    versions,
)


@dataclass(frozen=True)
class Profile:
    pairs: int
    duration: float
    warmup: float
    pause: float
    concurrencies: tuple[int, ...]
    spread_n: int
    hot_n: int
    baseline_n: int
    baseline_hot_n: int
    writers: tuple[int, ...]
    reserve_calls: int
    batch_rounds: int
    hook_calls: int
    history: int  # settled requests already in each database before measuring
    repeats: int  # settlement runs per measurement (the median is reported)
    extra_pairs: int  # proxy pairs run beyond `pairs` to replace ones other jobs disturbed
    shared_rounds: int  # rounds with both proxies loaded at once on one CPU (bench.shared_cpu)


DEFAULT = Profile(pairs=7, duration=8, warmup=8, pause=1.0, concurrencies=(1, 16, 64),
                  spread_n=30_000, hot_n=10_000, baseline_n=4_000, baseline_hot_n=1_000,
                  writers=(1, 2), reserve_calls=4_000, batch_rounds=9, hook_calls=5_000,
                  history=50_000, repeats=3, extra_pairs=1, shared_rounds=7)
QUICK = Profile(pairs=3, duration=5, warmup=5, pause=0.5, concurrencies=(1, 16, 64),
                spread_n=10_000, hot_n=4_000, baseline_n=2_000, baseline_hot_n=1_000,
                writers=(1,), reserve_calls=1_500, batch_rounds=5, hook_calls=2_000,
                history=20_000, repeats=1, extra_pairs=0, shared_rounds=3)
PARTS = ("proxy", "settlement", "hook")


def log(message: str) -> None:
    print(message, flush=True)


def prepared_database(cluster: Any, name: str, keys: str, history: int) -> tuple[str, Any]:
    """A fresh database with 1,000 seeded users, ``history`` settled requests, statistics."""
    from bench.settle_bench import preload_history

    url = fresh_database(cluster, name)
    seeded = asyncio.run(seed_users(url, 1000, keys))
    preload_history(url, seeded.users, history)
    _analyze(url)
    return url, seeded


def _analyze(url: str) -> None:
    """Fresh tables have no statistics; a production database has (autovacuum keeps them)."""
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("ANALYZE")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="short runs (about 3 minutes)")
    parser.add_argument("--only", default=",".join(PARTS),
                        help=f"comma-separated parts to run: {', '.join(PARTS)}")
    parser.add_argument("--pairs", type=int, help="on/off pairs per concurrency")
    parser.add_argument("--duration", type=float, help="seconds per proxy run")
    parser.add_argument("--shared-rounds", type=int,
                        help="rounds with both proxies loaded at once on one CPU (0: none)")
    parser.add_argument("--concurrency", help="comma-separated, e.g. 1,16,64")
    parser.add_argument("--diagnose", action="store_true",
                        help="also run a proxy with a do-nothing callback")
    parser.add_argument("--max-foreign", type=float, default=0.5,
                        help="a proxy pair is disturbed when other jobs use more cores than this")
    parser.add_argument("--output", type=Path, default=RAW_RESULTS_PATH,
                        help="the full raw results (default %(default)s, not in git)")
    parser.add_argument("--summary", type=Path, default=SUMMARY_PATH,
                        help="the committed summary: same key paths, no per-run records "
                        "(default %(default)s)")
    parser.add_argument("--no-docs", action="store_true", help="do not rewrite docs/benchmarks.md")
    args = parser.parse_args(argv)

    profile = QUICK if args.quick else DEFAULT
    parts = [p.strip() for p in args.only.split(",") if p.strip()]
    unknown = set(parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown part(s) {sorted(unknown)}; choose from {', '.join(PARTS)}")
    pairs = args.pairs or profile.pairs
    duration = args.duration or profile.duration
    concurrencies = ([int(c) for c in args.concurrency.split(",")] if args.concurrency
                     else list(profile.concurrencies))
    shared = profile.shared_rounds if args.shared_rounds is None else args.shared_rounds
    if pairs < 1 or duration <= 0 or shared < 0:
        parser.error("--pairs must be at least 1, --duration positive, --shared-rounds >= 0")

    started = time.perf_counter()
    WORK_DIR.mkdir(parents=True, exist_ok=True)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    keys = new_encryption_keys()  # this run's BYOK master key; lives in memory and env only
    results: dict[str, Any] = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "mode": "quick" if args.quick else "default",
        "machine": machine_info(),
    }
    log(f"litellm-credits benchmark ({results['mode']}); work files in {WORK_DIR}")
    with bench_cluster() as cluster:
        results["versions"] = versions(cluster)
        postmaster = cluster._postmaster_pid()  # noqa: SLF001 - CPU accounting only

        if "proxy" in parts:
            from bench.proxy_bench import run_proxy_bench

            log(f"[1/4] proxy overhead: {pairs} on/off pairs x {duration:g}s at "
                f"concurrency {', '.join(map(str, concurrencies))}")
            url, seeded = prepared_database(cluster, "bench_proxy", keys, profile.history)
            log(f"  seeded {len(seeded.users)} users ({seeded.levels}), "
                f"{seeded.byok_users} with their own key, in {seeded.seconds:.1f}s; "
                f"{profile.history} settled requests of history")
            proxy = run_proxy_bench(
                url, seeded.users, keys, concurrencies=concurrencies, pairs=pairs,
                duration=duration, warmup=profile.warmup, pause=profile.pause,
                postmaster_pid=postmaster, diagnose=args.diagnose,
                extra_pairs=profile.extra_pairs, max_foreign=args.max_foreign,
                shared=shared, log=log)
            proxy["method"] = {
                "pairs": pairs, "duration_s": duration, "warmup_s": profile.warmup,
                "users": len(seeded.users), "byok_users": seeded.byok_users,
                "levels": seeded.levels, "load_generator": "wrk (1 thread, Lua script)",
                "history_rows": profile.history, "max_foreign_cores": args.max_foreign,
                "extra_pairs": profile.extra_pairs,
                "cpu_placement": proxy.get("cpu_placement"), "shared_rounds": shared,
            }
            results["proxy"] = proxy

        if "settlement" in parts:
            from bench.settle_bench import run_settle_bench

            log("[2/4] settlement throughput")

            def make_db(name: str) -> str:
                return fresh_database(cluster, name)

            settle = run_settle_bench(
                make_db, keys, spread_n=profile.spread_n, hot_n=profile.hot_n,
                baseline_n=profile.baseline_n, baseline_hot_n=profile.baseline_hot_n,
                writers=list(profile.writers), reserve_calls=profile.reserve_calls,
                batch_rounds=profile.batch_rounds, history=profile.history, analyze=_analyze,
                repeats=profile.repeats, postmaster_pid=postmaster, log=log)
            results["settlement"] = settle

        if "hook" in parts:
            from bench.hook_bench import run_concurrent_bench, run_hook_bench

            log(f"[3/4] pre-call hook in process: {profile.hook_calls} calls")
            url, seeded = prepared_database(cluster, "bench_hook", keys, profile.history // 5)
            try:
                import uvloop

                runner: Any = uvloop.run
            except ImportError:
                runner = asyncio.run
            hook = runner(run_hook_bench(url, seeded.users, keys, calls=profile.hook_calls))
            log(f"  pre-call hook p50 {hook['pre_call_total']['p50_ms']} ms "
                f"(database {hook['db_round_trip']['p50_ms']} ms, rest "
                f"{hook['non_db']['p50_ms']} ms), p99 {hook['pre_call_total']['p99_ms']} ms")
            hook["concurrent"] = runner(run_concurrent_bench(
                url, seeded.users, keys, calls=profile.hook_calls))
            log(f"  all hooks, 16 in flight: "
                f"{hook['concurrent']['process_cpu_ms_per_request']} ms CPU per request, "
                f"{hook['concurrent']['reserve_statements_per_request']} reserve statements "
                "per request")
            results["hook"] = hook

    from bench.report import finalize, record_history, write_docs, write_results

    results["duration_s"] = round(time.perf_counter() - started, 1)
    finalize(results)
    log("[4/4] scaling arithmetic: " + str(results.get("scaling", {}).get("summary", "n/a")))
    write_results(results, args.output, args.summary)
    log(f"wrote {args.output} and {args.summary}")
    if not args.no_docs and not args.quick and results.get("proxy") and results.get("settlement"):
        record_history(results)  # full default runs only, so the history compares like with like
    if not args.no_docs:
        path = write_docs(results)
        log(f"wrote {path}")
    for line in results.get("targets_summary", []):
        log("  " + line)
    log(f"done in {results['duration_s']:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
