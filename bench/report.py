"""Headline numbers, targets, scaling arithmetic, and ``docs/benchmarks.md``.

:func:`finalize` adds to the raw results the keys operators and reviewers read
(``settlement.spread_per_s`` and friends, ``targets``, ``scaling``);
:func:`write_docs` renders the whole run as Markdown. Regenerate the document
from a saved run with ``python -m bench.report [bench/results/raw/latest-full.json]``.
:func:`write_results` writes a run twice: in full to ``bench/results/raw/`` (not in
git) and, without the per-run records, to the committed ``bench/results/latest.json``.

The page itself is :mod:`bench.report_render` (method text), with the result
tables from :mod:`bench.report_sections` and the findings from
:mod:`bench.report_findings`, which copies ``bench/history.md`` (figures measured
once, by experiments that are gone) verbatim so that no run loses them.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.common import DOCS_PATH, RAW_RESULTS_PATH, SUMMARY_PATH, rnd
from bench.report_findings import HISTORY_KEYS, HISTORY_PATH
from bench.report_format import get
from bench.report_render import render

__all__ = ["TARGETS", "dump_summary", "finalize", "get", "record_history", "render", "summary",
           "write_docs", "write_results"]

FLUSH_SECONDS = 0.05  # the writer's default flush window (writer.flush_ms: 50)

TARGETS = [
    # (key path, comparison, bound, label)
    ("proxy.c16.throughput_ratio", ">=", 0.95, "throughput on/off at concurrency 16"),
    ("proxy.c64.throughput_ratio", ">=", 0.95, "throughput on/off at concurrency 64"),
    ("proxy.c16.shared_cpu.throughput_ratio", ">=", 0.95,
     "throughput on/off at concurrency 16, both loaded at once on one CPU"),
    ("proxy.c64.shared_cpu.throughput_ratio", ">=", 0.95,
     "throughput on/off at concurrency 64, both loaded at once on one CPU"),
    ("proxy.c16.p50_added_ms", "<=", 1.0, "added p50 latency at concurrency 16 (ms)"),
    ("proxy.c16.p99_added_ms", "<=", 5.0, "added p99 latency at concurrency 16 (ms)"),
    ("settlement.spread_per_s", ">=", 10_000, "settled requests/s, spread over 1,000 users"),
    ("settlement.hot_user_per_s", ">=", 2_000, "settled requests/s, one hot user"),
]


# Keys of the raw output that hold per-run records or local paths; the summary drops them.
_RAW_ONLY = frozenset({"runs", "log_files", "targets_summary"})


def summary(results: dict[str, Any]) -> dict[str, Any]:
    """The committed ``bench/results/latest.json``: the raw results without per-run records.

    Every scalar keeps its key path (``proxy.c16.throughput_ratio``,
    ``settlement.spread_per_s``, ``hook.concurrent.process_cpu_ms_per_request``...),
    and so do the per-pair figures (``throughput_ratio_pairs``, ``rps_runs``,
    ``per_s_runs``). Lists of records (each wrk run, each sample) stay in the raw file.
    """
    def keep(node: Any) -> Any:
        if isinstance(node, dict):
            return {k: keep(v) for k, v in node.items()
                    if k not in _RAW_ONLY and not _records(v)}
        return node

    kept: dict[str, Any] = keep(results)
    return kept


def _records(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def dump_summary(data: dict[str, Any]) -> str:
    """JSON with one key per line and short lists on one line, so diffs stay readable."""
    def render(node: Any, indent: str) -> str:
        if isinstance(node, dict) and node:
            inner = indent + "  "
            items = [f"{inner}{json.dumps(k)}: {render(v, inner)}" for k, v in node.items()]
            return "{\n" + ",\n".join(items) + "\n" + indent + "}"
        return json.dumps(node)

    return render(data, "") + "\n"


def write_results(results: dict[str, Any], raw_path: Path = RAW_RESULTS_PATH,
                  summary_path: Path = SUMMARY_PATH) -> None:
    """The full output to the ignored raw file, the summary to the committed one."""
    raw_path.parent.mkdir(parents=True, exist_ok=True)
    raw_path.write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
    summary_path.parent.mkdir(parents=True, exist_ok=True)
    summary_path.write_text(dump_summary(summary(results)))


def _interpolate(curve: dict[str, Any], size: float) -> float | None:
    """Batch wall time (ms) at ``size`` records, linear between measured sizes."""
    points = sorted((int(k), v["batch_ms"]) for k, v in curve.items() if v.get("batch_ms"))
    if not points:
        return None
    if size <= points[0][0]:
        return float(points[0][1])
    for (x0, y0), (x1, y1) in zip(points, points[1:], strict=False):
        if size <= x1:
            return float(y0 + (y1 - y0) * (size - x0) / (x1 - x0))
    (x0, y0), (x1, y1) = points[-2], points[-1]
    return float(y1 + (y1 - y0) * (size - x1) / (x1 - x0))


def _settlement_summary(settle: dict[str, Any]) -> None:
    writers = {k: v for k, v in settle.items() if k.startswith("writer_x")}
    if writers:
        best_spread = max(writers.items(), key=lambda kv: kv[1]["spread"]["per_s"])
        best_hot = max(writers.items(), key=lambda kv: kv[1]["hot_user"]["per_s"])
        settle["spread_per_s"] = best_spread[1]["spread"]["per_s"]
        settle["spread_writers"] = best_spread[1]["spread"]["writers"]
        settle["hot_user_per_s"] = best_hot[1]["hot_user"]["per_s"]
        settle["hot_user_writers"] = best_hot[1]["hot_user"]["writers"]
        one = writers.get("writer_x1")
        if one:
            settle["spread_per_s_one_writer"] = one["spread"]["per_s"]
            settle["hot_user_per_s_one_writer"] = one["hot_user"]["per_s"]
        settle["all_checks_complete"] = all(
            w[s].get("all_complete", w[s]["check"]["complete"])
            for w in writers.values() for s in ("spread", "hot_user"))
    base = settle.get("baseline")
    if base:
        settle["baseline_spread_per_s"] = base["spread"]["per_s"]
        settle["baseline_hot_user_per_s"] = base["hot_user"]["per_s"]
        if settle.get("spread_per_s"):
            settle["speedup_spread"] = rnd(settle["spread_per_s"] / base["spread"]["per_s"], 2)
            settle["speedup_hot_user"] = rnd(
                settle["hot_user_per_s"] / base["hot_user"]["per_s"], 2)


def _scaling(results: dict[str, Any]) -> dict[str, Any] | None:
    proxy = results.get("proxy") or {}
    settle = results.get("settlement") or {}
    top = None
    for key in ("c64", "c16"):
        if key in proxy:
            top = proxy[key]
            break
    reserve = (settle.get("reserve") or {}).get("spread", {}).get("per_s")
    curve = settle.get("batch_cost")
    if top is None or not reserve or not curve:
        return None
    worker_on = top["rps_on"]
    worker_off = top["rps_off"]
    batch = max(1.0, worker_on * FLUSH_SECONDS)
    batch_ms = _interpolate(curve, batch) or 0.0
    settle_ms = batch_ms / batch
    reserve_ms = 1000.0 / reserve
    db_ms = reserve_ms + settle_ms
    capacity = 1000.0 / db_ms
    cores = (results.get("machine") or {}).get("cpus") or 1
    pg_cpu = (top.get("on") or {}).get("cpu_ms_per_request", {}).get("postgres")
    cpu_capacity = cores * 1000.0 / pg_cpu if pg_cpu else None
    hot = (settle.get("reserve") or {}).get("hot_user", {}).get("per_s")
    full_batch_capacity = None
    if settle.get("spread_per_s"):
        full_batch_capacity = 1000.0 / (reserve_ms + 1000.0 / settle["spread_per_s"])
    scaling = {
        "worker_rps_plugin_on": worker_on,
        "worker_rps_plugin_off": worker_off,
        "writer_batch_at_that_rate": rnd(batch, 1),
        "settle_batch_ms": rnd(batch_ms, 3),
        "settle_db_ms_per_request": rnd(settle_ms, 4),
        "reserve_db_ms_per_request": rnd(reserve_ms, 4),
        "db_ms_per_request": rnd(db_ms, 4),
        "db_capacity_requests_per_s": rnd(capacity, 0),
        "workers_per_db": rnd(capacity / worker_on, 1) if worker_on else None,
        "db_capacity_full_batches_per_s": rnd(full_batch_capacity, 0),
        "workers_per_db_full_batches": rnd(full_batch_capacity / worker_on, 1)
        if full_batch_capacity and worker_on else None,
        "pg_cpu_ms_per_request_in_proxy_run": pg_cpu,
        "db_capacity_by_pg_cpu_per_s": rnd(cpu_capacity, 0),
        "workers_per_db_by_pg_cpu": rnd(cpu_capacity / worker_on, 1)
        if cpu_capacity and worker_on else None,
        "db_cores": cores,
        "hot_user_ceiling_per_s": hot,
    }
    scaling["summary"] = (
        f"one PostgreSQL on this machine takes about {scaling['db_capacity_requests_per_s']:.0f}"
        f" requests/s (reserve {reserve_ms:.3f} ms + settle {settle_ms:.3f} ms of database time"
        f" each), i.e. about {scaling['workers_per_db']} proxy workers at {worker_on:.0f} req/s")
    return scaling


def finalize(results: dict[str, Any]) -> None:
    if "settlement" in results:
        _settlement_summary(results["settlement"])
    scaling = _scaling(results)
    if scaling:
        results["scaling"] = scaling
    targets = []
    lines = []
    for path, op, bound, label in TARGETS:
        value = get(results, path)
        met = None
        if isinstance(value, int | float):
            met = value >= bound if op == ">=" else value <= bound
        targets.append({"key": path, "target": f"{op} {bound:g}", "achieved": value,
                        "met": met, "what": label})
        mark = "n/a" if met is None else ("met" if met else "MISSED")
        lines.append(f"{path} = {value} (target {op} {bound:g}): {mark}")
    results["targets"] = targets
    results["targets_summary"] = lines


def record_history(results: dict[str, Any], path: Path = HISTORY_PATH) -> None:
    """Append this run's target figures, with the commit measured, to the run history."""
    import subprocess

    from bench.common import REPO_ROOT

    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO_ROOT,
                            capture_output=True, text=True, check=False).stdout.strip()
    dirty = subprocess.run(["git", "status", "--porcelain", "--", "litellm_credits"],
                           cwd=REPO_ROOT, capture_output=True, text=True,
                           check=False).stdout.strip()
    entry = {"generated_at": results.get("generated_at"),
             "commit": (commit + "+changes" if dirty else commit) or None,
             **{key: get(results, key) for key in HISTORY_KEYS}}
    with path.open("a") as out:
        out.write(json.dumps(entry) + "\n")


def write_docs(results: dict[str, Any], path: Path = DOCS_PATH) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(render(results))
    return path


def main() -> None:
    """Re-render the docs from a saved run: the raw output when present, else the summary."""
    default = RAW_RESULTS_PATH if RAW_RESULTS_PATH.exists() else SUMMARY_PATH
    source = Path(sys.argv[1]) if len(sys.argv) > 1 else default
    results = json.loads(source.read_text())
    finalize(results)
    print(write_docs(results))


if __name__ == "__main__":
    main()
