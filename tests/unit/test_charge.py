"""The charge from LiteLLM's cost (``settlement.build.charge_from_slo``), its rules (cache hit,
zero-completion insurance, zero cost billed the hold), the record's pricing metadata, the hold
request read from a request, the catalog's prices and the engine entries the runtime adds."""

from __future__ import annotations

import uuid
from decimal import Decimal
from pathlib import Path
from typing import Any

import litellm
import pytest

from litellm_credits import guard, pricing, runtime
from litellm_credits.config_schema import ModelPrice
from litellm_credits.context import RequestContext
from litellm_credits.cost import CREDIT_QUANTUM
from litellm_credits.errors import ConfigError
from litellm_credits.hold_prices import HoldRequest
from litellm_credits.observe import metrics
from litellm_credits.plugin import route_policy
from litellm_credits.settings import Settings, load
from litellm_credits.settlement.build import (
    PricingPolicy,
    charge_from_slo,
    insured,
    success_record,
)

D = Decimal
CTX = RequestContext(request_id="req_1", user_id="ann", power_level="precision",
                     multiplier=D("1.5"), hold=D("2.5"), credits_per_usd=D("10"),
                     model_group="chat", route_rule="preferred")
POLICY = PricingPolicy(byok_fee_percent=D("5"))


def slo(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "call_type": "acompletion", "prompt_tokens": 100, "completion_tokens": 20,
        "total_tokens": 120, "response_cost": 0.00015, "cache_hit": False,
        "custom_llm_provider": "openai", "model_id": "chat-openai",
        "metadata": {"usage_object": {"prompt_tokens": 100, "completion_tokens": 20}},
        "response": {"choices": [{"finish_reason": "stop"}]},
    }
    base.update(kw)
    return base


def sample(name: str, labels: dict[str, str]) -> float:
    return metrics.REGISTRY.get_sample_value(name, labels) or 0.0


# --- the charge ------------------------------------------------------------------------------

def test_the_charge_is_litellms_cost_times_rate_and_multiplier() -> None:
    c = charge_from_slo(slo(), CTX, byok=False, policy=POLICY)
    assert c.provider_cost_usd == D("0.00015") and c.priced_from == "litellm"
    assert c.credits == c.full_credits == D("0.00225000")  # 0.00015 * 10 * 1.5
    assert c.litellm_response_cost == "0.00015"
    assert c.dimensions == ("input", "output")


def test_the_float_is_read_through_its_shortest_repr() -> None:
    # 0.1 + 0.2 is the float LiteLLM would add up; its repr, not its binary value, is billed.
    c = charge_from_slo(slo(response_cost=0.1 + 0.2), CTX, byok=False, policy=POLICY)
    assert c.provider_cost_usd == D("0.30000000000000004")
    assert c.credits == (D("0.30000000000000004") * 15).quantize(CREDIT_QUANTUM)


def test_byok_pays_the_fee_of_the_full_charge() -> None:
    c = charge_from_slo(slo(), CTX, byok=True, policy=POLICY)
    assert c.full_credits == D("0.00225000") and c.credits == D("0.00011250")


def test_a_cache_hit_costs_nothing() -> None:
    c = charge_from_slo(slo(cache_hit=True), CTX, byok=False, policy=POLICY)
    assert (c.credits, c.priced_from) == (0, "cache_hit")


@pytest.mark.parametrize("cost", [0.0, None, "junk", -1.0, float("nan")])
def test_a_zero_or_unusable_cost_with_usage_bills_the_hold_and_is_counted(cost: Any) -> None:
    before = sample("credits_zero_cost_billed_hold_total", {"call_type": "acompletion"})
    c = charge_from_slo(slo(response_cost=cost), CTX, byok=False, policy=POLICY)
    assert (c.credits, c.priced_from) == (D("2.5"), "hold")
    assert sample("credits_zero_cost_billed_hold_total", {"call_type": "acompletion"}) \
        == before + 1


@pytest.mark.parametrize("call_type", ["aimage_generation", "aspeech", "atranscription",
                                       "arerank", "pass_through_endpoint"])
