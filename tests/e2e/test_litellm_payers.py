"""Who pays, on LiteLLM's own database with keys from ``/key/generate``."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from devtools.pg import PgCluster
from tests.e2e.litellm_db import LiteLLMEnv, litellm_env
from tests.e2e.plugin_env import chat, chat_deployment, expected_credits

pytestmark = pytest.mark.e2e

COST = expected_credits("openai", "balanced")


@pytest.fixture(scope="module")
def env(pg_cluster: PgCluster) -> Iterator[LiteLLMEnv]:
    models = {"chat": [chat_deployment("openai")]}
    with litellm_env(pg_cluster, models, providers=("openai",), label="payers") as lenv:
        yield lenv


def test_user_key_bills_its_user(env: LiteLLMEnv) -> None:
    alice = env.new_user("alice")
    key = env.new_key(user_id=alice)
    chat(env.client(key))
    rows = env.wait_for_rows(alice, 1)
    assert [r["credits_charged"] for r in rows] == [COST]
