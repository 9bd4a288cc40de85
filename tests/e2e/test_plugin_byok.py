"""BYOK through the real LiteLLM proxy: users' own provider keys, used, billed, never leaked.

Keys are added with the CLI (``litellm-credits keys add USER PROVIDER --name NAME --default``,
the secret on stdin), exactly as an operator would. The stand-ins record the Authorization
(OpenAI protocol) or x-api-key (Anthropic) header of every request, so the tests see which key
reached the provider. The proxy runs with ``--detailed_debug`` and ``LITELLM_LOG=DEBUG`` so
the final test can search its whole log, a ``pg_dump`` of the database, the usage log and every
API/error response collected on the way for the plaintext keys (I6).

The tests of this module share one proxy and run in file order: rotation restarts the proxy
and the leak check comes last.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from decimal import Decimal

import openai
import pytest

from devtools.pg import PgCluster, find_bindir
from litellm_credits.byok.masterkeys import generate_key_entry
from tests.e2e.plugin_env import (
    PluginEnv,
    chat,
    chat_deployment,
    credits_config,
    expected_credits,
    plugin_env,
)

pytestmark = pytest.mark.e2e

K1 = generate_key_entry("k1")
K2 = generate_key_entry("k2")
BYOK_FEE = Decimal("5")
PLATFORM_OPENAI = "sk-platform-openai"
PLATFORM_ANTHROPIC = "sk-platform-anthropic"

# Distinctive plaintexts: none of them may ever show up outside the request to the provider.
ALICE_KEY = "sk-alice-BYOK-ZEBRAFISH-7Qm2Xv9Lp4Kd8Wn1-e2e"
ALICE_ALT_KEY = "sk-alice-alt-BYOK-MARMOSET-3Hf8Tz1Rq6Jv-e2e"
CAROL_KEY = "sk-carol-BYOK-OCELOT-5Nb7Yc2Wd9Gx4-e2e"
ERIN_ANTHROPIC_KEY = "sk-ant-erin-BYOK-AXOLOTL-8Kp3Ls6Mq1Vt-e2e"
MALLORY_KEY = "sk-mallory-BYOK-TAPIR-2Zr5Xe8Cf4Bn7-e2e"
VICTIM_KEY = "sk-victim-BYOK-QUOKKA-9Ud4Ig7Oh2Pj5-e2e"
FRANK_KEY = "sk-frank-BYOK-NUMBAT-6Wa1Sd3Fg8Hk2-e2e"
GRACE_KEY = "sk-grace-BYOK-PANGOLIN-4Qe7Rt9Yu1Io3-e2e"
HEIDI_ANTHROPIC_KEY = "sk-ant-heidi-BYOK-KINKAJOU-5Lm8Np2Qr6-e2e"
IVAN_KEY = "sk-ivan-BYOK-WOMBAT-1Aa2Bb3Cc4Dd5-e2e"
SECRETS = (ALICE_KEY, ALICE_ALT_KEY, CAROL_KEY, ERIN_ANTHROPIC_KEY, MALLORY_KEY, VICTIM_KEY,
           FRANK_KEY, GRACE_KEY, HEIDI_ANTHROPIC_KEY, IVAN_KEY)

# Every response body and CLI output seen by the tests, searched by the leak test.
SEEN: list[str] = []


@pytest.fixture(scope="module")
def env(pg_cluster: PgCluster) -> Iterator[PluginEnv]:
    models = {
        # balanced -> openai, then anthropic; precision -> anthropic, then openai.
        "chat": [chat_deployment("openai"), chat_deployment("anthropic")],
        # One deployment: a provider refusal of a user's key cannot fall to another provider.
        "solo": [chat_deployment("openai", "solo")],
    }
    with plugin_env(
        pg_cluster, models, providers=("openai", "anthropic"), label="byok",
        config=credits_config(byok_fee_percent=str(BYOK_FEE)),
        extra_env={"CREDITS_ENCRYPTION_KEYS": K1, "LITELLM_LOG": "DEBUG"},
        extra_args=["--detailed_debug"],
    ) as penv:
        yield penv


@pytest.fixture(autouse=True)
def _clean_upstreams(env: PluginEnv) -> None:
    env.reset_upstreams()


def add_key(env: PluginEnv, user: str, provider: str, name: str, secret: str,
            *extra: str) -> int:
    """``litellm-credits keys add`` with the secret on stdin; returns the key row id."""
    done = env.cli("keys", "add", user, provider, "--name", name, *extra, "--json",
                   stdin=secret + "\n")
    SEEN.extend([done.stdout, done.stderr])
    info = json.loads(done.stdout)
    assert info["hint"] and info["hint"] != secret
    return int(info["id"])


def keys_seen(env: PluginEnv, server: str = "openai") -> list[str | None]:
    return [r.api_key for r in env.up(server).model_requests()]


def remember(exc: openai.APIStatusError) -> str:
    text = json.dumps(exc.body) + str(exc.message) + exc.response.text
    SEEN.append(text)
    return text


# --- the user's key is used, only for them --------------------------------------------------


def test_users_own_key_reaches_the_provider_and_others_get_the_platform_key(
    env: PluginEnv,
) -> None:
    alice = env.new_user("alice")
    bob = env.new_user("bob")
    key_id = add_key(env, alice, "openai", "main", ALICE_KEY, "--default")

    # Interleaved, so a key leaking into the shared deployment would show on bob's calls.
    for user in (alice, bob, alice, bob):
        reply = chat(env.user_client(user))
        SEEN.append(reply.model_dump_json())

    assert keys_seen(env) == [ALICE_KEY, PLATFORM_OPENAI, ALICE_KEY, PLATFORM_OPENAI]
    assert env.calls()["anthropic"] == 0

    rows = env.wait_for_rows(alice, 2)
    assert [r["byok_key_id"] for r in rows] == [key_id, key_id]
    assert all(r["provider"] == "openai" and r["success"] for r in rows)
    bob_rows = env.wait_for_rows(bob, 2)
    assert [r["byok_key_id"] for r in bob_rows] == [None, None]

    # Billing: BYOK pays the platform fee (5% of the full price), bob the full price.
    full = expected_credits("openai", "balanced")
    fee = expected_credits("openai", "balanced", byok_fee_percent=BYOK_FEE)
    assert fee == (full * BYOK_FEE / 100).quantize(Decimal("0.00000001"))
    assert [r["credits_charged"] for r in rows] == [fee, fee]
    assert [r["credits_charged"] for r in bob_rows] == [full, full]
    assert Decimal(rows[0]["response_metadata"]["full_credits"]) == full
    assert env.balance(alice) == Decimal("100") - 2 * fee
    assert env.balance(bob) == Decimal("100") - 2 * full
    assert [d["amount"] for d in env.usage_debits(alice)] == [-fee, -fee]

    # Use is counted off the hot path, by the settlement.
    uses, last_used = env.one(
        "SELECT usage_count, last_used_at FROM user_provider_keys WHERE id = %s", key_id)
    assert uses == 2 and last_used is not None


def test_anthropic_key_travels_as_x_api_key(env: PluginEnv) -> None:
    erin = env.new_user("erin", level="precision")
    key_id = add_key(env, erin, "anthropic", "main", ERIN_ANTHROPIC_KEY, "--default")

    chat(env.user_client(erin))

    assert keys_seen(env, "anthropic") == [ERIN_ANTHROPIC_KEY]
    assert env.up("anthropic").last_request.headers.get("x-api-key") == ERIN_ANTHROPIC_KEY
    row = env.wait_for_rows(erin, 1)[0]
    assert (row["provider"], row["byok_key_id"]) == ("anthropic", key_id)
    assert row["credits_charged"] == expected_credits("anthropic", "precision",
                                                      byok_fee_percent=BYOK_FEE)


def test_a_fallback_provider_uses_the_users_key_for_that_provider(env: PluginEnv) -> None:
    """balanced: openai (platform key, heidi has none) fails; anthropic gets heidi's key."""
    heidi = env.new_user("heidi")
    key_id = add_key(env, heidi, "anthropic", "main", HEIDI_ANTHROPIC_KEY, "--default")
    env.up("openai").configure(fail_always=True, fail_status=500)

    chat(env.user_client(heidi))

    assert keys_seen(env, "openai") == [PLATFORM_OPENAI]
    assert keys_seen(env, "anthropic") == [HEIDI_ANTHROPIC_KEY]
    rows = env.wait_for_rows(heidi, 1)
    env.settle_quiet(heidi)
    rows = env.usage_rows(heidi)
    assert [(r["success"], r["provider"], r["byok_key_id"]) for r in rows] == [
        (True, "anthropic", key_id)]
    assert rows[0]["credits_charged"] == expected_credits("anthropic", "balanced",
                                                          byok_fee_percent=BYOK_FEE)
    assert len(env.usage_debits(heidi)) == 1