def test_media_and_pass_through_calls_without_tokens_are_never_free(call_type: str) -> None:
    c = charge_from_slo(slo(call_type=call_type, prompt_tokens=0, completion_tokens=0,
                            response_cost=0.0, metadata={}), CTX, byok=False, policy=POLICY)
    assert c.priced_from == "hold" and c.credits == D("2.5")


def test_no_usage_and_no_cost_is_zero() -> None:
    c = charge_from_slo(slo(call_type="aembedding", prompt_tokens=0, completion_tokens=0,
                            response_cost=0.0, metadata={}), CTX, byok=False, policy=POLICY)
    assert c.priced_from == "litellm" and c.credits == 0


# --- zero-completion insurance ---------------------------------------------------------------

@pytest.mark.parametrize(("fields", "covered"), [
    ({"response": {"choices": [{"finish_reason": None}]}}, True),
    ({"response": {"choices": [{"finish_reason": "error"}]}}, True),
    ({"response": {"choices": [{"finish_reason": "stop"}]}, "error_str": "upstream died"}, True),
    ({"response": {"stop_reason": None}, "call_type": "anthropic_messages"}, True),
    ({"response": {"status": "failed"}, "call_type": "aresponses"}, True),
    ({"response": {"choices": [{"finish_reason": "stop"}]}}, False),
    ({"response": {"choices": [{"finish_reason": "tool_calls"}]}}, False),
    ({"error_str": "Client disconnected the request"}, False),  # the client hung up
    ({"call_type": "aembedding", "response": None}, False),
    ({"completion_tokens": 1, "response": None}, False),
])
def test_insurance_rule(fields: dict[str, Any], covered: bool) -> None:
    record = slo(**{"completion_tokens": 0, **fields})
    assert insured(record) is covered
    c = charge_from_slo(record, CTX, byok=False, policy=POLICY)
    assert (c.credits == 0 and c.insured) is covered


def test_insurance_is_a_setting() -> None:
    off = PricingPolicy(zero_completion_insurance=False)
    c = charge_from_slo(slo(completion_tokens=0, response={"choices": [{}]}), CTX, byok=False,
                        policy=off)
    assert c.priced_from == "litellm" and c.credits > 0


# --- provider-reported cost ------------------------------------------------------------------

def test_provider_cost_is_recorded_beside_the_engine_cost_and_counted() -> None:
    model = "openrouter/openai/gpt-4o-mini"
    record = slo(model=model, model_id=None, custom_llm_provider="openrouter",
                 response_cost=0.00042,
                 hidden_params={"additional_headers": {
                     "llm_provider-x-litellm-response-cost": 0.00042}},
                 metadata={"usage_object": {"prompt_tokens": 100, "completion_tokens": 20,
                                            "cost": 0.00042}})
    before = sample("credits_cost_drift_usd_total", {"provider": "openrouter"})
    c = charge_from_slo(record, CTX, byok=False, policy=POLICY)
    sheet = litellm.model_cost[model]
    engine = (100 * D(repr(sheet["input_cost_per_token"]))
              + 20 * D(repr(sheet["output_cost_per_token"])))
    assert c.provider_reported_usd == D("0.00042") and c.provider_cost_usd == D("0.00042")
    assert c.engine_usd is not None and abs(c.engine_usd - engine) < D("1e-15")
    got = sample("credits_cost_drift_usd_total", {"provider": "openrouter"}) - before
    assert abs(D(repr(got)) - abs(D("0.00042") - engine)) < D("1e-12")
    meta = success_record(CTX, record, provider="openrouter", charge=c, byok_key_id=None,
                          app_id=None, session_id=None).response_metadata
    assert meta["provider_reported_cost_usd"] == "0.00042"
    assert D(meta["engine_cost_usd"]) == c.engine_usd


def test_litellms_own_usage_cost_is_not_a_provider_report() -> None:
    record = slo(metadata={"usage_object": {"prompt_tokens": 100, "completion_tokens": 20,
                                            "cost": 0.00015}})
    assert pricing.provider_reported_usd(record) is None


# --- the record ------------------------------------------------------------------------------

