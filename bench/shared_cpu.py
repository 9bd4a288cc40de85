"""Part 1b: both proxies loaded at the same moment, sharing one CPU.

The sequential pairs of part 1 compare runs made seconds apart, and on a shared virtual
machine the speed of the host drifts by more than the plugin costs between two such runs
(in one run the per-pair ratios spread from 0.73 to 1.16, and a do-nothing callback against
none from 0.76 to 1.04). Here every round loads both proxies at once, with the same wrk script and
concurrency, while they share the one CPU the proxies are pinned to: whatever the host does
during the round, it does to both. Each proxy runs in its own session, so the scheduler
splits that CPU evenly between them, and the ratio of their throughputs is the ratio of
their CPU cost per request - the quantity that decides how many requests a proxy core
serves. The rounds alternate which proxy's wrk starts first.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from bench.common import rnd
from bench.procs import cpu_seconds_of, process_tree, run_wrk
from devtools.proxy import ProxyProcess

__all__ = ["shared_rounds", "shared_summary"]


def shared_rounds(proxies: Mapping[str, ProxyProcess], arms: list[str], script: Path, *,
                  connections: int, duration: float, rounds: int,
                  wrk_cpus: frozenset[int] | None, pause: float,
                  log: Any = print) -> list[dict[str, Any]]:
    """``rounds`` rounds of every arm under load at once; one record per round."""
    rows: list[dict[str, Any]] = []
    for i in range(rounds):
        order = arms if i % 2 == 0 else arms[::-1]
        trees = {arm: process_tree(proxies[arm].pid) for arm in order}
        cpu_before = {arm: cpu_seconds_of(pids) for arm, pids in trees.items()}
        with ThreadPoolExecutor(len(order)) as pool:
            futures = {arm: pool.submit(run_wrk, proxies[arm].url("/v1/chat/completions"),
                                        script, connections=connections, duration=duration,
                                        cpus=wrk_cpus)
                       for arm in order}
            results = {arm: f.result() for arm, f in futures.items()}
        row: dict[str, Any] = {"which": "shared", "round": i, "connections": connections}
        for arm, result in results.items():
            n = max(result["requests"], 1)
            ok = int(result["statuses"].get("200", 0))
            row[arm] = {
                "rps": rnd(result["rps"], 2),
                "non_200": result["requests"] - ok,
                "p50_ms": rnd(result["latency_us"]["p50"] / 1000, 3),
                "p99_ms": rnd(result["latency_us"]["p99"] / 1000, 3),
                "proxy_cpu_ms_per_request": rnd(
                    (cpu_seconds_of(trees[arm]) - cpu_before[arm]) * 1000 / n, 3),
            }
        rows.append(row)
        line = "  ".join(f"{arm} {row[arm]['rps']:6.1f} req/s "
                         f"({row[arm]['proxy_cpu_ms_per_request']:.2f} ms CPU/req)"
                         for arm in arms)
        log(f"  c{connections:<3} shared round {i + 1}: {line}")
        time.sleep(pause)
    return rows


def shared_summary(rows: list[dict[str, Any]], a: str = "on", b: str = "off"
                   ) -> dict[str, Any] | None:
    """The median on/off throughput ratio over the rounds, and what it rests on."""
    rows = [r for r in rows if a in r and b in r and r[b]["rps"]]
    if not rows:
        return None
    ratios = [r[a]["rps"] / r[b]["rps"] for r in rows]

    def median_of(arm: str, key: str) -> float | None:
        values = [r[arm][key] for r in rows if r[arm].get(key) is not None]
        return rnd(statistics.median(values), 3) if values else None

    return {
        "rounds": len(rows),
        "throughput_ratio": rnd(statistics.median(ratios), 4),
        "throughput_ratio_rounds": [rnd(x, 4) for x in ratios],
        f"rps_{a}": median_of(a, "rps"),
        f"rps_{b}": median_of(b, "rps"),
        f"proxy_cpu_ms_per_request_{a}": median_of(a, "proxy_cpu_ms_per_request"),
        f"proxy_cpu_ms_per_request_{b}": median_of(b, "proxy_cpu_ms_per_request"),
        "non_200": sum(r[a]["non_200"] + r[b]["non_200"] for r in rows),
    }
