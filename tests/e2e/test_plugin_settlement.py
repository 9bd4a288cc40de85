"""Settlement through the real LiteLLM proxy: usage rows, debits, holds and balances.

Every success must leave exactly one ``llm_usage_log`` row and one usage debit, keyed on the
plugin's request id, with the charge computed exactly from the stand-in's token counts and
the deployment's per-token prices (x credits_per_usd 10 x the level's multiplier). Failures
and refusals leave one row with ``success = false`` and move no money.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from decimal import Decimal
from typing import Any

import httpx
import openai
import pytest

from devtools.pg import PgCluster
from devtools.proxy import MASTER_KEY, DeploymentSpec
from tests.e2e.plugin_env import (
    PluginEnv,
    chat,
    chat_deployment,
    expected_credits,
    expected_usd,
    plugin_env,
    raw_chat,
)

pytestmark = pytest.mark.e2e

PROVIDERS = ("openai", "anthropic", "openrouter", "together_ai", "deepinfra")
UNPRICED_MODEL = "no-such-model-e2e-unpriced"


def _drop_prices_of_unpriced(config: dict[str, Any]) -> None:
    for entry in config["model_list"]:
        if entry["model_name"] == "unpriced":
            entry["litellm_params"].pop("input_cost_per_token")
            entry["litellm_params"].pop("output_cost_per_token")


@pytest.fixture(scope="module")
def env(pg_cluster: PgCluster) -> Iterator[PluginEnv]:
    models = {
        "chat": [chat_deployment(p) for p in PROVIDERS],
        # One deployment only: a known hold (the estimate of one price) and no fallback.
        "solo": [chat_deployment("openai", "solo")],
        # A model LiteLLM cannot price, with no price on the deployment (I5).
        "unpriced": [DeploymentSpec(provider="openai", model=UNPRICED_MODEL)],
    }
    with plugin_env(pg_cluster, models, label="settle",
                    edit_config=_drop_prices_of_unpriced) as penv:
        yield penv


@pytest.fixture(autouse=True)
def _clean_upstreams(env: PluginEnv) -> None:
    env.reset_upstreams()


def _ledger_consistent(env: PluginEnv, user: str) -> None:
    """I2: balance = sum of transactions, and each transaction chains onto the previous."""
    txs = env.dict_rows("SELECT amount, balance_before, balance_after FROM credit_transactions"
                        " WHERE user_id = %s ORDER BY id", user)
    running = Decimal(0)
    for tx in txs:
        assert tx["balance_before"] == running, txs
        assert tx["balance_after"] == tx["balance_before"] + tx["amount"]
        running = tx["balance_after"]
    assert env.balance(user) == running == sum((t["amount"] for t in txs), Decimal(0))


def _error_body(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.body
    assert isinstance(body, dict), body
    return body


# --- success ---------------------------------------------------------------------------


@pytest.mark.parametrize(("level", "provider"),
                         [("eco", "openrouter"), ("balanced", "openai"),
                          ("precision", "anthropic")])
def test_success_writes_one_row_and_one_exact_debit(
    env: PluginEnv, level: str, provider: str
) -> None:
    user = env.new_user(f"ok-{level}", credits="25", level=level)

    reply = chat(env.user_client(user))
    assert reply.usage is not None
    assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (12, 5)

    rows = env.wait_for_rows(user, 1)
    assert len(rows) == 1
    row = rows[0]
    want = expected_credits(provider, level)
    assert want > 0
    assert row["success"] is True
    assert row["status_code"] == 200
    assert row["request_id"].startswith("req_")
    assert (row["model_group"], row["provider"], row["power_level"]) == ("chat", provider, level)
    assert (row["prompt_tokens"], row["completion_tokens"], row["total_tokens"]) == (12, 5, 17)
    assert row["provider_cost_usd"] == expected_usd(provider)
    assert row["credits_charged"] == want
    assert row["byok_key_id"] is None
    assert row["error_type"] is None
    assert row["latency_ms"] is not None and row["latency_ms"] >= 0
    assert "hello" not in json.dumps(row["request_metadata"])  # no message content
    assert "hello" not in json.dumps(row["response_metadata"])

    debits = env.usage_debits(user)
    assert len(debits) == 1
    debit = debits[0]
    assert debit["request_id"] == debit["idempotency_key"] == row["request_id"]
    assert debit["amount"] == -want
    assert debit["balance_before"] == Decimal("25")
    assert debit["balance_after"] == Decimal("25") - want
    assert debit["credits_uncollected"] == 0
    assert env.balance(user) == Decimal("25") - want
    assert env.holds(user) == 0
    _ledger_consistent(env, user)


def test_credits_remaining_header_reports_the_available_balance(env: PluginEnv) -> None:
    user = env.new_user("header", credits="3")

    raw = raw_chat(env.user_client(user))
    remaining = raw.headers.get("x-credits-remaining")
    raw.parse()

    assert remaining is not None, dict(raw.headers)
    held = Decimal("3") - Decimal(remaining)  # available after this request's own hold
    row = env.wait_for_rows(user, 1)[0]
    assert row["credits_charged"] == expected_credits("openai", "balanced")
    # The hold covered the actual cost (I3), and it was a small estimate, not the balance.
    assert row["credits_charged"] <= held < Decimal("0.01")
    # A later request sees the settled balance.
    raw2 = raw_chat(env.user_client(user))
    raw2.parse()
    assert Decimal(raw2.headers["x-credits-remaining"]) == \
        Decimal("3") - row["credits_charged"] - held




@pytest.mark.parametrize(
    "model",
    ["solo", "chat"],
)
def test_stream_is_settled_once_with_the_usage_of_the_stream(env: PluginEnv, model: str) -> None:
    user = env.new_user("stream", credits="10")
    env.up("openai").configure(prompt_tokens=40, completion_tokens=9, stream_chunks=4)

    raw = env.user_client(user).chat.completions.with_raw_response.create(
        model=model, messages=[{"role": "user", "content": "stream please"}],
        max_tokens=9, stream=True)
    assert raw.headers.get("x-credits-remaining") is not None
    text = "".join((c.choices[0].delta.content or "") for c in raw.parse() if c.choices)

    assert text.startswith("openai:")
    assert env.served_by() == ["openai"]
    assert env.up("openai").last_request.body["stream"] is True
    env.wait_for_rows(user, 1)
    env.settle_quiet(user)
    rows = env.usage_rows(user)
    assert len(rows) == 1
    row = rows[0]
    assert row["success"] is True
    assert row["request_metadata"].get("stream") is True
    debits = env.usage_debits(user)
    assert len(debits) == 1
    assert env.holds(user) == 0
    assert (row["prompt_tokens"], row["completion_tokens"]) == (40, 9)
    want = expected_credits("openai", "balanced", 40, 9)
    assert row["credits_charged"] == want
    assert [d["amount"] for d in debits] == [-want]
    assert env.balance(user) == Decimal("10") - want


# --- failure ---------------------------------------------------------------------------


def test_upstream_failure_logs_a_failure_row_moves_no_money_and_releases_the_hold(
    env: PluginEnv,
) -> None:
    user = env.new_user("fail", credits="7")
    env.up("openai").configure(fail_always=True, fail_status=503)

    with pytest.raises(openai.APIStatusError) as caught:
        chat(env.user_client(user), model="solo")
    assert caught.value.status_code >= 500

    rows = env.wait_for_rows(user, 1)
    env.settle_quiet(user)
    rows = env.usage_rows(user)
    assert len(rows) == 1
    row = rows[0]
    assert row["success"] is False
    assert row["credits_charged"] == 0
    assert row["status_code"] == 503
    assert row["error_type"]  # e.g. ServiceUnavailableError
    assert row["error_message"]
    assert row["power_level"] == "balanced"
    assert env.usage_debits(user) == []
    assert env.balance(user) == Decimal("7")
    assert env.holds(user) == 0
    _ledger_consistent(env, user)


def test_whole_route_failing_is_one_failure_row_after_every_attempt(env: PluginEnv) -> None:
    """balanced on "chat": openai then anthropic (openrouter is below 0.85 quality)."""
    user = env.new_user("fail-all", credits="7")
    env.up("openai").configure(fail_always=True, fail_status=500)
    env.up("anthropic").configure(fail_always=True, fail_status=500)

    with pytest.raises(openai.InternalServerError):
        chat(env.user_client(user))

    assert env.calls()["openai"] == 1
    assert env.calls()["anthropic"] == 1
    assert sum(env.calls().values()) == 2
    env.wait_for_rows(user, 1)
    env.settle_quiet(user)
    rows = env.usage_rows(user)
    assert [(r["success"], r["status_code"]) for r in rows] == [(False, 500)]
    assert env.usage_debits(user) == []
    assert env.balance(user) == Decimal("7")


# --- refusals before the call -------------------------------------------------------------


def test_no_account_is_402_naming_balance_needed_and_top_up(env: PluginEnv) -> None:
    user = env.new_user("nobody", credits=None)

    with pytest.raises(openai.APIStatusError) as caught:
        chat(env.user_client(user))

    exc = caught.value
    assert exc.status_code == 402
    body = _error_body(exc)
    detail = body.get("provider_specific_fields") or {}
    message = str(body.get("message"))
    assert "credit" in message.lower() and user in message
    assert detail.get("balance") == "0"
    assert Decimal(detail["needed"]) > 0
    assert "/credits/purchase" in str(detail.get("top_up")) or "purchase" in message
    assert env.calls() == {p: 0 for p in PROVIDERS}

    rows = env.wait_for(lambda: env.usage_rows(user), what="the rejection row")
    env.settle_quiet(user)
    rows = env.usage_rows(user)
    assert len(rows) == 1
    assert rows[0]["success"] is False
    assert rows[0]["status_code"] == 402
    assert rows[0]["error_type"] == "no_credit_account"
    assert rows[0]["credits_charged"] == 0
    assert env.usage_debits(user) == []
    # Refusing must not create an account either.
    assert env.sql("SELECT 1 FROM user_credits WHERE user_id = %s", user) == []
    assert env.sql("SELECT 1 FROM credit_holds WHERE user_id = %s", user) == []


def test_insufficient_credits_is_402_naming_balance_needed_and_top_up(env: PluginEnv) -> None:
    user = env.new_user("poor", credits="0.0001")

    with pytest.raises(openai.APIStatusError) as caught:
        chat(env.user_client(user))

    exc = caught.value
    assert exc.status_code == 402
    body = _error_body(exc)
    detail = body.get("provider_specific_fields") or {}
    message = str(body.get("message"))
    assert "insufficient credits" in message
    assert Decimal(detail["balance"]) == Decimal("0.0001")
    assert Decimal(detail["needed"]) > Decimal(detail["available"])
    assert "purchase" in str(detail.get("top_up")) and "purchase" in message
    assert env.calls() == {p: 0 for p in PROVIDERS}

    env.wait_for(lambda: env.usage_rows(user), what="the rejection row")
    env.settle_quiet(user)
    rows = env.usage_rows(user)
    assert [(r["success"], r["status_code"], r["error_type"], r["credits_charged"])
            for r in rows] == [(False, 402, "insufficient_credits", 0)]
    assert env.usage_debits(user) == []
    assert env.balance(user) == Decimal("0.0001")
    assert env.holds(user) == 0


def test_streaming_request_without_credits_gets_the_same_402(env: PluginEnv) -> None:
    user = env.new_user("poor-stream", credits="0.0001")
    with pytest.raises(openai.APIStatusError) as caught:
        chat(env.user_client(user), stream=True)
    assert caught.value.status_code == 402
    assert env.calls() == {p: 0 for p in PROVIDERS}
    assert env.balance(user) == Decimal("0.0001")


def test_unpriced_model_is_refused_up_front_and_never_billed_zero(env: PluginEnv) -> None:
    user = env.new_user("unpriced", credits="5")

    with pytest.raises(openai.BadRequestError) as caught:
        chat(env.user_client(user), model="unpriced")

    message = str(caught.value.message)
    assert "no known price" in message
    assert "input_cost_per_token" in message  # says how to fix it
    assert env.calls() == {p: 0 for p in PROVIDERS}
    env.wait_for(lambda: env.usage_rows(user), what="the rejection row")
    env.settle_quiet(user)
    rows = env.usage_rows(user)
    assert [(r["success"], r["error_type"]) for r in rows] == [(False, "unpriced_model")]
    assert env.usage_debits(user) == []
    assert env.balance(user) == Decimal("5")
    assert env.holds(user) == 0


# --- concurrency (I3) ---------------------------------------------------------------------


def test_concurrent_requests_cannot_overspend_and_settle_exactly(env: PluginEnv) -> None:
    """20 requests at once, across two proxy processes, with a balance that holds about 8."""
    # The hold of one request on "solo" (openai, balanced) for "hello" with max_tokens 5 is
    # 0.00028 credits (18 estimated prompt tokens); it costs 0.00022 (12 + 5 real tokens).
    grant = Decimal("0.0023")
    cost = expected_credits("openai", "balanced")
    assert cost == Decimal("0.00022")
    user = env.new_user("burst", credits=str(grant))

    with env.another_proxy() as second:
        clients = [env.user_client(user),
                   openai.OpenAI(base_url=second.url("/v1"), api_key=f"sk-user-{user}",
                                 max_retries=0, timeout=30.0)]
        # Warm the second proxy up (its plugin starts on the first request), as someone else.
        warm = env.new_user("warmup")
        chat(openai.OpenAI(base_url=second.url("/v1"), api_key=f"sk-user-{warm}",
                           max_retries=0), model="solo")
        env.wait_for_rows(warm, 1)
        env.up("openai").clear()
        env.up("openai").configure(delay_ms=600)  # keep them in flight together

        def one(i: int) -> int:
            try:
                chat(clients[i % 2], model="solo")
                return 200
            except openai.APIStatusError as exc:
                return exc.status_code

        with ThreadPoolExecutor(max_workers=20) as pool:
            statuses = list(pool.map(one, range(20)))
        clients[1].close()

        ok = statuses.count(200)
        assert set(statuses) <= {200, 402}, statuses
        assert 8 <= ok <= int(grant / cost), statuses  # the holds admit 8 at once; never more
        assert env.calls()["openai"] == ok

        env.wait_for(lambda: len(env.usage_rows(user)) == 20 and env.holds(user) == 0,
                     what="20 rows and no holds")
        env.settle_quiet(user)
    rows = env.usage_rows(user)
    wins = [r for r in rows if r["success"]]
    assert len(wins) == ok
    assert all(r["credits_charged"] == cost for r in wins)
    assert all(r["status_code"] == 402 for r in rows if not r["success"])
    debits = env.usage_debits(user)
    assert len(debits) == ok
    assert sorted(d["request_id"] for d in debits) == sorted(r["request_id"] for r in wins)
    assert all(d["credits_uncollected"] == 0 for d in debits)
    final = env.balance(user)
    assert final == grant - ok * cost
    assert final >= 0
    _ledger_consistent(env, user)


# --- duplicates (I1) ----------------------------------------------------------------------


def test_two_identical_requests_are_two_rows_and_two_debits(env: PluginEnv) -> None:
    user = env.new_user("twice", credits="4")
    client = env.user_client(user)
    same_call_id = {"x-litellm-call-id": f"client-chosen-{user}"}

    chat(client, extra_headers=same_call_id)
    chat(client, extra_headers=same_call_id)

    rows = env.wait_for_rows(user, 2)
    assert len(rows) == 2
    assert rows[0]["request_id"] != rows[1]["request_id"]  # our id, not the client's
    cost = expected_credits("openai", "balanced")
    assert [r["credits_charged"] for r in rows] == [cost, cost]
    assert len(env.usage_debits(user)) == 2
    assert env.balance(user) == Decimal("4") - 2 * cost


def test_resettling_a_logged_request_changes_nothing(env: PluginEnv) -> None:
    user = env.new_user("dup", credits="4")
    chat(env.user_client(user))
    row = env.wait_for_rows(user, 1)[0]
    balance = env.balance(user)
    tx_count = env.one("SELECT count(*) FROM credit_transactions WHERE user_id = %s", user)

    # The same record again (as a replayed spool batch would bring it), twice in one batch,
    # and once more as a failure: nothing moves.
    record = "to_jsonb(l) - 'id'"
    results = env.sql(
        f"SELECT * FROM settle_usage((SELECT jsonb_build_array({record}, {record},"
        f" {record} || '{{\"success\": false, \"credits_charged\": 0}}'::jsonb)"
        " FROM llm_usage_log l WHERE l.request_id = %s))", row["request_id"])

    assert [r[2] for r in results] == ["duplicate"]
    assert all(r[3] == 0 for r in results)
    assert env.usage_rows(user) == [row]
    assert env.balance(user) == balance
    assert env.one("SELECT count(*) FROM credit_transactions WHERE user_id = %s",
                   user) == tx_count
    _ledger_consistent(env, user)


def test_client_written_credits_metadata_is_not_trusted(env: PluginEnv) -> None:
    """A client cannot pre-set our context (request id, multiplier, hold) in metadata."""
    victim = env.new_user("victim", credits="4")
    user = env.new_user("spoof", credits="4")
    forged = {"credits": {"request_id": "req_forged", "user_id": victim, "multiplier": "0",
                          "hold": "0", "issued_by": "guess"}}

    chat(env.user_client(user), metadata=forged)

    row = env.wait_for_rows(user, 1)[0]
    assert row["request_id"] != "req_forged"
    assert row["credits_charged"] == expected_credits("openai", "balanced")
    assert env.usage_rows(victim) == []
    assert env.balance(victim) == Decimal("4")


def test_master_key_can_bill_a_named_user_for_settlement(env: PluginEnv) -> None:
    """Settlement keys on the payer, not on the key that called (master key here)."""
    user = env.new_user("named", credits="4")
    chat(env.client(MASTER_KEY), user=user)
    row = env.wait_for_rows(user, 1)[0]
    assert row["success"] is True
    assert row["request_metadata"].get("end_user") == user


# --- other routes and request details ------------------------------------------------------


def test_anthropic_messages_route_is_settled_once(env: PluginEnv) -> None:
    """/v1/messages carries the plugin's context in litellm_metadata, not metadata."""
    for level, provider in (("precision", "anthropic"), ("balanced", "openai")):
        user = env.new_user(f"messages-{level}", credits="10", level=level)
        env.reset_upstreams()
        response = env.http("POST", "/v1/messages", key=f"sk-user-{user}", json={
            "model": "chat", "max_tokens": 5,
            "messages": [{"role": "user", "content": "hello"}]})
        assert response.status_code == 200, response.text
        assert env.served_by() == [provider]
        rows = env.wait_for_rows(user, 1)
        env.settle_quiet(user)
        rows = env.usage_rows(user)
        assert [(r["success"], r["provider"], r["credits_charged"]) for r in rows] == [
            (True, provider, expected_credits(provider, level))]
        assert len(env.usage_debits(user)) == 1




