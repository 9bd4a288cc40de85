"""The shape of the ``CREDITS_CONFIG`` YAML file and the checks on every key in it.

This module owns the YAML key table (:data:`_SCHEMA`: which key fills which
:class:`~litellm_credits.settings.Settings` field, and the parser that checks its value),
the per-key checks, the value types the file's sections parse into (:class:`ModelPrice`,
:class:`Tier`, the built-in provider aliases), and the refusal of a key the table does not
know (:func:`refuse_unknown`), naming the key and the closest known one, so a typo never
silently leaves a default in place. Defaults are not written here: they are the field
defaults of ``Settings``, and :func:`read_config` returns only the fields the file sets.

A relative ``spool_dir`` is taken relative to the file's folder. Money values are parsed
to Decimal from their text, never through float.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import yaml

from litellm_credits.errors import ConfigError
from litellm_credits.values import to_decimal

# The seed's provider names, mapped to LiteLLM's. The one place aliases live.
DEFAULT_PROVIDER_ALIASES: dict[str, str] = {"together": "together_ai"}


@dataclass(frozen=True, slots=True)
class ModelPrice:
    """Prices (USD) for a model LiteLLM cannot price: ``costs`` holds every LiteLLM cost key
    as written, registered with LiteLLM's engine at start-up; the two token prices are
    repeated (0 when absent) for routing's cheapest-first order."""

    input_per_token: Decimal = Decimal(0)
    output_per_token: Decimal = Decimal(0)
    costs: Mapping[str, Decimal] = field(default_factory=dict)
    mode: str | None = None
    litellm_provider: str | None = None

    def engine_entry(self) -> dict[str, object]:
        """The entry for ``cost.register_model_prices``."""
        meta = {"mode": self.mode, "litellm_provider": self.litellm_provider}
        return {**self.costs, **{k: v for k, v in meta.items() if v}}


@dataclass(frozen=True, slots=True)
class Tier:
    monthly_quota: Decimal | None = None
    low_balance_threshold: Decimal | None = None


def default_tiers() -> dict[str, Tier]:
    """Without a ``tiers`` section every account is on ``free``, with no quota."""
    return {"free": Tier()}


# --- checking one YAML value ----------------------------------------------------------

# A parser turns the YAML value at a dotted key into the field's value, or
# raises ConfigError naming the key. ``base`` is the YAML file's folder.
Parser = Callable[[Any, str, Path], Any]


# Keys someone may reasonably try in the file that are read from the environment only.
_ENVIRONMENT_ONLY = {
    "database_url": "CREDITS_DATABASE_URL",
    "stripe.api_key": "CREDITS_STRIPE_API_KEY",
    "stripe.webhook_secret": "CREDITS_STRIPE_WEBHOOK_SECRET",
    "alerts.webhook_secret": "CREDITS_ALERT_WEBHOOK_SECRET",
    "encryption_keys": "CREDITS_ENCRYPTION_KEYS",
}


def refuse_unknown(raw: Mapping[Any, Any], known: Mapping[str, Any] | tuple[str, ...],
                   prefix: str = "") -> None:
    """ConfigError for the first key of ``raw`` not in ``known``, with the closest match."""
    names = list(known)
    for key in raw:
        if key not in names:
            dotted = f"{prefix}{key}"
            if dotted in _ENVIRONMENT_ONLY:
                raise ConfigError(
                    f"{dotted!r} is read from the environment only "
                    f"({_ENVIRONMENT_ONLY[dotted]}), never from CREDITS_CONFIG"
                )
            hint = difflib.get_close_matches(str(key), names, n=1)
            suggestion = f"; did you mean '{prefix}{hint[0]}'?" if hint else ""
            raise ConfigError(
                f"unknown setting {dotted!r}{suggestion} "
                f"(known {'in ' + prefix.rstrip('.') if prefix else 'at the top'}: "
                f"{', '.join(names)})"
            )


def _int(low: int, high: int) -> Parser:
    def parse(value: Any, key: str, base: Path) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
            raise ConfigError(f"{key} must be an integer between {low} and {high}, got {value!r}")
        return value
    return parse


def _seconds(low: int, high: int) -> Parser:
    """Whole seconds in the file, a float in Settings (it is compared with monotonic time)."""
    whole = _int(low, high)

    def parse(value: Any, key: str, base: Path) -> float:
        return float(whole(value, key, base))
    return parse


