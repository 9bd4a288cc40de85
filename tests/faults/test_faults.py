"""Fault tests: nothing lost or doubled on the worst day (I1, I3, I4, I8).

Real LiteLLM proxies with the plugin, a stand-in upstream, and an extra PostgreSQL
cluster per test that the test stops, kills, locks or freezes:

* the database restarts (fast and immediate) under sustained load from two proxies;
* a proxy is SIGKILLed mid-load and restarted on the same spool;
* two proxies race 4N requests for a balance worth exactly N;
* the database hangs on a lock, or freezes entirely (SIGSTOP);
* LiteLLM delivers events twice, a failure after a success, or runs the
  pre-call hook twice (in process, against the test database).

Every test ends with ``litellm-credits reconcile`` clean. These are the short
variants that run in CI (each well under a minute); CREDITS_FAULT_SCALE=3
stretches every load and outage threefold.
"""

from __future__ import annotations

import asyncio
import copy
import signal
import threading
import time
import uuid
from collections.abc import AsyncIterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi import HTTPException
from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth

from devtools.pg import ClusterFactory
from litellm_credits.context import CTX
from litellm_credits.hook import CreditsHandler
from litellm_credits.runtime import Runtime
from litellm_credits.settings import Settings
from litellm_credits.settlement.record import SettlementRecord
from litellm_credits.settlement.spool import Spool
from tests.faults.fault_env import (
    COST,
    SCALE,
    UNAVAILABLE,
    FaultEnv,
    Outcome,
    assert_clean,
    billed,
    burst,
    check_billing,
    fault_credits_config,
    fault_env,
    postgres_pids,
    run_load,
    signal_pids,
    summary,
    wait_settled,
)

pytestmark = [pytest.mark.slow, pytest.mark.e2e]

D = Decimal


async def warm_up(env: FaultEnv, users: list[str]) -> list[Outcome]:
    """Requests that reach every proxy, so each one's runtime (pool, writer) is running."""
    n = max(len(users), len(env.proxies))
    out = await burst(env, users, n)
    assert all(o.ok for o in out), [(o.status, o.error) for o in out]
    assert {o.proxy for o in out} == set(range(len(env.proxies)))
    return out


def report(capsys: pytest.CaptureFixture[str], name: str, counts: Any, stats: dict[str, Any],
           slowest: float) -> None:
    """One line for the log of a CI run: what the clients saw and what was billed."""
    with capsys.disabled():
        print(f"\n[{name}] client statuses {dict(counts)}; {stats}; slowest {slowest:.2f}s")


def assert_clear_503s(outcomes: list[Outcome]) -> None:
    for o in outcomes:
        if o.status == 503:
            assert UNAVAILABLE in (o.error or ""), o.error


# --- database restart under load -------------------------------------------------------------


@pytest.mark.parametrize("mode", ["fast", "immediate"])
async def test_database_restart_under_load_bills_every_success_once(
    pg_cluster_factory: ClusterFactory, mode: str, capsys: pytest.CaptureFixture[str],
) -> None:
    """Two proxies, 8 clients, 4 users; PostgreSQL stops mid-load and comes back."""
    with fault_env(pg_cluster_factory, proxies=2, upstream_delay_ms=150,
                   label=f"restart-{mode}") as env:
        users = [f"u{i}-{uuid.uuid4().hex[:4]}" for i in range(4)]
        for user in users:
            env.grant(user, "1000")
        warm = await warm_up(env, users)
        window: dict[str, float] = {}

        async def outage() -> None:
            await asyncio.sleep(2.5 * SCALE)
            window["stop"] = time.monotonic()
            await asyncio.to_thread(env.cluster.stop, mode)
            window["stopped"] = time.monotonic()
            # Requests that were upstream when the server went away are served; their
            # settlements cannot be written, so they wait in the proxies' spools.
            window["spooled"] = await asyncio.to_thread(
                _poll, lambda: env.spooled() > 0, 2.0 * SCALE)
            # Down long enough that requests start and end inside the outage even on a
            # busy machine, where one refusal can take a second.
            await asyncio.sleep(max(0.0, window["stopped"] + 3.5 * SCALE - time.monotonic()))
            await asyncio.to_thread(env.cluster.start)
            window["started"] = time.monotonic()
            await asyncio.sleep(2.5 * SCALE)

        load = await run_load(env, users, concurrency=8, seconds=9 * SCALE, during=outage)
        counts = summary(load)
        outcomes = warm + load

        # Clients got answers, never hangs: a 200, or a clear 503 while the database was away.
        assert set(counts) <= {200, 503}, (counts, [o.error for o in outcomes if not o.ok][:3])
        assert window["spooled"], "no settlement went through the spool during the outage"
        assert_clear_503s(outcomes)
        slowest = max(o.seconds for o in outcomes)
        assert slowest < 5, f"a request took {slowest:.1f}s"
        down = [o for o in outcomes
                if window["stopped"] < o.started and o.finished < window["started"]]
        assert down and all(o.status == 503 for o in down), summary(down)
        after = [o for o in outcomes if o.started > window["started"] + 1.5]
        assert after and all(o.ok for o in after), summary(after)  # recovered by itself

        # Every success billed exactly once, matched by call id, user and cost; nothing else.
        wait_settled(env, outcomes)
        stats = check_billing(env, outcomes)
        assert stats["successes"] == stats["billed"] == stats["served"]
        report(capsys, f"restart-{mode}", counts, stats, slowest)
        served = env.served()
        for user in users:
            seen = sum(1 for o in outcomes if o.ok and o.user == user)
            assert served[user] == seen, (user, served[user], seen)
            assert env.balance(user) == D("1000") - seen * COST
        assert_clean(env)


