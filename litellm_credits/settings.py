"""Configuration from the environment and the optional ``CREDITS_CONFIG`` YAML file.

Environment:
    CREDITS_DATABASE_URL   the credits database (falls back to DATABASE_URL)
    CREDITS_CONFIG         path to a YAML file shaped like config/credits.example.yaml
    CREDITS_ENCRYPTION_KEYS  BYOK master keys (see litellm_credits.byok.vault)
    CREDITS_STRIPE_API_KEY, CREDITS_STRIPE_WEBHOOK_SECRET, CREDITS_ALERT_WEBHOOK_SECRET
                           secrets are read from the environment only, never YAML

Money values are parsed to Decimal from their text, never through float.
Settings that must change on every replica within seconds (``credits_per_usd``)
also live in the ``credit_settings`` table, which overrides the file.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from litellm_credits.errors import ConfigError, InvalidInput
from litellm_credits.values import to_decimal

# The seed's provider names, mapped to LiteLLM's. The one place aliases live.
DEFAULT_PROVIDER_ALIASES: dict[str, str] = {"together": "together_ai"}


@dataclass(frozen=True)
class ModelPrice:
    """USD per token for a model LiteLLM cannot price itself."""

    input_per_token: Decimal
    output_per_token: Decimal


@dataclass(frozen=True)
class Tier:
    monthly_quota: Decimal | None = None
    low_balance_threshold: Decimal | None = None


@dataclass(frozen=True)
class Settings:
    database_url: str | None = None
    credits_per_usd: Decimal = Decimal("10")
    byok_fee_percent: Decimal = Decimal("0")
    hold_ttl_seconds: int = 900
    default_max_tokens: int = 4096
    fail_mode: str = "closed"
    fail_open_limit_credits: Decimal = Decimal("1")
    model_prices: dict[str, ModelPrice] = field(default_factory=dict)
    tiers: dict[str, Tier] = field(default_factory=lambda: {"free": Tier()})
    provider_aliases: dict[str, str] = field(
        default_factory=lambda: dict(DEFAULT_PROVIDER_ALIASES)
    )
    default_quality_score: Decimal = Decimal("1")
    latency_window_seconds: int = 300
    config_cache_seconds: float = 5.0
    pool_min_size: int = 2
    pool_max_size: int = 10
    pool_timeout_seconds: float = 3.0
    statement_timeout_ms: int = 3000
    reserve_batch_max: int = 64
    writer_batch_size: int = 500
    writer_flush_ms: int = 50
    writer_settle_timeout_ms: int = 500
    spool_dir: Path = Path(".run/spool")
    alert_webhook_url: str | None = None
    alert_webhook_secret: str | None = None
    stripe_api_key: str | None = None
    stripe_webhook_secret: str | None = None
    stripe_api_base: str | None = None
    stripe_success_url: str = "http://localhost:4000/credits/ui?purchase=success"
    stripe_cancel_url: str = "http://localhost:4000/credits/ui?purchase=cancelled"
    mount_api: bool = True

    def provider_name(self, name: str) -> str:
        """LiteLLM's name for a provider named in power_level_configs."""
        return self.provider_aliases.get(name, name)

    def tier(self, name: str) -> Tier:
        try:
            return self.tiers[name]
        except KeyError:
            known = ", ".join(sorted(self.tiers))
            raise InvalidInput(f"unknown tier {name!r}; configured tiers: {known}") from None


def _int(raw: Mapping[str, Any], key: str, default: int, low: int, high: int) -> int:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ConfigError(f"{key} must be an integer between {low} and {high}, got {value!r}")
    return value


def _dec(raw: Mapping[str, Any], key: str, default: Decimal, low: Decimal) -> Decimal:
    value = to_decimal(raw.get(key, default), key)
    if value < low:
        raise ConfigError(f"{key} must be at least {low}, got {value}")
    return value


def _prices(raw: Any) -> dict[str, ModelPrice]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError("model_prices must be a mapping of model name to prices")
    prices: dict[str, ModelPrice] = {}
    for model, entry in raw.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"model_prices.{model} must be a mapping")
        inp = to_decimal(entry.get("input_cost_per_token"), f"model_prices.{model}.input")
        out = to_decimal(entry.get("output_cost_per_token"), f"model_prices.{model}.output")
        if inp < 0 or out < 0:
            raise ConfigError(f"model_prices.{model}: prices cannot be negative")
        prices[str(model)] = ModelPrice(inp, out)
    return prices


