"""The settlement record: one finished request, as one ``llm_usage_log`` row to be.

:class:`SettlementRecord` is the typed record the hook builds, the writer
queues, the spool keeps on disk and ``settle_usage`` (0003_settlement.sql)
takes. It has exactly one serialisation each way:

* :meth:`SettlementRecord.to_json` - the JSON object ``settle_usage`` reads
  (``jsonb_to_recordset`` with the same column names); it is also the spool
  line, so a line written by an older version (a plain JSON object with
  Decimals as strings) replays unchanged;
* :meth:`SettlementRecord.from_json` - a spool line back to a record, tolerant
  of the keys older failure records left out (the SQL defaults them).

The builders (:func:`success_record`, :func:`failure_record`) live in
:mod:`litellm_credits.settlement.build`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from litellm_credits.values import money

JsonObject = dict[str, Any]


class RecordFormatError(ValueError):
    """A spool line that is JSON but not a settlement record."""


@dataclass(frozen=True, slots=True, kw_only=True)
class SettlementRecord:
    """One request to settle; the fields are the ``llm_usage_log`` columns, in the order
    ``settle_usage`` lists them (keyword-only, so that order costs nothing)."""

    request_id: str
    user_id: str
    model: str | None = None
    model_group: str | None = None
    provider: str | None = None
    api_base: str | None = None
    power_level: str | None = None
    byok_key_id: int | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    cached_tokens: int | None = None
    total_tokens: int | None = None
    provider_cost_usd: Decimal | None = None
    credits_charged: Decimal = Decimal(0)
    cost_multiplier: Decimal | None = None
    latency_ms: int | None = None
    time_to_first_token_ms: int | None = None
    success: bool
    status_code: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    app_id: str | None = None
    session_id: str | None = None
    request_metadata: Mapping[str, Any] = field(default_factory=dict)
    response_metadata: Mapping[str, Any] = field(default_factory=dict)
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def had_hold(self) -> bool:
        """A record of a request that passed the pre-call hook (and so held credits).

        The hook writes ``route_rule`` only after the hold was placed and a route
        chosen; a refusal in the hook (402, 429, ...) has none and never held anything.
        """
        return self.request_metadata.get("route_rule") is not None

    def to_json(self) -> JsonObject:
        """The object ``settle_usage`` takes, and the spool line: JSON-safe, money as text."""
        out: JsonObject = {}
        for f in FIELDS:
            value = getattr(self, f)
            if isinstance(value, Decimal):
                value = money(value)
            elif isinstance(value, datetime):
                value = value.isoformat()
            elif isinstance(value, Mapping):
                value = dict(value)
            out[f] = value
        return out

    @classmethod
    def from_json(cls, obj: Any) -> SettlementRecord:
        """A record from a spool line (this version's or an older one's)."""
        if not isinstance(obj, Mapping):
            raise RecordFormatError("a settlement record is a JSON object")
        values: dict[str, Any] = {}
        for name in FIELDS:
            if name not in obj:
                continue
            try:
                values[name] = _PARSE[_KIND[name]](obj[name])
            except (TypeError, ValueError, InvalidOperation) as exc:
                raise RecordFormatError(f"{name}: {exc}") from None
        for name in ("request_id", "user_id", "success"):
            if name not in values or values[name] is None:
                raise RecordFormatError(f"{name} is missing")
        return cls(**values)

    def replace(self, **changes: Any) -> SettlementRecord:
        return dataclasses.replace(self, **changes)


FIELDS: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(SettlementRecord))


def _opt(parse: Any) -> Any:
    return lambda v: None if v is None else parse(v)


def _text(v: Any) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected text, got {type(v).__name__}")
    return v


def _int(v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"expected an integer, got {type(v).__name__}")
    return v


def _bool(v: Any) -> bool:
    if not isinstance(v, bool):
        raise TypeError(f"expected true or false, got {type(v).__name__}")
    return v


def _decimal(v: Any) -> Decimal:
    # Old and new lines carry money as text; a JSON number is read exactly from its text.
    if isinstance(v, bool) or not isinstance(v, str | int | float):
        raise TypeError(f"expected a decimal, got {type(v).__name__}")
    parsed = Decimal(str(v))
    if not parsed.is_finite():
        raise ValueError(f"{v!r} is not a finite number")
    return parsed


def _object(v: Any) -> Mapping[str, Any]:
    if not isinstance(v, Mapping):
        raise TypeError(f"expected an object, got {type(v).__name__}")
    return dict(v)


def _time(v: Any) -> datetime:
    parsed = datetime.fromisoformat(_text(v))
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


_PARSE: dict[str, Any] = {
    "text": _text, "opt_text": _opt(_text), "opt_int": _opt(_int), "bool": _bool,
    "opt_decimal": _opt(_decimal), "decimal": _decimal, "object": _object, "time": _time,
}
_KIND: dict[str, str] = {
    "request_id": "text", "user_id": "text", "success": "bool",
    "model": "opt_text", "model_group": "opt_text", "provider": "opt_text",
    "api_base": "opt_text", "power_level": "opt_text", "byok_key_id": "opt_int",
    "prompt_tokens": "opt_int", "completion_tokens": "opt_int", "cached_tokens": "opt_int",
    "total_tokens": "opt_int", "provider_cost_usd": "opt_decimal",
    "credits_charged": "decimal", "cost_multiplier": "opt_decimal", "latency_ms": "opt_int",
    "time_to_first_token_ms": "opt_int", "status_code": "opt_int", "error_type": "opt_text",
    "error_message": "opt_text", "app_id": "opt_text", "session_id": "opt_text",
    "request_metadata": "object", "response_metadata": "object", "created_at": "time",
}
assert set(_KIND) == set(FIELDS), "every field needs a parser"
