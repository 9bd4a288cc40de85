"""Headline numbers, targets, scaling arithmetic, and ``docs/benchmarks.md``.

:func:`finalize` adds to the raw results the keys operators and reviewers read
(``settlement.spread_per_s`` and friends, ``targets``, ``scaling``);
:func:`write_docs` renders the whole run as Markdown. Regenerate the document
from a saved run with ``python -m bench.report [bench/results/raw/latest-full.json]``.
:func:`write_results` writes a run twice: in full to ``bench/results/raw/`` (not in
git) and, without the per-run records, to the committed ``bench/results/latest.json``.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from bench.common import DOCS_PATH, RAW_RESULTS_PATH, RESULTS_DIR, SUMMARY_PATH, rnd

FLUSH_SECONDS = 0.05  # the writer's default flush window (writer.flush_ms: 50)

TARGETS = [
    # (key path, comparison, bound, label)
    ("proxy.c16.throughput_ratio", ">=", 0.95, "throughput on/off at concurrency 16"),
    ("proxy.c64.throughput_ratio", ">=", 0.95, "throughput on/off at concurrency 64"),
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


def get(data: dict[str, Any], path: str) -> Any:
    node: Any = data
    for part in path.split("."):
        if not isinstance(node, dict) or part not in node:
            return None
        node = node[part]
    return node


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


# -- Markdown ---------------------------------------------------------------------------------


def _f(value: Any, digits: int = 1, suffix: str = "") -> str:
    if value is None:
        return "n/a"
    if isinstance(value, float | int):
        return f"{value:,.{digits}f}{suffix}"
    return str(value)


def _signed(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    return f"{value:+,.{digits}f}"


def _proxy_section(proxy: dict[str, Any]) -> list[str]:
    out = [
        "| concurrency | req/s off | req/s on | ratio on/off (per pair) "
        "| p50 off / on / added (ms) | p99 off / on / added (ms) "
        "| overhead header off / on (ms) | proxy CPU/req off / on (ms) "
        "| PostgreSQL CPU/req on (ms) | other jobs' CPU (cores) |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key in sorted((k for k in proxy if k.startswith("c") and k[1:].isdigit()),
                      key=lambda k: int(k[1:])):
        c = proxy[key]
        pairs = ", ".join(f"{r:.2f}" for r in c.get("throughput_ratio_pairs", []))
        if c.get("pairs_run") and c.get("pairs_used") != c.get("pairs_run"):
            pairs += f"; {c['pairs_used']} undisturbed of {c['pairs_run']} pairs"
        on, off = c["on"], c["off"]
        out.append(
            f"| {key[1:]} | {_f(c['rps_off'])} | {_f(c['rps_on'])} | "
            f"**{_f(c['throughput_ratio'], 3)}** ({pairs}) | "
            f"{_f(c['p50_off_ms'])} / {_f(c['p50_on_ms'])} / **{_signed(c['p50_added_ms'])}** | "
            f"{_f(c['p99_off_ms'])} / {_f(c['p99_on_ms'])} / **{_signed(c['p99_added_ms'])}** | "
            f"{_f(c['overhead_header_off_ms'], 2)} / {_f(c['overhead_header_on_ms'], 2)} | "
            f"{_f(off['cpu_ms_per_request'].get('proxy'), 2)} / "
            f"{_f(on['cpu_ms_per_request'].get('proxy'), 2)} | "
            f"{_f(on['cpu_ms_per_request'].get('postgres'), 2)} | "
            f"{_f(off.get('foreign_cores'), 2)} / {_f(on.get('foreign_cores'), 2)} |")
    sanity = proxy.get("sanity") or {}
    if sanity:
        out += [
            "",
            f"What the plugin-on proxy wrote during the run: {sanity.get('usage_rows')} usage rows "
            f"({sanity.get('successes')} successes) from {sanity.get('distinct_users')} users, "
            f"{sanity.get('usage_debits')} usage debits, {sanity.get('byok_rows')} served with "
            f"the user's own key, by level {sanity.get('by_level')}, by provider "
            f"{sanity.get('by_provider')}; holds left: {sanity.get('holds_left')}.",
        ]
    diag = [k for k in proxy if k.startswith("c") and "noop_vs_off" in proxy[k]]
    if diag:
        out += ["", "Diagnostic third arm (a do-nothing callback):", "",
                "| concurrency | noop/off ratio | on/noop ratio "
                "| proxy CPU/req off / noop / on (ms) |",
                "|---|---|---|---|"]
        for key in diag:
            c = proxy[key]
            n = c["noop_vs_off"]
            out.append(
                f"| {key[1:]} | {_f(n['throughput_ratio'], 3)} | "
                f"{_f(c['on_vs_noop']['throughput_ratio'], 3)} | "
                f"{_f(c['off']['cpu_ms_per_request'].get('proxy'), 2)} / "
                f"{_f(n['noop']['cpu_ms_per_request'].get('proxy'), 2)} / "
                f"{_f(c['on']['cpu_ms_per_request'].get('proxy'), 2)} |")
    return out


def _settlement_section(s: dict[str, Any]) -> list[str]:
    out = ["| path | spread over 1,000 users | one hot user |", "|---|---|---|"]
    for key in sorted(k for k in s if k.startswith("writer_x")):
        w = s[key]
        n = w["spread"]["writers"]
        out.append(
            f"| writer (`Ledger.settle`, batches of {w['spread']['batch_size']}), {n} "
            f"writer process{'es' if n > 1 else ''} | **{_f(w['spread']['per_s'], 0)}/s** "
            f"({w['spread']['records']:,} in {w['spread']['seconds']} s) | "
            f"**{_f(w['hot_user']['per_s'], 0)}/s** ({w['hot_user']['records']:,} in "
            f"{w['hot_user']['seconds']} s) |")
    base = s.get("baseline")
    if base:
        out.append(
            f"| baseline: one transaction per request (`debit_user_credits` + usage row + "
            f"`release_hold`), {base['spread']['connections']} connections | "
            f"{_f(base['spread']['per_s'], 0)}/s | {_f(base['hot_user']['per_s'], 0)}/s |")
    complete = "all complete" if s.get("all_checks_complete") else "SEE JSON: incomplete"
    if s.get("speedup_spread"):
        out += ["", f"Batching settles {s['speedup_spread']}x as many requests per second as "
                f"the baseline spread over users, and {s['speedup_hot_user']}x for one hot user. "
                f"Every run was checked afterwards: one usage row and one usage debit per "
                f"request, no hold left ({complete})."]
    r = s.get("reserve")
    if r:
        def rate(block: dict[str, Any]) -> str:
            return (f"**{_f(block['per_s'], 0)}/s** (p50 {block['p50_ms']} ms, "
                    f"p99 {block['p99_ms']} ms)")

        text = (f"The hook's side of the database, `Ledger.reserve` from "
                f"{r['spread']['connections']} callers at once, as shipped (callers that arrive "
                f"together share a `reserve_credits_many` statement): {rate(r['spread'])} "
                f"spread over users, {rate(r['hot_user'])} for one hot user.")
        if r.get("spread_single"):
            text += (f" With batching off (`reserve_batch_max: 1`, one `reserve_credits` "
                     f"transaction per call): {rate(r['spread_single'])} spread, "
                     f"{rate(r['hot_user_single'])} hot.")
        out += ["", text]
    curve = s.get("batch_cost")
    if curve:
        out += ["", "One `Ledger.settle` call by batch size (one connection, back to back, "
                "median wall time including the commit):", "",
                "| records per batch | " + " | ".join(curve) + " |",
                "|---|" + "---|" * len(curve),
                "| ms per batch | " + " | ".join(_f(v["batch_ms"], 2) for v in curve.values())
                + " |",
                "| ms per record | " + " | ".join(_f(v["per_record_ms"], 3)
                                                  for v in curve.values()) + " |"]
    return out


def _hook_section(h: dict[str, Any]) -> list[str]:
    rows = [("whole pre-call hook", "pre_call_total"),
            ("database round trip (`ledger.reserve`)", "db_round_trip"),
            ("everything else", "non_db"),
            ("everything else, platform-key users", "non_db_platform_key"),
            ("everything else, BYOK users (includes the AES-GCM decrypt)", "non_db_byok"),
            ("success event (builds and queues the settlement record)", "success_event")]
    out = ["| part | n | p50 (ms) | p90 (ms) | p99 (ms) | p99.9 (ms) | max (ms) |",
           "|---|---|---|---|---|---|---|"]
    for label, key in rows:
        d = h.get(key) or {}
        out.append(f"| {label} | {d.get('n')} | {_f(d.get('p50_ms'), 3)} | "
                   f"{_f(d.get('p90_ms'), 3)} | {_f(d.get('p99_ms'), 3)} | "
                   f"{_f(d.get('p999_ms'), 3)} | {_f(d.get('max_ms'), 3)} |")
    out += ["", f"{h.get('calls')} calls from {h.get('users')} users "
            f"({_f((h.get('byok_share') or 0) * 100, 1)} % BYOK), errors: {h.get('errors')}. "
            f"All CPU of the process per request (hook, success event, the writer settling "
            f"the records, background refresh): **{h.get('process_cpu_ms_per_request')} ms**."]
    cc = h.get("concurrent")
    if cc:
        out += ["", f"The same plugin with {cc['concurrency']} requests in flight at once, each "
                "running every hook the proxy runs for it (pre-call, the router's filter, the "
                "deployment hook, the response-headers hook, the success event) around a "
                f"{_f(cc['upstream_seconds'] * 1000, 0)} ms wait standing in for the provider: "
                f"{cc['calls']} requests, {cc['errors']} errors, "
                f"**{cc['process_cpu_ms_per_request']} ms** of the process's CPU per request, "
                f"{cc['reserve_statements_per_request']} reserve statements per request "
                f"({cc['reserves_per_batched_statement']} reserves per shared statement): "
                "concurrent reserves share round trips (F2)."]
    return out


def _scaling_section(sc: dict[str, Any] | None) -> list[str]:
    if not sc:
        return ["(not computed: run the proxy and settlement parts together)"]
    return [
        "* A proxy worker (one process, one core) serves about "
        f"**{_f(sc['worker_rps_plugin_on'], 0)} req/s** with the plugin "
        f"({_f(sc['worker_rps_plugin_off'], 0)} without) at the highest "
        "concurrency measured.",
        f"* Each request costs the database one `reserve_credits` transaction: "
        f"{sc['reserve_db_ms_per_request']} ms of database capacity at the measured "
        "reserve rate.",
        f"* At that rate a worker's writer flushes about {sc['writer_batch_at_that_rate']} records "
        f"per 50 ms window; one such batch takes {sc['settle_batch_ms']} ms, i.e. "
        f"{sc['settle_db_ms_per_request']} ms per request.",
        f"* Together: {sc['db_ms_per_request']} ms of database time per request, so one "
        f"PostgreSQL like this one takes **about {_f(sc['db_capacity_requests_per_s'], 0)} "
        f"requests/s, i.e. about {sc['workers_per_db']} proxy workers**.",
        "* Under sustained load writers fill whole batches (500, about 0.1 ms per record, "
        "part 2); then the same database takes "
        f"about {_f(sc.get('db_capacity_full_batches_per_s'), 0)} requests/s "
        f"({sc.get('workers_per_db_full_batches')} workers): the reserve transaction, not "
        "settlement, is then the limit.",
        f"* Cross-check from CPU: in the proxy run PostgreSQL used "
        f"{sc['pg_cpu_ms_per_request_in_proxy_run']} ms of CPU per request; "
        f"{sc['db_cores']} cores give {_f(sc.get('db_capacity_by_pg_cpu_per_s'), 0)} requests/s "
        f"({sc.get('workers_per_db_by_pg_cpu')} workers).",
        f"* One user cannot go past about {_f(sc['hot_user_ceiling_per_s'], 0)} requests/s "
        "across the whole fleet: every reserve locks that user's account row.",
        "* The reserve rate above is measured as shipped: 16 callers on one proxy's ledger, "
        "whose reserves share statements (F2). A fleet of many lightly loaded workers batches "
        "less, so the one-statement-per-call rate in part 2 is the cautious figure for it. "
        "Beyond one database, see the next section.",
    ]


PATH_PAST_ONE_DATABASE = """\
All shared state is in PostgreSQL, and every statement on the hot path touches
one user's rows (`user_credits`, `credit_holds`, `credit_transactions`,
`llm_usage_log`, `user_provider_keys`, all keyed or indexed by `user_id`). That
is what makes the path past one database straightforward:

1. **Scale up and take reads off the primary first.** The proxies' reads outside
   the request path (balance pages, history, usage reports, the refresh of power
   levels and prices) can go to a streaming replica; the request path itself
   (`reserve_credits`, `settle_usage`) must stay on the primary. Put PgBouncer in
   transaction mode in front of it: each proxy holds a pool of up to
   `pool.max_size` connections, and a few hundred workers would otherwise exhaust
   `max_connections`. Both SQL entry points are single statements or functions,
   so transaction pooling is safe for them.
2. **Give WAL its own fast disk.** Holds already commit without waiting for the
   WAL flush (F1) and concurrent reserves share a commit (F2), but settlement
   commits synchronously, and on a busy fleet the commit rate of the WAL device
   is the first ceiling you meet.
3. **Shard by `user_id` with Citus.** Distribute `user_credits`,
   `credit_holds`, `credit_transactions`, `llm_usage_log` and
   `user_provider_keys` on `user_id` (co-located), and make `power_level_configs`,
   `credit_packages` and `credit_settings` reference tables. `reserve_credits`
   then runs on the one shard that owns the user (Citus routes a function call
   by its distribution argument when the function is created with
   `create_distributed_function(..., distribution_arg_name := 'p_user_id',
   colocate_with := 'user_credits')`), so throughput grows with the number of
   workers. `settle_usage(jsonb)` takes a batch for many users; a writer would
   split its batch by shard (or by user) so that each call stays on one node,
   which keeps each debit's lock and chain local. Two changes are needed for
   that: unique constraints must include the distribution column (for example
   `UNIQUE (user_id, request_id)` on `llm_usage_log` and
   `(user_id, transaction_type, idempotency_key)` on `credit_transactions`),
   and the id sequences become per-node (Citus handles `bigserial`), which
   still orders each user's chain because one user lives on one node.