# --- a proxy killed mid-load --------------------------------------------------------------------


async def test_proxy_sigkill_spool_replays_and_orphaned_holds_expire(
    pg_cluster_factory: ClusterFactory, capsys: pytest.CaptureFixture[str],
) -> None:
    """Phase A: while the database is down, requests served meanwhile wait in the spool;
    the proxy is SIGKILLed and restarted on the same spool, which it then replays.
    Phase B: SIGKILL with requests in flight upstream; their holds expire and are swept."""
    with fault_env(pg_cluster_factory, proxies=1, upstream_delay_ms=300,
                   label="sigkill") as env:
        users = [f"k{i}-{uuid.uuid4().hex[:4]}" for i in range(4)]
        for user in users:
            env.grant(user, "1000")
        proxy = env.proxies[0]
        outcomes = await warm_up(env, users)
        kills: list[float] = []

        async def faults() -> None:
            # Phase A.
            await asyncio.sleep(1.5 * SCALE)
            await asyncio.to_thread(env.cluster.stop, "fast")
            stopped = time.monotonic()

            def in_spool() -> bool:
                # Requests that were upstream when the server went away are served; their
                # settlements must be on disk before we pull the plug. (A record is settled
                # just before its response leaves, so one answered in the last moments of the
                # shutdown may already be in the database: hence the margin.)
                want = {o.call_id for o in outcomes if o.ok and o.finished > stopped + 0.25}
                return env.spooled() > 0 and want <= env.spooled_call_ids()

            await asyncio.to_thread(env.wait_for, in_spool, 30, "served requests in the spool")
            kills.append(time.monotonic())
            await asyncio.to_thread(proxy.kill)
            assert env.spooled() > 0
            await asyncio.to_thread(env.cluster.start)
            await asyncio.to_thread(proxy.start)
            # Phase B: requests are in flight upstream (300 ms each) when the proxy dies.
            await asyncio.sleep(2.0 * SCALE)
            kills.append(time.monotonic())
            await asyncio.to_thread(proxy.kill)
            await asyncio.to_thread(proxy.start)
            await asyncio.sleep(1.5 * SCALE)

        await run_load(env, users, concurrency=8, seconds=1, during=faults, outcomes=outcomes)
        counts = summary(outcomes)
        assert counts[200] > 0 and counts[None] > 0, counts  # served, and cut off by the kills
        assert set(counts) <= {200, 503, None}, counts
        assert_clear_503s(outcomes)

        # Requests the kill cut off may have been served (and even settled) upstream. A
        # success answered just before a kill is billed all the same: its record was
        # journaled before the response left the proxy, and the restart replays it.
        cut_off = sum(1 for o in outcomes if o.status is None)
        wait_settled(env, outcomes)
        stats = check_billing(env, outcomes, maybe_billed=_billed_unseen(env, outcomes, cut_off),
                              cut_off=cut_off)
        racing = sum(1 for o in outcomes if o.ok and 0 <= kills[1] - o.finished < 2.0)
        report(capsys, "sigkill", counts, {**stats, "answered_within_2s_of_kill": racing},
               max(o.seconds for o in outcomes))

        # Holds of the requests phase B cut off outlive the process; they expire
        # (hold_ttl_seconds: 10) and the sweeper releases them.
        orphans = int(env.sql("SELECT count(*) FROM credit_holds")[0][0])
        assert orphans > 0, "no request was in flight at the kill"
        env.wait_for(lambda: int(env.sql(
            "SELECT count(*) FROM credit_holds WHERE expires_at > now()")[0][0]) == 0,
            15, "the orphaned holds to expire")
        lingering = env.reconcile("--hold-grace", "0")
        assert lingering["failed"] == ["no_lingering_holds"], lingering["failed"]
        swept = int(env.sql("SELECT sweep_expired_holds()")[0][0])
        assert swept == orphans
        assert_clean(env, "--hold-grace", "0")