@pytest.mark.parametrize(
    "route", ["chat", "completions"])
def test_a_prompt_costing_more_than_the_balance_is_refused_before_the_call(
    env: PluginEnv, route: str
) -> None:
    user = env.new_user(f"bigprompt-{route}", credits="0.01")
    env.up("openai").configure(prompt_tokens=None)  # count the real prompt: 5000 tokens
    prompt = "word " * 4000  # 0.005 USD on openai = 0.05 credits, 5x the balance
    client = env.user_client(user)

    with pytest.raises(openai.APIStatusError) as caught:
        if route == "chat":
            chat(client, model="solo", content=prompt)
        else:
            client.completions.create(model="solo", prompt=prompt, max_tokens=5)

    assert caught.value.status_code == 402
    assert env.calls()["openai"] == 0
    env.settle_quiet(user)
    assert env.usage_debits(user) == []
    assert env.balance(user) == Decimal("0.01")


def test_app_and_session_ids_come_from_metadata_or_headers(env: PluginEnv) -> None:
    user = env.new_user("app")
    client = env.user_client(user)
    chat(client, metadata={"app_id": "app-meta", "session_id": "sess-meta"})
    chat(client, extra_headers={"x-app-id": "app-hdr", "x-session-id": "sess-hdr"})
    rows = env.wait_for_rows(user, 2)
    assert [(r["app_id"], r["session_id"]) for r in rows] == [
        ("app-meta", "sess-meta"), ("app-hdr", "sess-hdr")]