4. **Or shard in the application**: N independent PostgreSQL databases, the
   user's database chosen by a stable hash of `user_id` in `Runtime`; each is
   exactly today's schema. Cross-user reports (daily usage summary, revenue)
   then read all shards.

The hot-user ceiling does not move with sharding: one user's requests are
serialised on that user's row wherever it lives. A customer that needs more than
that would need per-user sub-accounts (several balance rows that are topped up
together), which is a product decision, not a database one."""


def _exp(experiments: dict[str, Any], path: str) -> Any:
    return get(experiments, path)


def _applied() -> dict[str, bool]:
    """Which proposed fixes the package already has (read from its source)."""
    from bench.common import REPO_ROOT

    pkg = REPO_ROOT / "litellm_credits"

    def text(rel: str) -> str:
        try:
            return (pkg / rel).read_text()
        except OSError:
            return ""

    ledger = text("ledger.py")
    settle_sql = text("store/migrations/0003_settlement.sql")
    settle_fn = ledger[ledger.find("async def settle("):][:600]
    return {
        "F1": "synchronous_commit" in text("store/migrations/0002_ledger.sql"),
        "F2": "reserve_credits_many" in text("holds.py") and "HoldPlacer" in ledger,
        "F3": "LATERAL" in settle_sql and "JOIN r ON r.request_id = i.request_id" not in settle_sql,
        "F4": "db.transaction()" not in settle_fn and bool(settle_fn),
        "F5": "latency_since" in text("latency.py"),
    }


def _before() -> dict[str, Any]:
    """The full run before F2-F4 and F7 landed, kept for the before/after table."""
    path = RESULTS_DIR / "before-f2.json"
    loaded: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    return loaded


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _signed(value: float | None) -> str:
    return "n/a" if value is None else f"{value:+.2f}"


def _queueing(c: dict[str, Any]) -> float | None:
    """p50 off x (1/ratio - 1): the added p50 a saturated proxy shows from the ratio alone."""
    p50, ratio = c.get("p50_off_ms"), c.get("throughput_ratio")
    return p50 * (1 / ratio - 1) if p50 and ratio else None


def _remaining(hook: dict[str, Any], ex: dict[str, Any]) -> str:
    """What the remaining proxy CPU is made of: the plugin's own code, measured two ways."""
    cc = hook.get("concurrent") or {}
    ko = (ex.get("proxy_knockouts") or {}).get("c16") or {}
    text = ""
    if cc:
        text += (" In process, with 16 requests in flight through every hook (part 3), the "
                 f"plugin's own code costs {cc.get('process_cpu_ms_per_request')} ms of CPU per "
                 "request, so nearly all of the proxy's added CPU is the plugin's own work "
                 "(the pre-call hook and its batched reserve, the success event, the writer), "
                 "not LiteLLM doing more because a callback is installed.")
    if ko:
        def arm(name: str) -> str:
            return _f((ko.get(name) or {}).get("proxy_cpu_ms_per_request"), 2)

        text += (" Knock-outs in the proxy (`python -m bench.experiments --only "
                 "proxy_knockouts`, concurrency 16) agree: without the `num_retries` the hook "
                 f"sets, {arm('on_no_num_retries')} ms; without the router-level hooks "
                 f"(`async_filter_deployments`, `async_pre_call_deployment_hook`), "
                 f"{arm('on_no_router_hooks')} ms; as shipped, {arm('on')} ms; bare proxy "
                 f"{_f(ko.get('off_proxy_cpu_ms_per_request'), 2)} ms. Neither part is where "
                 "the time goes; and a BYOK-free run (`BENCH_BYOK_EVERY=100000`) gave the same "
                 "ratio, so per-user provider clients are not it either.")
    return text


def _runs(c: dict[str, Any], side: str, key: str) -> str:
    values = (c.get(side) or {}).get(key) or []
    return ", ".join(f"{v:.0f}" for v in values) or "n/a"


