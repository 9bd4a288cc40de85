"""Every priced route through the real proxy is billed LiteLLM's own cost for it, with a hold.

One proxy, deployments of models LiteLLM's map prices (no custom prices, so the engine's own
sheet applies) plus two custom-priced ones, all pointing at the stand-ins of
``devtools/upstream_media.py``. Each test sends one request with the official ``openai`` SDK
(or httpx in Anthropic's wire format: the ``anthropic`` SDK is not installed here) and checks:

* a hold was placed (``credits_holds_total{event="placed"}`` moved by one);
* exactly one usage row and one usage debit;
* the charge = LiteLLM's ``response_cost`` for the row (kept in ``response_metadata``) x
  credits_per_usd x the level's multiplier, to 1e-8 credits; where the price sheet makes it
  easy, ``response_cost`` is also checked against the sheet itself.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import httpx
import litellm
import openai
import pytest

from devtools.pg import PgCluster
from devtools.proxy import MASTER_KEY, DeploymentSpec, user_key
from devtools.upstream_media import media_settings, reset_media
from tests.e2e.plugin_env import (
    CREDIT_PLACES,
    CREDITS_PER_USD,
    MULTIPLIER,
    PluginEnv,
    credits_config,
    plugin_env,
)

pytestmark = pytest.mark.e2e

D = Decimal
CLAUDE = "claude-sonnet-4-20250514"
PROVIDERS = ("openai", "anthropic", "openrouter", "cohere")
# A custom-priced deployment that declares its cache prices, and one that does not.
DECLARED = {"input_cost_per_token": 2e-06, "output_cost_per_token": 8e-06,
            "cache_read_input_token_cost": 5e-07, "cache_creation_input_token_cost": 2.5e-06}
UNDECLARED = {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06}


def sheet(model: str, key: str) -> Decimal:
    return D(repr(litellm.model_cost[model][key]))


def _model_list(bases: dict[str, str]) -> list[dict[str, Any]]:
    oa = bases["openai"]
    anthropic = bases["anthropic"]
    cohere = bases["cohere"].removesuffix("/v1")

    def dep(group: str, model: str, base: str, provider: str, **params: Any) -> dict[str, Any]:
        info = params.pop("model_info", {})
        return {"model_name": group,
                "litellm_params": {"model": model, "api_base": base,
                                   "api_key": f"sk-platform-{provider}", **params},
                "model_info": {"id": f"{group}-dep", "provider": provider, **info}}

    return [
        dep("gpt-4o", "openai/gpt-4o", oa, "openai"),
        dep(CLAUDE, f"anthropic/{CLAUDE}", anthropic, "anthropic"),
        dep("declared-cache", "openai/unmapped-declared-x", oa, "openai",
            model_info={**DECLARED, "mode": "chat"}),
        dep("undeclared-cache", "openai/unmapped-undeclared-x", oa, "openai", **UNDECLARED),
        dep("audio", "openai/gpt-4o-audio-preview", oa, "openai"),
        dep("dalle", "openai/dall-e-3", oa, "openai"),
        dep("whisper", "openai/whisper-1", oa, "openai"),
        dep("tts", "openai/tts-1", oa, "openai"),
        dep("tts-tokens", "openai/gpt-4o-mini-tts", oa, "openai"),
        dep("rerank", "cohere/rerank-english-v3.0", cohere, "cohere"),
        dep("router-mini", "openrouter/openai/gpt-4o-mini", bases["openrouter"], "openrouter"),
        # The stand-ins have no embeddings route: LiteLLM's own mock answers (usage included).
        dep("embed", "openai/text-embedding-3-small", oa, "openai", mock_response=[0.1, 0.2]),
    ]


@pytest.fixture(scope="module")
def env(pg_cluster: PgCluster) -> Iterator[PluginEnv]:
    def edit(cfg: dict[str, Any]) -> None:
        bases = {d["model_info"]["provider"]: d["litellm_params"]["api_base"]
                 for d in cfg["model_list"]}
        cfg["model_list"] = _model_list(bases)
        cfg["environment_variables"] = {
            "OPENAI_API_BASE": bases["openai"].removesuffix("/v1"),
            "OPENAI_API_KEY": "sk-platform-openai",
            "ANTHROPIC_API_BASE": bases["anthropic"], "ANTHROPIC_API_KEY": "sk-platform-anth",
        }

    # One placeholder deployment per stand-in, only so that ``edit`` can read their URLs.
    models = {"probe": [DeploymentSpec(provider=p) for p in PROVIDERS]}
    config = credits_config(pass_through_billing=True)
    with plugin_env(pg_cluster, models, providers=PROVIDERS, config=config, label="pricing",
                    edit_config=edit) as penv:
        yield penv


@pytest.fixture(autouse=True)
def _clean(env: PluginEnv) -> None:
    env.reset_upstreams()
    for server in env.ups:
        reset_media(server)


# --- helpers ---------------------------------------------------------------------------------

def holds_placed(env: PluginEnv) -> float:
    text = env.http("GET", "/credits/metrics").text
    match = re.search(r'^credits_holds_total\{event="placed"\} ([0-9.e+]+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def metric(env: PluginEnv, name: str, labels: str = "") -> float:
    text = env.http("GET", "/credits/metrics").text
    pattern = rf"^{re.escape(name)}{re.escape(labels)} ([0-9.e+-]+)$"
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else 0.0


def credits_of(usd: Decimal, level: str) -> Decimal:
    return (usd * CREDITS_PER_USD * MULTIPLIER[level]).quantize(CREDIT_PLACES, ROUND_HALF_EVEN)


class Billing:
    """One request's user, level and the hold counter before it."""

    def __init__(self, env: PluginEnv, level: str = "balanced") -> None:
        self.env = env
        self.level = level
        self.user = env.new_user("price", credits="100", level=level)
        self.placed = holds_placed(env)

    def client(self) -> openai.OpenAI:
        return self.env.user_client(self.user)

    def settled(self) -> dict[str, Any]:
        """The one usage row, after checking one hold, one debit and the charge's formula."""
        env = self.env
        rows = env.wait_for_rows(self.user, 1)
        env.settle_quiet(self.user)
        rows = env.usage_rows(self.user)
        assert len(rows) == 1, rows
        row = rows[0]
        assert row["success"] is True, row
        assert holds_placed(env) >= self.placed + 1
        debits = env.usage_debits(self.user)
        assert len(debits) == 1, debits
        assert -debits[0]["amount"] == row["credits_charged"]
        meta = row["response_metadata"]
        assert meta["priced_from"] == "litellm", meta
        engine = D(meta["litellm_response_cost"])
        assert engine > 0
        assert abs(row["credits_charged"] - credits_of(engine, self.level)) <= D("1e-8")
        assert env.balance(self.user) == D("100") - row["credits_charged"]
        return row


