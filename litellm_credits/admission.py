"""Admission: may this request go to a provider, on which route, and at what hold?

:meth:`Admitter.admit` does, in order: price the request's worst case over the
group's priced deployments, place the hold in one database round trip (which
also returns the account's power level and sealed BYOK keys), choose the route
from the level, and note which BYOK key applies to which provider. The result
is a typed :class:`Admission`; a refusal is :class:`Refused`, carrying the
error and the context as far as it got (for the rejection row).

When the database is down and ``fail_mode`` is ``open``, a user seen recently
is served on their last seen balance, up to ``fail_open_limit_credits``; that
path builds a :class:`Hold` of its own (no row in the database, nothing to
release), never a ledger ``Reservation``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Protocol

from litellm_credits import cost, errors, hold_prices, identity, pricing, routing
from litellm_credits.byok.refs import KeyRowRef
from litellm_credits.byok.vault import Vault
from litellm_credits.context import BYOK_NAME_KEY, LEVEL_KEY, RequestContext, metadata_of
from litellm_credits.ledger import ByokKeyRef, Reservation
from litellm_credits.observe import metrics
from litellm_credits.settings import Settings
from litellm_credits.values import CREDIT_PLACES, POWER_LEVELS, money

TOP_UP = "POST /credits/purchase {\"package_id\": N}"


class HoldLedger(Protocol):
    """The two ledger calls admission makes."""

    async def reserve(self, user_id: str, request_id: str, base_amount: Decimal,
                      level: str | None, ttl_seconds: int) -> Reservation: ...

    async def release(self, request_id: str) -> bool: ...


class SnapshotView(Protocol):
    @property
    def levels(self) -> Mapping[str, routing.LevelConfig]: ...
    @property
    def credits_per_usd(self) -> Decimal: ...
    @property
    def latency_ms(self) -> Mapping[tuple[str, str], int]: ...


class AdmissionRuntime(Protocol):
    """What admission reads from the process runtime (a fake in unit tests)."""

    settings: Settings

    @property
    def ledger(self) -> HoldLedger: ...
    @property
    def snapshot(self) -> SnapshotView: ...
    def group(self, model_group: str) -> list[routing.Deployment]: ...


@dataclass(frozen=True, slots=True)
class ByokSecret:
    """A decrypted BYOK key for one request; lives in process memory only."""

    key_id: int  # the key row's id
    plaintext: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class Hold:
    """What the request holds: from the ledger, or served open while the database is away."""

    power_level: str
    multiplier: Decimal
    amount: Decimal
    available_after: Decimal
    byok_keys: tuple[ByokKeyRef, ...] = ()
    fail_open: bool = False

    @classmethod
    def placed(cls, res: Reservation) -> Hold:
        return cls(res.power_level, res.cost_multiplier, res.hold_amount,
                   res.available_after, res.byok_keys)


@dataclass(frozen=True, slots=True)
class Admission:
    """An admitted request: its context (for metadata) and its secrets (for memory only)."""

    context: RequestContext
    keys: Mapping[str, ByokSecret]  # provider -> the user's key for it
    num_retries: int


class Refused(Exception):  # noqa: N818 - a refusal, not a malfunction
    """Admission said no; ``context`` is as far as it got (for the rejection row)."""

    def __init__(self, error: errors.CreditsError, context: RequestContext) -> None:
        super().__init__(error.message)
        self.error = error
        self.context = context


class Admitter:
    """Admits requests for one runtime; remembers the last balance seen per user."""

    def __init__(self, runtime: AdmissionRuntime, vault: Callable[[], Vault]) -> None:
        self.runtime = runtime
        self._vault = vault
        self._fail_open_spent: dict[str, Decimal] = {}
        self._last_seen: dict[str, tuple[Decimal, str, float]] = {}
        self._hold_defaults = hold_prices.HoldDefaults(
            max_output_tokens=runtime.settings.default_max_tokens)

    async def admit(self, data: Mapping[str, Any], ctx: RequestContext) -> Admission:
        try:
            return await self._admit(data, ctx)
        except Refused:
            raise
        except errors.CreditsError as exc:
            raise Refused(exc, ctx) from None

    async def _admit(self, data: Mapping[str, Any], ctx: RequestContext) -> Admission:
        rt = self.runtime
        md = metadata_of(data)
        priced = self._priced(ctx.model_group)
        requested = md.get(LEVEL_KEY)
        if requested is not None and requested not in POWER_LEVELS:
            raise errors.InvalidPowerLevel(
                f"metadata.power_level {str(requested)[:40]!r} is not eco, balanced or precision")
        snapshot = rt.snapshot
        base = cost.full_credits(self._estimate_usd(data, priced), snapshot.credits_per_usd,
                                 Decimal(1))
        ctx, hold = await self._hold(ctx, base, requested)  # ctx.user_id: who was held on
        try:
            level = snapshot.levels.get(hold.power_level)
            if level is None:
                raise errors.NoRoute(
                    f"power level {hold.power_level} is not loaded yet; retry shortly")
            route = routing.choose(priced, level, snapshot.latency_ms)
            keys = self._byok_keys(hold, route, md, ctx.user_id)
        except errors.CreditsError as exc:
            if not hold.fail_open:
                await rt.ledger.release(ctx.request_id)
            raise Refused(exc, ctx.replace(power_level=hold.power_level)) from None
        # One replace for everything admission decided: it runs on every request.
        ctx = ctx.replace(
            power_level=hold.power_level, multiplier=hold.multiplier, hold=hold.amount,
            credits_per_usd=snapshot.credits_per_usd, route=tuple(route.ids), route_rule=route.rule,
            byok={provider: secret.key_id for provider, secret in keys.items()},
            fallbacks={k.id: k.fallback for k in hold.byok_keys},
            available_after=hold.available_after, fail_open=hold.fail_open,
        )
        # One attempt per routed deployment, plus one platform-key retry per
        # BYOK key that may fall back.
        retries = max(len(route.ids) - 1, 0) + sum(
            1 for k in hold.byok_keys if k.fallback and k.provider in keys)
        return Admission(ctx, keys, retries)

    def _priced(self, model_group: str | None) -> list[routing.Deployment]:
        if not isinstance(model_group, str) or not model_group:
            raise errors.UnknownModel("the request names no model")
        group = self.runtime.group(model_group)
        if not group:
            raise errors.UnknownModel(
                f"model {model_group[:100]!r} is not configured on this proxy; "
                "list the models with GET /v1/models"
            )
        priced = [d for d in group if d.price is not None]
        if not priced:
            raise errors.UnpricedModel(
                f"model {model_group[:100]!r} has no known price, so it cannot be billed; set "
                "its LiteLLM cost keys (input_cost_per_token/output_cost_per_token, or "
                "input_cost_per_image, input_cost_per_second, input_cost_per_character, "
                "input_cost_per_query for its mode) on its deployment, or add it to "
                "model_prices in the credits config"
            )
        return priced

    def _estimate_usd(self, data: Mapping[str, Any], priced: Sequence[routing.Deployment]
                      ) -> Decimal:
        """The most this request can cost on any priced deployment of its group, from the
        unit prices cached per deployment at catalog build (every mode: tokens, images,
        seconds, characters, queries); no cost-engine call on the hot path."""
        request = pricing.hold_request(data)
        defaults = self._hold_defaults
        return max(d.price.hold_units().hold_usd(request, defaults)
                   for d in priced if d.price is not None)

    async def _hold(self, ctx: RequestContext, base: Decimal, requested: str | None
                    ) -> tuple[RequestContext, Hold]:
        rt = self.runtime
        try:
            # A team without a wallet is held on (and billed to) its member: identity.reserve.
            held_on, res = await identity.reserve(
                rt.ledger, ctx.payer or identity.Payer(ctx.user_id, "user"), ctx.request_id,
                base, requested, rt.settings.hold_ttl_seconds)
            if held_on != ctx.user_id:
                ctx = ctx.replace(user_id=held_on)
        except errors.DatabaseUnavailable:
            return ctx, self._fail_open(ctx.user_id, base, requested)
        except errors.AccountNotFound:
            raise errors.AccountNotFound(
                f"no credit account for user {ctx.user_id}: balance 0, this request needs "
                f"up to {money(base)} credits before the power-level multiplier; buy credits "
                "with POST /credits/purchase or ask an admin for a grant",
                balance="0", needed=money(base), top_up=TOP_UP) from None
        refusal = _refusal(res)
        if refusal is not None:
            raise Refused(refusal, ctx.replace(power_level=res.power_level))
        metrics.count(metrics.HOLDS, "placed")
        self._fail_open_spent.pop(ctx.user_id, None)
        self._last_seen[ctx.user_id] = (res.available_after, res.power_level, time.monotonic())
        return ctx, Hold.placed(res)

    def _fail_open(self, user_id: str, base: Decimal, requested: str | None) -> Hold:
        """Serve a known user on their last seen balance while the database is down."""
        rt = self.runtime
        unavailable = errors.DatabaseUnavailable(
            "the credits database is unavailable, so this request cannot be checked; "
            "retry shortly")
        if rt.settings.fail_mode != "open":
            raise unavailable
        seen = self._last_seen.get(user_id)
        if seen is None:
            raise unavailable
        available, level, _ = seen
        level = requested or level
        config = rt.snapshot.levels.get(level)
        if config is None:
            raise unavailable
        amount = (base * config.multiplier).quantize(CREDIT_PLACES)
        spent = self._fail_open_spent.get(user_id, Decimal(0))
        limit = min(available, rt.settings.fail_open_limit_credits)
        if spent + amount > limit:
            raise unavailable
        self._fail_open_spent[user_id] = spent + amount
        return Hold(level, config.multiplier, amount, available - (spent + amount),
                    fail_open=True)

    def _byok_keys(
        self, hold: Hold, route: routing.Route, md: Mapping[str, Any], user_id: str
    ) -> dict[str, ByokSecret]:
        """The user's key for each of the route's providers they have one for."""
        if not hold.byok_keys:
            return {}
        wanted = md.get(BYOK_NAME_KEY)
        if wanted is not None and not isinstance(wanted, str):
            raise errors.InvalidInput("metadata.byok_key_name must be a string")
        providers = {d.provider for d in route.deployments}
        chosen: dict[str, ByokKeyRef] = {}
        for key in hold.byok_keys:
            provider = self.runtime.settings.provider_name(key.provider)
            if provider not in providers:
                continue
            if wanted is not None:
                if key.key_name == wanted:
                    chosen[provider] = key
            elif key.is_default and provider not in chosen:
                chosen[provider] = key
        if wanted is not None and not chosen:
            raise errors.InvalidInput(
                f"no active BYOK key named {wanted[:64]!r} for the providers of this route; "
                "list your keys with GET /credits/keys")
        vault = self._vault()
        return {
            provider: ByokSecret(key.id, vault.decrypt(
                key.blob, key.key_id, KeyRowRef(user_id, key.provider, key.key_name)))
            for provider, key in chosen.items()
        }


def _refusal(res: Reservation) -> errors.CreditsError | None:
    """The error for a hold the ledger refused, naming the numbers behind it."""
    if res.status == "quota":
        return errors.QuotaExceeded(
            f"the monthly quota of {money(res.monthly_quota)} credits is used up "
            f"({money(res.quota_used)} used this month); it resets on the 1st (UTC), "
            "or ask an admin to move the account to a larger tier",
            monthly_quota=money(res.monthly_quota), used=money(res.quota_used))
    if res.status == "insufficient":
        available = res.balance - res.held
        return errors.InsufficientCredits(
            f"insufficient credits: available {money(available)} (balance "
            f"{money(res.balance)}, held by requests in flight {money(res.held)}), this "
            f"request needs up to {money(res.hold_amount)}; buy credits with POST "
            "/credits/purchase or ask an admin for a grant",
            balance=money(res.balance), held=money(res.held),
            available=money(available), needed=money(res.hold_amount), top_up=TOP_UP)
    return None