def _findings_section(results: dict[str, Any]) -> list[str]:
    """The analysis, with this run's numbers and those of ``bench/results/experiments.json``."""
    path = RESULTS_DIR / "experiments.json"
    ex: dict[str, Any] = json.loads(path.read_text()) if path.exists() else {}
    proxy = results.get("proxy") or {}
    hook = results.get("hook") or {}
    c1, c16 = proxy.get("c1") or {}, proxy.get("c16") or {}
    out: list[str] = []
    status = {k: "yes" if v else "no" for k, v in _applied().items()}

    def disturbance(block: dict[str, Any]) -> str:
        values = sorted(r.get("foreign_cores") or 0 for k in ("c1", "c16", "c64")
                        for r in (block.get(k) or {}).get("runs", []))
        if not values:
            return ""
        return (f" Other jobs on the machine used a median of {values[len(values) // 2]:.2f} "
                f"cores (up to {values[-1]:.2f}) during these runs, so single ratios are noisy; "
                "the CPU-per-request columns are the steadier measure.")


    def cpu(c: dict[str, Any], side: str, what: str = "proxy") -> Any:
        return ((c.get(side) or {}).get("cpu_ms_per_request") or {}).get(what)

    off16, on16 = cpu(c16, "off"), cpu(c16, "on")
    added16 = on16 - off16 if on16 is not None and off16 is not None else None
    budget = off16 * (1 / 0.95 - 1) if off16 else None
    coal = {r["k"]: r for r in _exp(ex, "reserve_coalesce.by_reserves_per_round_trip") or []}
    before = _before()
    b16 = (before.get("proxy") or {}).get("c16") or {}
    b64 = (before.get("proxy") or {}).get("c64") or {}
    c64 = proxy.get("c64") or {}
    bhook = before.get("hook") or {}
    out += _history_section()
    out += [
        "### Where the time goes",
        "",
        f"1. **The proxy's CPU.** The bare proxy spends about {_f(off16, 2)} ms of CPU per "
        "request (LiteLLM itself; one worker is one process on one core, which is why it tops "
        f"out near {_f(c16.get('rps_off'), 0)} req/s). With the plugin the proxy process spends "
        f"{_f(on16, 2)} ms ({_signed(added16)} ms), and PostgreSQL, on the same two cores, "
        f"another {_f(cpu(c16, 'on', 'postgres'), 2)} ms per request. In process, the plugin's "
        f"own work is {_f(hook.get('process_cpu_ms_per_request'), 2)} ms of CPU per request "
        "when requests come one at a time (part 3: hook, success event, writer, background "
        "tasks); the largest piece is the client side of the reserve round trip through "
        f"psycopg ({_f((coal.get(1) or {}).get('client_cpu_ms_per_reserve'), 3)} ms per call "
        f"alone), against {_f(hook.get('non_db', {}).get('p50_ms'), 3)} ms (p50) for everything "
        f"else in the pre-call hook and {_f(hook.get('success_event', {}).get('p50_ms'), 3)} ms "
        "for the success event. Under load the reserves of concurrent requests share one "
        "round trip (F2 below), so that piece shrinks with the load. py-spy at concurrency 16 "
        "(`python -m bench.profile --concurrency 16`, summary in "
        "`bench/results/profiles/summary-c16.txt`) puts about 4 % of the plugin proxy's samples "
        "in `litellm_credits` frames; the rest of the difference is the event loop running the "
        "plugin's awaits and database sockets, not any LiteLLM function. The diagnostic arm "
        "(`--diagnose`, a callback that does nothing) costs nothing measurable.",
        "2. **The throughput ratio follows from that.** When the proxy is the bottleneck "
        "(concurrency 16 and 64 here), ratio ≈ off CPU / on CPU. For 0.95 the plugin may add "
        f"at most {_f(budget, 2)} ms of proxy CPU per request on this machine; in this run it "
        f"adds {_signed(added16)} ms at concurrency 16 and "
        f"{_signed(_minus(cpu(c64, 'on'), cpu(c64, 'off')))} ms at 64. Single pairs still swing "
        "by a few per cent on this shared machine, which is why the ratio is the median over "
        "pairs run back to back." + _remaining(hook, ex),
        "3. **Added p50 at concurrency 16 and 64 is queueing, not plugin time.** A saturated "
        "proxy answers in about concurrency / throughput, so p50 on − off ≈ p50 off × (1/ratio "
        f"− 1). With p50 off ≈ {_f(c16.get('p50_off_ms'), 0)} ms, the 1 ms target at "
        "concurrency 16 is the same as a throughput ratio of at least 0.99, i.e. a plugin that "
        "costs less than 1 % of LiteLLM's own CPU. In this run the formula predicts "
        f"{_f(_queueing(c16), 1)} ms from the measured ratio and the measured difference is "
        f"{_f(c16.get('p50_added_ms'), 1)} ms: the added p50 is the throughput gap seen as "
        "queueing, and it closes only with the ratio. Unloaded (concurrency 1) the added p50 "
        f"is {_f(c1.get('p50_added_ms'), 2)} ms: the reserve round trip plus the plugin's "
        "CPU.",
        "4. **p99 at concurrency 16 is dominated by the proxy's own stalls.** Per run, p99 on: "
        f"{_runs(c16, 'on', 'p99_ms_runs')} ms, off: {_runs(c16, 'off', 'p99_ms_runs')} ms. "
        "Across all runs of this benchmark and of the experiments the bare proxy's p99 at "
        "concurrency 16 is bimodal, about 150-250 ms or 320-400 ms, depending on whether a "
        "periodic stall of LiteLLM itself falls into the run; the difference on − off of two "
        "such numbers is not a stable measure of the plugin. Unsaturated, where p99 is about "
        f"the request itself, the plugin adds {_f(c1.get('p99_added_ms'), 1)} ms "
        "(concurrency 1).",
        "",
        "### Before and after the fixes",
        "",
        f"The previous full run (`bench/results/before-f2.json`, {before.get('generated_at')}, "
        "with F1, before F2-F4 and F7) against this one:",
        "",
        "| key | before | now |",
        "|---|---|---|",
        f"| `proxy.c16.throughput_ratio` | {_f(b16.get('throughput_ratio'), 3)} | "
        f"{_f(c16.get('throughput_ratio'), 3)} |",
        f"| `proxy.c64.throughput_ratio` | {_f(b64.get('throughput_ratio'), 3)} | "
        f"{_f(c64.get('throughput_ratio'), 3)} |",
        f"| `proxy.c16.p50_added_ms` | {_f(b16.get('p50_added_ms'), 1)} | "
        f"{_f(c16.get('p50_added_ms'), 1)} |",
        f"| `proxy.c16.p99_added_ms` | {_f(b16.get('p99_added_ms'), 1)} | "
        f"{_f(c16.get('p99_added_ms'), 1)} |",
        f"| proxy CPU added per request, concurrency 16 (ms) | "
        f"{_f(b16.get('proxy_cpu_added_ms_per_request'), 2)} | "
        f"{_f(c16.get('proxy_cpu_added_ms_per_request'), 2)} |",
        f"| PostgreSQL CPU per request, concurrency 16 (ms) | "
        f"{_f(cpu(b16, 'on', 'postgres'), 2)} | {_f(cpu(c16, 'on', 'postgres'), 2)} |",
        f"| success event p50 (ms) | {_f((bhook.get('success_event') or {}).get('p50_ms'), 3)} "
        f"| {_f((hook.get('success_event') or {}).get('p50_ms'), 3)} |",
        f"| `settlement.spread_per_s` | {_f(get(before, 'settlement.spread_per_s'), 0)} | "
        f"{_f(get(results, 'settlement.spread_per_s'), 0)} |",
        f"| `settlement.hot_user_per_s` | {_f(get(before, 'settlement.hot_user_per_s'), 0)} | "
        f"{_f(get(results, 'settlement.hot_user_per_s'), 0)} |",
        "",
        "`python -m bench.experiments` (results in `bench/results/experiments.json`) measured "
        "each fix before it was applied: on a scratch database (`CREATE OR REPLACE FUNCTION`) "
        "or a scratch copy of the package, never the repository, against the code as shipped "
        "at the time, in the same run.",
        "",
    ]
    rc = _exp(ex, "reserve_commit.summary") or {}
    sync, asyn = rc.get("synchronous") or {}, rc.get("asynchronous") or {}
    out += [
        "**F1. Do not wait for the WAL flush when placing a hold** (`reserve_credits`, "
        "0002_ledger.sql): add `PERFORM set_config('synchronous_commit', 'off', true);` at the "
        "top of the function body. It affects only the hold's own transaction; debits "
        f"(`settle_usage`) stay synchronous. Measured: reserve p50 {_f(sync.get('p50_ms'), 3)} → "
        f"{_f(asyn.get('p50_ms'), 3)} ms, p99 {_f(sync.get('p99_ms'), 3)} → "
        f"{_f(asyn.get('p99_ms'), 3)} ms (one connection); "
        f"{_f(sync.get('per_s_16_connections'), 0)} → "
        f"{_f(asyn.get('per_s_16_connections'), 0)} reserves/s from 16 connections. "
        "Safety: a hold is not money. After a database crash the holds committed in the last "
        "few hundred milliseconds may be gone; their requests are still settled exactly once "
        "(settle_usage deletes the hold by request id and does not need it), so I1, I2 and I7 "
        "are untouched, and I3's bound widens only by the holds of requests that were in "
        "flight at the crash. This removes about half of the added p50 at concurrency 1."
        + (" **Applied in the package since** (commit 049095e), so the proxy numbers above "
           "include it if the run is newer." if status["F1"] == "yes" else ""),
        "",
    ]
    if coal:
        parts = ", ".join(f"{k} per round trip {_f(r['client_cpu_ms_per_reserve'], 3)} ms"
                          for k, r in sorted(coal.items()))
        out += [
            "**F2. Coalesce concurrent reserves into one round trip.** Client CPU per reserve: "
            f"{parts}. The proxy-side CPU of the one round trip is the largest piece of the "
            "plugin's cost, and at concurrency 16/64 several requests are in the pre-call hook "
            "at the same time. Proposal (what the scratch copy does): `Ledger.reserve` puts its "
            "call on a per-process queue and, if no reserve statement is in flight, starts one "
            "at once; calls that arrive while one is in flight wait for it and then go together "
            "in the next (like group commit: an idle proxy adds no wait, a busy one batches by "
            "itself). The statement is `reserve_credits_many(jsonb)`, which runs "
            "`reserve_credits` per item sorted by `user_id` (so batches from several proxies "
            "lock accounts in one order), each inside its own `BEGIN ... EXCEPTION` block (one "
            "bad item does not fail the others, and its SQLSTATE maps to the same error as "
            "today), and returns one row per item. Holds, statuses and errors are unchanged for "
            "the hook. Batching also removes most of the per-transaction work in PostgreSQL: "
            "one commit per batch instead of one per request."
            + (" **Applied** (`litellm_credits/holds.py`, migration 0005), with one change "
               "from the scratch copy: accounts are taken with `FOR UPDATE NOWAIT`, and an "
               "account another transaction holds is retried alone, so a batch never waits on "
               "a lock and one busy account (a settlement batch, an admin grant) never delays "
               "the other requests of its batch." if status["F2"] == "yes" else ""),
            "",
        ]
    pc = _exp(ex, "proxy_coalesce") or {}
    if pc and "skipped" not in pc:
        rows = ["| concurrency | arm | ratio vs off | p50 added (ms) | p99 added (ms) "
                "| proxy CPU/req (ms) | PostgreSQL CPU/req (ms) |",
                "|---|---|---|---|---|---|---|"]
        for key in ("c1", "c16", "c64"):
            block = pc.get(key) or {}
            if not block:
                continue
            rows.append(f"| {key[1:]} | off | 1 | 0 | 0 | "
                        f"{_f(block.get('off_proxy_cpu_ms_per_request'), 2)} | |")
            for arm in ("on", "on_coalesce", "on_all"):
                a = block.get(arm) or {}
                rows.append(f"| {key[1:]} | {arm} | **{_f(a.get('throughput_ratio'), 3)}** | "
                            f"{_f(a.get('p50_added_ms'), 2)} | {_f(a.get('p99_added_ms'), 2)} | "
                            f"{_f(a.get('proxy_cpu_ms_per_request'), 2)} | "
                            f"{_f(a.get('pg_cpu_ms_per_request'), 2)} |")
        out += [
            "F2 was implemented on a scratch copy (`PY_COALESCE` and `RESERVE_MANY_SQL` in "
            "`bench/experiments.py`: reserves that arrive while one is on its way wait for it "
            "and then go together, like group commit; an idle proxy sends each at once) and "
            "measured end to end against the shipped plugin and the bare proxy, alternated in "
            "one run; `on_all` is F1 + F2 + F3 + F4." + disturbance(pc),
            "",
            *rows,
            "",
        ]
    sp = _exp(ex, "settle_plans") or {}
    if sp and "skipped" not in sp:
        shipped, fixed = sp.get("as_shipped") or {}, sp.get("lateral_and_order") or {}
        lat = sp.get("lateral") or {}
        out += [
            "**F3. Two plan traps in `settle_usage`** (0003_settlement.sql, the `deb` step). "
            "(a) The idempotency check `NOT EXISTS (SELECT 1 FROM credit_transactions t WHERE "
            "t.transaction_type = 'usage' AND t.idempotency_key = i.request_id)` is planned as "
            "a hash anti join over every usage transaction ever written whenever the statistics "
            "say there are few (a new deployment, or between autovacuum's analyses): each batch "
            "then reads the whole usage ledger. Measured with statistics taken while the ledger "
            "was empty (autovacuum off, i.e. the time until its next pass): a batch of 500 "
            f"took {_f(shipped.get('cold_stats_batch500_ms_first'), 1)} ms at first and "
            f"{_f(shipped.get('cold_stats_batch500_ms_last'), 1)} ms after "
            f"{shipped.get('cold_stats_ledger_rows_at_end')} rows; with the check as a "
            "per-row probe, `LEFT JOIN LATERAL (SELECT 1 AS found FROM credit_transactions t "
            "WHERE ... LIMIT 1) seen ON TRUE WHERE seen.found IS NULL`, "
            f"{_f(lat.get('cold_stats_batch500_ms_first'), 1)} → "
            f"{_f(lat.get('cold_stats_batch500_ms_last'), 1)} ms. (b) The running balance joins "
            "the inserted rows back to the input (`JOIN r ON r.request_id = i.request_id`) only "
            "to get the input's ordinal; with the row estimates of `jsonb_to_recordset` the "
            "planner runs that as a nested loop over the batch squared (250,000 comparisons for "
            "500 records). Ordering the chain by the usage row's `created_at` (the success "
            "event's time) and `request_id`, returned by the `INSERT`, removes the join. "
            "Together, with a 50,000-request history analyzed: batch of 500 "
            f"{_f((shipped.get('batch_ms') or {}).get('500'), 1)} → "
            f"{_f((fixed.get('batch_ms') or {}).get('500'), 1)} ms; one writer "
            f"{_f(shipped.get('writer_spread_per_s'), 0)} → "
            f"{_f(fixed.get('writer_spread_per_s'), 0)} settled/s spread and "
            f"{_f(shipped.get('writer_hot_user_per_s'), 0)} → "
            f"{_f(fixed.get('writer_hot_user_per_s'), 0)}/s for one hot user. The ledger "
            "chain and balances were verified intact with the rewrite.",
            "",
        ]
    out += [
        "**F4. Settle in one round trip.** `Ledger.settle` wraps its single `SELECT "
        "settle_usage(...)` in `db.transaction()`, which adds a `BEGIN` and a `COMMIT` round "
        "trip to every batch; in autocommit mode one statement is already one transaction. "
        "Use `db.connection()` there. At the proxy's ~20 batches per second that is 40 round "
        "trips per second less per worker.",
        "",
    ]
    px = _exp(ex, "proxy") or {}
    if px and "skipped" not in px:
        rows = ["| concurrency | arm | ratio vs off | p50 added (ms) | proxy CPU/req (ms) | "
                "PostgreSQL CPU/req (ms) |", "|---|---|---|---|---|---|"]
        for key in ("c1", "c16"):
            block = px.get(key) or {}
            rows.append(f"| {key[1:]} | off | 1 | 0 | "
                        f"{_f(block.get('off_proxy_cpu_ms_per_request'), 2)} | |")
            for arm in ("on", "on_noobs", "on_fixed"):
                a = block.get(arm) or {}
                rows.append(f"| {key[1:]} | {arm} | {_f(a.get('throughput_ratio'), 3)} | "
                            f"{_f(a.get('p50_added_ms'), 2)} | "
                            f"{_f(a.get('proxy_cpu_ms_per_request'), 2)} | "
                            f"{_f(a.get('pg_cpu_ms_per_request'), 2)} |")
        out += [
            "**End to end.** The proxy benchmark with four proxies alternated in one run: "
            "`off`; `on`, the plugin as shipped; `on_noobs`, a knock-out without the metrics "
            "and alert callbacks (`monitoring.install`, `alerts.install`); `on_fixed`, the "
            "plugin with F1, F3 and F4 applied (rounds of "
            f"{'5' if px.get('quick') else '8'} s per arm)." + disturbance(px),
            "",
            *rows,
            "",
            "F1, F3 and F4 move the database side (latency at concurrency 1, PostgreSQL CPU, "
            "settlement capacity) and barely move the proxy's CPU; the throughput ratio needs "
            "F2 or a lighter driver on the reserve path. The knock-out shows what metrics and "
            "alerts cost on the request path's process.",
            "",
        ]
    rq = _exp(ex, "refresh_query.by_rows") or []
    if rq:
        pts = ", ".join(f"{r['query_ms']} ms over {r['rows_in_window']:,} rows" for r in rq)
        inc = ", ".join(f"{r['incremental_600_new_rows_ms']} ms" for r in rq
                        if r.get("incremental_600_new_rows_ms") is not None)
        out += [
            "**F5. The routing refresher read the whole 5-minute window of `llm_usage_log` "
            "every 5 s, in every proxy**: " + pts + ". The window holds the whole fleet's "
            "traffic, so the cost per query grew with fleet throughput and the number of "
            "queries with the number of workers: 20 workers at 120 req/s keep 720,000 rows in "
            "the window, and each of the 20 read them every 5 s."
            + (" **Applied:** each proxy keeps per-minute sums in memory "
               "(`litellm_credits/latency.py`) and a refresh reads only the usage rows after "
               "the last id it saw (`latency_since`, a primary-key range): with 600 new rows "
               f"(5 s at 120 req/s) that query takes {inc} at the same window sizes, i.e. it "
               "no longer grows with the window. The window is kept in whole minutes, and a "
               "row committed out of id order may be missed: harmless for a routing "
               "heuristic, and it never touches money." if inc and status["F5"] == "yes"
               else ""),
            "",
        ]
    out += [
        "**F6. Bounded pruning of request states.** `CreditsHandler._prune` used to scan every "
        "per-request state on every request, and a state left behind (a request that never "
        "reaches a success or failure event) was scanned for an hour. **Applied:** it prunes "
        "at most once a minute.",
        "",
        "**F7. Metric labels and metadata JSON on the request path.** py-spy at concurrency 16 "
        "showed `prometheus_client`'s `labels()` (a lock and a validation per call) and "
        "`capped_json` (three JSON passes per metadata dict) as about a fifth of the plugin's "
        "own samples. **Applied:** label children are looked up once and kept "
        "(`metrics.count`; the label sets are few and bounded), and metadata is encoded once "
        "(the NUL walk runs only when the JSON holds one). A cProfile of the plugin with 16 "
        "requests in flight then showed `decimal.localcontext` (two per charge, about 0.04 ms "
        "per request) and the per-character control check of user ids: the exact decimal "
        "context is now one module-level `Context` used through its methods, and the check a "
        "regular expression over the same character set. The success event went from "
        f"{_f((bhook.get('success_event') or {}).get('p50_ms'), 3)} to "
        f"{_f((hook.get('success_event') or {}).get('p50_ms'), 3)} ms (p50, part 3).",
        "",
        "### Settlement and the hook",
        "",
        "Batching through the writer settles several times the one-transaction-per-request "
        "baseline, and passes the physical single-row commit ceilings this machine has (about "
        "5,500/s spread and 1,800/s on one hot row, per the issue), for spread users and for "
        "one hot user, with every request checked for exactly one usage row, one debit and no "
        "hold left. The F3 rewrite of `settle_usage` is what keeps a 500-record batch near "
        "0.1 ms per record even while statistics are stale. The hook's non-database work is "
        "well under "
        "0.1 ms at p50; BYOK adds the AES-GCM decrypt (a few tens of microseconds).",
        "",
        "### Summary of fixes",
        "",
        "| fix | where | effect measured here | in the package now |",
        "|---|---|---|---|",
        "| F2 coalesce reserves | `holds.py` + `reserve_credits_many` (0005) | throughput "
        f"ratio {_f(b16.get('throughput_ratio'), 3)} → {_f(c16.get('throughput_ratio'), 3)} "
        f"(concurrency 16), {_f(b64.get('throughput_ratio'), 3)} → "
        f"{_f(c64.get('throughput_ratio'), 3)} (64), with F7; less PostgreSQL CPU per request "
        f"| {status['F2']} |",
        "| F1 asynchronous commit of holds | `reserve_credits` (0002) | reserve p50 and p99 "
        f"roughly halved; added p50 at concurrency 1 | {status['F1']} |",
        "| F3 LATERAL probe + no join back to the input | `settle_usage` (0003) | settlement "
        f"+25-35 %; no slow-down while statistics are stale | {status['F3']} |",
        "| F4 settle in one round trip | `Ledger.settle` | two round trips less per batch "
        f"| {status['F4']} |",
        "| F5 incremental latency window instead of rescanning the usage log | `latency.py`, "
        f"`latency_since` | refresher cost independent of the window | {status['F5']} |",
        "| F6 bounded pruning of request states | `CreditsHandler._prune` | robustness | yes |",
        "| F7 request-path trims | `metrics.count`, `capped_json`, `pricing`, "
        "`check_user_id` | success event p50 a quarter cheaper | yes |",
    ]
    return out