def _tiers(raw: Any) -> dict[str, Tier]:
    if raw is None:
        return {"free": Tier()}
    if not isinstance(raw, dict) or not raw:
        raise ConfigError("tiers must be a non-empty mapping of tier name to settings")
    tiers: dict[str, Tier] = {}
    for name, entry in raw.items():
        entry = entry or {}
        quota = entry.get("monthly_quota")
        threshold = entry.get("low_balance_threshold")
        tiers[str(name)] = Tier(
            monthly_quota=None if quota is None else to_decimal(quota, f"tiers.{name}.quota"),
            low_balance_threshold=None
            if threshold is None
            else to_decimal(threshold, f"tiers.{name}.low_balance_threshold"),
        )
    return tiers


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Build settings from the environment and the YAML file it names."""
    env = os.environ if env is None else env
    raw: dict[str, Any] = {}
    path = env.get("CREDITS_CONFIG")
    if path:
        try:
            loaded = yaml.safe_load(Path(path).read_text("utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read CREDITS_CONFIG file {path}: {exc.strerror}") from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"CREDITS_CONFIG file {path} is not valid YAML: {exc}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"CREDITS_CONFIG file {path} must hold a mapping")
        raw = loaded or {}
    fail_mode = str(raw.get("fail_mode", "closed"))
    if fail_mode not in ("closed", "open"):
        raise ConfigError(f"fail_mode must be 'closed' or 'open', got {fail_mode!r}")
    aliases = dict(DEFAULT_PROVIDER_ALIASES)
    aliases.update({str(k): str(v) for k, v in (raw.get("provider_aliases") or {}).items()})
    pool = raw.get("pool") or {}
    writer = raw.get("writer") or {}
    stripe = raw.get("stripe") or {}
    alerts = raw.get("alerts") or {}
    fee = _dec(raw, "byok_fee_percent", Decimal("0"), Decimal("0"))
    if fee > 100:
        raise ConfigError(f"byok_fee_percent must be at most 100, got {fee}")
    credits_per_usd = _dec(raw, "credits_per_usd", Decimal("10"), Decimal("0"))
    if credits_per_usd == 0:
        raise ConfigError("credits_per_usd must be positive")
    return Settings(
        database_url=env.get("CREDITS_DATABASE_URL") or env.get("DATABASE_URL") or None,
        credits_per_usd=credits_per_usd,
        byok_fee_percent=fee,
        hold_ttl_seconds=_int(raw, "hold_ttl_seconds", 900, 10, 86400),
        default_max_tokens=_int(raw, "default_max_tokens", 4096, 1, 10_000_000),
        fail_mode=fail_mode,
        fail_open_limit_credits=_dec(raw, "fail_open_limit_credits", Decimal("1"), Decimal("0")),
        model_prices=_prices(raw.get("model_prices")),
        tiers=_tiers(raw.get("tiers")),
        provider_aliases=aliases,
        default_quality_score=_dec(raw, "default_quality_score", Decimal("1"), Decimal("0")),
        latency_window_seconds=_int(raw, "latency_window_seconds", 300, 10, 86400),
        config_cache_seconds=float(_int(raw, "config_cache_seconds", 5, 0, 300)),
        pool_min_size=_int(pool, "min_size", 2, 0, 1000),
        pool_max_size=_int(pool, "max_size", 10, 1, 1000),
        pool_timeout_seconds=float(_dec(pool, "timeout_seconds", Decimal("3"), Decimal("0.1"))),
        statement_timeout_ms=_int(pool, "statement_timeout_ms", 3000, 100, 600_000),
        reserve_batch_max=_int(raw, "reserve_batch_max", 64, 1, 1000),
        writer_batch_size=_int(writer, "batch_size", 500, 1, 10_000),
        writer_flush_ms=_int(writer, "flush_ms", 50, 1, 60_000),
        writer_settle_timeout_ms=_int(writer, "settle_timeout_ms", 500, 50, 600_000),
        spool_dir=Path(str(env.get("CREDITS_SPOOL_DIR") or raw.get("spool_dir") or ".run/spool")),
        alert_webhook_url=alerts.get("webhook_url"),
        alert_webhook_secret=env.get("CREDITS_ALERT_WEBHOOK_SECRET"),
        stripe_api_key=env.get("CREDITS_STRIPE_API_KEY"),
        stripe_webhook_secret=env.get("CREDITS_STRIPE_WEBHOOK_SECRET"),
        stripe_api_base=stripe.get("api_base") or env.get("CREDITS_STRIPE_API_BASE"),
        stripe_success_url=str(stripe.get("success_url", Settings.stripe_success_url)),
        stripe_cancel_url=str(stripe.get("cancel_url", Settings.stripe_cancel_url)),
        mount_api=bool(raw.get("mount_api", True)),
    )


def require_database_url(settings: Settings) -> str:
    if not settings.database_url:
        raise ConfigError(
            "no credits database configured: set CREDITS_DATABASE_URL "
            "(or DATABASE_URL), e.g. postgresql://user@host:5432/credits"
        )
    return settings.database_url