def engine_usd(row: dict[str, Any]) -> Decimal:
    return D(row["response_metadata"]["litellm_response_cost"])


# --- chat with prompt caching ----------------------------------------------------------------

def test_openai_prompt_caching(env: PluginEnv) -> None:
    env.up("openai").configure(prompt_tokens=1000, completion_tokens=200, cached_tokens=400)
    bill = Billing(env, "precision")
    out = bill.client().chat.completions.create(
        model="gpt-4o", messages=[{"role": "user", "content": "hi"}], max_tokens=200)
    assert out.usage is not None
    row = bill.settled()
    want = (600 * sheet("gpt-4o", "input_cost_per_token")
            + 400 * sheet("gpt-4o", "cache_read_input_token_cost")
            + 200 * sheet("gpt-4o", "output_cost_per_token"))
    assert abs(engine_usd(row) - want) < D("1e-12")
    assert row["response_metadata"]["priced_dimensions"] == ["input", "cache_read", "output"]
    assert row["cached_tokens"] == 400


def anthropic_messages(env: PluginEnv, user: str, **body: Any) -> httpx.Response:
    payload = {"model": CLAUDE, "max_tokens": 200,
               "messages": [{"role": "user", "content": "hi"}], **body}
    return httpx.post(env.proxy.url("/v1/messages"), json=payload, timeout=30.0,
                      headers={"x-api-key": user_key(user), "anthropic-version": "2023-06-01"})


def test_anthropic_prompt_cache_write_and_read(env: PluginEnv) -> None:
    server = env.up("anthropic")
    server.configure(prompt_tokens=1000, completion_tokens=200, cached_tokens=400)
    media_settings(server).cache_creation_tokens = 300
    bill = Billing(env)
    resp = anthropic_messages(env, bill.user)
    assert resp.status_code == 200, resp.text
    row = bill.settled()
    # 1000 prompt tokens reported as 600 input + 400 cache reads, plus 300 cache writes
    # billed at the 1.25x cache-creation price (the 0.04313 vs 0.05063 case).
    want = (600 * sheet(CLAUDE, "input_cost_per_token")
            + 400 * sheet(CLAUDE, "cache_read_input_token_cost")
            + 300 * sheet(CLAUDE, "cache_creation_input_token_cost")
            + 200 * sheet(CLAUDE, "output_cost_per_token"))
    assert abs(engine_usd(row) - want) < D("1e-12")
    assert "cache_creation" in row["response_metadata"]["priced_dimensions"]
    assert "cache_read" in row["response_metadata"]["priced_dimensions"]


