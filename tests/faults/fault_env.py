"""The world a fault test runs in, and the load it drives through it.

:func:`fault_env` starts, for one test:

* an extra PostgreSQL cluster from ``pg_cluster_factory`` (the test may stop, kill,
  freeze and restart it), with a migrated database ``credits``;
* one stand-in upstream (``openai``) in this process, which records every request;
* one or more real LiteLLM proxies (``devtools.proxy.ProxyProcess``) loading
  ``litellm_credits.handler`` on ports in 59500-59999, each with its own spool
  directory, and a ``CREDITS_CONFIG`` with short timeouts (pool 1 s, statements
  1 s, holds 10 s) so faults show within seconds.

Prices are chosen so a request's hold estimate equals its actual cost: the
deployment's input price is 0 and the stand-in returns exactly ``max_tokens``
completion tokens, so one request costs ``COMPLETION_TOKENS x OUTPUT_PRICE x
CREDITS_PER_USD`` credits (balanced level, multiplier 1.0), however long the prompt.

:func:`run_load` sends concurrent chat requests with ``httpx`` and records every
outcome: status, LiteLLM's call id (``x-litellm-call-id``), latency and the
error text. :func:`check_billing` then matches what the clients saw with the
usage log (by call id), the debits, and the stand-in's record of requests.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import psycopg
import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from devtools.pg import ClusterFactory, PgCluster  # noqa: E402
from devtools.proxy import DeploymentSpec, ProxyProcess, build_proxy_config, user_key  # noqa: E402
from devtools.upstream import UpstreamGroup  # noqa: E402
from litellm_credits.settlement.spool import Spool  # noqa: E402

PORTS = range(59500, 60000)
CALLBACK = "litellm_credits.handler"
MODEL = "chat"
COMPLETION_TOKENS = 5
OUTPUT_PRICE = Decimal("0.000002")  # USD per completion token; input tokens cost 0
CREDITS_PER_USD = Decimal("10")
COST = COMPLETION_TOKENS * OUTPUT_PRICE * CREDITS_PER_USD  # 0.0001 credits per request
UNAVAILABLE = "the credits database is unavailable"
#: Short variants run in CI; CREDITS_FAULT_SCALE=3 (for example) runs each load 3x longer.
SCALE = float(os.environ.get("CREDITS_FAULT_SCALE", "1"))


def fault_credits_config(**extra: Any) -> dict[str, Any]:
    config: dict[str, Any] = {
        "credits_per_usd": str(CREDITS_PER_USD),
        "hold_ttl_seconds": 10,  # the minimum: orphaned holds expire quickly
        "fail_mode": "closed",
        "config_cache_seconds": 1,
        "pool": {"min_size": 2, "max_size": 10, "timeout_seconds": "1",
                 "statement_timeout_ms": 1000},
        "writer": {"flush_ms": 20, "batch_size": 200},
    }
    config.update(extra)
    return config


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_ports(count: int) -> list[int]:
    candidates = list(PORTS)
    random.shuffle(candidates)
    found = [p for p in candidates if _port_free(p)][:count]
    if len(found) < count:
        raise RuntimeError(f"not {count} free ports in {PORTS.start}-{PORTS.stop - 1}")
    return found


@dataclass
class Outcome:
    """One request as its client saw it."""

    user: str
    seq: int
    proxy: int
    started: float  # time.monotonic()
    finished: float
    status: int | None  # None: no HTTP response (connection refused/reset, timeout)
    call_id: str | None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == 200

    @property
    def seconds(self) -> float:
        return self.finished - self.started


@dataclass
class FaultEnv:
    cluster: PgCluster
    db_url: str
    ups: UpstreamGroup
    proxies: list[ProxyProcess]
    spools: list[Path]
    workdir: Path
    env: dict[str, str]
    conn: psycopg.Connection[Any]
    events: list[tuple[float, str]] = field(default_factory=list)

    # -- database --------------------------------------------------------------------------
    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        """A query on a fresh connection (the cluster may have restarted since last time)."""
        with psycopg.connect(self.db_url, autocommit=True, connect_timeout=5) as conn:
            cur = conn.execute(query, params or None)
            return cur.fetchall() if cur.description else []

    def grant(self, user: str, amount: Decimal | str) -> None:
        self.sql("SELECT * FROM add_user_credits(%s, %s::numeric, 'purchase', %s, 'fault test')",
                 user, str(amount), f"pi-{user}-{uuid.uuid4().hex[:6]}")

    def balance(self, user: str) -> Decimal:
        return Decimal(self.sql("SELECT balance FROM user_credits WHERE user_id = %s", user)[0][0])

    def spooled(self) -> int:
        """Spool segments waiting, over every proxy's spool directory."""
        return sum(1 for d in self.spools for _ in d.glob("*.jsonl"))

    def spooled_call_ids(self) -> set[str]:
        """LiteLLM call ids of the settlement records waiting in the spools."""
        ids: set[str] = set()
        for d in self.spools:
            for path in Spool(d).segments():
                with contextlib.suppress(FileNotFoundError):
                    ids.update(str(r.request_metadata.get("litellm_call_id"))
                               for r in Spool.read(path))
        return ids

    def mark(self, what: str) -> None:
        self.events.append((time.monotonic(), what))

    # -- stand-in --------------------------------------------------------------------------
    def served(self) -> Counter[str]:
        """Requests the stand-in answered with 200, by the user named in the prompt."""
        counts: Counter[str] = Counter()
        for r in self.ups["openai"].model_requests():
            if r.status == 200:
                counts[_user_of(r.body)] += 1
        return counts

    # -- CLI -------------------------------------------------------------------------------
    def reconcile(self, *args: str) -> dict[str, Any]:
        done = subprocess.run(
            [str(Path(sys.executable).with_name("litellm-credits")), "reconcile", "--json",
             *args], env=self.env, capture_output=True, text=True, timeout=120)
        assert done.returncode in (0, 1), done.stderr
        report: dict[str, Any] = json.loads(done.stdout)
        assert report["ok"] == (done.returncode == 0)
        return report

    def wait_for(self, predicate: Callable[[], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            with contextlib.suppress(psycopg.OperationalError):
                value = predicate()
                if value:
                    return value
            if time.monotonic() > deadline:
                tails = "\n".join(p.log_tail(30) for p in self.proxies)
                raise AssertionError(f"timed out after {timeout}s waiting for {what}\n{tails}")
            time.sleep(0.1)


def _user_of(body: Any) -> str:
    try:
        text = body["messages"][-1]["content"]
    except (KeyError, IndexError, TypeError):
        return "?"
    return str(text).split()[0].removeprefix("user=") if isinstance(text, str) else "?"


@contextlib.contextmanager
def fault_env(
    pg_cluster_factory: ClusterFactory,
    *,
    proxies: int = 1,
    config: dict[str, Any] | None = None,
    upstream_delay_ms: float = 0.0,
    label: str = "fault",
    start: bool = True,
) -> Iterator[FaultEnv]:
    cluster = pg_cluster_factory(dbname="credits", migrate=True)
    db_url = cluster.url("credits")
    with contextlib.ExitStack() as stack:
        if os.environ.get("CREDITS_FAULT_KEEP"):
            work = Path(tempfile.mkdtemp(prefix=f"credits-{label}-"))
        else:
            work = Path(stack.enter_context(
                tempfile.TemporaryDirectory(prefix=f"credits-{label}-")))
        ports = free_ports(1 + proxies)
        ups = UpstreamGroup(["openai"], base_port=ports[0]).start()
        stack.callback(ups.stop)
        ups["openai"].configure(prompt_tokens=7, completion_tokens=COMPLETION_TOKENS,
                                delay_ms=upstream_delay_ms)
        spec = DeploymentSpec(provider="openai", input_cost_per_token=0.0,
                              output_cost_per_token=float(OUTPUT_PRICE))
        proxy_config = build_proxy_config(ups.base_urls, {MODEL: [spec]}, callbacks=[CALLBACK])
        cfg_path = work / "credits.yaml"
        cfg_path.write_text(yaml.safe_dump(config or fault_credits_config()))
        base_env = {"CREDITS_DATABASE_URL": db_url, "CREDITS_CONFIG": str(cfg_path),
                    "LITELLM_LOCAL_MODEL_COST_MAP": "True"}
        procs: list[ProxyProcess] = []
        spools: list[Path] = []
        for i in range(proxies):
            spool = work / f"spool-{i}"
            spools.append(spool)
            proxy = ProxyProcess(proxy_config, ports[1 + i],
                                 {**base_env, "CREDITS_SPOOL_DIR": str(spool)},
                                 log_path=work / f"proxy-{i}.log")
            procs.append(proxy)
            stack.callback(proxy.stop)
        if start:
            _start_all(procs)
        cli_env = {k: v for k, v in os.environ.items()
                   if not k.startswith("CREDITS_") and k != "DATABASE_URL"}
        cli_env.update(base_env)
        conn = psycopg.connect(db_url, autocommit=True)
        stack.callback(conn.close)
        yield FaultEnv(cluster, db_url, ups, procs, spools, work, cli_env, conn)


def _start_all(procs: Sequence[ProxyProcess]) -> None:
    for p in procs:
        p.start(wait=False)
    for p in procs:
        p.wait_ready()


# --- load -------------------------------------------------------------------------------------


def chat_body(user: str, seq: int) -> dict[str, Any]:
    return {"model": MODEL, "max_tokens": COMPLETION_TOKENS,
            "messages": [{"role": "user", "content": f"user={user} seq={seq} say ok"}]}


async def send(client: httpx.AsyncClient, proxy_index: int, user: str, seq: int,
               timeout: float = 30.0) -> Outcome:
    started = time.monotonic()
    try:
        r = await client.post("/v1/chat/completions", json=chat_body(user, seq),
                              headers={"Authorization": f"Bearer {user_key(user)}"},
                              timeout=timeout)
    except httpx.HTTPError as exc:
        return Outcome(user, seq, proxy_index, started, time.monotonic(), None, None,
                       f"{type(exc).__name__}: {exc}")
    error = None if r.status_code == 200 else r.text[:500]
    return Outcome(user, seq, proxy_index, started, time.monotonic(), r.status_code,
                   r.headers.get("x-litellm-call-id"), error)


async def run_load(
    env: FaultEnv,
    users: Sequence[str],
    *,
    concurrency: int,
    seconds: float,
    during: Callable[[], Awaitable[None]] | None = None,
    outcomes: list[Outcome] | None = None,
) -> list[Outcome]:
    """``concurrency`` clients send requests back to back for ``seconds`` (or until
    ``during`` has finished, whichever is later), spread over users and proxies.
    Outcomes are appended to ``outcomes`` as they arrive, so ``during`` can watch them."""
    outcomes = [] if outcomes is None else outcomes
    seq = iter(range(10**9))
    clients = [httpx.AsyncClient(base_url=p.base_url, limits=httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency))
        for p in env.proxies]
    stop_at = time.monotonic() + seconds
    fault_done = asyncio.Event()

    async def worker(i: int) -> None:
        user = users[i % len(users)]
        proxy_index = i % len(env.proxies)
        while time.monotonic() < stop_at or not fault_done.is_set():
            outcome = await send(clients[proxy_index], proxy_index, user, next(seq))
            outcomes.append(outcome)
            if outcome.status is None or outcome.status >= 500:
                await asyncio.sleep(0.05)  # do not spin on a dead proxy

    async def fault() -> None:
        try:
            if during is not None:
                await during()
        finally:
            fault_done.set()

    try:
        await asyncio.gather(fault(), *(worker(i) for i in range(concurrency)))
    finally:
        for c in clients:
            await c.aclose()
    return outcomes


async def burst(env: FaultEnv, users: Sequence[str], n: int) -> list[Outcome]:
    """``n`` requests at once, round-robin over users and proxies."""
    clients = [httpx.AsyncClient(base_url=p.base_url,
                                 limits=httpx.Limits(max_connections=n)) for p in env.proxies]
    try:
        return list(await asyncio.gather(*(
            send(clients[i % len(clients)], i % len(clients), users[i % len(users)], i)
            for i in range(n))))
    finally:
        for c in clients:
            await c.aclose()


# --- checks -----------------------------------------------------------------------------------


def summary(outcomes: Sequence[Outcome]) -> Counter[Any]:
    return Counter(o.status for o in outcomes)


def billed(env: FaultEnv) -> dict[str, tuple[str, int, bool, Decimal]]:
    """LiteLLM call id -> (user, usage debits, success, credits charged) of the successful
    usage rows; failure rows (which carry no call id) are keyed by our request id."""
    rows = env.sql(
        "SELECT l.request_metadata->>'litellm_call_id', l.request_id, l.user_id, count(t.id), "
        "l.success, l.credits_charged FROM llm_usage_log l LEFT JOIN credit_transactions t "
        "ON t.transaction_type = 'usage' AND t.idempotency_key = l.request_id "
        "GROUP BY l.id")
    result: dict[str, tuple[str, int, bool, Decimal]] = {}
    for call_id, request_id, user, debits, success, charged in rows:
        key = call_id if success else f"failure:{request_id}"
        assert key and key not in result, f"call id {key} has two successful usage rows"
        result[key] = (user, int(debits), bool(success), charged)
    return result


def wait_settled(env: FaultEnv, outcomes: Sequence[Outcome], timeout: float = 30.0) -> None:
    """Until every success the clients saw has a usage row, the spools are empty and no
    writer is behind (two quiet reads in a row)."""
    wanted = {o.call_id for o in outcomes if o.ok}
    last: list[int] = []
    state: dict[str, Any] = {}

    def done() -> bool:
        rows = int(env.sql("SELECT count(*) FROM llm_usage_log")[0][0])
        missing = wanted - set(billed(env))
        stable = last == [rows]
        last[:] = [rows]
        state.update(rows=rows, missing=len(missing), spooled=env.spooled(),
                     example=sorted(missing)[:3])
        return not missing and env.spooled() == 0 and stable

    try:
        env.wait_for(done, timeout, "every success billed and the spools replayed")
    except AssertionError as exc:
        raise AssertionError(f"{state}\n{exc}") from None


def check_billing(
    env: FaultEnv,
    outcomes: Sequence[Outcome],
    *,
    maybe_billed: set[str] | None = None,
    maybe_unbilled: set[str] | None = None,
    cut_off: int = 0,
) -> dict[str, Any]:
    """I1 + I4 from the client's point of view.

    Every success a client saw is billed exactly once: one successful usage row
    (matched by LiteLLM's call id) and one usage debit of the right user and cost.
    Nothing else is billed, except call ids in ``maybe_billed`` (requests cut off by a
    crash after the upstream answered). ``maybe_unbilled``: successes in the window a
    SIGKILL may lose (records still in the writer's memory). The stand-in's count of
    served requests per user bounds it all from the other side: everything it served
    is billed, except at most ``maybe_unbilled`` plus ``cut_off`` requests (served, but
    the proxy died before the client got the answer).
    """
    maybe_billed = maybe_billed or set()
    maybe_unbilled = maybe_unbilled or set()
    seen_ok = {o.call_id: o for o in outcomes if o.ok}
    assert None not in seen_ok, "a 200 without x-litellm-call-id"
    rows = billed(env)
    charged = {cid: v for cid, v in rows.items() if v[2]}
    unbilled = set(seen_ok) - set(charged) - maybe_unbilled
    assert not unbilled, f"{len(unbilled)} successes were never billed: {sorted(unbilled)[:5]}"
    extra = set(charged) - set(seen_ok) - maybe_billed
    assert not extra, (
        f"{len(extra)} requests billed that no client saw succeed: {sorted(extra)[:5]}")
    for cid, (user, debits, _, credits) in charged.items():
        assert debits == 1, f"call {cid} has {debits} usage debits"
        assert credits == COST, f"call {cid} charged {credits}, expected {COST}"
        if cid in seen_ok:
            assert user == seen_ok[cid].user, f"call {cid} billed to {user}"
    failed_rows = [cid for cid, v in rows.items() if not v[2] and v[1]]
    assert not failed_rows, f"failure rows with a debit: {failed_rows[:5]}"
    # The stand-in served at least what we billed, per user, and we billed all it served
    # except requests whose client never got an answer.
    served = env.served()
    per_user = Counter(v[0] for v in charged.values())
    for user, n in per_user.items():
        assert n <= served[user], f"{user}: billed {n}, stand-in served only {served[user]}"
    unbilled_served = sum(served.values()) - len(charged)
    assert 0 <= unbilled_served <= len(maybe_unbilled) + cut_off, (
        f"the stand-in served {sum(served.values())} requests, {len(charged)} billed")
    return {"successes": len(seen_ok), "billed": len(charged), "served": sum(served.values())}


def assert_clean(env: FaultEnv, *args: str) -> dict[str, Any]:
    report = env.reconcile(*args)
    assert report["ok"], json.dumps(report, indent=1)
    return report


def postgres_pids(cluster: PgCluster) -> list[int]:
    """The postmaster and every child of it (backends, checkpointer, ...)."""
    head = (cluster.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
    postmaster = int(head)
    pids = [postmaster]
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[1]) == postmaster:
            pids.append(int(entry.name))
    return pids


def signal_pids(pids: Sequence[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
