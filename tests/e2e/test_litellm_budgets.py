"""LiteLLM's own budgets beside our credits, on the same virtual key (docs/operations.md).

LiteLLM 1.102.4 checks a key's ``max_budget`` (USD, its own spend counters) at auth time (its
optional budget reservation is released by its own failure hook). Our hold comes after, in the
pre-call hook. So:

* a request LiteLLM's budget refuses never reaches our hook: no hold, no usage row, no debit;
* a request our credits refuse (402) releases LiteLLM's reservation: refusals do not use up
  the key's LiteLLM budget;
* a served request is counted by both, once each.
"""

from __future__ import annotations

from decimal import Decimal

import openai
import pytest

from tests.e2e.litellm_db import LiteLLMEnv
from tests.e2e.plugin_env import chat, expected_credits, expected_usd

pytestmark = pytest.mark.e2e

COST = expected_credits("openai", "balanced")
USD = expected_usd("openai")


@pytest.fixture
def env(litellm_proxy: LiteLLMEnv) -> LiteLLMEnv:
    litellm_proxy.reset_upstreams()
    return litellm_proxy


def no_trace(env: LiteLLMEnv, user: str, start: str = "100") -> None:
    env.settle_quiet(user)
    assert env.usage_rows(user) == []
    assert env.usage_debits(user) == []
    assert env.holds(user) == 0
    assert env.balance(user) == Decimal(start)


def test_litellm_budget_refusal_leaves_no_credits_trace(env: LiteLLMEnv) -> None:
    alice = env.new_user("alice")
    key = env.new_key(user_id=alice, spend=1.0, max_budget=0.5)  # already over it
    with pytest.raises(openai.APIStatusError) as info:
        chat(env.client(key))
    assert info.value.status_code in (400, 429), info.value
    assert "budget" in str(info.value).lower()
    no_trace(env, alice)
    assert env.calls() == {"openai": 0}


def test_litellm_budget_applies_after_real_spend_billed_once_by_us(env: LiteLLMEnv) -> None:
    alice = env.new_user("alice")
    # Room for one request in LiteLLM's budget, not two.
    key = env.new_key(user_id=alice, max_budget=float(USD * Decimal("1.5")))
    chat(env.client(key))
    env.wait_for_rows(alice, 1)
    refused = None
    for _ in range(3):  # LiteLLM counts spend after the response, asynchronously
        try:
            chat(env.client(key))
        except openai.APIStatusError as exc:
            refused = exc
            break
    assert refused is not None and refused.status_code in (400, 429), refused
    served = env.calls()["openai"]
    env.settle_quiet(alice)
    rows = env.usage_rows(alice)
    assert len(rows) == served and all(r["credits_charged"] == COST for r in rows)
    assert len(env.usage_debits(alice)) == served
    assert env.holds(alice) == 0
    assert env.balance(alice) == Decimal(100) - served * COST


def test_our_402_does_not_use_up_the_litellm_budget(env: LiteLLMEnv) -> None:
    bob = env.new_user("bob", credits="0.000001")
    # Room for about two requests' LiteLLM reservations: ten leaked ones would block.
    key = env.new_key(user_id=bob, max_budget=float(USD * Decimal("2.5")))
    for _ in range(10):
        with pytest.raises(openai.APIStatusError) as info:
            chat(env.client(key))
        assert info.value.status_code == 402, info.value
    assert env.calls() == {"openai": 0}
    env.http("POST", "/credits/admin/grant", json={"user_id": bob, "amount": "100"})
    chat(env.client(key))  # LiteLLM still has the whole budget for it
    rows = env.wait_for_rows(bob, 11)  # ten rejection rows (not billed) and the success
    assert [r["success"] for r in rows] == [False] * 10 + [True]
    assert sum(r["credits_charged"] for r in rows) == COST
    assert [d["amount"] for d in env.usage_debits(bob)] == [-COST]