def test_cached_prompt_tokens_are_recorded(env: PluginEnv) -> None:
    user = env.new_user("cached")
    env.up("openai").configure(cached_tokens=4)
    chat(env.user_client(user))
    row = env.wait_for_rows(user, 1)[0]
    assert (row["prompt_tokens"], row["cached_tokens"]) == (12, 4)
    # No cache-read price on the deployment: cached tokens cost the input price.
    assert row["credits_charged"] == expected_credits("openai", "balanced")


def test_client_disconnect_mid_stream_still_settles_once_and_releases_the_hold(
    env: PluginEnv,
) -> None:
    user = env.new_user("disconnect")
    env.up("openai").configure(stream_chunks=6, chunk_delay_ms=300, completion_tokens=20)
    with httpx.stream("POST", env.proxy.url("/v1/chat/completions"),
                      headers={"Authorization": f"Bearer sk-user-{user}"},
                      json={"model": "solo", "stream": True, "max_tokens": 20,
                            "messages": [{"role": "user", "content": "hi"}]},
                      timeout=30) as response:
        for line in response.iter_lines():
            if line.startswith("data:") and "content" in line:
                break  # hang up after the first content chunk

    rows = env.wait_for_rows(user, 1, timeout=10)
    env.settle_quiet(user)
    rows = env.usage_rows(user)
    assert len(rows) == 1
    assert rows[0]["success"] is True
    assert rows[0]["prompt_tokens"] > 0
    debits = env.usage_debits(user)
    assert len(debits) == 1
    assert -debits[0]["amount"] == rows[0]["credits_charged"] > 0
    assert env.holds(user) == 0