def _billed_unseen(env: FaultEnv, outcomes: list[Outcome], cut_off: int) -> set[str]:
    """Successes billed that no client saw: answers a kill cut off in the proxy's last
    millisecond after their record was journaled. Served and billed once, so allowed, but
    never more of them than requests the kill cut off."""
    seen = {o.call_id for o in outcomes if o.ok}
    unseen = {cid for cid, v in billed(env).items() if v[2]} - seen
    assert len(unseen) <= cut_off, (len(unseen), cut_off)
    return unseen


async def test_sigkill_right_after_answers_loses_no_settlement(
    pg_cluster_factory: ClusterFactory, capsys: pytest.CaptureFixture[str],
) -> None:
    """About 20 requests/s; several times, the proxy is SIGKILLed within a few ms after a
    client got a 200, then restarted on the same spool. Every 200 a client saw is billed
    exactly once: the record reached the journal before the response left the proxy, and
    the restart replays what the killed process had not settled yet."""
    with fault_env(pg_cluster_factory, proxies=1, upstream_delay_ms=150,
                   label="sigkill-answer") as env:
        users = [f"a{i}-{uuid.uuid4().hex[:4]}" for i in range(4)]
        for user in users:
            env.grant(user, "1000")
        proxy = env.proxies[0]
        outcomes = await warm_up(env, users)
        rounds = max(3, int(3 * SCALE))
        gaps: list[float] = []  # seconds from a client's 200 to the SIGKILL

        async def kill_right_after_an_answer() -> None:
            for _ in range(rounds):
                await asyncio.sleep(1.5)
                seen = len(outcomes)
                while not any(o.ok for o in outcomes[seen:]):
                    await asyncio.sleep(0.0005)
                answered = max(o.finished for o in outcomes[seen:] if o.ok)
                proxy._signal_group(signal.SIGKILL)  # now; reaping can wait
                gaps.append(time.monotonic() - answered)
                await asyncio.to_thread(proxy.kill)
                await asyncio.to_thread(proxy.start)
            await asyncio.sleep(1.0)

        await run_load(env, users, concurrency=4, seconds=1, during=kill_right_after_an_answer,
                       outcomes=outcomes)
        counts = summary(outcomes)
        assert counts[200] > 0, counts
        assert set(counts) <= {200, None}, counts
        cut_off = counts[None]
        wait_settled(env, outcomes)
        unseen = _billed_unseen(env, outcomes, cut_off)
        stats = check_billing(env, outcomes, maybe_billed=unseen, cut_off=cut_off)
        assert len(gaps) == rounds and max(gaps) < 0.03, gaps
        report(capsys, "sigkill-after-answer", counts,
               {**stats, "kills": rounds, "lost": 0, "doubled": 0,
                "billed_unseen": len(unseen),
                "ms_from_200_to_kill": [round(g * 1000, 1) for g in gaps]},
               max(o.seconds for o in outcomes))
        assert_clean(env)


