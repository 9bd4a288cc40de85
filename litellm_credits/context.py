"""The typed request context, and how it lives in LiteLLM's request metadata.

The pre-call hook writes one :class:`RequestContext` into the request's
metadata under ``"credits"``; LiteLLM carries that metadata (copied, so as
plain JSON) into the deployment hooks and the success and failure events,
where it is read back with :func:`read`. :meth:`RequestContext.to_metadata`
and :meth:`RequestContext.from_metadata` are its only serialisation: JSON-safe
values (Decimals as exact text), never a secret.

A client can write metadata too. Every context we write carries this
process's random token, so a client-sent ``"credits"`` entry is never taken
for ours. The entry is also an :class:`_Entry`, a dict that carries the
context it was made from: the hooks run five or six times per request and read
it back without parsing (a client's JSON can only ever make a plain dict, so
the shortcut cannot be forged), and :class:`Issued` knows from it that a second
run of the pre-call hook on the same data is the same request (one hold, one
bill) while a copy of the data is not.
"""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from litellm_credits.identity import Payer
from litellm_credits.values import money

CTX = "credits"  # our key in the request metadata; JSON-safe values only, no secrets
LEVEL_KEY = "power_level"  # a per-request level a client may ask for in metadata
BYOK_NAME_KEY = "byok_key_name"  # a per-request BYOK key name in metadata

# Marks contexts written by this process, so a client-sent "credits" entry in
# metadata is never mistaken for ours.
_PROCESS_TOKEN = uuid.uuid4().hex


@dataclass(frozen=True, slots=True, kw_only=True)
class RequestContext:
    """What the hook decided before the call, for the hooks and events after it.

    ``hold`` is None until the request was admitted: a request refused by the
    pre-call hook has only its identity (and the level, once known).
    """

    request_id: str
    user_id: str
    model_group: str | None = None
    power_level: str | None = None
    multiplier: Decimal | None = None
    hold: Decimal | None = None
    credits_per_usd: Decimal | None = None
    route: tuple[str, ...] = ()
    route_rule: str | None = None
    byok: Mapping[str, int] = field(default_factory=dict)  # provider -> key row id
    fallbacks: Mapping[int, bool] = field(default_factory=dict)  # key row id -> may fall back
    available_after: Decimal | None = None
    fail_open: bool = False
    # Who pays and who spends (identity.resolve); user_id is the account actually held on,
    # which is the payer's member when a team turned out to have no wallet.
    payer: Payer | None = None

    @property
    def admitted(self) -> bool:
        return self.hold is not None

    def replace(self, **changes: Any) -> RequestContext:
        return dataclasses.replace(self, **changes)

    def to_metadata(self) -> dict[str, Any]:
        """The JSON-safe entry written into the request metadata."""
        entry: dict[str, Any] = {
            "request_id": self.request_id,
            "user_id": self.user_id,
            "issued_by": _PROCESS_TOKEN,
            "model_group": self.model_group,
        }
        if self.payer is not None:
            entry["payer"] = self.payer.to_metadata()
        if self.power_level is not None:
            entry["power_level"] = self.power_level
        if self.admitted:
            entry.update({
                "multiplier": money(self.multiplier),
                "hold": money(self.hold),
                "credits_per_usd": money(self.credits_per_usd),
                "route": list(self.route),
                "route_rule": self.route_rule,
                "byok": dict(self.byok),
                "fallbacks": {str(k): v for k, v in self.fallbacks.items()},
                "available_after": money(self.available_after),
                "fail_open": self.fail_open,
            })
        return entry

    @classmethod
    def from_metadata(cls, entry: Any) -> RequestContext | None:
        """The context in a metadata entry, or None if this process did not write it."""
        if type(entry) is _Entry:
            return entry.context  # written by Issued.write in this process (or a copy of it)
        if not isinstance(entry, Mapping) or entry.get("issued_by") != _PROCESS_TOKEN:
            return None
        try:
            return cls(
                request_id=str(entry["request_id"]),
                user_id=str(entry["user_id"]),
                model_group=_opt_str(entry.get("model_group")),
                power_level=_opt_str(entry.get("power_level")),
                multiplier=_opt_decimal(entry.get("multiplier")),
                hold=_opt_decimal(entry.get("hold")),
                credits_per_usd=_opt_decimal(entry.get("credits_per_usd")),
                route=tuple(str(r) for r in entry.get("route") or ()),
                route_rule=_opt_str(entry.get("route_rule")),
                byok={str(p): int(k) for p, k in (entry.get("byok") or {}).items()},
                fallbacks={int(k): bool(v) for k, v in (entry.get("fallbacks") or {}).items()},
                available_after=_opt_decimal(entry.get("available_after")),
                fail_open=bool(entry.get("fail_open")),
                payer=Payer.from_metadata(entry.get("payer")),
            )
        except (KeyError, TypeError, ValueError, InvalidOperation, AttributeError):
            # Ours by the token but mangled in transit: treat as not ours, as before.
            return None


def _opt_str(value: Any) -> str | None:
    return None if value is None else str(value)


def _opt_decimal(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def metadata_of(data: Mapping[str, Any]) -> dict[str, Any]:
    """The metadata dict LiteLLM carries into the events for this route.

    ``/chat/completions`` uses ``metadata``; ``/v1/messages``, ``/responses``
    and others use ``litellm_metadata``.
    """
    for key in ("litellm_metadata", "metadata"):
        value = data.get(key)
        if isinstance(value, dict):
            return value
    return {}


def ensure_metadata(data: dict[str, Any]) -> dict[str, Any]:
    if isinstance(data.get("litellm_metadata"), dict):
        md: dict[str, Any] = data["litellm_metadata"]
        return md
    if not isinstance(data.get("metadata"), dict):
        data["metadata"] = {}
    md = data["metadata"]
    return md


def read(data: Mapping[str, Any]) -> RequestContext | None:
    """Our context in a request's data (``metadata`` or ``litellm_metadata``), if any."""
    return RequestContext.from_metadata(metadata_of(data).get(CTX))


def read_event(kwargs: Mapping[str, Any]) -> RequestContext | None:
    """Our context in the kwargs of a success event (``litellm_params.metadata``)."""
    params = kwargs.get("litellm_params") or {}
    return RequestContext.from_metadata((params.get("metadata") or {}).get(CTX))


class _Entry(dict[str, Any]):
    """The metadata entry as written: plain JSON to LiteLLM, plus the context it encodes.

    ``data_id`` is the identity of the request data it was written into, so a rerun of the
    pre-call hook on that data is told from a copy of it.
    """

    __slots__ = ("context", "data_id")

    def __init__(self, ctx: RequestContext, data_id: int) -> None:
        super().__init__(ctx.to_metadata())
        self.context = ctx
        self.data_id = data_id


class Issued:
    """Writes contexts into request data, and tells a rerun on the same data from a copy."""

    __slots__ = ()

    def request_id(self, data: dict[str, Any]) -> str:
        """Our id for this request; the same one when the hook runs again on the same data."""
        entry = metadata_of(data).get(CTX)
        if type(entry) is _Entry and entry.data_id == id(data):
            return entry.context.request_id
        return f"req_{uuid.uuid4().hex}"

    def write(self, data: dict[str, Any], ctx: RequestContext) -> None:
        ensure_metadata(data)[CTX] = _Entry(ctx, id(data))