def test_declared_deployment_cache_prices(env: PluginEnv) -> None:
    env.up("openai").configure(prompt_tokens=900, completion_tokens=100, cached_tokens=500)
    bill = Billing(env)
    bill.client().chat.completions.create(
        model="declared-cache", messages=[{"role": "user", "content": "hi"}], max_tokens=100)
    row = bill.settled()
    want = 400 * D("0.000002") + 500 * D("0.0000005") + 100 * D("0.000008")
    assert abs(engine_usd(row) - want) < D("1e-12")


def test_undeclared_cache_prices_default_to_the_input_price(env: PluginEnv) -> None:
    """Custom per-token prices for a model LiteLLM does not know: LiteLLM alone would price
    the cached tokens at 0; the plugin registers them at the input price."""
    env.up("openai").configure(prompt_tokens=900, completion_tokens=100, cached_tokens=500)
    bill = Billing(env)
    bill.client().chat.completions.create(
        model="undeclared-cache", messages=[{"role": "user", "content": "hi"}], max_tokens=100)
    row = bill.settled()
    want = 900 * D("0.000001") + 100 * D("0.000002")  # cached tokens at the input price
    assert abs(engine_usd(row) - want) < D("1e-12")


# --- audio, images, transcription, speech, rerank -------------------------------------------

def test_chat_with_audio_output(env: PluginEnv) -> None:
    m = "gpt-4o-audio-preview"
    env.up("openai").configure(prompt_tokens=100, completion_tokens=500)
    media_settings(env.up("openai")).audio_output_tokens = 450
    bill = Billing(env)
    bill.client().chat.completions.create(
        model="audio", modalities=["text", "audio"], audio={"voice": "alloy", "format": "wav"},
        messages=[{"role": "user", "content": "say hi"}], max_tokens=500)
    row = bill.settled()
    want = (100 * sheet(m, "input_cost_per_token") + 50 * sheet(m, "output_cost_per_token")
            + 450 * sheet(m, "output_cost_per_audio_token"))
    assert abs(engine_usd(row) - want) < D("1e-12")
    assert "audio_out" in row["response_metadata"]["priced_dimensions"]


def test_images(env: PluginEnv) -> None:
    bill = Billing(env, "eco")
    out = bill.client().images.generate(model="dalle", prompt="a cat", n=2, size="1024x1024")
    assert len(out.data) == 2
    row = bill.settled()
    assert row["response_metadata"]["priced_dimensions"] == ["image"]


def test_transcription(env: PluginEnv) -> None:
    media_settings(env.up("openai")).transcription_seconds = 12.5
    bill = Billing(env)
    out = bill.client().audio.transcriptions.create(
        model="whisper", file=("a.wav", b"RIFF....WAVEfmt " + b"\x00" * 64))
    assert out.text
    row = bill.settled()
    per_second = sheet("whisper-1", "input_cost_per_second")
    assert abs(engine_usd(row) - D("12.5") * per_second) < D("1e-12")


def test_speech_per_character(env: PluginEnv) -> None:
    bill = Billing(env)
    text = "hello there, this is a test"
    out = bill.client().audio.speech.create(model="tts", voice="alloy", input=text)
    assert out.content
    row = bill.settled()
    # LiteLLM counts the characters without whitespace (22 here, not 27).
    assert abs(engine_usd(row) - D(repr(litellm.completion_cost(
        model="tts-1", custom_llm_provider="openai", call_type="speech", prompt=text)))) \
        < D("1e-12")
    want = len("".join(text.split())) * sheet("tts-1", "input_cost_per_character")
    assert abs(engine_usd(row) - want) < D("1e-12")


def test_speech_token_priced_is_never_free(env: PluginEnv) -> None:
    """gpt-4o-mini-tts is priced per token; whatever LiteLLM's cost for it, the request is
    billed (its cost, or its hold when the engine says 0) and never served free."""
    bill = Billing(env)
    out = bill.client().audio.speech.create(model="tts-tokens", voice="alloy", input="hello")
    assert out.content
    rows = env.wait_for_rows(bill.user, 1)
    assert len(rows) == 1 and rows[0]["credits_charged"] > 0
    assert len(env.usage_debits(bill.user)) == 1
    assert holds_placed(env) >= bill.placed + 1
    meta = rows[0]["response_metadata"]
    if meta["priced_from"] == "litellm":
        assert abs(rows[0]["credits_charged"]
                   - credits_of(D(meta["litellm_response_cost"]), "balanced")) <= D("1e-8")
    else:
        assert meta["priced_from"] == "hold"