def render(results: dict[str, Any]) -> str:
    m = results.get("machine") or {}
    v = results.get("versions") or {}
    proxy = results.get("proxy") or {}
    method = proxy.get("method") or {}
    lines = [
        "# Benchmarks",
        "",
        f"Generated by `make bench` (`python -m bench.run`, mode **{results.get('mode')}**) on "
        f"{results.get('generated_at')} in {results.get('duration_s')} s. Raw numbers: "
        "`bench/results/latest.json`. Regenerate this page from a saved run with "
        "`python -m bench.report bench/results/latest.json`.",
        "",
        "## Targets",
        "",
        "| target | required | achieved | |",
        "|---|---|---|---|",
    ]
    for t in results.get("targets", []):
        mark = "n/a" if t["met"] is None else ("met" if t["met"] else "**missed**")
        lines.append(f"| {t['what']} (`{t['key']}`) | {t['target']} | {_f(t['achieved'], 3)} | "
                     f"{mark} |")
    lines += [
        "",
        "## Machine and versions",
        "",
        f"* {m.get('cpus')} CPUs ({m.get('cpu_model')}), {m.get('memory_gb')} GB RAM, "
        f"{m.get('os')}, kernel {m.get('kernel')}, Python {m.get('python')}.",
        f"* Load average when the run started: {m.get('load_average_at_start')}. The machine is "
        "shared: the proxy table reports, per run, how many cores other jobs used meanwhile.",
        f"* LiteLLM {v.get('litellm')} (pinned), litellm-credits {v.get('litellm_credits')}, "
        f"PostgreSQL {v.get('postgresql')}, psycopg {v.get('psycopg')} / psycopg_pool "
        f"{v.get('psycopg_pool')}, uvicorn {v.get('uvicorn')}, uvloop {v.get('uvloop')}, "
        f"{v.get('wrk')}.",
        "* PostgreSQL: the benchmark's own cluster (`.run/pg-bench`, port 55499) as "
        "`devtools/pg.py` configures it (`shared_buffers` 256 MB, `fsync` and "
        "`synchronous_commit` on: every commit waits for the WAL flush), on the same machine as "
        "the proxies and the load generator. Tables are `ANALYZE`d after seeding.",
        "",
        "## Method",
        "",
        "**1. Proxy overhead.** Two copies of the pinned proxy (`devtools/proxy.py`, one worker "
        "each, `custom_auth` test keys) run side by side from the same generated config and "
        "point at the same stand-in upstream process (`devtools/upstream.py`, uvloop, answers at "
        "once). The only difference: `litellm_settings.callbacks: litellm_credits.handler` on "
        "one. Model group `chat` has two deployments, `openai` (quality 0.96, router weight 2) "
        "and `openrouter` (quality 0.80, weight 1), both OpenAI-protocol stand-ins, so both "
        "proxies send the same share of requests through the same LiteLLM provider code: the "
        "plugin routes eco to openrouter and balanced/precision to openai (1/3 : 2/3), and the "
        "plugin-off router's weighted shuffle does the same. "
        f"The database holds {method.get('users', 1000)} users with credits, levels "
        f"{method.get('levels', '')}, {method.get('byok_users', 100)} of them with their own key "
        "(added through `KeyStore`, decrypted per request by the vault). Holds are on "
        "(every request reserves, the writer settles and releases). "
        "The load generator is `wrk` (one thread, a separate process) with a Lua script that "
        "POSTs a chat completion (`max_tokens` 16) with the master key and names a random one of "
        "the users in `x-litellm-end-user-id`; it records statuses and LiteLLM's "
        "`x-litellm-overhead-duration-ms` header. Each proxy first gets a warm-up that touches "
        f"every user ({method.get('warmup_s')} s). Then, per concurrency, the runs alternate "
        f"plugin on, plugin off, on, off ... ({method.get('pairs')} pairs, "
        f"{method.get('duration_s')} s each, a short pause between runs). The machine is "
        "shared, so each run also measures the CPU that processes outside the benchmark "
        "used; a pair in which they used more than "
        f"{method.get('max_foreign_cores', 0.5)} cores is marked disturbed, up to "
        f"{method.get('extra_pairs', 0)} more pairs are run to replace such "
        "pairs, and the summary uses the undisturbed pairs when there are at least 3 (every "
        "run is in the JSON). Reported: the median "
        "of the per-pair throughput ratios (each pair ran back to back, so slow drifts of a "
        "shared machine cancel), the medians of wrk's per-run p50 and p99 and their difference, "
        "the median of the overhead header, and CPU time per request of the proxy, PostgreSQL, "
        "the stand-ins and wrk (from /proc), plus the CPU other jobs on the machine used.",
        "",
        "Note on `x-litellm-overhead-duration-ms`: LiteLLM measures it inside "
        "`litellm.acompletion` (total minus the provider call), so it covers the router-level "
        "hooks (`async_filter_deployments`, `async_pre_call_deployment_hook`) but not the "
        "proxy's pre-call hook, where the plugin's database round trip happens.",
        "",
        "**2. Settlement throughput.** Records built by the package's own `success_record` (10 % "
        "with a BYOK key id) are fed to the package's `Writer` (batches of 500, as configured by "
        "default), which settles each batch in one transaction through `Ledger.settle` → "
        "`settle_usage(jsonb)`: usage row, chained debit, balance and monthly usage, hold "
        "released, BYOK key usage. With 2 writers, two processes (two proxies' writers) settle "
        "at once. The baseline does the same work one transaction per request "
        "(`debit_user_credits` + `INSERT` usage row + `release_hold`) from 16 connections. "
        "Spread: records for 1,000 users at random; hot: all for one user. Holds are placed in "
        "bulk beforehand (not timed). Afterwards every request is checked for exactly one usage "
        "row, one usage debit and no hold left.",
        "",
        "**3. The pre-call hook alone.** `CreditsHandler(runtime=Runtime(settings, "
        "model_list=lambda: [...], cost_map=lambda: {}))` in process under uvloop, warm (pool "
        "open, configuration loaded, 300 warm-up calls), called back to back as the master key "
        "naming one of 1,000 users. `ledger.reserve` is wrapped with a timer, so each call "
        "splits into the database round trip and everything else. The success event is timed "
        "too; the writer runs in the same loop, as in the proxy.",
        "",
        "**4. Scaling arithmetic.** From parts 1-3, below.",
        "",
        "## Results",
        "",
        "### 1. Proxy overhead",
        "",
        *(_proxy_section(proxy) if proxy else ["(not run)"]),
        "",
        "### 2. Settlement throughput",
        "",
        *(_settlement_section(results["settlement"]) if "settlement" in results
          else ["(not run)"]),
        "",
        "### 3. The pre-call hook alone",
        "",
        *(_hook_section(results["hook"]) if "hook" in results else ["(not run)"]),
        "",
        "### 4. How many proxy workers one PostgreSQL can serve",
        "",
        *_scaling_section(results.get("scaling")),
        "",
        "### The path past one database",
        "",
        PATH_PAST_ONE_DATABASE,
        "",
        "## Findings, profiles and proposed fixes",
        "",
        *_findings_section(results),
        "",
        "## Reproducing",
        "",
        "```",
        "make bench                      # about 10 minutes; wrk from apt (apt-get install -y wrk)",
        ".venv/bin/python -m bench.run --quick          # about 3 minutes",
        ".venv/bin/python -m bench.run --only proxy --concurrency 16 --pairs 5 --diagnose",
        "```",
        "",
    ]
    return "\n".join(lines)