async def test_served_during_an_outage_is_on_disk_within_a_second(
    pg_cluster_factory: ClusterFactory,
) -> None:
    """Requests served while the database is down: their settlements reach the spool
    promptly, so a SIGKILL one second later loses none of them."""
    config = fault_credits_config()
    config["pool"]["timeout_seconds"] = "3"  # the shipped default
    with fault_env(pg_cluster_factory, proxies=1, upstream_delay_ms=400, config=config,
                   label="outage-window") as env:
        users = [f"w{i}-{uuid.uuid4().hex[:4]}" for i in range(4)]
        for user in users:
            env.grant(user, "1000")
        proxy = env.proxies[0]
        outcomes = await warm_up(env, users)
        stopped: list[float] = []

        async def outage_then_crash() -> None:
            await asyncio.sleep(1.0)
            # From the moment the server starts going away: on a busy machine the stop
            # itself can outlast the requests that were upstream (400 ms).
            stopped.append(time.monotonic())
            await asyncio.to_thread(env.cluster.stop, "fast")
            # In-flight requests finish and are answered 200; long enough that some are
            # answered a second or more before the kill even on a busy machine.
            await asyncio.sleep(3.0)
            stopped.append(time.monotonic())
            await asyncio.to_thread(proxy.kill)
            await asyncio.to_thread(env.cluster.start)
            await asyncio.to_thread(proxy.start)

        await run_load(env, users, concurrency=8, seconds=0, during=outage_then_crash,
                       outcomes=outcomes)
        # Answered after the server started going away and a second or more before the kill
        # (a record settled before the server was gone counts as billed, too).
        served_in_outage = [o for o in outcomes if o.ok and stopped[0] < o.finished
                            and o.finished < stopped[1] - 1.0]
        assert served_in_outage, "no request was served during the outage"
        more = await burst(env, users, 4)  # traffic starts the restarted proxy's runtime
        await asyncio.to_thread(_poll, lambda: env.spooled() == 0, 10.0)
        have = set(billed(env))
        lost = [o.call_id for o in served_in_outage if o.call_id not in have]
        assert not lost, f"{len(lost)} of {len(served_in_outage)} served requests were lost"
        assert all(o.ok for o in more)


async def test_spool_is_replayed_at_startup(
    pg_cluster_factory: ClusterFactory, tmp_path: Path,
) -> None:
    """A restarted proxy replays the spool it finds, before (and without) any traffic."""
    with fault_env(pg_cluster_factory, proxies=1, label="startup", start=False) as env:
        user = f"s-{uuid.uuid4().hex[:4]}"
        env.grant(user, "10")
        proxy = env.proxies[0]
        # What a proxy that crashed during an outage leaves behind.
        spool = Spool(env.spools[0])
        rid = f"req_{uuid.uuid4().hex}"
        spool.append([SettlementRecord.from_json(
            {"request_id": rid, "user_id": user, "success": True,
             "credits_charged": str(COST), "model_group": "chat",
             "request_metadata": {"litellm_call_id": "pre-crash"}})])
        spool.close_segment()  # the crashed process's lock died with it
        proxy.start()
        replayed = await asyncio.to_thread(
            _poll, lambda: int(env.sql("SELECT count(*) FROM llm_usage_log")[0][0]) == 1, 5.0)
        assert replayed, "the spool was not replayed within 5 s of the proxy being ready"
        assert env.spooled() == 0
        assert_clean(env)


def _poll(predicate: Any, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.2)
    return False


# --- two proxies, one balance -------------------------------------------------------------------


async def test_two_proxies_cannot_overspend(pg_cluster_factory: ClusterFactory) -> None:
    """Balance for exactly N requests; 4N concurrent requests over two proxies. The hold
    estimate equals the cost here, so the documented I3 bound is 0: at most N succeed."""
    n = 10
    with fault_env(pg_cluster_factory, proxies=2, label="overspend") as env:
        warm_user = f"w-{uuid.uuid4().hex[:4]}"
        env.grant(warm_user, "1")
        seen = await warm_up(env, [warm_user])
        user = f"o-{uuid.uuid4().hex[:4]}"
        for _ in range(2):
            env.grant(user, str(n * COST))
            outcomes = await burst(env, [user], 4 * n)
            counts = summary(outcomes)
            assert set(counts) <= {200, 402}, counts
            assert counts[200] <= n, counts  # I3, with a bound of 0 when estimate = cost
            assert counts[200] == n, counts  # and nothing refused that the balance covered
            for o in outcomes:
                if o.status == 402:
                    assert "insufficient credits" in (o.error or ""), o.error
            # Both proxies took part. Which one wins the balance is a race: a proxy's
            # queued reserves share one statement, so one batch may take all N.
            assert {o.proxy for o in outcomes if o.status in (200, 402)} == {0, 1}
            seen += outcomes
            wait_settled(env, seen)
            check_billing(env, seen)
            assert env.balance(user) == 0
        rows = env.sql("SELECT min(balance_after), coalesce(sum(credits_uncollected), 0), "
                       "count(*) FILTER (WHERE transaction_type = 'usage') "
                       "FROM credit_transactions WHERE user_id = %s", user)
        assert rows == [(D(0), D(0), 2 * n)]  # never below 0, nothing served unpaid
        assert_clean(env, "--hold-grace", "0")


