"""Configuration from the environment and the optional ``CREDITS_CONFIG`` YAML file.

Environment:
    CREDITS_DATABASE_URL   the credits database (falls back to DATABASE_URL)
    CREDITS_CONFIG         path to a YAML file shaped like config/credits.example.yaml
    CREDITS_SPOOL_DIR      the settlement spool folder; overrides ``spool_dir``
    CREDITS_ENCRYPTION_KEYS  BYOK master keys (see litellm_credits.byok.vault)
    CREDITS_STRIPE_API_KEY, CREDITS_STRIPE_WEBHOOK_SECRET, CREDITS_ALERT_WEBHOOK_SECRET
                           secrets are read from the environment only, never YAML
    CREDITS_STRIPE_API_BASE  a local Stripe stand-in, when ``stripe.api_base`` is unset

Every default is written once, as the field default of :class:`Settings`; the
YAML file's schema, its checks and the refusal of unknown keys are
:mod:`litellm_credits.config_schema`'s.

The spool must survive restarts wherever the proxy was started, so its
default is absolute: ``$XDG_STATE_HOME/litellm-credits/spool`` (by default
``~/.local/state/litellm-credits/spool``), or ``/var/lib/litellm-credits/spool``
for a process without a home folder. A relative ``spool_dir`` in the YAML file
is taken relative to that file's folder; ``CREDITS_SPOOL_DIR`` relative to the
current folder when the settings are loaded. Either way the result is absolute.

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

from litellm_credits.config_schema import (
    DEFAULT_PROVIDER_ALIASES,
    ModelPrice,
    Tier,
    default_tiers,
    read_config,
)
from litellm_credits.errors import ConfigError, InvalidInput

#: Where the spool goes for a process without a home folder (a system service).
SYSTEM_SPOOL_DIR = Path("/var/lib/litellm-credits/spool")


def default_spool_dir(env: Mapping[str, str] | None = None) -> Path:
    """The absolute spool folder used when neither CREDITS_SPOOL_DIR nor spool_dir is set."""
    env = os.environ if env is None else env
    state = env.get("XDG_STATE_HOME")
    if state and Path(state).is_absolute():
        return Path(state) / "litellm-credits" / "spool"
    home = env.get("HOME")
    if home and Path(home).is_absolute():
        return Path(home) / ".local" / "state" / "litellm-credits" / "spool"
    return SYSTEM_SPOOL_DIR


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str | None = None
    credits_per_usd: Decimal = Decimal("10")
    byok_fee_percent: Decimal = Decimal("0")
    hold_ttl_seconds: int = 900
    default_max_tokens: int = 4096
    fail_mode: str = "closed"
    fail_open_limit_credits: Decimal = Decimal("1")
    model_prices: dict[str, ModelPrice] = field(default_factory=dict)
    tiers: dict[str, Tier] = field(default_factory=default_tiers)
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
    writer_journal_fsync_ms: int = 1000
    spool_dir: Path = field(default_factory=default_spool_dir)
    alert_webhook_url: str | None = None
    alert_webhook_secret: str | None = None
    stripe_api_key: str | None = None
    stripe_webhook_secret: str | None = None
    stripe_api_base: str | None = None
    stripe_success_url: str = "http://localhost:4000/credits/ui?purchase=success"
    stripe_cancel_url: str = "http://localhost:4000/credits/ui?purchase=cancelled"
    mount_api: bool = True
    # Route guard (litellm_credits.guard): families served unbilled at the operator's risk,
    # and whether pass-through routes are opened (billed from LiteLLM's cost of the response).
    allow_unbilled_routes: tuple[str, ...] = ()
    pass_through_billing: bool = False
    # Zero output tokens with an error or blank finish reason are not billed.
    zero_completion_insurance: bool = True

    def provider_name(self, name: str) -> str:
        """LiteLLM's name for a provider named in power_level_configs."""
        return self.provider_aliases.get(name, name)

    def tier(self, name: str) -> Tier:
        try:
            return self.tiers[name]
        except KeyError:
            known = ", ".join(sorted(self.tiers))
            raise InvalidInput(f"unknown tier {name!r}; configured tiers: {known}") from None


def load(env: Mapping[str, str] | None = None) -> Settings:
    """Build settings from the environment and the YAML file it names."""
    env = os.environ if env is None else env
    path = env.get("CREDITS_CONFIG")
    values: dict[str, Any] = read_config(path) if path else {}
    # The environment wins over the file, except for stripe.api_base, whose
    # variable only stands in for a file that names none.
    values["database_url"] = env.get("CREDITS_DATABASE_URL") or env.get("DATABASE_URL") or None
    if env.get("CREDITS_SPOOL_DIR"):
        values["spool_dir"] = Path(env["CREDITS_SPOOL_DIR"]).expanduser().absolute()
    elif "spool_dir" not in values:
        values["spool_dir"] = default_spool_dir(env)
    if not values.get("stripe_api_base"):
        values["stripe_api_base"] = env.get("CREDITS_STRIPE_API_BASE") or None
    values["alert_webhook_secret"] = env.get("CREDITS_ALERT_WEBHOOK_SECRET")
    values["stripe_api_key"] = env.get("CREDITS_STRIPE_API_KEY")
    values["stripe_webhook_secret"] = env.get("CREDITS_STRIPE_WEBHOOK_SECRET")
    return Settings(**values)


def require_database_url(settings: Settings) -> str:
    if not settings.database_url:
        raise ConfigError(
            "no credits database configured: set CREDITS_DATABASE_URL "
            "(or DATABASE_URL), e.g. postgresql://user@host:5432/credits"
        )
    return settings.database_url
