"""The LiteLLM callback: ``litellm_settings: callbacks: litellm_credits.handler``.

Before the call (``async_pre_call_hook``), in order: identify the payer, price
the request, place a hold in one database round trip (which also returns the
account's power level and sealed BYOK keys), choose the route, and note which
BYOK key applies. The key itself is set only in
``async_pre_call_deployment_hook``, after the router picked a deployment;
setting ``data["api_key"]`` earlier would add a deployment carrying one user's
key to the shared model group.

The router asks ``async_filter_deployments`` before every attempt; it answers
with the first deployment of the route that has not failed for this request,
so the level's remaining preferred providers are the fallbacks.

After the call, ``async_log_success_event`` (exactly once per request,
streams included) and ``async_post_call_failure_hook`` (once, when the whole
request failed) queue one settlement record for the background writer.
``async_log_failure_event`` is deliberately not used: LiteLLM fires it for the
first failed attempt even when a retry then succeeds.

The request id that keys holds and settlement is our own uuid, written into
the request's metadata on every run of the hook: LiteLLM's call id can be
chosen by the client (``x-litellm-call-id``), and the client can also write
metadata, so neither is trusted.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from fastapi import HTTPException
from litellm.integrations.custom_logger import CustomLogger

from litellm_credits import errors, identity, pricing, routing, settings
from litellm_credits.byok.vault import KeyRowRef, Vault
from litellm_credits.ledger import Reservation, money
from litellm_credits.observe import metrics
from litellm_credits.runtime import Runtime, get_runtime, on_create
from litellm_credits.settlement.record import (
    app_and_session,
    cached_tokens_of,
    compute_charge,
    failure_record,
    success_record,
)

log = logging.getLogger("litellm_credits.hook")

CTX = "credits"  # our key in the request metadata; JSON-safe values only, no secrets
LEVEL_KEY = "power_level"  # a per-request level a client may ask for in metadata
BYOK_NAME_KEY = "byok_key_name"  # a per-request BYOK key name in metadata
STATE_TTL_SECONDS = 3600.0


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


def _ensure_metadata(data: dict[str, Any]) -> dict[str, Any]:
    if isinstance(data.get("litellm_metadata"), dict):
        md: dict[str, Any] = data["litellm_metadata"]
        return md
    if not isinstance(data.get("metadata"), dict):
        data["metadata"] = {}
    md = data["metadata"]
    return md


def ctx_of(data: Mapping[str, Any]) -> dict[str, Any] | None:
    value = metadata_of(data).get(CTX)
    if isinstance(value, dict) and value.get("issued_by") == _PROCESS_TOKEN:
        return value
    return None


# Marks contexts written by this process, so a client-sent "credits" entry in
# metadata is never mistaken for ours.
_PROCESS_TOKEN = uuid.uuid4().hex


class _RequestState:
    """Per-request secrets and attempt bookkeeping, in process memory only."""

    __slots__ = ("byok_off", "created", "failed", "keys")

    def __init__(self, keys: dict[str, tuple[int, str]]) -> None:
        self.keys = keys  # provider -> (key row id, plaintext)
        self.failed: set[str] = set()
        self.byok_off: set[str] = set()
        self.created = time.monotonic()

    def __repr__(self) -> str:  # never show plaintext keys
        return f"_RequestState(providers={sorted(self.keys)}, failed={sorted(self.failed)})"


def _http_error(exc: errors.CreditsError) -> HTTPException:
    detail = {"error": exc.message, "code": exc.code, **exc.details}
    return HTTPException(status_code=exc.http_status, detail=detail)


def _outcome_for(exc: errors.CreditsError) -> str:
    if exc.http_status in (401, 402, 429):
        return f"rejected_{exc.http_status}"
    if exc.http_status == 503:
        return "unavailable_503"
    return "rejected_other"


class CreditsHandler(CustomLogger):
    """Checks, routes, and settles every request through the proxy."""

    def __init__(self, runtime: Runtime | None = None, vault: Vault | None = None) -> None:
        super().__init__()
        self._runtime = runtime
        self._installed = False
        self._vault = vault
        self._vault_loaded = vault is not None
        self._states: dict[str, _RequestState] = {}
        # id(data) -> the context object we put in that data's metadata. A rerun of
        # the hook on the same data finds the very same object; a client-sent
        # "credits" entry is never that object.
        self._issued: dict[int, dict[str, Any]] = {}
        self._fail_open_spent: dict[str, Decimal] = {}
        self._last_seen: dict[str, tuple[Decimal, str, float]] = {}
        self._pruned_at = 0.0

    # -- plumbing ----------------------------------------------------------------

    @property
    def runtime(self) -> Runtime:
        if self._runtime is None:
            self._runtime = get_runtime()
        if not self._installed:
            _observe(self._runtime)  # idempotent; covers a runtime given to the constructor
            self._installed = True
        return self._runtime

    def vault(self) -> Vault:
        if not self._vault_loaded:
            self._vault = Vault.from_env()
            self._vault_loaded = True
        if self._vault is None:
            raise errors.VaultNotConfigured("BYOK vault is not configured")
        return self._vault

    def _prune(self) -> None:
        now = time.monotonic()
        if now - self._pruned_at < 60:
            return
        self._pruned_at = now
        cutoff = now - STATE_TTL_SECONDS
        for rid in [r for r, s in self._states.items() if s.created < cutoff]:
            del self._states[rid]
        if len(self._issued) > 10_000:
            self._issued.clear()

    def _request_id(self, data: dict[str, Any], md: Mapping[str, Any]) -> str:
        """Our id for this request; the same one when the hook runs again on the same data."""
        issued = self._issued.get(id(data), {})
        if not issued or md.get(CTX) is not issued:
            return f"req_{uuid.uuid4().hex}"
        return str(issued["request_id"])

    # -- before the call -----------------------------------------------------------

    async def async_pre_call_hook(
        self, user_api_key_dict: Any, cache: Any, data: dict[str, Any], call_type: Any
    ) -> dict[str, Any]:
        started = time.perf_counter()
        rt = self.runtime
        level_label, outcome = "unknown", "served"
        try:
            await rt.ensure_started()
            md = _ensure_metadata(data)
            who = identity.resolve(user_api_key_dict, data)  # issue 14: team/service payers
            request_id = self._request_id(data, md)
            ctx: dict[str, Any] = {"request_id": request_id, "user_id": who.account,
                                   "payer": who.describe(who.account),
                                   "issued_by": _PROCESS_TOKEN,
                                   "model_group": data.get("model")}
            md[CTX] = ctx
            self._issued[id(data)] = ctx
            try:
                return await self._admit(rt, data, md, ctx, who)
            except errors.CreditsError as exc:
                level_label = str(ctx.get("power_level") or "unknown")
                if not isinstance(exc, errors.DatabaseUnavailable):
                    # A refusal is logged as a rejection row, never billed.
                    rt.writer.submit(failure_record(
                        ctx, error_type=exc.code, status_code=exc.http_status,
                        message=exc.message))
                raise
        except errors.CreditsError as exc:
            outcome = _outcome_for(exc)
            raise _http_error(exc) from None
        finally:
            metrics.HOOK_SECONDS.observe(time.perf_counter() - started)
            if outcome != "served":
                metrics.count(metrics.REQUESTS, level_label, "none", outcome)

    async def _admit(
        self, rt: Runtime, data: dict[str, Any], md: dict[str, Any], ctx: dict[str, Any],
        who: identity.Payer,
    ) -> dict[str, Any]:
        model_group = data.get("model")
        if not isinstance(model_group, str) or not model_group:
            raise errors.UnknownModel("the request names no model")
        group = rt.group(model_group)
        if not group:
            raise errors.UnknownModel(
                f"model {model_group[:100]!r} is not configured on this proxy; "
                "list the models with GET /v1/models"
            )
        priced = [d for d in group if d.price is not None]
        if not priced:
            raise errors.UnpricedModel(
                f"model {model_group[:100]!r} has no known price, so it cannot be billed; set "
                "input_cost_per_token/output_cost_per_token on its deployment or add it to "
                "model_prices in the credits config"
            )
        requested = md.get(LEVEL_KEY)
        if requested is not None and requested not in ("eco", "balanced", "precision"):
            raise errors.InvalidPowerLevel(
                f"metadata.power_level {str(requested)[:40]!r} is not eco, balanced or precision")

        snapshot = rt.snapshot
        prompt_tokens = pricing.estimate_prompt_tokens(
            data.get("messages") or data.get("input") or data.get("prompt"))
        if data.get("system"):  # Anthropic-style /v1/messages
            prompt_tokens += pricing.estimate_prompt_tokens(data.get("system"))
        usd = max(
            d.price.usd(prompt_tokens,
                        pricing.completion_budget(data, d.price, rt.settings.default_max_tokens))
            for d in priced if d.price is not None
        )
        base = pricing.to_credits(usd, snapshot.credits_per_usd, Decimal(1))
        try:
            # A team without a wallet falls back to its member (identity.reserve).
            ctx["user_id"], res = await identity.reserve(
                rt.ledger, who, ctx["request_id"], base, requested, rt.settings.hold_ttl_seconds)
            ctx["payer"] = who.describe(ctx["user_id"])
        except errors.DatabaseUnavailable:
            res = self._fail_open(rt, ctx["user_id"], base, requested)
        except errors.AccountNotFound:
            raise errors.AccountNotFound(
                f"no credit account for user {ctx['user_id']}: balance 0, this request needs "
                f"up to {money(base)} credits before the power-level multiplier; buy credits "
                "with POST /credits/purchase or ask an admin for a grant",
                balance="0", needed=money(base),
                top_up="POST /credits/purchase {\"package_id\": N}") from None
        ctx["power_level"] = res.power_level
        self._check_reservation(res, ctx["user_id"])
        if res.status != "fail_open":
            metrics.count(metrics.HOLDS, "placed")
            self._fail_open_spent.pop(ctx["user_id"], None)
            self._last_seen[ctx["user_id"]] = (
                res.available_after, res.power_level, time.monotonic())

        try:
            level = snapshot.levels.get(res.power_level)
            if level is None:
                raise errors.NoRoute(
                    f"power level {res.power_level} is not loaded yet; retry shortly")
            route = routing.choose(priced, level, snapshot.latency_ms)
            keys = self._byok_keys(res, route, md, ctx["user_id"])
        except errors.CreditsError:
            if res.status != "fail_open":
                await rt.ledger.release(ctx["request_id"])
            raise

        ctx.update({
            "multiplier": str(res.cost_multiplier),
            "hold": str(res.hold_amount),
            "credits_per_usd": str(snapshot.credits_per_usd),
            "route": route.ids,
            "route_rule": route.rule,
            "byok": {provider: key_id for provider, (key_id, _) in keys.items()},
            "fallbacks": {str(k.id): k.fallback for k in res.byok_keys},
            "available_after": money(res.available_after),
            "fail_open": res.status == "fail_open",
        })
        self._states[ctx["request_id"]] = _RequestState(keys)
        # One attempt per routed deployment, plus one platform-key retry per
        # BYOK key that may fall back.
        data["num_retries"] = max(len(route.ids) - 1, 0) + sum(
            1 for k in res.byok_keys if k.fallback and k.provider in keys)
        self._prune()
        return data

    def _check_reservation(self, res: Reservation, user_id: str) -> None:
        if res.status == "quota":
            raise errors.QuotaExceeded(
                f"the monthly quota of {money(res.monthly_quota)} credits is used up "
                f"({money(res.quota_used)} used this month); it resets on the 1st (UTC), "
                "or ask an admin to move the account to a larger tier",
                monthly_quota=money(res.monthly_quota), used=money(res.quota_used))
        if res.status == "insufficient":
            available = res.balance - res.held
            raise errors.InsufficientCredits(
                f"insufficient credits: available {money(available)} (balance "
                f"{money(res.balance)}, held by requests in flight {money(res.held)}), this "
                f"request needs up to {money(res.hold_amount)}; buy credits with POST "
                "/credits/purchase or ask an admin for a grant",
                balance=money(res.balance), held=money(res.held),
                available=money(available), needed=money(res.hold_amount),
                top_up="POST /credits/purchase {\"package_id\": N}")

    def _fail_open(
        self, rt: Runtime, user_id: str, base: Decimal, requested: str | None
    ) -> Reservation:
        """Serve a known user on their last seen balance while the database is down."""
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
        amount = (base * config.multiplier).quantize(pricing.CREDIT_PLACES)
        spent = self._fail_open_spent.get(user_id, Decimal(0))
        limit = min(available, rt.settings.fail_open_limit_credits)
        if spent + amount > limit:
            raise unavailable
        self._fail_open_spent[user_id] = spent + amount
        return Reservation("fail_open", level, config.multiplier, amount, available,
                           spent + amount, "", None, Decimal(0), ())

    def _byok_keys(
        self, res: Reservation, route: routing.Route, md: Mapping[str, Any], user_id: str
    ) -> dict[str, tuple[int, str]]:
        """provider -> (key row id, plaintext) for the route's providers the user has keys for."""
        if not res.byok_keys:
            return {}
        wanted = md.get(BYOK_NAME_KEY)
        if wanted is not None and not isinstance(wanted, str):
            raise errors.InvalidInput("metadata.byok_key_name must be a string")
        providers = {d.provider for d in route.deployments}
        chosen: dict[str, Any] = {}
        for key in res.byok_keys:
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
        vault = self.vault()
        result: dict[str, tuple[int, str]] = {}
        for provider, key in chosen.items():
            plaintext = vault.decrypt(key.blob, key.key_id,
                                      KeyRowRef(user_id, key.provider, key.key_name))
            result[provider] = (key.id, plaintext)
        return result

    async def async_filter_deployments(
        self,
        model: str,
        healthy_deployments: list[Any],
        messages: Any,
        request_kwargs: dict[str, Any] | None = None,
        parent_otel_span: Any = None,
    ) -> list[Any]:
        ctx = ctx_of(request_kwargs or {})
        if ctx is None or not healthy_deployments:
            return healthy_deployments
        state = self._states.get(ctx["request_id"])
        failed = state.failed if state else set()
        by_id = {str((d.get("model_info") or {}).get("id")): d for d in healthy_deployments}
        for deployment_id in ctx.get("route") or []:
            if deployment_id not in failed and deployment_id in by_id:
                return [by_id[deployment_id]]
        return []

    async def async_pre_call_deployment_hook(
        self, kwargs: dict[str, Any], call_type: Any
    ) -> dict[str, Any] | None:
        ctx = ctx_of(kwargs)
        if ctx is None or not ctx.get("byok"):
            return None
        state = self._states.get(ctx["request_id"])
        if state is None:
            return None
        provider = self._provider_of(kwargs)
        entry = state.keys.get(provider) if provider else None
        if entry is None or provider in state.byok_off:
            return None
        kwargs["api_key"] = entry[1]
        return kwargs

    def _provider_of(self, kwargs: Mapping[str, Any]) -> str | None:
        info = kwargs.get("model_info") or {}
        deployment_id = str(info.get("id")) if isinstance(info, Mapping) else None
        ctx = ctx_of(kwargs)
        group = ctx.get("model_group") if ctx else None
        if deployment_id and isinstance(group, str):
            for d in self.runtime.group(group):
                if d.id == deployment_id:
                    return d.provider
        return None

    async def async_post_call_failure_deployment_hook(
        self,
        request_data: Mapping[str, Any],
        exception: Exception,
        call_type: Any,
        fallback_depth: int | None = None,
    ) -> None:
        ctx = ctx_of(request_data)
        if ctx is None:
            return
        state = self._states.get(ctx["request_id"])
        if state is None:
            return
        info = request_data.get("model_info") or {}
        deployment_id = str(info.get("id")) if isinstance(info, Mapping) else ""
        provider = self._provider_of(request_data)
        status = getattr(exception, "status_code", None)
        if provider in state.keys and provider not in state.byok_off and status in (401, 403):
            key_id = state.keys[provider][0]
            if (ctx.get("fallbacks") or {}).get(str(key_id)):
                # The user's key was refused and they allow the platform key: retry it.
                state.byok_off.add(provider)
                return
        state.failed.add(deployment_id)

    # -- after the call ----------------------------------------------------------------

    async def async_log_success_event(
        self, kwargs: dict[str, Any], response_obj: Any, start_time: Any, end_time: Any
    ) -> None:
        params = kwargs.get("litellm_params") or {}
        ctx = ctx_of({"metadata": params.get("metadata") or {}})
        if ctx is None:
            metrics.UNBILLED_SUCCESSES.inc()
            return
        rt = self.runtime
        state = self._states.pop(ctx["request_id"], None)
        try:
            record, provider, byok_key_id = self._success_record(rt, kwargs, ctx, state)
        except Exception as exc:  # noqa: BLE001 - a served request is billed whatever happens
            log.exception("could not build the settlement record of %s; billing its hold",
                          ctx["request_id"])
            record = failure_record(ctx, error_type="record_error", status_code=200,
                                    message=type(exc).__name__)
            record.update(success=True, credits_charged=Decimal(ctx.get("hold", "0")),
                          response_metadata={"priced_from": "hold"})
            provider, byok_key_id = None, None
        rt.writer.submit(record)
        level = str(ctx.get("power_level") or "unknown")
        metrics.count(metrics.REQUESTS, level, str(provider or "unknown"), "served")
        metrics.count(metrics.BYOK_REQUESTS, "byok" if byok_key_id else "platform",
                      str(provider or "unknown"))

    def _success_record(
        self, rt: Runtime, kwargs: dict[str, Any], ctx: dict[str, Any],
        state: _RequestState | None,
    ) -> tuple[dict[str, Any], str | None, int | None]:
        params = kwargs.get("litellm_params") or {}
        slo = kwargs.get("standard_logging_object") or {}
        group = str(slo.get("model_group") or ctx.get("model_group") or "")
        deployment_id = slo.get("model_id")
        provider = None
        for d in rt.group(group):
            if d.id == deployment_id:
                provider = d.provider
        provider = provider or slo.get("custom_llm_provider")
        byok_key_id = None
        if state is not None and provider in state.keys and provider not in state.byok_off:
            byok_key_id = state.keys[provider][0]
        charge = compute_charge(
            rt.price_of(group, deployment_id),
            prompt_tokens=int(slo.get("prompt_tokens") or 0),
            completion_tokens=int(slo.get("completion_tokens") or 0),
            cached_tokens=cached_tokens_of(slo),
            credits_per_usd=Decimal(ctx.get("credits_per_usd", "0")),
            multiplier=Decimal(ctx.get("multiplier", "1")),
            byok=byok_key_id is not None,
            byok_fee_percent=rt.settings.byok_fee_percent,
            hold_amount=Decimal(ctx.get("hold", "0")),
            cache_hit=bool(slo.get("cache_hit")),
        )
        headers = (params.get("proxy_server_request") or {}).get("headers") or {}
        app_id, session_id = app_and_session(params.get("metadata") or {}, headers)
        record = success_record(ctx, slo, provider=provider, charge=charge,
                                byok_key_id=byok_key_id, app_id=app_id, session_id=session_id)
        return record, provider, byok_key_id

    async def async_post_call_failure_hook(
        self,
        request_data: dict[str, Any],
        original_exception: Exception,
        user_api_key_dict: Any,
        traceback_str: str | None = None,
    ) -> HTTPException | None:
        ctx = ctx_of(request_data)
        if ctx is None or "hold" not in ctx:
            return None  # not ours, or refused by our own pre-call hook (already logged)
        state = self._states.pop(ctx["request_id"], None)
        secrets = tuple(p for _, p in state.keys.values()) if state else ()
        status = getattr(original_exception, "status_code", None)
        md = metadata_of(request_data)
        headers = (request_data.get("proxy_server_request") or {}).get("headers") or {}
        app_id, session_id = app_and_session(md, headers)
        self.runtime.writer.submit(failure_record(
            ctx,
            error_type=type(original_exception).__name__,
            status_code=status if isinstance(status, int) else None,
            message=str(original_exception),
            secrets=secrets,
            app_id=app_id,
            session_id=session_id,
        ))
        level = str(ctx.get("power_level") or "unknown")
        metrics.count(metrics.REQUESTS, level, "none", "failed")
        if state is not None and state.keys and status in (401, 403):
            names = ", ".join(sorted(state.keys))
            return HTTPException(
                status_code=status,
                detail={"error": f"the provider refused your own API key for {names}; "
                         "replace it with PUT /credits/keys or `litellm-credits keys add`, "
                         "or allow fallback to platform keys",
                         "code": "byok_key_rejected"},
            )
        return None

    async def async_post_call_response_headers_hook(
        self,
        data: dict[str, Any],
        user_api_key_dict: Any,
        response: Any,
        request_headers: dict[str, str] | None = None,
        litellm_call_info: dict[str, Any] | None = None,
    ) -> dict[str, str] | None:
        ctx = ctx_of(data)
        if ctx is None or ctx.get("available_after") is None:
            return None
        return {"x-credits-remaining": str(ctx["available_after"])}


