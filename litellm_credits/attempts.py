"""Per-request attempt bookkeeping between the pre-call hook and the final event.

For each admitted request the process keeps, in memory only, the decrypted
BYOK keys (never in the request metadata, which LiteLLM logs), the
deployments that failed, and the providers whose user key was refused and
which fall back to the platform key. The router asks for the next deployment
before every attempt (:meth:`Attempts.next_deployment`); the success or
failure event takes the state away (:meth:`Attempts.finish`). States of
requests that never finish (a client gone mid-call) are dropped after an hour.

It also remembers which requests were settled before their response left the proxy
(:meth:`Attempts.settled_early`) and what they were charged: the response-headers hook reports
that charge, and the success event that LiteLLM fires afterwards for the same request builds
no second record (:meth:`Attempts.take_settled`).
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from decimal import Decimal
from typing import Any

from litellm_credits.admission import Admission
from litellm_credits.context import RequestContext

STATE_TTL_SECONDS = 3600.0


class AttemptState:
    """One request's secrets and failed attempts."""

    __slots__ = ("byok_off", "created", "failed", "keys")

    def __init__(self, keys: dict[str, tuple[int, str]]) -> None:
        self.keys = keys  # provider -> (key row id, plaintext)
        self.failed: set[str] = set()
        self.byok_off: set[str] = set()
        self.created = time.monotonic()

    def __repr__(self) -> str:  # never show plaintext keys
        return f"AttemptState(providers={sorted(self.keys)}, failed={sorted(self.failed)})"

    def byok_key_id(self, provider: str | None) -> int | None:
        """The user's key row that served ``provider``, unless it fell back to ours."""
        if provider in self.keys and provider not in self.byok_off:
            return self.keys[provider][0]
        return None

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(plaintext for _, plaintext in self.keys.values())


class Attempts:
    """The attempt states of this process's requests in flight, by request id."""

    def __init__(self) -> None:
        self._states: dict[str, AttemptState] = {}
        # request id -> (credits charged, when): settled before the response left
        self._settled: dict[str, tuple[Decimal, float]] = {}
        self._pruned_at = 0.0

    def start(self, admission: Admission) -> None:
        keys = {p: (s.key_id, s.plaintext) for p, s in admission.keys.items()}
        self._states[admission.context.request_id] = AttemptState(keys)
        self._prune()

    def get(self, ctx: RequestContext) -> AttemptState | None:
        return self._states.get(ctx.request_id)

    def finish(self, ctx: RequestContext) -> AttemptState | None:
        return self._states.pop(ctx.request_id, None)

    def settled_early(self, ctx: RequestContext, charged: Decimal) -> None:
        """The request's record is journaled; its later success event must not build another."""
        self._settled[ctx.request_id] = (charged, time.monotonic())

    def charged(self, ctx: RequestContext) -> Decimal | None:
        """What a request settled before its response left was charged, if it was."""
        entry = self._settled.get(ctx.request_id)
        return entry[0] if entry is not None else None

    def take_settled(self, ctx: RequestContext) -> bool:
        """True (once) if the request was settled before its response left."""
        return self._settled.pop(ctx.request_id, None) is not None

    def next_deployment(self, ctx: RequestContext, healthy: Sequence[Any]) -> list[Any]:
        """The first deployment of the route that has not failed for this request."""
        state = self._states.get(ctx.request_id)
        failed = state.failed if state else set()
        by_id = {str((d.get("model_info") or {}).get("id")): d for d in healthy}
        for deployment_id in ctx.route:
            if deployment_id not in failed and deployment_id in by_id:
                return [by_id[deployment_id]]
        return []

    def key_for(self, ctx: RequestContext, provider: str | None) -> str | None:
        """The user's plaintext key for this attempt's provider, if one applies."""
        state = self._states.get(ctx.request_id)
        if state is None or provider is None or provider in state.byok_off:
            return None
        entry = state.keys.get(provider)
        return entry[1] if entry else None

    def failed(self, ctx: RequestContext, deployment_id: str, provider: str | None,
               status: Any) -> None:
        """Note a failed attempt: fall back to the platform key, or skip the deployment."""
        state = self._states.get(ctx.request_id)
        if state is None:
            return
        if provider in state.keys and provider not in state.byok_off and status in (401, 403):
            key_id = state.keys[provider][0]
            if _fallback(ctx.fallbacks, key_id):
                # The user's key was refused and they allow the platform key: retry it.
                state.byok_off.add(provider)
                return
        state.failed.add(deployment_id)

    def _prune(self) -> None:
        now = time.monotonic()
        if now - self._pruned_at < 60:
            return
        self._pruned_at = now
        cutoff = now - STATE_TTL_SECONDS
        for rid in [r for r, s in self._states.items() if s.created < cutoff]:
            del self._states[rid]
        for rid in [r for r, (_, at) in self._settled.items() if at < cutoff]:
            del self._settled[rid]


def _fallback(fallbacks: Mapping[int, bool], key_id: int) -> bool:
    return bool(fallbacks.get(key_id))