def test_usage_debit_caps_at_the_balance_and_records_the_rest_as_uncollected(
    env: PluginEnv,
) -> None:
    """An admin takes credits away while a request is in flight: the debit takes what is left."""
    user = env.new_user("cap", credits="1")
    env.up("openai").configure(delay_ms=1500)
    outcome: list[Any] = []
    worker = threading.Thread(
        target=lambda: outcome.append(chat(env.user_client(user), model="solo")))
    worker.start()
    env.wait_for(lambda: env.holds(user) == 1, what="the request's hold")
    env.cli("grant", user, "-0.9999")
    assert env.balance(user) == Decimal("0.0001")
    worker.join(30)
    assert outcome, "the request in flight did not succeed"

    cost = expected_credits("openai", "balanced")
    row = env.wait_for_rows(user, 1)[0]
    assert row["credits_charged"] == cost
    debit = env.usage_debits(user)[0]
    assert debit["amount"] == Decimal("-0.0001")
    assert debit["credits_uncollected"] == cost - Decimal("0.0001")
    assert env.balance(user) == 0
    _ledger_consistent(env, user)


def test_monthly_quota_used_up_is_429_with_a_clear_message(env: PluginEnv) -> None:
    user = env.new_user("quota")
    env.sql("UPDATE user_credits SET monthly_quota = 1, monthly_usage = 1,"
            " quota_period_start = date_trunc('month', now() AT TIME ZONE 'UTC')::date"
            " WHERE user_id = %s", user)
    with pytest.raises(openai.RateLimitError) as caught:
        chat(env.user_client(user))
    assert caught.value.status_code == 429
    assert "monthly quota" in str(caught.value.message)
    assert sum(env.calls().values()) == 0
    env.wait_for(lambda: env.usage_rows(user), what="the rejection row")
    env.settle_quiet(user)
    assert [(r["success"], r["status_code"]) for r in env.usage_rows(user)] == [(False, 429)]
    assert env.usage_debits(user) == []
    assert env.balance(user) == 100


def test_a_credits_per_usd_change_applies_within_seconds(env: PluginEnv) -> None:
    """Last in the module: it changes the shared setting (and puts it back)."""
    user = env.new_user("rate", credits="10")
    env.cli("settings", "set", "credits_per_usd", "20")
    try:
        def doubled() -> bool:
            n = len(env.usage_rows(user)) + 1
            chat(env.user_client(user))
            rows = env.wait_for_rows(user, n)
            return bool(rows[-1]["credits_charged"] == 2 * expected_credits("openai", "balanced"))

        env.wait_for(doubled, timeout=4.0, what="the new credits_per_usd to apply")
    finally:
        env.cli("settings", "set", "credits_per_usd", "10")