def test_a_key_named_in_metadata_is_used_instead_of_the_default(env: PluginEnv) -> None:
    alice = env.new_user("alice2")
    add_key(env, alice, "openai", "main", ALICE_KEY, "--default")
    alt_id = add_key(env, alice, "openai", "alt", ALICE_ALT_KEY)

    chat(env.user_client(alice), metadata={"byok_key_name": "alt"})
    chat(env.user_client(alice))

    assert keys_seen(env) == [ALICE_ALT_KEY, ALICE_KEY]
    rows = env.wait_for_rows(alice, 2)
    assert rows[0]["byok_key_id"] == alt_id


def test_a_revoked_key_stops_being_used(env: PluginEnv) -> None:
    carol = env.new_user("carol")
    key_id = add_key(env, carol, "openai", "main", CAROL_KEY, "--default")
    chat(env.user_client(carol))
    assert keys_seen(env) == [CAROL_KEY]

    done = env.cli("keys", "revoke", carol, "openai", "--name", "main")
    SEEN.extend([done.stdout, done.stderr])
    assert env.one("SELECT is_active FROM user_provider_keys WHERE id = %s", key_id) is False

    def platform_key_used() -> bool:
        env.up("openai").clear()
        chat(env.user_client(carol))
        return keys_seen(env) == [PLATFORM_OPENAI]

    # Within the configuration refresh interval (1 s here) at the latest.
    env.wait_for(platform_key_used, timeout=3.0, what="the revoked key to stop being used")
    rows = env.wait_for_rows(carol, 2)
    assert rows[0]["byok_key_id"] == key_id
    assert rows[-1]["byok_key_id"] is None
    assert rows[-1]["credits_charged"] == expected_credits("openai", "balanced")


