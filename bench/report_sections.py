"""The result sections of ``docs/benchmarks.md``: one function per part of the run.

Each takes its part of the results (``proxy``, ``settlement``, ``hook``,
``scaling``) and returns Markdown lines; :mod:`bench.report_render` puts them in
the page. :data:`PATH_PAST_ONE_DATABASE` is prose that does not depend on a run.
"""

from __future__ import annotations

from typing import Any

from bench.report_format import fmt as _f
from bench.report_format import signed as _signed

__all__ = ["PATH_PAST_ONE_DATABASE", "hook_section", "proxy_section", "scaling_section",
           "settlement_section"]


def proxy_section(proxy: dict[str, Any]) -> list[str]:
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
    shared = [k for k in proxy if k.startswith("c") and (proxy[k].get("shared_cpu") or None)]
    if shared:
        out += ["", "Both proxies loaded at the same moment, sharing one CPU "
                "(`bench/shared_cpu.py`, method 1b):", "",
                "| concurrency | req/s off | req/s on | ratio on/off (per round) "
                "| proxy CPU/req off / on (ms) | non-200 |",
                "|---|---|---|---|---|---|"]
        for key in sorted(shared, key=lambda k: int(k[1:])):
            sc = proxy[key]["shared_cpu"]
            rounds = ", ".join(f"{r:.2f}" for r in sc.get("throughput_ratio_rounds", []))
            out.append(
                f"| {key[1:]} | {_f(sc.get('rps_off'))} | {_f(sc.get('rps_on'))} | "
                f"**{_f(sc.get('throughput_ratio'), 3)}** ({rounds}) | "
                f"{_f(sc.get('proxy_cpu_ms_per_request_off'), 2)} / "
                f"{_f(sc.get('proxy_cpu_ms_per_request_on'), 2)} | {sc.get('non_200')} |")
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


def settlement_section(s: dict[str, Any]) -> list[str]:
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


def hook_section(h: dict[str, Any]) -> list[str]:
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


def scaling_section(sc: dict[str, Any] | None) -> list[str]:
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
