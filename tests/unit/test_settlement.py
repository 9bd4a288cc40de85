"""The charge and the usage record built from what LiteLLM reports."""

from __future__ import annotations

from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from litellm_credits.context import RequestContext
from litellm_credits.pricing import Price
from litellm_credits.settlement.build import (
    MAX_METADATA_BYTES,
    capped_json,
    compute_charge,
    failure_record,
    scrub,
    success_record,
)

PRICE = Price(Decimal("0.000001"), Decimal("0.000002"))
CTX = RequestContext(request_id="req_1", user_id="alice", power_level="precision",
                     multiplier=Decimal("1.5"), model_group="chat", route_rule="preferred")


def charge(**kw: object) -> object:
    price = kw.pop("price", PRICE)
    args: dict[str, object] = dict(
        prompt_tokens=1000, completion_tokens=500, cached_tokens=0,
        credits_per_usd=Decimal("10"), multiplier=Decimal("1.5"), byok=False,
        byok_fee_percent=Decimal("5"), hold_amount=Decimal("3"))
    args.update(kw)
    return compute_charge(price, **args)  # type: ignore[arg-type]


def test_credits_are_cost_times_rate_times_multiplier() -> None:
    c = charge()
    assert c.provider_cost_usd == Decimal("0.002")  # 1000 * 1e-6 + 500 * 2e-6
    assert c.credits == Decimal("0.03000000")  # 0.002 * 10 * 1.5
    assert c.full_credits == c.credits


def test_byok_pays_the_fee_only() -> None:
    c = charge(byok=True)
    assert c.full_credits == Decimal("0.03")
    assert c.credits == Decimal("0.00150000")  # 5 % of 0.03


def test_a_vanished_price_bills_the_hold_never_zero() -> None:
    c = charge(price=None)
    assert c.credits == Decimal("3") and c.priced_from == "hold"


def test_a_cache_hit_costs_nothing() -> None:
    assert charge(cache_hit=True).credits == 0


@given(st.integers(0, 10**7), st.integers(0, 10**6), st.integers(0, 10**7))
def test_charge_is_exact_and_never_negative(prompt: int, completion: int, cached: int) -> None:
    c = charge(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached)
    assert c.credits >= 0
    assert c.credits == (c.provider_cost_usd * 15).quantize(Decimal("0.00000001"))
    assert isinstance(c.credits, Decimal)


def test_secrets_are_scrubbed_from_error_messages() -> None:
    secret = "sk-live-very-secret-key-ABCDEFGH"
    text = scrub(f"Incorrect API key provided: {secret}. Bearer abc123", (secret,))
    assert text is not None
    assert secret not in text and "abc123" not in text
    assert len(scrub("word " * 2_000) or "") == 500


def test_metadata_is_capped() -> None:
    big = {f"k{i}": "v" * 100 for i in range(200)}
    stored = capped_json(big)
    assert stored["truncated"] is True
    assert len(str(stored)) < MAX_METADATA_BYTES
    assert capped_json({"a": "b\x00c"}) == {"a": "bc"}


def test_success_record_has_no_message_content() -> None:
    slo = {"model": "claude", "model_group": "chat", "prompt_tokens": 10,
           "completion_tokens": 5, "total_tokens": 15, "startTime": 1.0, "endTime": 1.25,
           "completionStartTime": 1.1, "messages": [{"role": "user", "content": "TOP SECRET"}],
           "response": "ALSO SECRET", "litellm_call_id": "abc", "model_id": "chat-anthropic"}
    record = success_record(CTX, slo, provider="anthropic", charge=charge(), byok_key_id=None,
                            app_id="app", session_id=None)
    assert "SECRET" not in str(record)
    assert record.latency_ms == 250 and record.time_to_first_token_ms == 100
    assert record.credits_charged == Decimal("0.03")
    assert record.request_id == "req_1" and record.success is True


def test_failure_record_is_never_billed() -> None:
    record = failure_record(CTX, error_type="RateLimitError", status_code=429,
                            message="slow down")
    assert record.success is False and record.credits_charged == 0
    assert record.status_code == 429 and record.error_type == "RateLimitError"