HISTORY_PATH = RESULTS_DIR / "history.jsonl"
HISTORY_KEYS = ("proxy.c16.throughput_ratio", "proxy.c64.throughput_ratio",
                "proxy.c16.p50_added_ms", "proxy.c16.p99_added_ms",
                "settlement.spread_per_s", "settlement.hot_user_per_s")


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


def _history_section() -> list[str]:
    if not HISTORY_PATH.exists():
        return []
    entries = [json.loads(line) for line in HISTORY_PATH.read_text().splitlines() if line]
    if len(entries) < 2:
        return []
    out = ["### Run to run", "",
           "Every full `make bench` appends its target figures to "
           "`bench/results/history.jsonl`. The machine is shared and noisy, so one run is one "
           "sample: compare the runs measured on the same commit.", "",
           "| run | commit | c16 ratio | c64 ratio | c16 p50 added (ms) | c16 p99 added (ms) "
           "| settled/s spread | settled/s hot |",
           "|---|---|---|---|---|---|---|---|"]
    for e in entries:
        out.append(f"| {e.get('generated_at')} | {e.get('commit') or 'n/a'} | "
                   + " | ".join(_f(e.get(k), 3 if "ratio" in k else (1 if "ms" in k else 0))
                                for k in HISTORY_KEYS) + " |")
    return out + [""]


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