# --- a slow or hanging database ------------------------------------------------------------------


async def test_a_locked_account_gets_a_clear_503_not_a_hang(
    pg_cluster_factory: ClusterFactory,
) -> None:
    """Another session holds the account row (FOR UPDATE): reserve_credits waits, the
    statement timeout (1 s) cancels it, and the client gets a clear 503."""
    with fault_env(pg_cluster_factory, proxies=1, label="locked") as env:
        user, other = f"l-{uuid.uuid4().hex[:4]}", f"m-{uuid.uuid4().hex[:4]}"
        env.grant(user, "10")
        env.grant(other, "10")
        warm = await warm_up(env, [user, other])
        with psycopg.connect(env.db_url) as locker:
            locker.execute("SELECT * FROM user_credits WHERE user_id = %s FOR UPDATE", (user,))
            outcomes = await burst(env, [user], 4)
            free = await burst(env, [other], 2)  # other accounts are not held up
            locker.rollback()
        assert [o.status for o in outcomes] == [503] * 4, [(o.status, o.error) for o in outcomes]
        assert_clear_503s(outcomes)
        assert max(o.seconds for o in outcomes) < 4, [o.seconds for o in outcomes]
        assert all(o.ok for o in free)
        after = await burst(env, [user], 2)
        assert all(o.ok for o in after)
        wait_settled(env, warm + after + free)
        check_billing(env, warm + outcomes + free + after)
        assert int(env.sql("SELECT count(*) FROM llm_usage_log WHERE user_id = %s",
                           user)[0][0]) == 3  # warm-up + 2; the 503s wrote nothing
        assert env.balance(user) == D("10") - 3 * COST
        assert_clean(env)


async def test_a_frozen_database_gets_clear_503s_not_hangs(
    pg_cluster_factory: ClusterFactory,
) -> None:
    with fault_env(pg_cluster_factory, proxies=1, label="frozen") as env:
        user = f"f-{uuid.uuid4().hex[:4]}"
        env.grant(user, "10")
        await warm_up(env, [user])
        pids = postgres_pids(env.cluster)
        thaw = threading.Timer(8.0, signal_pids, (pids, signal.SIGCONT))
        signal_pids(pids, signal.SIGSTOP)
        thaw.start()
        try:
            outcomes = await burst(env, [user], 6)
        finally:
            thaw.cancel()
            signal_pids(pids, signal.SIGCONT)
        wait_settled(env, outcomes)
        assert_clean(env)
        slow = [(o.status, round(o.seconds, 1)) for o in outcomes if o.seconds > 4]
        assert not slow, f"requests hung while the database was frozen: {slow}"
        assert [o.status for o in outcomes] == [503] * 6


# --- duplicate events, in process ---------------------------------------------------------------

DEPLOYMENT = {
    "model_name": "chat",
    "litellm_params": {"model": "openai/stand-in-model", "api_base": "http://127.0.0.1:9/v1",
                       "input_cost_per_token": 0.0, "output_cost_per_token": 0.000002},
    "model_info": {"id": "chat-openai", "provider": "openai"},
}


@pytest.fixture
async def handler(db_url: str, tmp_path: Path) -> AsyncIterator[CreditsHandler]:
    settings = Settings(database_url=db_url, spool_dir=tmp_path / "spool",
                        hold_ttl_seconds=10, writer_flush_ms=5, pool_timeout_seconds=2.0)
    runtime = Runtime(settings, model_list=lambda: [DEPLOYMENT], cost_map=lambda: {})
    h = CreditsHandler(runtime=runtime)
    await runtime.ensure_started()
    yield h
    await runtime.stop()


def auth(user: str) -> UserAPIKeyAuth:
    return UserAPIKeyAuth(api_key=f"sk-user-{user}", user_id=user,
                          user_role=LitellmUserRoles.INTERNAL_USER)


