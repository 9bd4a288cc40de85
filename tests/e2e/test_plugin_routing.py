"""Routing by power level through the real LiteLLM proxy and stand-in upstreams.

Power levels (seed): eco -> openrouter, together(_ai), deepinfra (x0.7, quality >= 0.70,
latency <= 5000 ms); balanced -> openai, anthropic, openrouter (x1.0, >= 0.85, <= 3000 ms);
precision -> anthropic, openai (x1.5, >= 0.95, <= 2000 ms).

Which stand-in received each request is read from the stand-ins' own records; the usage row
and the debit are read from PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest

from devtools.pg import PgCluster
from tests.e2e.plugin_env import (
    MULTIPLIER,
    PluginEnv,
    chat,
    chat_deployment,
    expected_credits,
    plugin_env,
)

pytestmark = pytest.mark.e2e

PROVIDERS = ("openai", "anthropic", "openrouter", "together_ai", "deepinfra")


@pytest.fixture(scope="module")
def env(pg_cluster: PgCluster) -> Iterator[PluginEnv]:
    models = {
        "chat": [chat_deployment(p) for p in PROVIDERS],
        # openrouter's quality (0.50) is below eco's minimum (0.70): eco must skip it.
        "chat-lowq": [
            chat_deployment("openrouter", "chat-lowq",
                            extra_model_info={"quality_score": 0.50}),
            chat_deployment("together_ai", "chat-lowq"),
            chat_deployment("deepinfra", "chat-lowq"),
        ],
        # A group only for the latency test, so its synthetic slow rows touch nothing else.
        "chat-lat": [chat_deployment("openrouter", "chat-lat"),
                     chat_deployment("together_ai", "chat-lat")],
    }
    with plugin_env(pg_cluster, models, label="routing") as penv:
        yield penv


@pytest.fixture(autouse=True)
def _clean_upstreams(env: PluginEnv) -> None:
    env.reset_upstreams()


def _one_success(env: PluginEnv, user: str) -> dict[str, Any]:
    rows = env.wait_for_rows(user, 1)
    assert len(rows) == 1, rows
    row = rows[0]
    assert row["success"] is True, row
    debits = env.usage_debits(user)
    assert len(debits) == 1, debits
    assert debits[0]["request_id"] == row["request_id"]
    assert -debits[0]["amount"] == row["credits_charged"]
    return row


@pytest.mark.parametrize(
    ("level", "provider"),
    [("eco", "openrouter"), ("balanced", "openai"), ("precision", "anthropic")],
)
def test_account_level_routes_to_the_first_preferred_provider(
    env: PluginEnv, level: str, provider: str
) -> None:
    user = env.new_user(f"lvl-{level}")
    env.cli("set-level", user, level)
    assert env.one("SELECT power_level FROM user_credits WHERE user_id = %s", user) == level

    reply = chat(env.user_client(user))

    assert reply.choices[0].message.content.startswith(f"{provider}:")
    assert env.served_by() == [provider]
    row = _one_success(env, user)
    assert row["provider"] == provider
    assert row["power_level"] == level
    assert row["cost_multiplier"] == MULTIPLIER[level]
    assert row["credits_charged"] == expected_credits(provider, level)


def test_metadata_level_is_honoured_when_the_account_allows_it(env: PluginEnv) -> None:
    user = env.new_user("override-ok", level="balanced", override_allowed=True)

    chat(env.user_client(user), metadata={"power_level": "precision"})
    chat(env.user_client(user), metadata={"power_level": "eco"})

    assert env.served_by().count("anthropic") == 1
    assert env.served_by().count("openrouter") == 1
    assert len(env.served_by()) == 2
    rows = env.wait_for_rows(user, 2)
    assert [(r["provider"], r["power_level"]) for r in rows] == [
        ("anthropic", "precision"), ("openrouter", "eco")]
    assert [r["credits_charged"] for r in rows] == [
        expected_credits("anthropic", "precision"), expected_credits("openrouter", "eco")]
    assert len(env.usage_debits(user)) == 2


def test_metadata_level_is_refused_with_403_when_the_account_does_not_allow_it(
    env: PluginEnv,
) -> None:
    user = env.new_user("override-no", credits="50", level="eco", override_allowed=False)

    with pytest.raises(openai.PermissionDeniedError) as caught:
        chat(env.user_client(user), metadata={"power_level": "precision"})

    assert caught.value.status_code == 403
    assert "power level" in str(caught.value.message).lower()
    assert env.calls() == {p: 0 for p in PROVIDERS}
    env.settle_quiet(user)
    assert env.usage_debits(user) == []
    assert env.balance(user) == 50
    assert env.holds(user) == 0
    # Its own level still works.
    chat(env.user_client(user))
    assert env.served_by() == ["openrouter"]


@pytest.mark.parametrize(
    ("level", "failing", "fallback"),
    [("eco", "openrouter", "together_ai"), ("precision", "anthropic", "openai"),
     ("balanced", "openai", "anthropic")],
)
def test_fallback_to_the_next_preferred_provider_bills_once(
    env: PluginEnv, level: str, failing: str, fallback: str
) -> None:
    user = env.new_user(f"fb-{level}", level=level)
    env.up(failing).configure(fail_always=True, fail_status=500)

    reply = chat(env.user_client(user))

    assert reply.choices[0].message.content.startswith(f"{fallback}:")
    assert env.calls()[failing] == 1
    assert env.calls()[fallback] == 1
    assert sum(env.calls().values()) == 2
    row = _one_success(env, user)
    assert row["provider"] == fallback
    assert row["credits_charged"] == expected_credits(fallback, level)
    env.settle_quiet(user)
    assert len(env.usage_rows(user)) == 1
    assert len(env.usage_debits(user)) == 1
    assert env.balance(user) == 100 - expected_credits(fallback, level)


def test_quality_filter_skips_a_deployment_below_the_level_minimum(env: PluginEnv) -> None:
    user = env.new_user("quality", level="eco")

    chat(env.user_client(user), model="chat-lowq")

    assert env.served_by() == ["together_ai"]
    row = _one_success(env, user)
    assert row["provider"] == "together_ai"
    assert row["model_group"] == "chat-lowq"


def test_quality_filter_also_drops_the_low_quality_deployment_as_a_fallback(
    env: PluginEnv,
) -> None:
    """together_ai fails: the next qualifying deployment is deepinfra, never openrouter."""
    user = env.new_user("quality-fb", level="eco")
    env.up("together_ai").configure(fail_always=True)

    chat(env.user_client(user), model="chat-lowq")

    assert env.calls()["openrouter"] == 0
    assert env.calls()["together_ai"] == 1
    assert env.calls()["deepinfra"] == 1
    assert _one_success(env, user)["provider"] == "deepinfra"


def test_latency_filter_skips_a_deployment_observed_slower_than_the_level_maximum(
    env: PluginEnv,
) -> None:
    user = env.new_user("latency", level="eco")
    chat(env.user_client(user), model="chat-lat")
    assert env.served_by() == ["openrouter"]
    first = _one_success(env, user)

    # Make openrouter look slow (10 s, above eco's 5000 ms) in the recent usage log, exactly
    # as the plugin records its rows, then wait past the configuration refresh (1 s).
    env.sql(
        "INSERT INTO llm_usage_log (request_id, user_id, model_group, provider, api_base,"
        " success, latency_ms, response_metadata)"
        " SELECT 'slow-' || g, 'latency-probe', l.model_group, l.provider, l.api_base, TRUE,"
        " 10000, l.response_metadata FROM generate_series(1, 50) g, llm_usage_log l"
        " WHERE l.request_id = %s",
        first["request_id"])
    env.up("openrouter").clear()
    env.wait_for(lambda: _served_after_refresh(env, user) == "together_ai", timeout=15.0,
                 what="eco on chat-lat to avoid the slow openrouter deployment")


def _served_after_refresh(env: PluginEnv, user: str) -> str | None:
    env.reset_upstreams()
    chat(env.user_client(user), model="chat-lat")
    served = env.served_by()
    return served[-1] if served else None


def test_an_unknown_metadata_level_is_refused_with_a_clear_400(env: PluginEnv) -> None:
    user = env.new_user("badlevel")
    with pytest.raises(openai.BadRequestError) as caught:
        chat(env.user_client(user), metadata={"power_level": "turbo"})
    message = str(caught.value.message)
    assert "turbo" in message and "eco, balanced or precision" in message
    assert sum(env.calls().values()) == 0
    env.settle_quiet(user)
    assert env.usage_debits(user) == []
    assert env.holds(user) == 0


def test_streamed_request_falls_back_and_is_settled_once(env: PluginEnv) -> None:
    user = env.new_user("fb-stream", level="eco")
    env.up("openrouter").configure(fail_always=True, fail_status=503)

    stream = chat(env.user_client(user), stream=True)
    text = "".join((c.choices[0].delta.content or "") for c in stream if c.choices)

    assert text.startswith("together_ai:")
    assert (env.calls()["openrouter"], env.calls()["together_ai"]) == (1, 1)
    row = _one_success(env, user)
    assert row["provider"] == "together_ai"
    env.settle_quiet(user)
    assert len(env.usage_rows(user)) == 1
    assert len(env.usage_debits(user)) == 1


def test_a_group_with_no_qualifying_deployment_is_served_by_the_documented_rule(
    env: PluginEnv,
) -> None:
    """precision on chat-lowq: no preferred provider, none at quality 0.95: best effort."""
    user = env.new_user("besteffort", level="precision")

    chat(env.user_client(user), model="chat-lowq")

    assert len(env.served_by()) == 1
    row = _one_success(env, user)
    assert row["request_metadata"]["route_rule"] == "best_effort"
    assert row["credits_charged"] == expected_credits(row["provider"], "precision")
