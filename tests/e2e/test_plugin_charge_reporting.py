"""The charge reported to the client, settlement before the response, and streams cut short.

Through the real proxy with the official ``openai`` SDK:

* ``usage.cost`` (credits, OpenRouter's convention) in a non-streamed body and in a stream's
  final usage chunk equals the row's ``credits_charged`` exactly (the JSON number's text is the
  Decimal's digits), and so does the ``x-credits-charged`` header of a non-streamed response;
* the settlement record is journaled before the response leaves, settled once, and the
  journal segment is deleted once everything in it is settled;
* a stream the provider cuts after some chunks reached the client is billed what the client
  received - counted with LiteLLM's token counter and priced by LiteLLM's engine - with one
  success row flagged ``partial``, one debit, the hold released.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import httpx
import litellm
import openai
import pytest

from devtools.pg import PgCluster
from devtools.upstream_media import media_settings
from tests.e2e.plugin_env import (
    PluginEnv,
    chat_deployment,
    expected_credits,
    plugin_env,
    raw_chat,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def env(pg_cluster: PgCluster) -> Iterator[PluginEnv]:
    models = {"solo": [chat_deployment("openai", "solo")],
              "claude": [chat_deployment("anthropic", "claude")]}
    with plugin_env(pg_cluster, models, providers=("openai", "anthropic"),
                    label="charge") as penv:
        yield penv


@pytest.fixture(autouse=True)
def _clean_upstreams(env: PluginEnv) -> None:
    env.reset_upstreams()


def _one_row_one_debit(env: PluginEnv, user: str) -> dict[str, Any]:
    env.wait_for_rows(user, 1)
    env.settle_quiet(user)
    rows = env.usage_rows(user)
    debits = env.usage_debits(user)
    assert len(rows) == 1, rows
    assert len(debits) == 1, debits
    assert -debits[0]["amount"] == rows[0]["credits_charged"]
    assert env.holds(user) == 0
    return rows[0]


def _journal_files(env: PluginEnv) -> list[str]:
    journal = env.workdir / "spool" / "journal"
    return sorted(p.name for p in journal.glob("*.jsonl")) if journal.exists() else []


def _fallbacks(env: PluginEnv) -> dict[str, float]:
    """credits_early_settlement_fallbacks_total by reason: requests settled after sending."""
    text = env.http("GET", "/credits/metrics").text
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("credits_early_settlement_fallbacks_total{"):
            labels, value = line.rsplit(" ", 1)
            out[labels.split('reason="', 1)[1].split('"', 1)[0]] = float(value)
    return out


@pytest.fixture(autouse=True)
def _all_settled_before_sending(env: PluginEnv) -> Iterator[None]:
    """Every request of this module is settled before its response leaves (no fallback)."""
    before = _fallbacks(env)
    yield
    assert _fallbacks(env) == before


def test_non_streamed_body_and_header_carry_the_charge(env: PluginEnv) -> None:
    user = env.new_user("cost-body", credits="5", level="precision")

    raw = raw_chat(env.user_client(user), model="solo")
    header = raw.headers.get("x-credits-charged")
    body = json.loads(raw.http_response.text, parse_float=Decimal)
    reply = raw.parse()

    row = _one_row_one_debit(env, user)
    want = expected_credits("openai", "precision")
    assert row["credits_charged"] == want > 0
    assert row["response_metadata"].get("partial") is None
    # The exact decimal, in the JSON text, the SDK's parsed value and the header.
    assert body["usage"]["cost"] == want
    assert reply.usage is not None
    assert Decimal(str(reply.usage.model_extra["cost"])) == want
    assert header is not None and Decimal(header) == want
    assert raw.headers.get("x-credits-remaining") is not None


def test_an_anthropic_messages_answer_is_settled_before_it_leaves(env: PluginEnv) -> None:
    """/v1/messages answers are plain dicts with no cost attached: the hook prices them the
    way LiteLLM's success event would, journals the record, and reports the charge."""
    user = env.new_user("cost-messages", credits="5", level="precision")
    env.up("anthropic").configure(prompt_tokens=40, completion_tokens=9)

    response = env.http("POST", "/v1/messages", key=f"sk-user-{user}", json={
        "model": "claude", "max_tokens": 9, "messages": [{"role": "user", "content": "hi"}]})

    assert response.status_code == 200, response.text
    body = json.loads(response.text, parse_float=Decimal)
    assert body["type"] == "message" and body["usage"]["input_tokens"] == 40
    row = _one_row_one_debit(env, user)
    want = expected_credits("anthropic", "precision", 40, 9)
    assert row["credits_charged"] == want > 0
    assert (row["prompt_tokens"], row["completion_tokens"]) == (40, 9)
    assert row["provider"] == "anthropic"
    # Only a request settled before its answer left has these (the module's fixture also
    # checks that no request fell back to the after-send success event).
    assert Decimal(response.headers["x-credits-charged"]) == want
    assert body["usage"]["cost"] == want