def test_success_record_prices_from_the_slo_when_no_charge_is_given() -> None:
    record = success_record(CTX, slo(), provider="openai", byok_key_id=None, app_id=None,
                            session_id=None, policy=POLICY)
    assert record.credits_charged == D("0.00225000")
    assert record.provider_cost_usd == D("0.0001500000")
    meta = record.response_metadata
    assert meta["priced_from"] == "litellm" and meta["litellm_response_cost"] == "0.00015"
    assert meta["priced_dimensions"] == ["input", "output"]
    assert "insured" not in meta
    insured_meta = success_record(
        CTX, slo(completion_tokens=0, response=None), provider="openai", byok_key_id=None,
        app_id=None, session_id=None, policy=POLICY).response_metadata
    assert insured_meta["insured"] is True and insured_meta["priced_from"] == "insured"


# --- holds from the request ------------------------------------------------------------------

def test_hold_request_reads_every_mode() -> None:
    images = pricing.hold_request({"prompt": "a cat", "n": 3, "size": "1024x1536"})
    assert (images.images, images.pixels) == (3, 1024 * 1536)
    assert pricing.hold_request({"prompt": "x", "size": "auto"}).pixels is None
    speech = pricing.hold_request({"input": "hello there"})
    assert speech.characters == 11
    rerank = pricing.hold_request({"query": "q", "documents": ["a", "b", {"text": "c"}]})
    assert rerank.documents == 3 and rerank.prompt_tokens > 8
    chat = pricing.hold_request({"messages": [{"role": "user", "content": "hi"}],
                                 "max_tokens": 7, "max_completion_tokens": True})
    assert chat.max_output_tokens == 7
    assert pricing.hold_request({"input": "x", "max_output_tokens": 9}).max_output_tokens == 9
    assert pricing.hold_request({}, default_max=55).max_output_tokens == 55


def test_hold_units_fall_back_to_the_token_price() -> None:
    price = pricing.Price(D("0.000001"), D("0.000002"), max_output_tokens=100)
    units = price.hold_units()
    assert units.priced and units.mode == "chat"
    assert units.hold_usd(HoldRequest(prompt_tokens=10, max_output_tokens=500)) \
        == 10 * D("0.000001") + 100 * D("0.000002")


# --- the catalog -----------------------------------------------------------------------------

def entry(group: str, model: str, info: dict[str, Any] | None = None, **params: Any
          ) -> dict[str, Any]:
    return {"model_name": group, "litellm_params": {"model": model, **params},
            "model_info": {"id": f"{group}-{uuid.uuid4().hex[:6]}", **(info or {})}}


def test_catalog_price_every_mode_and_unpriced() -> None:
    rerank = pricing.catalog_price(entry("rr", "cohere/rerank-english-v3.0"), {}, {})
    assert rerank is not None and rerank.units is not None and rerank.units.mode == "rerank"
    assert rerank.input_per_token == 0  # routing sees no token price; the hold has a query fee
    assert rerank.hold_units().hold_usd(HoldRequest(documents=3)) > 0
    assert pricing.catalog_price(entry("x", "openai/no-such-model-here"), {}, {}) is None


def test_catalog_price_uses_model_prices_by_group_with_any_cost_key() -> None:
    prices = {"my-rerank": ModelPrice(costs={"input_cost_per_query": D("0.002")},
                                      mode="rerank")}
    price = pricing.catalog_price(entry("my-rerank", "openai/private-reranker"), prices, {})
    assert price is not None and price.units is not None
    assert price.units.mode == "rerank" and price.units.per_query == D("0.002")


def test_deployment_cache_defaults() -> None:
    custom = entry("c", "openai/unmapped", input_cost_per_token=1e-06,
                   output_cost_per_token=2e-06)
    registered = {"input_cost_per_token": 1e-06, "output_cost_per_token": 2e-06}
    assert pricing.deployment_cache_defaults(custom, registered) == {
        "cache_read_input_token_cost": 1e-06, "cache_creation_input_token_cost": 1e-06}
    declared = entry("d", "openai/unmapped", {"cache_read_input_token_cost": 0.0},
                     input_cost_per_token=1e-06)
    assert pricing.deployment_cache_defaults(declared, registered) == {
        "cache_creation_input_token_cost": 1e-06}  # an explicit 0 is the operator's word
    mapped = entry("m", "openai/gpt-4o")
    assert pricing.deployment_cache_defaults(mapped, registered) == {}


