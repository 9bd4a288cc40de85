"""The processes of the proxy benchmark: their CPU time, which CPUs they run on, and wrk.

Shared by the sequential pairs (:mod:`bench.proxy_bench`) and the rounds with both proxies
loaded at once (:mod:`bench.shared_cpu`).
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["Placement", "cpu_seconds_of", "pin_tree", "process_tree", "run_wrk"]


def cpu_seconds_of(pids: list[int]) -> float:
    import psutil

    total = 0.0
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
    return total


def process_tree(pid: int | None) -> list[int]:
    import psutil

    if pid is None:
        return []
    try:
        proc = psutil.Process(pid)
        return [pid, *[c.pid for c in proc.children(recursive=True)]]
    except psutil.Error:
        return []


def pin_tree(pid: int | None, cpus: AbstractSet[int]) -> None:
    """Pin every thread of ``pid`` and its children to ``cpus`` (threads and processes they
    start later inherit it)."""
    for p in process_tree(pid):
        with contextlib.suppress(OSError):
            for tid in os.listdir(f"/proc/{p}/task"):
                with contextlib.suppress(OSError):
                    os.sched_setaffinity(int(tid), cpus)


@dataclass(frozen=True)
class Placement:
    """Which CPUs the proxy under test gets, and which everything else gets.

    Left to the scheduler, the proxy, the stand-in upstream, PostgreSQL and wrk land wherever
    it likes on a shared 2-CPU machine, and one proxy could stay 10-15 % faster than the other
    for a whole session, whichever had the plugin. Both proxies get the same CPU.
    """

    proxy: frozenset[int]
    rest: frozenset[int]

    @classmethod
    def split(cls) -> Placement | None:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            return None
        return cls(frozenset(cpus[:1]), frozenset(cpus[1:]))


def run_wrk(url: str, script: Path, *, connections: int, duration: float,
            threads: int = 1, cpus: frozenset[int] | None = None) -> dict[str, Any]:
    cmd = ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration:g}s", "--timeout", "30s",
           "-s", str(script), url]
    if cpus:
        cmd = ["taskset", "-c", ",".join(str(c) for c in sorted(cpus)), *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False,
                          timeout=duration + 120)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_JSON "):
            result: dict[str, Any] = json.loads(line[len("BENCH_JSON "):])
            result["rps"] = result["requests"] / (result["duration_us"] / 1e6)
            return result
    raise RuntimeError(f"wrk gave no result (exit {proc.returncode}):\n{proc.stdout}\n"
                       f"{proc.stderr}")
