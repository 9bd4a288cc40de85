"""``/credits/teams/{team_id}/...`` on LiteLLM's own database (api/teams.py).

Members read their team's wallet; LiteLLM team admins (``members_with_roles`` role admin) buy
credits for it and set its level; proxy admins see and manage every team; a team admin of one
team is refused on another, with 403 and nothing written.
"""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

import pytest

from devtools.stripe_stub import completed_event
from tests.e2e.litellm_db import LiteLLMEnv, hash_key
from tests.e2e.plugin_env import chat, expected_credits

pytestmark = pytest.mark.e2e


@pytest.fixture
def env(litellm_proxy: LiteLLMEnv) -> LiteLLMEnv:
    litellm_proxy.reset_upstreams()
    return litellm_proxy


def grant(env: LiteLLMEnv, account: str, credits: str = "100") -> None:
    resp = env.http("POST", "/credits/admin/grant", json={"user_id": account, "amount": credits})
    assert resp.status_code == 200, resp.text


def team_setup(env: LiteLLMEnv) -> dict[str, str]:
    """A team with a wallet of 100, an admin, a member, and their personal keys."""
    admin, member = env.new_user("tadmin"), env.new_user("tmember")
    team = env.new_team("crew", admins=[admin], members=[member])
    grant(env, f"team:{team}")
    return {"team": team, "account": f"team:{team}", "admin": admin, "member": member,
            "admin_key": env.new_key(user_id=admin), "member_key": env.new_key(user_id=member)}


def get(env: LiteLLMEnv, key: str, team: str, what: str = "balance") -> Any:
    return env.http("GET", f"/credits/teams/{team}/{what}", key=key)


def level_of(env: LiteLLMEnv, account: str) -> str:
    return str(env.one("SELECT power_level FROM user_credits WHERE user_id = %s", account))


def test_members_see_the_team_balance_and_who_spent(env: LiteLLMEnv) -> None:
    t = team_setup(env)
    spend_key = env.new_key(user_id=t["member"], team_id=t["team"], alias="crew-member")
    chat(env.client(spend_key))
    env.wait_for_rows(t["account"], 1)
    for key in (t["member_key"], t["admin_key"], spend_key):
        resp = get(env, key, t["team"])
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["team_id"] == t["team"] and body["user_id"] == t["account"]
        assert Decimal(body["balance"]) == Decimal(100) - expected_credits("openai", "balanced")
    usage = get(env, t["member_key"], t["team"], "usage")
    assert usage.status_code == 200, usage.text
    [row] = usage.json()["rows"]
    assert row["spent_by"] == {
        "rule": "team", "member": t["member"], "team_id": t["team"],
        "key_hash": hash_key(spend_key), "key_alias": "crew-member"}
    assert spend_key not in usage.text
    ledger = get(env, t["member_key"], t["team"], "transactions")
    assert ledger.status_code == 200
    assert [x["transaction_type"] for x in ledger.json()["transactions"]] == [
        "usage", "admin_adjustment"]


def test_a_team_key_without_a_user_sees_its_team(env: LiteLLMEnv) -> None:
    t = team_setup(env)
    key = env.new_key(team_id=t["team"])
    assert get(env, key, t["team"]).status_code == 200
    resp = env.http("PUT", f"/credits/teams/{t['team']}/power-level", key=key,
                    json={"level": "eco"})
    assert resp.status_code == 403
    assert level_of(env, t["account"]) == "balanced"


def test_outsiders_are_refused_and_nothing_is_read(env: LiteLLMEnv) -> None:
    t = team_setup(env)
    other = team_setup(env)
    outsider = env.new_key(user_id=env.new_user("out"))
    for key in (outsider, other["admin_key"], other["member_key"]):
        for what in ("balance", "usage", "transactions"):
            resp = get(env, key, t["team"], what)
            assert resp.status_code == 403, (what, resp.text)
            assert "not a member of team" in resp.text
    resp = get(env, outsider, f"nope-{uuid.uuid4().hex[:6]}")
    assert resp.status_code == 403


def test_team_admin_sets_the_level_and_the_team_is_billed_at_it(env: LiteLLMEnv) -> None:
    t = team_setup(env)
    resp = env.http("PUT", f"/credits/teams/{t['team']}/power-level", key=t["admin_key"],
                    json={"level": "eco"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["power_level"] == "eco"
    chat(env.client(env.new_key(user_id=t["member"], team_id=t["team"])))
    [row] = env.wait_for_rows(t["account"], 1)
    assert row["credits_charged"] == expected_credits("openai", "eco")


def test_members_and_other_teams_admins_cannot_manage_the_team(env: LiteLLMEnv) -> None:
    t = team_setup(env)
    other = team_setup(env)
    package = env.http("POST", "/credits/admin/packages",
                       json={"name": f"p-{uuid.uuid4().hex[:6]}", "credits": "50",
                             "price_usd": "5"}).json()["id"]
    assert env.stripe is not None
    before = len(env.stripe.checkout_requests())
    for key, why in ((t["member_key"], "only an admin of team"),
                     (other["admin_key"], "not a member of team")):
        resp = env.http("PUT", f"/credits/teams/{t['team']}/power-level", key=key,
                        json={"level": "precision"})
        assert resp.status_code == 403 and why in resp.text, resp.text
        resp = env.http("POST", f"/credits/teams/{t['team']}/purchase", key=key,
                        json={"package_id": package})
        assert resp.status_code == 403 and why in resp.text, resp.text
    assert level_of(env, t["account"]) == "balanced"
    assert len(env.stripe.checkout_requests()) == before


def test_team_admin_buys_credits_for_the_team(env: LiteLLMEnv) -> None:
    t = team_setup(env)
    package = env.http("POST", "/credits/admin/packages",
                       json={"name": f"p-{uuid.uuid4().hex[:6]}", "credits": "50",
                             "price_usd": "5"}).json()["id"]
    resp = env.http("POST", f"/credits/teams/{t['team']}/purchase", key=t["admin_key"],
                    json={"package_id": package})
    assert resp.status_code == 200, resp.text
    assert resp.json()["user_id"] == t["account"]
    assert env.stripe is not None
    session = env.stripe.complete_session(resp.json()["session_id"])
    assert env.stripe.deliver(completed_event(session)) == 200
    assert env.balance(t["account"]) == Decimal(150)
    assert env.balance(t["admin"]) == Decimal(100)


def test_proxy_admin_sees_and_manages_every_team(env: LiteLLMEnv) -> None:
    t = team_setup(env)
    assert get(env, "sk-master-test", t["team"]).status_code == 200
    resp = env.http("PUT", f"/credits/teams/{t['team']}/power-level", json={"level": "precision"})
    assert resp.status_code == 200
    assert level_of(env, t["account"]) == "precision"
    resp = env.http("GET", "/credits/balance", params={"user_id": t["account"]})
    assert resp.status_code == 200 and resp.json()["user_id"] == t["account"]


@pytest.mark.parametrize("bad", ["x" * 252, "bad%01id"])
def test_a_malformed_team_id_is_refused(env: LiteLLMEnv, bad: str) -> None:
    resp = env.http("GET", f"/credits/teams/{bad}/balance")
    assert resp.status_code in (400, 422), resp.text
