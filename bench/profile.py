"""Profile the plugin-on and plugin-off proxies under load with py-spy.

``python -m bench.profile [--concurrency 1] [--seconds 30] [--rounds 2]``

Starts the same pair of proxies as the benchmark, and for each round records
``py-spy record --gil`` (samples of whichever thread holds the GIL, i.e. Python
CPU) of each proxy while wrk loads it. Raw collapsed stacks go to
``.run/bench/profiles/``; a summary (samples per request, the plugin's share,
the functions whose share grows most with the plugin) to
``bench/results/profiles/summary-c<N>.txt``. Needs ``py-spy`` (pip) and root or
``ptrace`` permission.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from bench.common import (  # noqa: E402
    RESULTS_DIR,
    WORK_DIR,
    bench_cluster,
    fresh_database,
    new_encryption_keys,
    seed_users,
)
from bench.procs import run_wrk  # noqa: E402
from bench.proxy_bench import (  # noqa: E402
    proxy_set,
    smoke,
    standard_arms,
    write_scripts,
)
from bench.settle_bench import preload_history  # noqa: E402

_FRAME = re.compile(r" \(.*?([^/]+/[^/]+\.py):\d+\)")


def _norm(frame: str) -> str:
    return _FRAME.sub(r" (\1)", frame)


def load(path: Path) -> tuple[int, collections.Counter[str], collections.Counter[str]]:
    """Total samples, inclusive samples per function, and the plugin's top-level entries."""
    total = 0
    inclusive: collections.Counter[str] = collections.Counter()
    ours: collections.Counter[str] = collections.Counter()
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        stack, count = line.rsplit(" ", 1)
        n = int(count)
        total += n
        frames = [_norm(f) for f in stack.split(";")]
        for f in set(frames):
            inclusive[f] += n
        mine = [f for f in frames if "litellm_credits" in f]
        if mine:
            ours["(all plugin frames)"] += n
            deepest = frames[frames.index(mine[-1]):]
            leaf = next((f for f in deepest[1:] if "psycopg" in f), None)
            ours[mine[0] + (" -> psycopg" if leaf else "")] += n
    return total, inclusive, ours


def summarize(files: dict[str, list[tuple[Path, int]]]) -> str:
    lines = []
    merged = {}
    for arm, items in files.items():
        total = 0
        inc: collections.Counter[str] = collections.Counter()
        ours: collections.Counter[str] = collections.Counter()
        requests = 0
        for path, n in items:
            t, i, o = load(path)
            total += t
            inc.update(i)
            ours.update(o)
            requests += n
        merged[arm] = (total, inc, ours, requests)
        lines.append(f"{arm}: {total} samples, {requests} requests, "
                     f"{total / max(requests, 1):.3f} samples/request")
    if "on" in merged:
        total, _, ours, requests = merged["on"]
        lines.append("")
        lines.append("plugin frames in the plugin-on proxy "
                     "(share of all samples, samples/request):")
        for name, n in ours.most_common(12):
            lines.append(f"  {100 * n / max(total, 1):5.1f} %  {n / max(requests, 1):.3f}  {name}")
    if "on" in merged and "off" in merged:
        ton, ion, _, ron = merged["on"]
        toff, ioff, _, roff = merged["off"]
        diff = {k: ion.get(k, 0) / max(ron, 1) - ioff.get(k, 0) / max(roff, 1)
                for k in set(ion) | set(ioff) if "litellm_credits" not in k and "psycopg" not in k}
        lines.append("")
        lines.append("non-plugin functions whose samples/request grow most with the plugin on:")
        for name, d in sorted(diff.items(), key=lambda kv: -kv[1])[:20]:
            lines.append(f"  {d:+.3f}  on {ion.get(name, 0) / max(ron, 1):.3f}  "
                         f"off {ioff.get(name, 0) / max(roff, 1):.3f}  {name}")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=1)
    parser.add_argument("--seconds", type=int, default=30)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    args = parser.parse_args(argv)
    spy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    if not Path(spy).exists():
        print("py-spy is not installed: .venv/bin/pip install py-spy", file=sys.stderr)
        return 1
    raw = WORK_DIR / "profiles"
    raw.mkdir(parents=True, exist_ok=True)
    keys = new_encryption_keys()
    files: dict[str, list[tuple[Path, int]]] = {"on": [], "off": []}
    with bench_cluster() as cluster:
        url = fresh_database(cluster, "bench_profile")
        seeded = asyncio.run(seed_users(url, 1000, keys))
        preload_history(url, seeded.users, 20_000)
        measure, warm = write_scripts(seeded.users)
        with proxy_set(standard_arms(url, keys, False)) as pset:
            for proxy in pset.proxies.values():
                smoke(proxy, seeded.users[0])
                run_wrk(proxy.url("/v1/chat/completions"), warm, connections=16, duration=6)
            for i in range(args.rounds):
                for arm, proxy in pset.proxies.items():
                    out = raw / f"{arm}-c{args.concurrency}-{i}.txt"
                    rec = subprocess.Popen(
                        [spy, "record", "-p", str(proxy.pid), "-d", str(args.seconds),
                         "-r", str(args.rate), "-f", "raw", "--gil", "--nonblocking",
                         "-o", str(out)],
                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    time.sleep(0.5)
                    result = run_wrk(proxy.url("/v1/chat/completions"), measure,
                                     connections=args.concurrency, duration=args.seconds)
                    rec.wait()
                    # Requests inside py-spy's window (it started 0.5 s before wrk).
                    files[arm].append((out, int(result["rps"] * (args.seconds - 0.5))))
                    print(f"{arm} round {i + 1}: {result['rps']:.1f} req/s", flush=True)
    summary = summarize(files)
    target = RESULTS_DIR / "profiles" / f"summary-c{args.concurrency}.txt"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(summary)
    print(summary)
    print(f"wrote {target}; raw stacks in {raw}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