# --- refusals ---------------------------------------------------------------------------------


def test_a_swapped_ciphertext_is_refused_clearly_with_no_upstream_call(env: PluginEnv) -> None:
    mallory = env.new_user("mallory", credits="20")
    victim = env.new_user("victim")
    victim_id = add_key(env, victim, "openai", "main", VICTIM_KEY, "--default")
    mallory_id = add_key(env, mallory, "openai", "main", MALLORY_KEY, "--default")
    original = env.one("SELECT encrypted_key FROM user_provider_keys WHERE id = %s", mallory_id)
    try:
        # Mallory copies the victim's sealed key into her own row.
        env.sql("UPDATE user_provider_keys SET encrypted_key = v.encrypted_key,"
                " encryption_key_id = v.encryption_key_id FROM user_provider_keys v"
                " WHERE v.id = %s AND user_provider_keys.id = %s", victim_id, mallory_id)

        with pytest.raises(openai.APIStatusError) as caught:
            chat(env.user_client(mallory))

        text = remember(caught.value)
        assert caught.value.status_code == 502
        message = str(caught.value.message)
        assert "openai" in message and "main" in message  # names the unusable key
        assert "key" in message.lower()
        assert env.calls() == {"openai": 0, "anthropic": 0}
        for secret in SECRETS:
            assert secret not in text
        env.wait_for(lambda: env.usage_rows(mallory), what="mallory's rejection row")
        env.settle_quiet(mallory)
        rows = env.usage_rows(mallory)
        assert [(r["success"], r["status_code"]) for r in rows] == [(False, 502)]
        assert env.usage_debits(mallory) == []
        assert env.balance(mallory) == Decimal("20")
        assert env.holds(mallory) == 0
    finally:
        env.sql("UPDATE user_provider_keys SET encrypted_key = %s WHERE id = %s",
                original, mallory_id)
    # Restored: her own key works again.
    env.reset_upstreams()
    chat(env.user_client(mallory))
    assert keys_seen(env) == [MALLORY_KEY]