def _dec(low: Decimal, high: Decimal | None = None, *, positive: bool = False) -> Parser:
    def parse(value: Any, key: str, base: Path) -> Decimal:
        result = to_decimal(value, key)
        if result < low:
            raise ConfigError(f"{key} must be at least {low}, got {result}")
        if high is not None and result > high:
            raise ConfigError(f"{key} must be at most {high}, got {result}")
        if positive and result == 0:
            raise ConfigError(f"{key} must be positive")
        return result
    return parse


def _dec_seconds(low: Decimal) -> Parser:
    exact = _dec(low)

    def parse(value: Any, key: str, base: Path) -> float:
        return float(exact(value, key, base))
    return parse


def _choice(*options: str) -> Parser:
    def parse(value: Any, key: str, base: Path) -> str:
        text = str(value)
        if text not in options:
            shown = " or ".join(repr(o) for o in options)
            raise ConfigError(f"{key} must be {shown}, got {text!r}")
        return text
    return parse


def _text(value: Any, key: str, base: Path) -> str:
    if value is None or isinstance(value, dict | list):
        raise ConfigError(f"{key} must be text, got {value!r}")
    return str(value)


def _optional_text(value: Any, key: str, base: Path) -> str | None:
    return None if value is None else _text(value, key, base)


def _flag(value: Any, key: str, base: Path) -> bool:
    return bool(value)


def _path(value: Any, key: str, base: Path) -> Path:
    path = Path(_text(value, key, base)).expanduser()
    return path if path.is_absolute() else base / path


