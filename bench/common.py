"""Shared pieces of the benchmark: paths, ports, the PostgreSQL cluster, seeding, machine facts.

Ports (this benchmark's own ranges, so it can run next to the test suite):

* PostgreSQL: a cluster of its own in ``.run/pg-bench`` on 55499;
* proxies, stand-ins and the like: 61000-61999 (see the constants below).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import platform
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from importlib import metadata
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parent.parent
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from devtools.pg import PgCluster  # noqa: E402

RESULTS_DIR = REPO_ROOT / "bench" / "results"
# The full raw output of the last run (thousands of lines): kept out of git.
RAW_RESULTS_PATH = RESULTS_DIR / "raw" / "latest-full.json"
# What is committed: the figures the targets and docs read, same key paths.
SUMMARY_PATH = RESULTS_DIR / "latest.json"
WORK_DIR = REPO_ROOT / ".run" / "bench"  # logs, configs, spools: never committed
DOCS_PATH = REPO_ROOT / "docs" / "benchmarks.md"

PG_PORT = 55499
PROXY_ON_PORT = 61010
PROXY_OFF_PORT = 61011
UPSTREAM_BASE_PORT = 61100

LEVELS = ("eco", "balanced", "precision")
# Stand-in providers, both speaking the OpenAI protocol (see docs/benchmarks.md, "Method").
# provider -> (quality score, router weight). With the seeded power levels the plugin routes
# eco to openrouter and balanced/precision to openai, i.e. 1/3 : 2/3. The plugin-off proxy has
# no levels, so the same weights make its router's shuffle send the same share to each: both
# proxies then run the same LiteLLM provider code for the same share of requests.
PROVIDERS: dict[str, tuple[str, int]] = {
    "openai": ("0.96", 2),
    "openrouter": ("0.80", 1),
}
MODEL_GROUP = "chat"
BYOK_EVERY = int(os.environ.get("BENCH_BYOK_EVERY", "10"))  # every 10th user: 10 % BYOK
GRANT = Decimal("1000000")


def user_ids(n: int, prefix: str = "bench-u") -> list[str]:
    return [f"{prefix}{i:04d}" for i in range(n)]


def level_of(index: int) -> str:
    return LEVELS[index % 3]


def byok_provider_of(index: int) -> str | None:
    """The provider a user's own key is for (the provider their level routes to), or None."""
    if index % BYOK_EVERY != BYOK_EVERY - 1:
        return None
    return "openrouter" if level_of(index) == "eco" else "openai"


def new_encryption_keys() -> str:
    """A fresh CREDITS_ENCRYPTION_KEYS value for this run (never written to disk)."""
    return "bench1:" + base64.urlsafe_b64encode(os.urandom(32)).decode()


def model_list(upstream_urls: dict[str, str]) -> list[dict[str, Any]]:
    """The deployments as LiteLLM's router would list them (for the in-process hook)."""
    from devtools.proxy import build_proxy_config

    config = build_proxy_config(upstream_urls, {MODEL_GROUP: deployment_specs()})
    entries: list[dict[str, Any]] = config["model_list"]
    return entries


def deployment_specs() -> list[Any]:
    from devtools.proxy import DeploymentSpec

    return [
        DeploymentSpec(
            provider=name,
            model=f"{name}-bench-model",
            extra_litellm_params={"weight": weight},
            extra_model_info={"quality_score": float(quality)},
        )
        for name, (quality, weight) in PROVIDERS.items()
    ]


# -- PostgreSQL ------------------------------------------------------------------------------


@contextlib.contextmanager
def bench_cluster() -> Iterator[PgCluster]:
    """The benchmark's own cluster, running for the duration of the block."""
    cluster = PgCluster(REPO_ROOT / ".run", PG_PORT, "bench")
    with cluster.shared():
        yield cluster


def fresh_database(cluster: PgCluster, name: str) -> str:
    """Drop and re-create ``name``, apply the migrations, return its URL."""
    from litellm_credits.store.migrate import migrate

    cluster.drop_database(name)
    url = cluster.create_database(name)
    migrate(url)
    return url


