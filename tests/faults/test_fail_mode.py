"""The pre-call side's explicit fail mode while the database is down (issue 8).

closed (the default): a clear 503. open: users this process has seen are served
up to fail_open_limit_credits on their last known balance; strangers still get
503; what was served is settled from the spool once the database is back.
"""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi import HTTPException
from litellm.proxy._types import LitellmUserRoles, UserAPIKeyAuth

from devtools.pg import ClusterFactory
from litellm_credits.hook import CreditsHandler
from litellm_credits.runtime import Runtime
from litellm_credits.settings import Settings
from litellm_credits.store import migrate as migrations

pytestmark = [pytest.mark.slow]

DEPLOYMENT = {
    "model_name": "chat",
    "litellm_params": {"model": "openai/stand-in-model", "api_base": "http://127.0.0.1:9/v1",
                       "input_cost_per_token": "0", "output_cost_per_token": "0.000002"},
    "model_info": {"id": "chat-openai", "provider": "openai"},
}


def auth(user: str) -> UserAPIKeyAuth:
    return UserAPIKeyAuth(api_key=f"sk-user-{user}", user_id=user,
                          user_role=LitellmUserRoles.INTERNAL_USER)


def data() -> dict[str, Any]:
    # 100 completion tokens x $0.000002 x 10 credits/USD = 0.002 credits held
    return {"model": "chat", "max_tokens": 100, "metadata": {},
            "messages": [{"role": "user", "content": "hello"}]}


async def _handler(url: str, tmp_path: Path, mode: str) -> tuple[CreditsHandler, Runtime]:
    settings = Settings(database_url=url, spool_dir=tmp_path / f"spool-{mode}",
                        fail_mode=mode, fail_open_limit_credits=Decimal("0.005"),
                        pool_timeout_seconds=1.0, statement_timeout_ms=1000)
    runtime = Runtime(settings, model_list=lambda: [DEPLOYMENT], cost_map=lambda: {})
    await runtime.ensure_started()
    return CreditsHandler(runtime=runtime), runtime


@pytest.mark.parametrize("mode", ["closed", "open"])
async def test_fail_mode_while_the_database_is_down(
    pg_cluster_factory: ClusterFactory, tmp_path: Path, mode: str,
) -> None:
    cluster = pg_cluster_factory()
    url = cluster.create_database("credits")
    migrations.migrate(url)
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT add_user_credits('ann', 1, 'bonus', NULL, 'test')")
    handler, runtime = await _handler(url, tmp_path, mode)
    try:
        await handler.async_pre_call_hook(auth("ann"), None, data(), "completion")  # seen once
        await runtime.writer.flush()
        cluster.stop("fast")

        if mode == "closed":
            with pytest.raises(HTTPException) as refused:
                await handler.async_pre_call_hook(auth("ann"), None, data(), "completion")
            assert refused.value.status_code == 503
            assert "unavailable" in str(refused.value.detail).lower()
            return

        # open: ann is served on her last known balance, up to the 0.005 limit (2 x 0.002)
        for _ in range(2):
            served = await handler.async_pre_call_hook(auth("ann"), None, data(), "completion")
            assert served["metadata"]["credits"]["fail_open"] is True
        with pytest.raises(HTTPException) as over:
            await handler.async_pre_call_hook(auth("ann"), None, data(), "completion")
        assert over.value.status_code == 503
        # a user this process never saw is not served on trust
        with pytest.raises(HTTPException) as stranger:
            await handler.async_pre_call_hook(auth("bob"), None, data(), "completion")
        assert stranger.value.status_code == 503
    finally:
        await runtime.stop()
        cluster.stop("fast")
