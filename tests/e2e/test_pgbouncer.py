"""The plugin and the CLI through a real PgBouncer (Debian's 1.18, default configuration).

docs/operations.md tells operators to put PgBouncer in front of the credits database.
Here a proxy with the plugin and the ``litellm-credits`` CLI reach the database only
through one (:mod:`devtools.pgbouncer`), in transaction mode under concurrent load from
several users, and once in session mode. Asserted: no 5xx, every client-seen 200 billed
exactly once (one successful usage row and one usage debit per request), and
``reconcile`` clean. PgBouncer's default refuses a startup ``options`` parameter and,
in transaction mode, hands each transaction any server connection, so session state
(settings, server-side prepared statements) must not be relied on.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from decimal import Decimal

import httpx
import pytest

from devtools.pg import PgCluster
from devtools.pgbouncer import PgBouncer, PoolMode, ensure_installed, missing_reason
from devtools.proxy import user_key
from tests.e2e.plugin_env import REPO_ROOT, PluginEnv, chat_deployment, plugin_env

_why = missing_reason()
pytestmark = [
    pytest.mark.e2e,
    pytest.mark.skipif(_why is not None, reason=_why or ""),
    pytest.mark.timeout(600),
]

PROVIDERS = ("openai", "anthropic", "openrouter")
GRANT = "1000"


@contextlib.contextmanager
def _behind_bouncer(pg_cluster: PgCluster, mode: PoolMode, label: str
                    ) -> Iterator[tuple[PluginEnv, PgBouncer]]:
    ensure_installed(REPO_ROOT)
    with PgBouncer(pg_cluster.port, mode=mode) as bouncer, plugin_env(
            pg_cluster, {"chat": [chat_deployment(p) for p in PROVIDERS]},
            providers=PROVIDERS, label=label, route_url=bouncer.url) as penv:
        assert bouncer.url(penv.db_name) == penv.env["CREDITS_DATABASE_URL"]
        yield penv, bouncer


@pytest.fixture(scope="module")
def tx_env(pg_cluster: PgCluster) -> Iterator[tuple[PluginEnv, PgBouncer]]:
    with _behind_bouncer(pg_cluster, "transaction", "pgbtx") as pair:
        yield pair


@dataclass(frozen=True)
class Outcome:
    tag: str
    user: str
    status: int
    body: str


def _load(env: PluginEnv, users: list[str], requests: int, concurrency: int
          ) -> tuple[list[Outcome], list[int]]:
    """``requests`` chat calls at ``concurrency``, round-robin over ``users``; every fourth
    worker step also reads ``/credits/balance``. Each chat carries a unique session id, so
    its usage row can be found from what the client saw."""
    balance_statuses: list[int] = []

    def one(i: int) -> Outcome:
        user = users[i % len(users)]
        tag = f"pgb-{uuid.uuid4().hex[:12]}"
        headers = {"Authorization": f"Bearer {user_key(user)}", "x-session-id": tag}
        body = {"model": "chat", "max_tokens": 5,
                "messages": [{"role": "user", "content": f"hello {i}"}]}
        try:
            resp = httpx.post(env.proxy.url("/v1/chat/completions"), json=body,
                              headers=headers, timeout=60.0)
            outcome = Outcome(tag, user, resp.status_code, resp.text[:300])
        except httpx.HTTPError as exc:  # a dropped connection is a failure, not a skip
            outcome = Outcome(tag, user, 599, repr(exc))
        if i % 4 == 0:
            bal = httpx.get(env.proxy.url("/credits/balance"), timeout=60.0,
                            headers={"Authorization": f"Bearer {user_key(user)}"})
            balance_statuses.append(bal.status_code)
        return outcome

    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        outcomes = list(pool.map(one, range(requests)))
    return outcomes, balance_statuses


def _assert_billed_once(env: PluginEnv, users: list[str], outcomes: list[Outcome]) -> None:
    served = [o for o in outcomes if o.status == 200]
    # Settlement is asynchronous: wait until every served request has its row, and no
    # user has a hold left (the load is over, so nothing is in flight).
    env.wait_for(
        lambda: int(env.one("SELECT count(*) FROM llm_usage_log WHERE success AND "
                            "user_id = ANY(%s)", users)) >= len(served)
        and int(env.one("SELECT count(*) FROM credit_holds WHERE user_id = ANY(%s)",
                        users)) == 0,
        timeout=60.0, what=f"{len(served)} usage rows and no holds")
    env.settle_quiet(seconds=0.5)
    rows = env.dict_rows(
        "SELECT l.session_id, l.request_id, l.success, l.credits_charged,"
        " (SELECT count(*) FROM credit_transactions t WHERE t.transaction_type = 'usage'"
        "   AND t.idempotency_key = l.request_id) AS debits,"
        " (SELECT coalesce(sum(-t.amount + t.credits_uncollected), 0) FROM credit_transactions t"
        "   WHERE t.transaction_type = 'usage' AND t.idempotency_key = l.request_id) AS debited"
        " FROM llm_usage_log l WHERE l.user_id = ANY(%s)", users)
    by_tag: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        by_tag.setdefault(str(row["session_id"]), []).append(row)
    for o in served:
        mine = by_tag.get(o.tag, [])
        assert len(mine) == 1, (o, mine)
        assert mine[0]["success"] and mine[0]["debits"] == 1, (o, mine)
        assert mine[0]["debited"] == mine[0]["credits_charged"] > 0, (o, mine)
    # Nothing billed that no client saw succeed.
    assert sum(1 for r in rows if r["success"]) == len(served)
    debits = int(env.one("SELECT count(*) FROM credit_transactions WHERE transaction_type ="
                         " 'usage' AND user_id = ANY(%s)", users))
    assert debits == len(served)
    for user in users:
        charged = env.one("SELECT coalesce(sum(credits_charged), 0) FROM llm_usage_log"
                          " WHERE success AND user_id = %s", user)
        assert env.balance(user) == Decimal(GRANT) - charged


def _reconcile_clean(env: PluginEnv) -> None:
    # The load is over and settled: any hold left is a request that never settled.
    done = env.cli("reconcile", "--json", "--stale-hold", "0", check=False)
    assert done.returncode == 0, (done.stdout, done.stderr)
    report = json.loads(done.stdout)
    assert report["ok"] and report["failed"] == [], report


def _grant_through_cli(env: PluginEnv, prefix: str, n: int) -> list[str]:
    users = [f"{prefix}-{uuid.uuid4().hex[:8]}" for _ in range(n)]
    for user in users:
        env.cli("grant", user, GRANT, "--description", "pgbouncer e2e")
        shown = json.loads(env.cli("balance", user, "--json").stdout)
        assert Decimal(str(shown["balance"])) == Decimal(GRANT), shown
    return users


def _no_refused_startup(bouncer: PgBouncer) -> None:
    log = bouncer.log_text()
    assert "unsupported startup parameter" not in log, bouncer.log_tail()


def test_transaction_mode_under_load_bills_every_success_once(
        tx_env: tuple[PluginEnv, PgBouncer]) -> None:
    env, bouncer = tx_env
    users = _grant_through_cli(env, "pgbtx", 5)
    outcomes, balances = _load(env, users, requests=200, concurrency=16)
    statuses = sorted({o.status for o in outcomes})
    failures = [o for o in outcomes if o.status != 200]
    assert not failures, (statuses, failures[:5], env.proxy.log_tail(60), bouncer.log_tail())
    assert set(balances) == {200}, balances
    _assert_billed_once(env, users, outcomes)
    _reconcile_clean(env)
    for user in users:
        shown = json.loads(env.cli("balance", user, "--json").stdout)
        assert Decimal(str(shown["balance"])) == env.balance(user)
    _no_refused_startup(bouncer)


def test_cli_migrate_through_transaction_mode(tx_env: tuple[PluginEnv, PgBouncer]) -> None:
    """Two migrations at once on an empty database: the advisory lock is per transaction,
    so it works when PgBouncer hands each transaction another server connection."""
    env, bouncer = tx_env
    name = f"credits_e2e_pgbmig_{uuid.uuid4().hex[:8]}"
    env.cluster.create_database(name)
    try:
        run_env = {"CREDITS_DATABASE_URL": bouncer.url(name)}
        with ThreadPoolExecutor(max_workers=2) as pool:
            runs = list(pool.map(lambda _: env.cli("migrate", env=run_env, check=False),
                                 range(2)))
        assert [r.returncode for r in runs] == [0, 0], runs
        again = env.cli("migrate", env=run_env)
        assert "up to date" in again.stdout, again.stdout
        verified = env.cli("verify", env=run_env, check=False)
        assert verified.returncode == 0, (verified.stdout, verified.stderr)
    finally:
        env.cluster.drop_database(name)
    _no_refused_startup(bouncer)


def test_session_mode_bills_every_success_once(pg_cluster: PgCluster) -> None:
    with _behind_bouncer(pg_cluster, "session", "pgbses") as (env, bouncer):
        users = _grant_through_cli(env, "pgbses", 3)
        outcomes, balances = _load(env, users, requests=60, concurrency=8)
        failures = [o for o in outcomes if o.status != 200]
        assert not failures, (failures[:5], env.proxy.log_tail(60), bouncer.log_tail())
        assert set(balances) == {200}, balances
        _assert_billed_once(env, users, outcomes)
        _reconcile_clean(env)
        _no_refused_startup(bouncer)