def test_stream_final_usage_chunk_carries_the_charge(env: PluginEnv) -> None:
    user = env.new_user("cost-stream", credits="5")
    env.up("openai").configure(prompt_tokens=40, completion_tokens=9, stream_chunks=4)

    stream = env.user_client(user).chat.completions.create(
        model="solo", messages=[{"role": "user", "content": "stream please"}],
        max_tokens=9, stream=True, stream_options={"include_usage": True})
    chunks = list(stream)
    usage_chunks = [c for c in chunks if c.usage is not None]

    assert len(usage_chunks) == 1
    usage = usage_chunks[0].usage
    assert usage is not None and (usage.prompt_tokens, usage.completion_tokens) == (40, 9)
    row = _one_row_one_debit(env, user)
    want = expected_credits("openai", "balanced", 40, 9)
    assert row["credits_charged"] == want
    assert Decimal(str(usage.model_extra["cost"])) == want
    assert row["request_metadata"].get("stream") is True


def test_stream_without_usage_requested_is_settled_once(env: PluginEnv) -> None:
    user = env.new_user("cost-stream-nousage", credits="5")
    env.up("openai").configure(prompt_tokens=30, completion_tokens=7, stream_chunks=3)

    text = "".join((c.choices[0].delta.content or "") for c in
                   env.user_client(user).chat.completions.create(
                       model="solo", messages=[{"role": "user", "content": "s"}],
                       max_tokens=7, stream=True) if c.choices)

    assert text.startswith("openai:")
    row = _one_row_one_debit(env, user)
    assert row["credits_charged"] == expected_credits("openai", "balanced", 30, 7)


def test_journal_segments_are_deleted_once_settled(env: PluginEnv) -> None:
    user = env.new_user("journal", credits="5")
    for _ in range(3):
        raw_chat(env.user_client(user), model="solo").parse()
    env.wait_for_rows(user, 3)
    # A segment is retired after 2 s and deleted when all its records are settled; the
    # writer's sync task checks every second.
    env.wait_for(lambda: not _journal_files(env), timeout=10, what="an empty journal")


def _cut_stream(env: PluginEnv, user: str, chunks: int, die_after: int,
                completion_tokens: int = 20, status: int = 200) -> tuple[str, list[str]]:
    server = env.up("openai")
    # A small delay per chunk, so each one leaves the stand-in before it cuts the connection.
    server.configure(stream_chunks=chunks, completion_tokens=completion_tokens,
                     chunk_delay_ms=30)
    media_settings(server).die_after_chunks = die_after
    received: list[str] = []
    lines: list[str] = []
    with httpx.stream("POST", env.proxy.url("/v1/chat/completions"),
                      headers={"Authorization": f"Bearer sk-user-{user}"},
                      json={"model": "solo", "stream": True, "max_tokens": completion_tokens,
                            "messages": [{"role": "user", "content": "tell me a story"}]},
                      timeout=30) as response:
        assert response.status_code == status
        for line in response.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            lines.append(line)
            event = json.loads(line[6:])
            for choice in event.get("choices") or ():
                received.append((choice.get("delta") or {}).get("content") or "")
    return "".join(received), lines


def test_stream_cut_short_bills_what_the_client_received_once(env: PluginEnv) -> None:
    user = env.new_user("cut", credits="5")

    text, lines = _cut_stream(env, user, chunks=6, die_after=3)

    assert text, lines
    assert any('"error"' in line for line in lines), lines  # the client is told it broke
    row = _one_row_one_debit(env, user)
    assert row["success"] is True and row["status_code"] == 200
    assert row["response_metadata"]["partial"] is True
    # What the client received, counted by LiteLLM's token counter...
    assert row["completion_tokens"] == litellm.token_counter(
        model=row["model"], text=text, count_response_tokens=True)
    assert row["prompt_tokens"] > 0
    assert row["completion_tokens"] < 20  # not the whole answer the provider would have sent
    # ...and priced by the engine with the deployment's prices.
    want = expected_credits("openai", "balanced", row["prompt_tokens"],
                            row["completion_tokens"])
    assert row["credits_charged"] == want > 0
    assert env.balance(user) == Decimal("5") - want
    # No failure row and no second bill: the failure hook saw it was settled.
    assert env.dict_rows("SELECT count(*) AS n FROM llm_usage_log WHERE user_id = %s",
                         user)[0]["n"] == 1


def test_stream_cut_before_any_text_moves_no_money(env: PluginEnv) -> None:
    user = env.new_user("cut0", credits="5")

    # Cut before the first chunk: the proxy has not sent its headers yet, so it answers 500.
    text, _ = _cut_stream(env, user, chunks=4, die_after=0, status=500)

    assert text == ""
    rows = env.wait_for_rows(user, 1)
    env.settle_quiet(user)
    rows = env.usage_rows(user)
    assert len(rows) == 1
    assert rows[0]["success"] is False
    assert rows[0]["credits_charged"] == 0
    assert env.usage_debits(user) == []
    assert env.balance(user) == Decimal("5")


def test_openai_sdk_sees_the_cut_as_an_error_after_text(env: PluginEnv) -> None:
    user = env.new_user("cut-sdk", credits="5")
    server = env.up("openai")
    server.configure(stream_chunks=5, completion_tokens=15, chunk_delay_ms=30)
    media_settings(server).die_after_chunks = 2
    got: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in env.user_client(user).chat.completions.create(
                model="solo", messages=[{"role": "user", "content": "x"}], max_tokens=15,
                stream=True):
            got.extend(c.delta.content or "" for c in chunk.choices)
    assert "".join(got)
    row = _one_row_one_debit(env, user)
    assert row["response_metadata"]["partial"] is True
    assert row["credits_charged"] > 0