def _observe(runtime: Runtime) -> None:
    """Metrics and low-balance alerts follow from what the runtime writes."""
    from litellm_credits.observe import alerts, monitoring

    monitoring.install(runtime)
    alerts.install(runtime)


def _mount_api() -> None:
    """Serve /credits on the proxy's own app when the callback is loaded by a proxy."""
    if not settings.load().mount_api:
        return
    try:
        from litellm.proxy import proxy_server
    except ImportError:  # the package is used without the proxy (CLI, tests)
        return
    from litellm_credits.api import app as api
    from litellm_credits.api import console, teams, ui
    from litellm_credits.observe import monitoring

    app = getattr(proxy_server, "app", None)
    if app is not None:
        api.mount(app)
        teams.mount(app)  # issue 14: /credits/teams/{team_id}/...
        console.mount(app)  # issue 14: the admin console, /credits/ui/console
        monitoring.mount(app)
        ui.mount(app)
    _start_when_loaded()


_startup: list[asyncio.Task[None]] = []


def _start_when_loaded() -> None:
    """Start the runtime now if the proxy's loop runs, so the spool replays without traffic."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # imported outside the proxy's loop: the first request starts it
    if settings.load().database_url:
        _startup.append(loop.create_task(handler.runtime.ensure_started()))


handler = CreditsHandler()
on_create(_observe)
_mount_api()