def _mapping(value: Any, key: str) -> dict[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a mapping")
    return value


_PRICE_META = ("mode", "litellm_provider")


def _price(entry: Mapping[Any, Any], key: str) -> ModelPrice:
    costs: dict[str, Decimal] = {}
    for name, value in entry.items():
        if name in _PRICE_META:
            continue
        if not isinstance(name, str) or "cost" not in name:
            refuse_unknown({name: value}, ("input_cost_per_token", "output_cost_per_token",
                                           "cache_read_input_token_cost",
                                           "cache_creation_input_token_cost", *_PRICE_META),
                           f"{key}.")
        price = to_decimal(value, f"{key}.{name}")
        if price < 0:
            raise ConfigError(f"{key}.{name}: prices cannot be negative")
        costs[str(name)] = price
    if not costs:
        raise ConfigError(f"{key} names no price (a LiteLLM cost key such as "
                          "input_cost_per_token, input_cost_per_query or input_cost_per_second)")
    meta = {m: _text(entry[m], f"{key}.{m}", Path()) for m in _PRICE_META if m in entry}
    return ModelPrice(
        input_per_token=costs.get("input_cost_per_token", Decimal(0)),
        output_per_token=costs.get("output_cost_per_token", Decimal(0)),
        costs=costs, mode=meta.get("mode"), litellm_provider=meta.get("litellm_provider"))


def _prices(value: Any, key: str, base: Path) -> dict[str, ModelPrice]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ConfigError(f"{key} must be a mapping of model name to prices")
    for model, entry in value.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{key}.{model} must be a mapping")
    return {str(model): _price(entry, f"{key}.{model}") for model, entry in value.items()}


def _names(value: Any, key: str, base: Path) -> tuple[str, ...]:
    if value is not None and (not isinstance(value, list)
                              or not all(isinstance(v, str) for v in value)):
        raise ConfigError(f"{key} must be a list of names, got {value!r}")
    return tuple(value or ())


def _bool(value: Any, key: str, base: Path) -> bool:
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{key} must be true or false, got {value!r}")


_TIER_KEYS = ("monthly_quota", "low_balance_threshold")


def _tiers(value: Any, key: str, base: Path) -> dict[str, Tier]:
    if value is None:
        return default_tiers()
    if not isinstance(value, dict) or not value:
        raise ConfigError(f"{key} must be a non-empty mapping of tier name to settings")
    tiers: dict[str, Tier] = {}
    for name, entry in value.items():
        entry = _mapping(entry, f"{key}.{name}")
        refuse_unknown(entry, _TIER_KEYS, f"{key}.{name}.")
        quota = entry.get("monthly_quota")
        threshold = entry.get("low_balance_threshold")
        tiers[str(name)] = Tier(
            monthly_quota=None if quota is None else to_decimal(quota, f"{key}.{name}.quota"),
            low_balance_threshold=None
            if threshold is None
            else to_decimal(threshold, f"{key}.{name}.low_balance_threshold"),
        )
    return tiers


def _aliases(value: Any, key: str, base: Path) -> dict[str, str]:
    # The file adds to (or overrides) the built-in aliases; it never removes one.
    aliases = dict(DEFAULT_PROVIDER_ALIASES)
    aliases.update({str(k): str(v) for k, v in _mapping(value, key).items()})
    return aliases


# --- the file's shape -------------------------------------------------------------------

# YAML key -> (Settings field, parser); a nested mapping is a section of the file.
Schema = Mapping[str, "tuple[str, Parser] | Schema"]

_SCHEMA: Schema = {
    "credits_per_usd": ("credits_per_usd", _dec(Decimal(0), positive=True)),
    "byok_fee_percent": ("byok_fee_percent", _dec(Decimal(0), Decimal(100))),
    "hold_ttl_seconds": ("hold_ttl_seconds", _int(10, 86400)),
    "default_max_tokens": ("default_max_tokens", _int(1, 10_000_000)),
    "fail_mode": ("fail_mode", _choice("closed", "open")),
    "fail_open_limit_credits": ("fail_open_limit_credits", _dec(Decimal(0))),
    "model_prices": ("model_prices", _prices),
    "tiers": ("tiers", _tiers),
    "provider_aliases": ("provider_aliases", _aliases),
    "default_quality_score": ("default_quality_score", _dec(Decimal(0))),
    "latency_window_seconds": ("latency_window_seconds", _int(10, 86400)),
    "config_cache_seconds": ("config_cache_seconds", _seconds(0, 300)),
    "reserve_batch_max": ("reserve_batch_max", _int(1, 1000)),
    "spool_dir": ("spool_dir", _path),
    "mount_api": ("mount_api", _flag),
    "allow_unbilled_routes": ("allow_unbilled_routes", _names),
    "pass_through_billing": ("pass_through_billing", _bool),
    "zero_completion_insurance": ("zero_completion_insurance", _bool),
    "pool": {
        "min_size": ("pool_min_size", _int(0, 1000)),
        "max_size": ("pool_max_size", _int(1, 1000)),
        "timeout_seconds": ("pool_timeout_seconds", _dec_seconds(Decimal("0.1"))),
        "statement_timeout_ms": ("statement_timeout_ms", _int(100, 600_000)),
    },
    "writer": {
        "batch_size": ("writer_batch_size", _int(1, 10_000)),
        "flush_ms": ("writer_flush_ms", _int(1, 60_000)),
        "settle_timeout_ms": ("writer_settle_timeout_ms", _int(50, 600_000)),
        "journal_fsync_ms": ("writer_journal_fsync_ms", _int(10, 60_000)),
    },
    "alerts": {
        "webhook_url": ("alert_webhook_url", _optional_text),
    },
    "stripe": {
        "api_base": ("stripe_api_base", _optional_text),
        "success_url": ("stripe_success_url", _text),
        "cancel_url": ("stripe_cancel_url", _text),
    },
}


def _apply(raw: Mapping[Any, Any], schema: Schema, base: Path, prefix: str,
           out: dict[str, Any]) -> None:
    refuse_unknown(raw, schema, prefix)
    for key, value in raw.items():
        entry = schema[key]
        if isinstance(entry, tuple):
            attr, parse = entry
            out[attr] = parse(value, f"{prefix}{key}", base)
        else:
            _apply(_mapping(value, f"{prefix}{key}"), entry, base, f"{prefix}{key}.", out)


def _read(path: str) -> dict[Any, Any]:
    try:
        loaded = yaml.safe_load(Path(path).read_text("utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read CREDITS_CONFIG file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"CREDITS_CONFIG file {path} is not valid YAML: {exc}") from None
    if loaded is not None and not isinstance(loaded, dict):
        raise ConfigError(f"CREDITS_CONFIG file {path} must hold a mapping")
    return loaded or {}


def read_config(path: str) -> dict[str, Any]:
    """The Settings field values the YAML file at ``path`` sets, checked; ConfigError names
    the file and the key at fault."""
    values: dict[str, Any] = {}
    try:
        _apply(_read(path), _SCHEMA, Path(path).absolute().parent, "", values)
    except ConfigError as exc:
        if path in exc.message:
            raise
        raise ConfigError(f"CREDITS_CONFIG file {path}: {exc.message}") from None
    return values