def test_a_key_the_provider_rejects_is_a_clear_error_without_fallback(env: PluginEnv) -> None:
    frank = env.new_user("frank", credits="20")
    add_key(env, frank, "openai", "main", FRANK_KEY, "--default")
    env.up("openai").configure(require_api_key=PLATFORM_OPENAI)

    with pytest.raises(openai.APIStatusError) as caught:
        chat(env.user_client(frank), model="solo")

    text = remember(caught.value)
    assert caught.value.status_code == 401
    assert "your own API key" in str(caught.value.message)
    assert keys_seen(env) == [FRANK_KEY]  # no silent retry on the platform key
    for secret in SECRETS:
        assert secret not in text
    env.wait_for(lambda: env.usage_rows(frank), what="frank's failure row")
    env.settle_quiet(frank)
    rows = env.usage_rows(frank)
    assert [(r["success"], r["status_code"]) for r in rows] == [(False, 401)]
    assert FRANK_KEY not in (rows[0]["error_message"] or "")
    assert env.usage_debits(frank) == []
    assert env.balance(frank) == Decimal("20")


ONE_DEPLOYMENT_FALLBACK_BUG = (
    "BUG: fallback_to_platform never happens in a model group with ONE deployment: LiteLLM's "
    "router does not retry a 401/403 when the group has a single deployment "
    "(litellm/router.py:7976-7982, should_retry_this_error), so the plugin's platform-key "
    "retry (hook.async_post_call_failure_deployment_hook -> byok_off) is never attempted and "
    "the user gets the byok_key_rejected 401 although they allowed the fallback."
)


@pytest.mark.parametrize(
    "model",
    ["chat", pytest.param("solo", marks=pytest.mark.xfail(
        strict=True, reason=ONE_DEPLOYMENT_FALLBACK_BUG))],
)
def test_a_rejected_key_falls_back_to_the_platform_key_when_the_user_allows_it(
    env: PluginEnv, model: str
) -> None:
    grace = env.new_user("grace", credits="20")
    add_key(env, grace, "openai", "main", GRACE_KEY, "--default")
    env.cli("keys", "set-fallback", grace, "openai", "--name", "main", "on")
    env.up("openai").configure(require_api_key=PLATFORM_OPENAI)

    chat(env.user_client(grace), model=model)

    assert keys_seen(env) == [GRACE_KEY, PLATFORM_OPENAI]
    rows = env.wait_for_rows(grace, 1)
    env.settle_quiet(grace)
    rows = env.usage_rows(grace)
    assert len(rows) == 1
    assert rows[0]["success"] is True
    assert rows[0]["byok_key_id"] is None  # served on the platform key: full price
    assert rows[0]["credits_charged"] == expected_credits("openai", "balanced")
    assert len(env.usage_debits(grace)) == 1


@pytest.mark.parametrize("status", [401, 500])
def test_a_provider_error_echoing_the_key_is_scrubbed_everywhere(
    env: PluginEnv, status: int
) -> None:
    ivan = env.new_user("ivan", credits="20")
    add_key(env, ivan, "openai", "main", IVAN_KEY, "--default")
    env.up("openai").configure(fail_always=True, fail_status=status,
                               fail_message=f"Incorrect API key provided: {IVAN_KEY}.")

    with pytest.raises(openai.APIStatusError) as caught:
        chat(env.user_client(ivan), model="solo")

    text = remember(caught.value)
    assert caught.value.status_code == status
    assert keys_seen(env) == [IVAN_KEY]
    for fragment in _fragments(IVAN_KEY):
        assert fragment not in text
    env.wait_for(lambda: env.usage_rows(ivan), what="ivan's failure row")
    row = env.usage_rows(ivan)[0]
    assert row["status_code"] == status
    assert "Incorrect API key provided" in row["error_message"]
    for fragment in _fragments(IVAN_KEY):
        assert fragment not in row["error_message"]


