"""Part 3: the pre-call hook alone, in process, with warm caches.

``CreditsHandler.async_pre_call_hook`` is called directly, one request after
another, on a Runtime whose configuration snapshot is loaded and whose pool is
open. ``ledger.reserve`` (the hook's one database round trip, SQL
``reserve_credits``) is wrapped with a timer, so every sample splits into the
round trip and everything else (identity, pricing, routing, BYOK decrypt,
bookkeeping). The success event (``async_log_success_event``, which builds the
settlement record and queues it) is timed the same way, since it also runs on
the proxy's event loop for every request.

Run alone: ``python -m bench.hook_bench --url postgresql://... [--calls N]``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import statistics
import time
import uuid
from pathlib import Path
from typing import Any

from bench.common import (
    MODEL_GROUP,
    WORK_DIR,
    byok_provider_of,
    model_list,
    percentile,
    rnd,
)

UPSTREAMS_FOR_CONFIG = {
    # Never called in process: the deployments only have to exist.
    "openai": "http://127.0.0.1:9/v1",
    "openrouter": "http://127.0.0.1:9/v1",
}

PROMPT = "Summarise the benefits of prepaid credits for an LLM gateway in two sentences."


def _dist(values_s: list[float]) -> dict[str, float | None]:
    """Milliseconds: p50/p90/p99/p99.9/max/mean of a list of seconds."""
    ms = sorted(v * 1000 for v in values_s)
    return {
        "n": len(ms),
        "p50_ms": rnd(percentile(ms, 50), 4),
        "p90_ms": rnd(percentile(ms, 90), 4),
        "p99_ms": rnd(percentile(ms, 99), 4),
        "p999_ms": rnd(percentile(ms, 99.9), 4),
        "max_ms": rnd(ms[-1] if ms else None, 4),
        "mean_ms": rnd(statistics.fmean(ms) if ms else None, 4),
    }


def _slo(ctx: dict[str, Any], deployment_id: str) -> dict[str, Any]:
    now = time.time()
    return {
        "model_group": MODEL_GROUP,
        "model_id": deployment_id,
        "model": "openai-bench-model",
        "custom_llm_provider": "openai",
        "api_base": "http://127.0.0.1:9/v1",
        "prompt_tokens": 25,
        "completion_tokens": 10,
        "total_tokens": 35,
        "startTime": now - 0.05,
        "endTime": now,
        "completionStartTime": now - 0.01,
        "litellm_call_id": str(uuid.uuid4()),
        "end_user": ctx["user_id"],
        "stream": False,
        "call_type": "acompletion",
        "response_cost": 0.000045,
        "cache_hit": False,
        "metadata": {"usage_object": {"prompt_tokens": 25, "completion_tokens": 10}},
    }


async def run_hook_bench(url: str, users: list[str], encryption_keys: str, *, calls: int,
                         warmup: int = 300, profile_path: Path | None = None) -> dict[str, Any]:
    from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth

    from litellm_credits.byok.vault import Vault
    from litellm_credits.hook import CreditsHandler
    from litellm_credits.runtime import Runtime
    from litellm_credits.settings import Settings

    spool = WORK_DIR / "spool-hook"
    spool.mkdir(parents=True, exist_ok=True)
    settings = Settings(database_url=url, spool_dir=spool)
    entries = model_list(UPSTREAMS_FOR_CONFIG)
    runtime = Runtime(settings, model_list=lambda: entries, cost_map=lambda: {})
    vault = Vault.from_env({"CREDITS_ENCRYPTION_KEYS": encryption_keys})
    handler = CreditsHandler(runtime=runtime, vault=vault)

    reserve_time: list[float] = [0.0]
    original_reserve = runtime.ledger.reserve

    async def timed_reserve(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await original_reserve(*args, **kwargs)
        finally:
            reserve_time[0] = time.perf_counter() - started

    runtime.ledger.reserve = timed_reserve  # type: ignore[method-assign]

    # The master key naming the end user, as the proxy benchmark's load does.
    auths = {
        u: UserAPIKeyAuth(api_key="sk-master-test", user_id="default_user_id",
                          user_role=LitellmUserRoles.PROXY_ADMIN, end_user_id=u)
        for u in users
    }
    byok_users = {u for i, u in enumerate(users) if byok_provider_of(i)}
    rng = random.Random(7)

    def request_data() -> dict[str, Any]:
        return {"model": MODEL_GROUP, "max_tokens": 16,
                "messages": [{"role": "user", "content": PROMPT}]}

    total: list[float] = []
    db: list[float] = []
    rest_plain: list[float] = []
    rest_byok: list[float] = []
    success: list[float] = []
    errors = 0
    await runtime.ensure_started()
    cpu_started = 0.0
    settled_before = 0
    try:
        profiler = None
        for phase, count in (("warmup", warmup), ("measure", calls)):
            if phase == "measure":
                await runtime.writer.flush()
                settled_before = runtime.writer.stats.settled
                cpu_started = time.process_time()
            if phase == "measure" and profile_path is not None:
                with contextlib.suppress(ImportError):
                    from pyinstrument import Profiler

                    profiler = Profiler(interval=0.0001, async_mode="enabled")
                    profiler.start()
            for _ in range(count):
                user = rng.choice(users)
                data = request_data()
                started = time.perf_counter()
                try:
                    await handler.async_pre_call_hook(auths[user], None, data, "completion")
                except Exception:  # noqa: BLE001 - counted and reported
                    errors += 1
                    continue
                elapsed = time.perf_counter() - started
                ctx = data["metadata"]["credits"]
                deployment_id = ctx["route"][0]
                kwargs = {"litellm_params": {"metadata": data["metadata"]},
                          "standard_logging_object": _slo(ctx, deployment_id)}
                started = time.perf_counter()
                await handler.async_log_success_event(kwargs, None, None, None)
                post = time.perf_counter() - started
                if phase == "measure":
                    total.append(elapsed)
                    db.append(reserve_time[0])
                    (rest_byok if user in byok_users else rest_plain).append(
                        elapsed - reserve_time[0])
                    success.append(post)
                # Let the background writer run between requests, as it does in the proxy.
                await asyncio.sleep(0)
        if profiler is not None:
            profiler.stop()
            assert profile_path is not None
            profile_path.parent.mkdir(parents=True, exist_ok=True)
            profile_path.write_text(profiler.output_html())
            (profile_path.with_suffix(".txt")).write_text(
                profiler.output_text(unicode=False, color=False, show_all=False))
        await runtime.writer.flush()
        cpu_per_request = (time.process_time() - cpu_started) / max(len(total), 1)
        settled = runtime.writer.stats.settled - settled_before
    finally:
        await runtime.stop()
    rest = [t - d for t, d in zip(total, db, strict=True)]
    return {
        "calls": len(total),
        "errors": errors,
        "users": len(users),
        "byok_share": rnd(len(rest_byok) / max(len(total), 1), 3),
        "pre_call_total": _dist(total),
        "db_round_trip": _dist(db),
        "non_db": _dist(rest),
        "non_db_platform_key": _dist(rest_plain),
        "non_db_byok": _dist(rest_byok),
        "success_event": _dist(success),
        "settled_by_writer": settled,
        # All CPU of this process per request: pre-call hook, success event, and the writer
        # settling the records (JSON encoding, the settle_usage round trip), refresh loops.
        "process_cpu_ms_per_request": rnd(cpu_per_request * 1000, 4),
    }


async def run_concurrent_bench(url: str, users: list[str], encryption_keys: str, *,
                               calls: int, concurrency: int = 16,
                               upstream_seconds: float = 0.05,
                               **settings: Any) -> dict[str, Any]:
    """All of the plugin's hooks per request, ``concurrency`` requests in flight at once.

    Each simulated request runs what the proxy runs for it: the pre-call hook,
    the router's filter, the deployment hook, a wait standing in for the
    provider (``upstream_seconds``), the response-headers hook and the success
    event. Reported: this process's CPU per request (everything the plugin does
    on the proxy's core, the writer and background refresh included) and how
    many reserve statements the requests needed, i.e. how well concurrent
    reserves shared round trips.
    """
    from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth

    from litellm_credits.byok.vault import Vault
    from litellm_credits.hook import CreditsHandler
    from litellm_credits.runtime import Runtime
    from litellm_credits.settings import Settings

    spool = WORK_DIR / "spool-hook-concurrent"
    spool.mkdir(parents=True, exist_ok=True)
    entries = model_list(UPSTREAMS_FOR_CONFIG)
    runtime = Runtime(Settings(database_url=url, spool_dir=spool, **settings),
                      model_list=lambda: entries, cost_map=lambda: {})
    deployments = {str(e["model_info"]["id"]): e for e in entries}
    handler = CreditsHandler(runtime=runtime, vault=Vault.from_env(
        {"CREDITS_ENCRYPTION_KEYS": encryption_keys}))
    rng = random.Random(17)
    errors = 0
    # Built once, as the proxy's auth cache would: their construction is not the plugin's.
    auths = {u: UserAPIKeyAuth(api_key="sk-master-test", user_id="default_user_id",
                               user_role=LitellmUserRoles.PROXY_ADMIN, end_user_id=u)
             for u in users}

    async def one_request() -> None:
        nonlocal errors
        user = rng.choice(users)
        auth = auths[user]
        data: dict[str, Any] = {"model": MODEL_GROUP, "max_tokens": 16,
                                "messages": [{"role": "user", "content": PROMPT}]}
        try:
            await handler.async_pre_call_hook(auth, None, data, "completion")
        except Exception:  # noqa: BLE001 - counted and reported
            errors += 1
            return
        chosen = await handler.async_filter_deployments(
            MODEL_GROUP, list(entries), data["messages"], request_kwargs=data)
        deployment = chosen[0] if chosen else deployments[data["metadata"]["credits"]
                                                          ["route"][0]]
        kwargs = {**data, "model_info": deployment["model_info"]}
        await handler.async_pre_call_deployment_hook(kwargs, "acompletion")
        await asyncio.sleep(upstream_seconds)
        await handler.async_post_call_response_headers_hook(data, auth, None)
        ctx = data["metadata"]["credits"]
        await handler.async_log_success_event(
            {"litellm_params": {"metadata": data["metadata"]},
             "standard_logging_object": _slo(ctx, str(deployment["model_info"]["id"]))},
            None, None, None)

    async def worker(count: int) -> None:
        for _ in range(count):
            await one_request()

    await runtime.ensure_started()
    try:
        await asyncio.gather(*(worker(20) for _ in range(concurrency)))  # warm-up
        await runtime.writer.flush()
        holds = runtime.ledger.holds
        batched_before, batches_before = holds.batched, holds.batches
        cpu_started, wall_started = time.process_time(), time.perf_counter()
        loop_cpu_started = time.thread_time()
        await asyncio.gather(*(worker(calls // concurrency) for _ in range(concurrency)))
        await runtime.writer.flush()
        cpu = time.process_time() - cpu_started
        loop_cpu = time.thread_time() - loop_cpu_started
        wall = time.perf_counter() - wall_started
        n = (calls // concurrency) * concurrency
        batched = holds.batched - batched_before
        batches = holds.batches - batches_before
    finally:
        await runtime.stop()
    alone = n - batched
    return {
        "calls": n,
        "errors": errors,
        "concurrency": concurrency,
        "upstream_seconds": upstream_seconds,
        "requests_per_s": rnd(n / wall, 1),
        "process_cpu_ms_per_request": rnd(cpu * 1000 / max(n, 1), 4),
        "event_loop_thread_cpu_ms_per_request": rnd(loop_cpu * 1000 / max(n, 1), 4),
        "reserve_statements_per_request": rnd((batches + alone) / max(n, 1), 3),
        "reserves_per_batched_statement": rnd(batched / batches, 2) if batches else None,
    }


def main() -> None:
    import json

    parser = argparse.ArgumentParser(prog="python -m bench.hook_bench")
    parser.add_argument("--url", required=True)
    parser.add_argument("--keys", required=True, help="CREDITS_ENCRYPTION_KEYS of the seed")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--profile", type=Path, default=None)
    args = parser.parse_args()
    from bench.common import user_ids

    result = asyncio.run(run_hook_bench(args.url, user_ids(args.users), args.keys,
                                        calls=args.calls, profile_path=args.profile))
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