def test_runtime_engine_entries_for_group_prices_and_cache_defaults() -> None:
    settings = Settings(model_prices={"grp": ModelPrice(D("0.000001"), D("0.000002"), costs={
        "input_cost_per_token": D("0.000001"), "output_cost_per_token": D("0.000002")})})
    by_group = entry("grp", "openai/grp-model-x")
    custom = entry("c", "openai/unmapped", input_cost_per_token=1e-06)
    cost_map = {custom["model_info"]["id"]: {"input_cost_per_token": 1e-06}}
    by_model, by_id = runtime.price_engine_entries([by_group, custom], settings, cost_map)
    assert by_model == {"openai/grp-model-x": {"input_cost_per_token": D("0.000001"),
                                               "output_cost_per_token": D("0.000002")}}
    assert by_id[custom["model_info"]["id"]]["cache_read_input_token_cost"] == 1e-06
    # Once registered, nothing is registered again.
    cost_map.update({"openai/grp-model-x": {"input_cost_per_token": 1e-06,
                                            "output_cost_per_token": 2e-06}})
    cost_map.update(by_id)
    assert runtime.price_engine_entries([by_group, custom], settings, cost_map) == ({}, {})


# --- settings and the guard's policy ---------------------------------------------------------

def write(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "credits.yaml"
    path.write_text(text)
    return {"CREDITS_CONFIG": str(path)}


def test_settings_new_keys(tmp_path: Path) -> None:
    loaded = load(write(tmp_path, (
        "allow_unbilled_routes: [batches]\npass_through_billing: true\n"
        "zero_completion_insurance: false\n"
        "model_prices:\n  rr: {input_cost_per_query: '0.002', mode: rerank}\n")))
    assert loaded.allow_unbilled_routes == ("batches",)
    assert loaded.pass_through_billing is True and loaded.zero_completion_insurance is False
    assert loaded.model_prices["rr"].costs == {"input_cost_per_query": D("0.002")}
    assert loaded.model_prices["rr"].engine_entry() == {"input_cost_per_query": D("0.002"),
                                                        "mode": "rerank"}
    defaults = load({})
    assert defaults.zero_completion_insurance is True and defaults.pass_through_billing is False


@pytest.mark.parametrize(("text", "message"), [
    ("pass_through_billing: yes please\n", "pass_through_billing must be true or false"),
    ("allow_unbilled_routes: batches\n", "allow_unbilled_routes must be a list"),
    ("zero_completion_insurance: 1\n", "zero_completion_insurance must be true or false"),
    ("model_prices:\n  m: {mode: chat}\n", "names no price"),
    ("model_prices:\n  m: {input_cost_per_token: '-1'}\n", "cannot be negative"),
    ("pass_through_biling: true\n", "did you mean 'pass_through_billing'"),
])
def test_settings_new_keys_refuse_bad_values(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load(write(tmp_path, text))


def test_route_policy_from_settings() -> None:
    closed = route_policy(Settings())
    assert closed.decide("/v1/threads/t/runs") is not None
    assert closed.decide("/anthropic/v1/messages") is not None
    opened = route_policy(Settings(allow_unbilled_routes=("batches",),
                                   pass_through_billing=True),
                          {"pass_through_endpoints": [{"path": "/my-llm"}]})
    assert opened.decide("/v1/batches") is None
    assert opened.decide("/anthropic/v1/messages") is None
    assert opened.decide("/my-llm/v1/x") is None
    assert opened.family("/my-llm/v1/x") == guard.PASS_THROUGH
    with pytest.raises(ConfigError, match="unknown route family"):
        route_policy(Settings(allow_unbilled_routes=("nope",)))


def test_model_prices_a_float_cannot_hold_are_refused_at_start() -> None:
    settings = Settings(model_prices={"m": ModelPrice(costs={
        "input_cost_per_token": D("0.12345678901234567890")})})
    with pytest.raises(ConfigError, match="more digits than a float"):
        runtime.register_model_prices(settings)