def test_rerank_per_query(env: PluginEnv) -> None:
    media_settings(env.up("cohere")).search_units = 1
    bill = Billing(env)
    resp = env.http("POST", "/v1/rerank", key=user_key(bill.user),
                    json={"model": "rerank", "query": "which?", "documents": ["a", "b", "c"]})
    assert resp.status_code == 200, resp.text
    row = bill.settled()
    assert abs(engine_usd(row) - sheet("rerank-english-v3.0", "input_cost_per_query")) \
        < D("1e-12")
    assert row["response_metadata"]["priced_dimensions"] == ["query"]


def test_embeddings(env: PluginEnv) -> None:
    bill = Billing(env, "precision")
    out = bill.client().embeddings.create(model="embed", input=["hello world"])
    assert out.data
    row = bill.settled()
    want = row["prompt_tokens"] * sheet("text-embedding-3-small", "input_cost_per_token")
    assert row["prompt_tokens"] > 0 and abs(engine_usd(row) - want) < D("1e-12")


# --- a provider that reports its own cost ----------------------------------------------------

def test_openrouter_usage_cost_and_drift(env: PluginEnv) -> None:
    media_settings(env.up("openrouter")).provider_cost = 0.00042
    drift_before = metric(env, "credits_cost_drift_usd_total", '{provider="openrouter"}')
    bill = Billing(env)
    bill.client().chat.completions.create(
        model="router-mini", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    row = bill.settled()
    meta = row["response_metadata"]
    # LiteLLM's response_cost for OpenRouter IS the provider's stated cost; the map's cost of
    # the same usage is recorded beside it, and their difference counted.
    assert engine_usd(row) == D("0.00042")
    assert D(meta["provider_reported_cost_usd"]) == D("0.00042")
    assert meta["engine_cost_usd"] is not None
    diff = abs(D("0.00042") - D(meta["engine_cost_usd"]))
    got = metric(env, "credits_cost_drift_usd_total", '{provider="openrouter"}') - drift_before
    assert abs(D(repr(got)) - diff) < D("1e-12")


# --- pass-through routes, opened by pass_through_billing -------------------------------------

def test_openai_pass_through_unpriced_by_litellm_bills_its_hold(env: PluginEnv) -> None:
    """LiteLLM 1.102.4 prices an /openai pass-through call only when the upstream host is
    OpenAI's own (``_is_openai_compatible_host``); toward the stand-in its cost is 0. Such a
    call is still held, and billed that hold, never 0 (I5), and counted."""
    env.up("openai").configure(prompt_tokens=30, completion_tokens=7)
    counted = metric(env, "credits_zero_cost_billed_hold_total",
                     '{call_type="pass_through_endpoint"}')
    bill = Billing(env)
    resp = env.http("POST", "/openai/v1/chat/completions", key=user_key(bill.user),
                    json={"model": "gpt-4o", "max_tokens": 7,
                          "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200, resp.text
    rows = env.wait_for_rows(bill.user, 1)
    env.settle_quiet(bill.user)
    rows = env.usage_rows(bill.user)
    assert len(rows) == 1 and len(env.usage_debits(bill.user)) == 1
    assert holds_placed(env) >= bill.placed + 1
    meta = rows[0]["response_metadata"]
    assert meta["priced_from"] == "hold" and rows[0]["credits_charged"] > 0
    assert D(meta["full_credits"]) == rows[0]["credits_charged"]
    assert metric(env, "credits_zero_cost_billed_hold_total",
                  '{call_type="pass_through_endpoint"}') == counted + 1


def test_anthropic_pass_through_is_held_and_billed_from_the_usage(env: PluginEnv) -> None:
    env.up("anthropic").configure(prompt_tokens=40, completion_tokens=9)
    bill = Billing(env)
    resp = httpx.post(env.proxy.url("/anthropic/v1/messages"), timeout=30.0,
                      headers={"x-api-key": user_key(bill.user),
                               "anthropic-version": "2023-06-01"},
                      json={"model": CLAUDE, "max_tokens": 9,
                            "messages": [{"role": "user", "content": "hi"}]})
    assert resp.status_code == 200, resp.text
    row = bill.settled()
    want = (40 * sheet(CLAUDE, "input_cost_per_token")
            + 9 * sheet(CLAUDE, "output_cost_per_token"))
    assert abs(engine_usd(row) - want) < D("1e-12")


def test_master_key_sanity(env: PluginEnv) -> None:
    """The proxy serves the plain chat group as before (the module's config is sound)."""
    out = env.client(MASTER_KEY).models.list()
    assert any(m.id == "gpt-4o" for m in out.data)
