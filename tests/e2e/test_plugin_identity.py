"""Who pays, through the real LiteLLM proxy (``devtools.proxy.custom_auth``).

``sk-user-<name>`` is internal user ``<name>``; ``sk-admin-<name>`` is a proxy admin whose
user id is ``<name>``; ``sk-master-test`` is the master key (proxy_admin, no real user id).
Only an admin may name the payer, through LiteLLM's end-user id (``x-litellm-end-user-id``
header or the body's ``user``). A non-admin key always pays for itself.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal

import openai
import pytest

from devtools.pg import PgCluster
from devtools.proxy import MASTER_KEY
from tests.e2e.plugin_env import PluginEnv, chat, chat_deployment, expected_credits, plugin_env

pytestmark = pytest.mark.e2e

COST = expected_credits("openai", "balanced")


@pytest.fixture(scope="module")
def env(pg_cluster: PgCluster) -> Iterator[PluginEnv]:
    models = {"chat": [chat_deployment("openai")]}
    with plugin_env(pg_cluster, models, providers=("openai",), label="identity") as penv:
        yield penv


@pytest.fixture(autouse=True)
def _clean_upstreams(env: PluginEnv) -> None:
    env.reset_upstreams()


def _billed_once(env: PluginEnv, user: str, start: str = "100") -> None:
    rows = env.wait_for_rows(user, 1)
    env.settle_quiet(user)
    rows = env.usage_rows(user)
    assert [(r["user_id"], r["success"], r["credits_charged"]) for r in rows] == [
        (user, True, COST)]
    assert len(env.usage_debits(user)) == 1
    assert env.balance(user) == Decimal(start) - COST


def _untouched(env: PluginEnv, user: str, start: str = "100") -> None:
    assert env.usage_rows(user) == []
    assert env.usage_debits(user) == []
    assert env.balance(user) == Decimal(start)


def test_the_payer_is_the_keys_user(env: PluginEnv) -> None:
    alice = env.new_user("alice")
    chat(env.user_client(alice))
    _billed_once(env, alice)


def test_master_key_with_end_user_header_bills_that_user(env: PluginEnv) -> None:
    bob = env.new_user("bob")
    chat(env.client(MASTER_KEY), extra_headers={"x-litellm-end-user-id": bob})
    _billed_once(env, bob)


def test_master_key_with_body_user_bills_that_user(env: PluginEnv) -> None:
    bob = env.new_user("bob")
    chat(env.client(MASTER_KEY), user=bob)
    _billed_once(env, bob)


def test_admin_virtual_key_may_name_the_end_user_or_pay_itself(env: PluginEnv) -> None:
    carol = env.new_user("carol")
    dave = env.new_user("dave")
    admin = env.client(f"sk-admin-{carol}")
    chat(admin, user=dave)
    _billed_once(env, dave)
    chat(admin)
    _billed_once(env, carol)


@pytest.mark.parametrize("how", ["body", "header"])
def test_a_non_admin_key_naming_someone_else_still_pays_itself(env: PluginEnv, how: str) -> None:
    alice = env.new_user("alice")
    bob = env.new_user("bob")
    client = env.user_client(alice)
    if how == "body":
        chat(client, user=bob)
    else:
        chat(client, extra_headers={"x-litellm-end-user-id": bob})
    _billed_once(env, alice)
    env.settle_quiet(bob)
    _untouched(env, bob)


def test_a_non_admin_key_naming_a_rich_user_while_poor_is_refused_not_billed_to_them(
    env: PluginEnv,
) -> None:
    """Naming a user with credits does not let a key without credits through."""
    rich = env.new_user("rich", credits="1000")
    poor = env.new_user("poor", credits=None)
    with pytest.raises(openai.APIStatusError) as caught:
        chat(env.user_client(poor), user=rich)
    assert caught.value.status_code == 402
    assert poor in str(caught.value.message)
    assert env.calls() == {"openai": 0}
    env.settle_quiet(rich)
    _untouched(env, rich, "1000")


def test_master_key_without_an_end_user_is_401_with_a_clear_message(env: PluginEnv) -> None:
    before = env.one("SELECT count(*) FROM llm_usage_log")
    with pytest.raises(openai.AuthenticationError) as caught:
        chat(env.client(MASTER_KEY))
    assert caught.value.status_code == 401
    message = str(caught.value.message)
    assert "no payer" in message
    assert "x-litellm-end-user-id" in message and "user" in message
    assert env.calls() == {"openai": 0}
    env.settle_quiet()
    assert env.one("SELECT count(*) FROM llm_usage_log") == before
    assert env.one("SELECT count(*) FROM credit_holds") == 0


def test_a_bad_key_is_401_and_reaches_nothing(env: PluginEnv) -> None:
    before = env.one("SELECT count(*) FROM llm_usage_log")
    tx_before = env.one("SELECT count(*) FROM credit_transactions")
    with pytest.raises(openai.AuthenticationError) as caught:
        chat(env.client("sk-not-a-real-key"), user="alice")
    assert caught.value.status_code == 401
    assert env.calls() == {"openai": 0}
    env.settle_quiet()
    assert env.one("SELECT count(*) FROM llm_usage_log") == before
    assert env.one("SELECT count(*) FROM credit_transactions") == tx_before


def test_an_invalid_end_user_id_is_refused_with_a_clear_400(env: PluginEnv) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        chat(env.client(MASTER_KEY), user="x" * 300)
    message = str(caught.value.message)
    assert "end-user id refused" in message and "300 characters" in message
    assert env.calls() == {"openai": 0}


def test_master_key_naming_a_user_without_an_account_is_402_for_that_user(
    env: PluginEnv,
) -> None:
    ghost = env.new_user("ghost", credits=None)
    with pytest.raises(openai.APIStatusError) as caught:
        chat(env.client(MASTER_KEY), extra_headers={"x-litellm-end-user-id": ghost})
    assert caught.value.status_code == 402
    assert ghost in str(caught.value.message)
    assert env.calls() == {"openai": 0}
    assert env.sql("SELECT 1 FROM user_credits WHERE user_id = %s", ghost) == []


def test_master_key_with_the_customer_id_header_bills_that_user(env: PluginEnv) -> None:
    """x-litellm-customer-id is LiteLLM's first-choice end-user header."""
    erin = env.new_user("erin")
    chat(env.client(MASTER_KEY), extra_headers={"x-litellm-customer-id": erin})
    _billed_once(env, erin)


def test_a_non_admin_key_with_the_customer_id_header_still_pays_itself(env: PluginEnv) -> None:
    alice = env.new_user("alice")
    erin = env.new_user("erin")
    chat(env.user_client(alice), extra_headers={"x-litellm-customer-id": erin})
    _billed_once(env, alice)
    env.settle_quiet(erin)
    _untouched(env, erin)