@dataclass
class Seeded:
    users: list[str]
    levels: dict[str, int]
    byok_users: int
    seconds: float


async def seed_users(url: str, n: int, encryption_keys: str | None,
                     prefix: str = "bench-u") -> Seeded:
    """``n`` users with credits, levels eco/balanced/precision in turn, every 10th with a key.

    Everything goes through the package's own ledger and key store.
    """
    from litellm_credits.byok.keys import KeyStore
    from litellm_credits.byok.vault import Vault
    from litellm_credits.ledger import Ledger
    from litellm_credits.store.db import Database

    started = time.perf_counter()
    db = Database(url, min_size=1, max_size=8)
    await db.open(wait=True)
    try:
        ledger = Ledger(db)
        vault = Vault.from_env({"CREDITS_ENCRYPTION_KEYS": encryption_keys}) \
            if encryption_keys else None
        store = KeyStore(db, vault)
        users = user_ids(n, prefix)
        levels = dict.fromkeys(LEVELS, 0)
        byok = 0
        sem = asyncio.Semaphore(8)

        async def one(i: int, user: str) -> int:
            async with sem:
                await ledger.add_credits(user, GRANT, type="bonus",
                                         payment_id=f"bench-grant-{user}",
                                         description="benchmark grant", created_by="bench")
                level = level_of(i)
                if level != "balanced":
                    await ledger.set_power_level(user, level, by="bench")
                provider = byok_provider_of(i)
                if provider and vault is not None:
                    # A syntactically plausible key; the stand-ins accept any key.
                    secret = f"sk-byok-{user}-{os.urandom(8).hex()}"
                    await store.add(user, provider, "bench", secret, created_by="bench")
                    return 1
                return 0

        results = await asyncio.gather(*(one(i, u) for i, u in enumerate(users)))
        byok = sum(results)
        for i in range(n):
            levels[level_of(i)] += 1
    finally:
        await db.close()
    return Seeded(users, levels, byok, time.perf_counter() - started)


# -- facts about the run -----------------------------------------------------------------------


def _cmd(args: Sequence[str]) -> str:
    try:
        return subprocess.run(args, capture_output=True, text=True, check=False,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        return ""


def machine_info() -> dict[str, Any]:
    cpu_model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu_model = line.split(":", 1)[1].strip()
                break
    mem_gb = None
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    load = None
    with contextlib.suppress(OSError):
        load = [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    os_name = ""
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                os_name = line.split("=", 1)[1].strip('"')
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu_model,
        "memory_gb": mem_gb,
        "os": os_name,
        "kernel": platform.release(),
        "python": platform.python_version(),
        "load_average_at_start": load,
        "hostname_hash": hex(hash(platform.node()) & 0xFFFF),
    }


def _dist_version(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def versions(cluster: PgCluster | None = None) -> dict[str, Any]:
    pg = None
    if cluster is not None:
        with contextlib.suppress(Exception):
            import psycopg

            with psycopg.connect(cluster.url(), autocommit=True) as conn:
                row = conn.execute("SHOW server_version").fetchone()
                pg = row[0] if row else None
    wrk = _cmd(["wrk", "--version"]).splitlines()
    return {
        "litellm": _dist_version("litellm"),
        "litellm_credits": _dist_version("litellm-credits"),
        "postgresql": pg,
        "psycopg": _dist_version("psycopg"),
        "psycopg_pool": _dist_version("psycopg-pool"),
        "uvicorn": _dist_version("uvicorn"),
        "uvloop": _dist_version("uvloop"),
        "aiohttp": _dist_version("aiohttp"),
        "wrk": wrk[0].split(" [")[0] if wrk else None,
        "py_spy": _dist_version("py-spy"),
        "pyinstrument": _dist_version("pyinstrument"),
        "python": platform.python_version(),
    }


def percentile(sorted_values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile of an already sorted sequence."""
    if not sorted_values:
        return None
    k = max(0, min(len(sorted_values) - 1, int(round(p / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


def rnd(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)