def request_data(call_id: str) -> dict[str, Any]:
    return {"model": "chat", "max_tokens": 5, "litellm_call_id": call_id, "metadata": {},
            "messages": [{"role": "user", "content": "hello"}]}


def success_kwargs(data: dict[str, Any], call_id: str) -> dict[str, Any]:
    now = time.time()
    slo = {"litellm_call_id": call_id, "id": "chatcmpl-1", "model_group": "chat",
           "model_id": "chat-openai", "custom_llm_provider": "openai",
           "model": "stand-in-model", "api_base": "http://127.0.0.1:9/v1/chat/completions",
           "prompt_tokens": 7, "completion_tokens": 5, "total_tokens": 12,
           "response_cost": 1e-05, "status": "success", "startTime": now - 0.05,
           "endTime": now, "completionStartTime": now - 0.01, "stream": False,
           "metadata": {"usage_object": {}}}
    return {"litellm_params": {"metadata": data["metadata"], "proxy_server_request": {}},
            "standard_logging_object": slo, "litellm_call_id": call_id}


def db_state(conn: psycopg.Connection, user: str) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM llm_usage_log WHERE user_id = %(u)s), "
        "(SELECT count(*) FROM llm_usage_log WHERE user_id = %(u)s AND success), "
        "(SELECT count(*) FROM credit_transactions WHERE user_id = %(u)s "
        " AND transaction_type = 'usage'), "
        "(SELECT count(*) FROM credit_holds WHERE user_id = %(u)s), "
        "(SELECT balance FROM user_credits WHERE user_id = %(u)s)", {"u": user}).fetchone()
    assert row is not None
    return tuple(row)


async def settle(h: CreditsHandler) -> None:
    await h.runtime.writer.flush()
    for _ in range(50):  # the background task may hold a batch for a few ms
        if h.runtime.writer.depth == 0:
            await asyncio.sleep(0.05)
            return
        await asyncio.sleep(0.02)


async def test_duplicate_events_bill_once(
    handler: CreditsHandler, db_conn: psycopg.Connection,
) -> None:
    db_conn.execute("SELECT * FROM add_user_credits('dup', 1, 'purchase', 'pi-dup', NULL)")
    cost = D("0.0001")  # 5 completion tokens x 0.000002 USD x 10 credits per USD

    # 1. The success event twice for one request.
    data = request_data("call-1")
    await handler.async_pre_call_hook(auth("dup"), None, data, "acompletion")
    assert db_state(db_conn, "dup")[3] == 1  # one hold
    kwargs = success_kwargs(data, "call-1")
    await handler.async_log_success_event(kwargs, None, None, None)
    await handler.async_log_success_event(copy.deepcopy(kwargs), None, None, None)
    await settle(handler)
    assert db_state(db_conn, "dup") == (1, 1, 1, 0, D(1) - cost)

    # 2. A failure after the success (LiteLLM's failure hook for the same request).
    await handler.async_post_call_failure_hook(data, RuntimeError("late failure"), auth("dup"))
    await settle(handler)
    assert db_state(db_conn, "dup") == (1, 1, 1, 0, D(1) - cost)

    # 3. The pre-call hook twice on the same data: one request id, one hold, one bill.
    data2 = request_data("call-2")
    await handler.async_pre_call_hook(auth("dup"), None, data2, "acompletion")
    first_id = data2["metadata"][CTX]["request_id"]
    await handler.async_pre_call_hook(auth("dup"), None, data2, "acompletion")
    assert data2["metadata"][CTX]["request_id"] == first_id
    assert db_state(db_conn, "dup")[3] == 1
    kwargs2 = success_kwargs(data2, "call-2")
    await handler.async_log_success_event(kwargs2, None, None, None)
    await handler.async_log_success_event(kwargs2, None, None, None)
    await settle(handler)
    assert db_state(db_conn, "dup") == (2, 2, 2, 0, D(1) - 2 * cost)

    # 4. LiteLLM's rerun on a pristine copy (a new call id, docs/litellm-hooks.md a): the
    # first run's hold is orphaned but only the answered run is billed; the orphan expires.
    data3 = request_data("call-3")
    pristine = copy.deepcopy(data3)
    await handler.async_pre_call_hook(auth("dup"), None, data3, "acompletion")
    await handler.async_pre_call_hook(auth("dup"), None, pristine, "acompletion")
    assert pristine["metadata"][CTX]["request_id"] != data3["metadata"][CTX]["request_id"]
    await handler.async_log_success_event(success_kwargs(pristine, "call-3"), None, None, None)
    await settle(handler)
    assert db_state(db_conn, "dup") == (3, 3, 3, 1, D(1) - 3 * cost)

    # 5. A failure first, then the success for the same request (a retry that worked):
    # one row, now successful, one debit; then both again change nothing.
    data4 = request_data("call-4")
    await handler.async_pre_call_hook(auth("dup"), None, data4, "acompletion")
    ok4 = success_kwargs(data4, "call-4")
    await handler.async_post_call_failure_hook(copy.deepcopy(data4), RuntimeError("boom"),
                                               auth("dup"))
    await settle(handler)
    assert db_state(db_conn, "dup")[:3] == (4, 3, 3)
    await handler.async_log_success_event(ok4, None, None, None)
    await handler.async_log_success_event(ok4, None, None, None)
    await settle(handler)
    assert db_state(db_conn, "dup")[:3] == (4, 4, 4)

    # 6. A success event whose metadata carries a forged context is not ours: not billed.
    forged = success_kwargs({"metadata": {CTX: {"request_id": "evil", "user_id": "dup",
                                                "issued_by": "guess", "hold": "0"}}}, "c-5")
    await handler.async_log_success_event(forged, None, None, None)
    await settle(handler)
    assert db_state(db_conn, "dup")[:3] == (4, 4, 4)

    # The orphan from 4. expires (hold_ttl 10 s) and is swept; the ledger reconciles.
    db_conn.execute("UPDATE credit_holds SET expires_at = now() - interval '1 second'")
    assert db_conn.execute("SELECT sweep_expired_holds()").fetchone() == (1,)
    from litellm_credits.reconcile import format_report, reconcile
    report = await reconcile(handler.runtime.db, hold_grace_seconds=0)
    assert report.ok, format_report(report)


