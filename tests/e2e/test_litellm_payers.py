"""Who pays, on LiteLLM's own database with keys from ``/key/generate`` (see identity.py).

One proxy for the module (``tests.e2e.litellm_db``): every key here is a real LiteLLM virtual
key stored in LiteLLM's database, every team a LiteLLM team with ``members_with_roles``. Each
success must be billed exactly once, to the right account: one usage row, one usage debit,
and nobody else's balance moved.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import openai
import pytest

from tests.e2e.litellm_db import LiteLLMEnv, hash_key
from tests.e2e.plugin_env import chat, expected_credits

pytestmark = pytest.mark.e2e

COST = expected_credits("openai", "balanced")
FLAG = "credits_bill_end_users"


@pytest.fixture
def env(litellm_proxy: LiteLLMEnv) -> LiteLLMEnv:
    litellm_proxy.reset_upstreams()
    return litellm_proxy


def team_wallet(env: LiteLLMEnv, team_id: str, credits: str = "100") -> str:
    """Give a LiteLLM team a wallet: an admin grant to ``team:<team_id>`` over the API."""
    account = f"team:{team_id}"
    resp = env.http("POST", "/credits/admin/grant",
                    json={"user_id": account, "amount": credits, "description": "e2e team"})
    assert resp.status_code == 200, resp.text
    return account


def billed_once(env: LiteLLMEnv, account: str, start: str = "100") -> dict[str, Any]:
    """``account`` has exactly one successful usage row and one usage debit of COST."""
    env.wait_for_rows(account, 1)
    env.settle_quiet(account)
    rows = env.usage_rows(account)
    assert [(r["user_id"], r["success"], r["credits_charged"]) for r in rows] == [
        (account, True, COST)]
    assert [d["amount"] for d in env.usage_debits(account)] == [-COST]
    assert env.balance(account) == Decimal(start) - COST
    payer: dict[str, Any] = rows[0]["request_metadata"]["payer"]
    return payer


def untouched(env: LiteLLMEnv, account: str, start: str | None = "100") -> None:
    assert env.usage_rows(account) == []
    assert env.usage_debits(account) == []
    if start is not None:
        assert env.balance(account) == Decimal(start)


def error_code(exc: openai.APIStatusError) -> str:
    body = exc.body if isinstance(exc.body, dict) else {}
    return str(body.get("code") or body.get("error", {}).get("code") or exc.message)


# -- (a) a key that belongs to a user ----------------------------------------------------


def test_user_key_bills_its_user(env: LiteLLMEnv) -> None:
    alice = env.new_user("alice")
    key = env.new_key(user_id=alice, alias="alice-laptop")
    chat(env.client(key))
    payer = billed_once(env, alice)
    assert payer == {"rule": "user", "member": alice, "team_id": None,
                     "key_hash": hash_key(key), "key_alias": "alice-laptop"}
    assert key not in str(env.usage_rows(alice))


# -- (b) a team key bills the team's wallet -----------------------------------------------


def test_team_key_bills_the_team_wallet_and_records_the_member(env: LiteLLMEnv) -> None:
    member = env.new_user("member")
    team = env.new_team("acme", members=[member])
    wallet = team_wallet(env, team)
    key = env.new_key(user_id=member, team_id=team, alias="acme-ci")
    chat(env.client(key))
    payer = billed_once(env, wallet)
    assert payer == {"rule": "team", "member": member, "team_id": team,
                     "key_hash": hash_key(key), "key_alias": "acme-ci"}
    untouched(env, member)


def test_team_key_without_a_user_bills_the_team(env: LiteLLMEnv) -> None:
    team = env.new_team("svc")
    wallet = team_wallet(env, team)
    key = env.new_key(team_id=team)
    chat(env.client(key))
    assert billed_once(env, wallet)["member"] is None


def test_team_without_a_wallet_leaves_the_bill_to_its_member(env: LiteLLMEnv) -> None:
    member = env.new_user("member")
    team = env.new_team("nowallet", members=[member])
    key = env.new_key(user_id=member, team_id=team)
    chat(env.client(key))
    assert billed_once(env, member)["rule"] == "member"
    assert env.sql("SELECT 1 FROM user_credits WHERE user_id = %s", f"team:{team}") == []


def test_empty_team_wallet_is_402_and_the_member_is_not_billed(env: LiteLLMEnv) -> None:
    member = env.new_user("member")
    team = env.new_team("broke", members=[member])
    wallet = team_wallet(env, team, "0.000001")
    key = env.new_key(user_id=member, team_id=team)
    with pytest.raises(openai.APIStatusError) as info:
        chat(env.client(key))
    assert info.value.status_code == 402
    assert "insufficient credits" in str(info.value)
    untouched(env, wallet, "0.000001")
    untouched(env, member)
    assert env.calls() == {"openai": 0}


def test_team_key_of_a_team_without_wallet_or_user_is_402(env: LiteLLMEnv) -> None:
    team = env.new_team("orphan")
    key = env.new_key(team_id=team)
    with pytest.raises(openai.APIStatusError) as info:
        chat(env.client(key))
    assert info.value.status_code == 402
    assert env.calls() == {"openai": 0}


# -- (c) keys whose stored metadata says credits_bill_end_users ---------------------------


def test_service_key_bills_the_named_end_user(env: LiteLLMEnv) -> None:
    owner = env.new_user("saas")
    customer_a = env.new_user("cust")
    customer_b = env.new_user("cust")
    key = env.new_key(user_id=owner, metadata={FLAG: True}, alias="saas-backend")
    chat(env.client(key), user=customer_a)
    payer = billed_once(env, customer_a)
    assert payer["rule"] == "end_user" and payer["member"] == owner
    chat(env.client(key), extra_headers={"x-litellm-end-user-id": customer_b})
    billed_once(env, customer_b)
    chat(env.client(key))  # no end user named: the key's own user pays
    billed_once(env, owner)


def test_team_metadata_flag_lets_its_keys_bill_end_users(env: LiteLLMEnv) -> None:
    customer = env.new_user("cust")
    team = env.new_team("saasteam", metadata={FLAG: True})
    key = env.new_key(team_id=team)
    chat(env.client(key), user=customer)
    assert billed_once(env, customer)["team_id"] == team


def test_a_forged_flag_in_the_request_is_ignored(env: LiteLLMEnv) -> None:
    alice = env.new_user("alice")
    bob = env.new_user("bob")
    key = env.new_key(user_id=alice)
    chat(env.client(key), user=bob, metadata={FLAG: True},
         extra_headers={"x-litellm-end-user-id": bob})
    chat(env.client(key), user=bob, extra_body={"litellm_metadata": {FLAG: True}})
    env.wait_for_rows(alice, 2)
    env.settle_quiet(alice)
    assert [r["credits_charged"] for r in env.usage_rows(alice)] == [COST, COST]
    untouched(env, bob)


def test_a_flag_that_is_not_a_boolean_is_refused(env: LiteLLMEnv) -> None:
    owner = env.new_user("saas")
    customer = env.new_user("cust")
    key = env.new_key(user_id=owner, metadata={FLAG: "yes"})
    with pytest.raises(openai.BadRequestError) as info:
        chat(env.client(key), user=customer)
    assert FLAG in str(info.value)
    untouched(env, owner)
    untouched(env, customer)


# -- (d) no payer, and nobody else's credits ------------------------------------------------


def test_a_key_with_neither_user_nor_team_is_401(env: LiteLLMEnv) -> None:
    key = env.new_key()
    with pytest.raises(openai.AuthenticationError) as info:
        chat(env.client(key))
    assert "no payer" in str(info.value)
    assert env.calls() == {"openai": 0}


def test_a_user_named_like_a_team_account_cannot_bill_the_team(env: LiteLLMEnv) -> None:
    team = env.new_team("victim")
    wallet = team_wallet(env, team)
    env.admin("POST", "/user/new", {"user_id": wallet, "user_role": "internal_user"})
    key = env.new_key(user_id=wallet)
    with pytest.raises(openai.BadRequestError) as info:
        chat(env.client(key))
    assert "reserved for team accounts" in str(info.value)
    resp = env.http("GET", "/credits/balance", key=key)
    assert resp.status_code == 400 and "reserved" in resp.text
    untouched(env, wallet)


def test_no_key_reads_or_spends_another_accounts_credits(env: LiteLLMEnv) -> None:
    alice = env.new_user("alice")
    bob = env.new_user("bob")
    team = env.new_team("other", members=[bob])
    wallet = team_wallet(env, team)
    key = env.new_key(user_id=alice)
    for named in (bob, wallet):
        resp = env.http("GET", "/credits/balance", key=key, params={"user_id": named})
        assert resp.status_code == 403, resp.text
        resp = env.http("GET", "/credits/usage", key=key, params={"user_id": named})
        assert resp.status_code == 403, resp.text
    # Naming bob or the team as the end user is ignored: alice pays for herself.
    chat(env.client(key), user=bob)
    chat(env.client(key), user=wallet, extra_headers={"x-litellm-end-user-id": wallet})
    env.wait_for_rows(alice, 2)
    env.settle_quiet(alice)
    assert [r["credits_charged"] for r in env.usage_rows(alice)] == [COST, COST]
    assert env.balance(alice) == Decimal(100) - 2 * COST
    untouched(env, bob)
    untouched(env, wallet)
    mine = env.http("GET", "/credits/balance", key=key)
    assert mine.status_code == 200 and mine.json()["user_id"] == alice


def test_a_malformed_team_id_is_refused(env: LiteLLMEnv) -> None:
    team = env.new_team("t" * 250)  # LiteLLM takes it; team:<id> would pass 255 characters
    key = env.new_key(team_id=team)
    with pytest.raises(openai.BadRequestError) as info:
        chat(env.client(key))
    assert "team id is 259 characters long" in str(info.value)
    assert env.calls() == {"openai": 0}
