"""Settings: defaults written once, unknown keys refused by name, the environment wins."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from litellm_credits import settings
from litellm_credits.config_schema import DEFAULT_PROVIDER_ALIASES, Tier
from litellm_credits.errors import ConfigError
from litellm_credits.settings import (
    SYSTEM_SPOOL_DIR,
    Settings,
    default_spool_dir,
    load,
)

REPO = Path(__file__).resolve().parents[2]


def config(tmp_path: Path, text: str) -> dict[str, str]:
    path = tmp_path / "credits.yaml"
    path.write_text(text)
    return {"CREDITS_CONFIG": str(path), "HOME": str(tmp_path / "home")}


def test_without_a_file_the_defaults_are_the_dataclass_defaults(tmp_path: Path) -> None:
    env = {"HOME": str(tmp_path)}
    loaded = load(env)
    assert loaded == Settings(spool_dir=default_spool_dir(env))
    assert loaded.credits_per_usd == Decimal("10")
    assert loaded.hold_ttl_seconds == 900
    assert loaded.fail_mode == "closed"
    assert loaded.tiers == {"free": Tier()}
    assert loaded.provider_aliases == DEFAULT_PROVIDER_ALIASES
    assert loaded.pool_max_size == 10 and loaded.writer_flush_ms == 50
    assert loaded.mount_api is True


def test_an_empty_file_is_the_defaults(tmp_path: Path) -> None:
    env = config(tmp_path, "")
    assert load(env) == load({"HOME": env["HOME"]})


def test_the_example_config_loads_and_matches_the_defaults_where_it_repeats_them(
    tmp_path: Path,
) -> None:
    loaded = load({"CREDITS_CONFIG": str(REPO / "config" / "credits.example.yaml"),
                   "HOME": str(tmp_path)})
    defaults = Settings()
    for name in ("credits_per_usd", "hold_ttl_seconds", "pool_min_size", "pool_max_size",
                 "pool_timeout_seconds", "statement_timeout_ms", "reserve_batch_max",
                 "writer_batch_size", "writer_flush_ms", "writer_settle_timeout_ms",
                 "stripe_success_url", "stripe_cancel_url", "fail_mode",
                 "config_cache_seconds", "latency_window_seconds"):
        assert getattr(loaded, name) == getattr(defaults, name), name
    assert set(loaded.tiers) == {"free", "starter", "pro", "enterprise"}
    assert "my-private-model" in loaded.model_prices


@pytest.mark.parametrize(("text", "named", "hint"), [
    ("credit_per_usd: '5'\n", "'credit_per_usd'", "'credits_per_usd'"),
    ("pool:\n  max_sise: 3\n", "'pool.max_sise'", "'pool.max_size'"),
    ("writer:\n  flush: 3\n", "'writer.flush'", "'writer.flush_ms'"),
    ("tiers:\n  pro: {monthly_qouta: '5'}\n", "'tiers.pro.monthly_qouta'",
     "'tiers.pro.monthly_quota'"),
    ("model_prices:\n  m: {input_cost_per_token: '1', output_cost_per_token: '1', x: 1}\n",
     "'model_prices.m.x'", None),
    ("zzz: 1\n", "'zzz'", None),
])
def test_an_unknown_key_is_refused_naming_it(
    tmp_path: Path, text: str, named: str, hint: str | None,
) -> None:
    with pytest.raises(ConfigError) as caught:
        load(config(tmp_path, text))
    message = caught.value.message
    assert f"unknown setting {named}" in message
    assert str(tmp_path / "credits.yaml") in message
    if hint is not None:
        assert f"did you mean {hint}?" in message
    else:
        assert "did you mean" not in message


@pytest.mark.parametrize(("text", "variable"), [
    ("stripe:\n  api_key: sk_live_x\n", "CREDITS_STRIPE_API_KEY"),
    ("stripe:\n  webhook_secret: whsec_x\n", "CREDITS_STRIPE_WEBHOOK_SECRET"),
    ("database_url: postgresql://x/y\n", "CREDITS_DATABASE_URL"),
])
def test_a_secret_in_the_file_is_refused_pointing_at_its_variable(
    tmp_path: Path, text: str, variable: str,
) -> None:
    with pytest.raises(ConfigError, match=f"environment only \\({variable}\\)"):
        load(config(tmp_path, text))


@pytest.mark.parametrize(("text", "fragment"), [
    ("hold_ttl_seconds: 5\n", "hold_ttl_seconds must be an integer between 10 and 86400"),
    ("pool:\n  min_size: -1\n", "pool.min_size must be an integer between 0 and 1000"),
    ("credits_per_usd: '0'\n", "credits_per_usd must be positive"),
    ("credits_per_usd: 1.5\n", "credits_per_usd must be written as a string or integer"),
    ("byok_fee_percent: '101'\n", "byok_fee_percent must be at most 100"),
    ("fail_mode: maybe\n", "fail_mode must be 'closed' or 'open'"),
    ("pool: 3\n", "pool must be a mapping"),
    ("tiers: {}\n", "tiers must be a non-empty mapping"),
    ("- a\n", "must hold a mapping"),
    ("a: [\n", "is not valid YAML"),
])
def test_bad_values_are_refused_naming_the_key(tmp_path: Path, text: str, fragment: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load(config(tmp_path, text))
    assert fragment in caught.value.message


def test_a_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read CREDITS_CONFIG file"):
        load({"CREDITS_CONFIG": str(tmp_path / "absent.yaml")})


def test_file_values_fill_their_fields(tmp_path: Path) -> None:
    loaded = load(config(tmp_path, (
        "credits_per_usd: '12.5'\n"
        "config_cache_seconds: 1\n"
        "pool: {min_size: 1, timeout_seconds: '0.5'}\n"
        "writer: {flush_ms: 20}\n"
        "alerts: {webhook_url: 'http://hook'}\n"
        "stripe: {success_url: 'http://ok'}\n"
        "provider_aliases: {mistralai: mistral}\n"
        "mount_api: false\n"
    )))
    assert loaded.credits_per_usd == Decimal("12.5")
    assert loaded.config_cache_seconds == 1.0
    assert loaded.pool_min_size == 1 and loaded.pool_max_size == 10
    assert loaded.pool_timeout_seconds == 0.5
    assert loaded.writer_flush_ms == 20 and loaded.writer_batch_size == 500
    assert loaded.alert_webhook_url == "http://hook"
    assert loaded.stripe_success_url == "http://ok"
    assert loaded.stripe_cancel_url == Settings().stripe_cancel_url
    # The file adds aliases; the built-in ones stay.
    assert loaded.provider_aliases == {**DEFAULT_PROVIDER_ALIASES, "mistralai": "mistral"}
    assert loaded.mount_api is False


def test_environment_overrides(tmp_path: Path) -> None:
    env = config(tmp_path, "spool_dir: /from/file\nstripe: {api_base: 'http://file'}\n")
    env.update({
        "DATABASE_URL": "postgresql://fallback/db",
        "CREDITS_SPOOL_DIR": str(tmp_path / "env-spool"),
        "CREDITS_STRIPE_API_KEY": "sk_test_1",
        "CREDITS_STRIPE_WEBHOOK_SECRET": "whsec_1",
        "CREDITS_ALERT_WEBHOOK_SECRET": "alert-secret",
        "CREDITS_STRIPE_API_BASE": "http://env",
    })
    loaded = load(env)
    assert loaded.database_url == "postgresql://fallback/db"
    assert loaded.spool_dir == tmp_path / "env-spool"
    assert loaded.stripe_api_key == "sk_test_1"
    assert loaded.stripe_webhook_secret == "whsec_1"
    assert loaded.alert_webhook_secret == "alert-secret"
    # The file's api_base wins; the variable only stands in when the file names none.
    assert loaded.stripe_api_base == "http://file"
    env["CREDITS_DATABASE_URL"] = "postgresql://primary/db"
    del env["CREDITS_CONFIG"]
    loaded = load(env)
    assert loaded.database_url == "postgresql://primary/db"
    assert loaded.stripe_api_base == "http://env"


def test_spool_dir_is_never_relative_to_the_working_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    assert load({"HOME": "/home/u"}).spool_dir == Path(
        "/home/u/.local/state/litellm-credits/spool")
    assert load({"XDG_STATE_HOME": "/state", "HOME": "/home/u"}).spool_dir == Path(
        "/state/litellm-credits/spool")
    assert load({}).spool_dir == SYSTEM_SPOOL_DIR
    # Relative to the file that names it, not to wherever the proxy started.
    sub = tmp_path / "etc"
    sub.mkdir()
    (sub / "credits.yaml").write_text("spool_dir: spool\n")
    loaded = load({"CREDITS_CONFIG": str(sub / "credits.yaml")})
    assert loaded.spool_dir == sub / "spool"
    # The variable is resolved once, at load, so a later chdir cannot move it.
    assert load({"CREDITS_SPOOL_DIR": "rel"}).spool_dir == tmp_path / "rel"
    assert load({"CREDITS_SPOOL_DIR": "rel"}).spool_dir.is_absolute()


def test_require_database_url() -> None:
    with pytest.raises(ConfigError, match="CREDITS_DATABASE_URL"):
        settings.require_database_url(Settings())
    assert settings.require_database_url(Settings(database_url="postgresql://x/y")) == (
        "postgresql://x/y")


def test_unknown_tier_names_the_configured_ones() -> None:
    from litellm_credits.errors import InvalidInput

    with pytest.raises(InvalidInput, match="configured tiers: free"):
        Settings().tier("gold")