def test_key_listing_over_http_shows_hints_never_secrets(env: PluginEnv) -> None:
    alice = env.one("SELECT user_id FROM user_provider_keys WHERE key_name = 'alt'")
    own = env.http("GET", "/credits/keys", key=f"sk-user-{alice}")
    admin = env.http("GET", "/credits/keys", params={"user_id": alice})
    for response in (own, admin):
        SEEN.append(response.text)
        assert response.status_code == 200, response.text
        assert ALICE_KEY[-4:] in response.text  # the hint
        for secret in SECRETS:
            assert secret not in response.text


# --- rotation (restarts the proxy) ------------------------------------------------------------


def test_rotation_keeps_every_key_usable_after_a_restart_with_the_new_master_key(
    env: PluginEnv,
) -> None:
    alice = env.one("SELECT user_id FROM user_provider_keys WHERE user_id LIKE 'alice-%%'"
                    " AND key_name = 'main' AND is_active")
    new_keys = f"{K2},{K1}"  # the new master key first: active; the old one only decrypts
    done = env.cli("keys", "rotate", "--json", env={"CREDITS_ENCRYPTION_KEYS": new_keys})
    SEEN.extend([done.stdout, done.stderr])
    assert env.sql("SELECT id FROM user_provider_keys WHERE encryption_key_id <> 'k2'") == []

    # Restart with ONLY the new master key: every row must have been re-encrypted.
    env.proxy.env["CREDITS_ENCRYPTION_KEYS"] = K2
    env.env["CREDITS_ENCRYPTION_KEYS"] = K2
    env.proxy.restart()

    chat(env.user_client(alice))
    assert keys_seen(env) == [ALICE_KEY]
    erin = env.one("SELECT user_id FROM user_provider_keys WHERE provider = 'anthropic'"
                   " AND user_id LIKE 'erin-%%'")
    chat(env.user_client(erin))
    assert keys_seen(env, "anthropic") == [ERIN_ANTHROPIC_KEY]


# --- I6: no leak anywhere (last) ------------------------------------------------------------


def _fragments(secret: str) -> list[str]:
    """The secret and its long inner parts (the last 4 characters are the public hint)."""
    return [secret, secret[:-4], secret[6:-4]]


def test_no_plaintext_key_in_logs_dump_usage_log_or_responses(env: PluginEnv) -> None:
    log = env.proxy.log_text()
    # The log is really verbose: LiteLLM's debug output and the request bodies are in it.
    assert "DEBUG" in log
    assert "POST Request Sent from LiteLLM" in log  # each upstream call, headers masked
    assert len(log) > 20_000

    dump = subprocess.run(
        [str(find_bindir() / "pg_dump"), "--no-owner", "--data-only", env.db_url],
        capture_output=True, text=True, timeout=60, check=True).stdout
    assert "user_provider_keys" in dump and "llm_usage_log" in dump

    usage = json.dumps([
        [r["request_metadata"], r["response_metadata"], r["error_message"], r["error_type"]]
        for r in env.dict_rows("SELECT * FROM llm_usage_log")], default=str)
    assert env.one("SELECT count(*) FROM llm_usage_log WHERE byok_key_id IS NOT NULL") >= 4

    spool = "".join(p.read_text(errors="replace")
                    for p in env.workdir.joinpath("spool").rglob("*") if p.is_file())
    places = {"proxy log": log, "pg_dump": dump, "usage log metadata": usage,
              "API/CLI output": "\n".join(SEEN), "spool": spool}
    for where, text in places.items():
        for secret in SECRETS:
            for fragment in _fragments(secret):
                assert fragment not in text, f"{secret!r} leaked into the {where}"
    assert len(SEEN) > 10