async def test_refusals_in_process_write_no_bill(
    handler: CreditsHandler, db_conn: psycopg.Connection,
) -> None:
    """A 402 from the hook is logged as a rejection row, never billed, and its (absent)
    hold is not left behind; a repeat of the refused request changes nothing more."""
    db_conn.execute("SELECT * FROM add_user_credits('poor', 0.00001, 'purchase', 'pi-p', NULL)")
    data = request_data("call-poor")
    for _ in range(2):
        with pytest.raises(HTTPException) as info:
            await handler.async_pre_call_hook(auth("poor"), None, data, "acompletion")
        assert info.value.status_code == 402
    await handler.async_post_call_failure_hook(data, RuntimeError("402"), auth("poor"))
    await settle(handler)
    rows, ok, debits, holds, balance = db_state(db_conn, "poor")
    assert (ok, debits, holds, balance) == (0, 0, 0, D("0.00001"))
    assert rows == 1  # one rejection row for the request, however often it was refused


async def test_a_request_id_copied_into_metadata_is_not_reused(
    handler: CreditsHandler, db_conn: psycopg.Connection,
) -> None:
    db_conn.execute("SELECT * FROM add_user_credits('mallory', 1, 'purchase', 'pi-m', NULL)")
    data = request_data("call-m1")
    await handler.async_pre_call_hook(auth("mallory"), None, data, "acompletion")
    earlier = data["metadata"][CTX]["request_id"]
    await handler.async_log_success_event(success_kwargs(data, "call-m1"), None, None, None)
    await settle(handler)
    assert db_state(db_conn, "mallory")[:3] == (1, 1, 1)
    address = id(data)
    del data

    # The next request dict usually lands where the last one was freed.
    forged: dict[str, Any] | None = None
    for _ in range(200):
        candidate = request_data("call-m2")
        candidate["metadata"] = {CTX: {"request_id": earlier}}
        if id(candidate) == address:
            forged = candidate
            break
        del candidate
    if forged is None:
        pytest.skip("CPython did not reuse the address this time")
    await handler.async_pre_call_hook(auth("mallory"), None, forged, "acompletion")
    await handler.async_log_success_event(success_kwargs(forged, "call-m2"), None, None, None)
    await settle(handler)
    assert db_state(db_conn, "mallory")[:3] == (2, 2, 2), "the second request went unbilled"
    assert forged["metadata"][CTX]["request_id"] != earlier
