"""The per-process runtime: database pool, writer, and short-lived configuration caches.

One :class:`Runtime` exists per proxy process. It is started lazily inside the
proxy's event loop (the pool is created with ``open=False`` and opened there).
A background task refreshes read-mostly configuration every few seconds:
power levels, ``credits_per_usd`` from ``credit_settings``, recent latency per
deployment (incrementally, :mod:`litellm_credits.latency`), and the model
catalog from LiteLLM's router. The hot path only
reads these snapshots; it never waits on a refresh. All shared state stays in
PostgreSQL, so a change made there reaches every replica within
``config_cache_seconds``.

Observers (metrics, alerts) subscribe here, with :meth:`Runtime.subscribe`, and
nowhere else: the runtime is the one subscriber of the writer's settled batches
and of the ledger's money movements, and fans each event out to every
:class:`RuntimeObserver`. One observer failing never stops the others, nor
settlement.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, TypeVar

from litellm_credits import cost, errors, pricing, routing
from litellm_credits.latency import LatencyWindow
from litellm_credits.ledger import Ledger
from litellm_credits.pricing import Price, exact
from litellm_credits.settings import Settings, require_database_url
from litellm_credits.settlement import build as settlement_build
from litellm_credits.settlement.record import SettlementRecord
from litellm_credits.settlement.spool import Spool
from litellm_credits.settlement.writer import Writer
from litellm_credits.store.db import Database

log = logging.getLogger("litellm_credits.runtime")

ModelListSource = Callable[[], Iterable[Mapping[str, Any]]]
ObserverT = TypeVar("ObserverT", bound="RuntimeObserver")


class RuntimeObserver:
    """Something that follows what the runtime writes; override the events you need.

    Called synchronously from the writer, the refresher and the sweeper, so an
    observer only notes and counts; anything slow goes to its own task.
    """

    def on_batch(self, batch: Sequence[SettlementRecord],
                 results: Sequence[Mapping[str, Any]], elapsed: float) -> None:
        """A batch was settled: the records, ``settle_usage``'s rows, and the seconds taken."""

    def on_refresh(self, runtime: Runtime) -> None:
        """The configuration snapshot was refreshed (every ``config_cache_seconds``)."""

    def on_sweep(self, expired: int) -> None:
        """The sweeper released ``expired`` holds that outlived their TTL."""

    def on_ledger_event(self, event: str, fields: dict[str, Any]) -> None:
        """The ledger moved money (added, debited, refunded, released)."""


@dataclass
class Snapshot:
    """What the hot path reads; replaced whole on every refresh."""

    levels: dict[str, routing.LevelConfig] = field(default_factory=dict)
    credits_per_usd: Decimal = Decimal("10")
    latency_ms: dict[tuple[str, str], int] = field(default_factory=dict)
    catalog: dict[str, list[routing.Deployment]] = field(default_factory=dict)
    loaded_at: float = 0.0


def deployment_from_config(
    entry: Mapping[str, Any], settings: Settings, cost_map: Mapping[str, Mapping[str, Any]]
) -> routing.Deployment:
    params = entry.get("litellm_params") or {}
    info = entry.get("model_info") or {}
    group = str(entry.get("model_name", ""))
    model = str(params.get("model", ""))
    provider = info.get("provider") or params.get("custom_llm_provider") or (
        model.split("/", 1)[0] if "/" in model else "openai"
    )
    quality = info.get("quality_score")
    return routing.Deployment(
        id=str(info.get("id") or ""),
        model_group=group,
        model=model,
        provider=settings.provider_name(str(provider)),
        api_base=params.get("api_base"),
        quality=settings.default_quality_score if quality is None else exact(quality),
        price=pricing.catalog_price(entry, settings.model_prices, cost_map),
    )


def build_catalog(
    model_list: Iterable[Mapping[str, Any]],
    settings: Settings,
    cost_map: Mapping[str, Mapping[str, Any]],
) -> dict[str, list[routing.Deployment]]:
    catalog: dict[str, list[routing.Deployment]] = {}
    for entry in model_list:
        deployment = deployment_from_config(entry, settings, cost_map)
        catalog.setdefault(deployment.model_group, []).append(deployment)
    return catalog


def register_model_prices(settings: Settings) -> None:
    """Feed ``model_prices`` of the credits config to LiteLLM's cost engine, by the names
    written there (ConfigError, naming the key, for a price a float cannot hold)."""
    try:
        cost.register_model_prices(
            {name: price.engine_entry() for name, price in settings.model_prices.items()})
    except ValueError as exc:
        raise errors.ConfigError(str(exc)) from None


def price_engine_entries(model_list: Iterable[Mapping[str, Any]], settings: Settings,
                         cost_map: Mapping[str, Mapping[str, Any]]
                         ) -> tuple[dict[str, dict[str, object]], dict[str, dict[str, Any]]]:
    """Cost entries LiteLLM's engine still lacks for the router's deployments, as
    (``model_prices``-shaped entries by model name, raw cost-map entries by deployment id):

    * a ``model_prices`` entry written under a model GROUP name applies to the models of that
      group's deployments that carry no price of their own (LiteLLM prices by model name);
    * a custom-priced deployment whose cache prices LiteLLM would default to 0 gets them at
      its input price (``pricing.deployment_cache_defaults``), so cached prompt tokens are
      never free by accident.

    Entries already in ``cost_map`` are left out, so a refresh re-registers nothing.
    """
    by_model: dict[str, dict[str, object]] = {}
    by_id: dict[str, dict[str, Any]] = {}
    for entry in model_list:
        params = entry.get("litellm_params") or {}
        model = str(params.get("model", ""))
        by_group = settings.model_prices.get(str(entry.get("model_name", "")))
        if by_group is not None and model and not pricing.custom_priced(entry):
            known = cost_map.get(model) or {}
            if any(known.get(k) != float(v) for k, v in by_group.costs.items()):
                by_model[model] = by_group.engine_entry()
        model_id = str((entry.get("model_info") or {}).get("id") or "")
        registered = cost_map.get(model_id) if model_id else None
        added = pricing.deployment_cache_defaults(entry, registered)
        if added and registered is not None:
            log.warning("deployment %s (%s) declares no cache prices; its cached prompt tokens "
                        "are billed at its input price (declare cache_read_input_token_cost "
                        "and cache_creation_input_token_cost in model_info to change that)",
                        model_id, model)
            by_id[model_id] = {**registered, **added}
    return by_model, by_id


def _router_model_list() -> list[Mapping[str, Any]]:
    from litellm.proxy import proxy_server

    router = getattr(proxy_server, "llm_router", None)
    return list(getattr(router, "model_list", None) or [])


def _cost_map() -> Mapping[str, Mapping[str, Any]]:
    import litellm

    cost_map: Mapping[str, Mapping[str, Any]] = litellm.model_cost
    return cost_map


class Runtime:
    def __init__(
        self,
        settings: Settings,
        *,
        model_list: ModelListSource = _router_model_list,
        cost_map: Callable[[], Mapping[str, Mapping[str, Any]]] = _cost_map,
    ) -> None:
        self.settings = settings
        self.db = Database(
            require_database_url(settings),
            min_size=settings.pool_min_size,
            max_size=settings.pool_max_size,
            timeout=settings.pool_timeout_seconds,
            statement_timeout_ms=settings.statement_timeout_ms,
        )
        self.observers: list[RuntimeObserver] = []
        self.ledger = Ledger(self.db, reserve_batch=settings.reserve_batch_max)
        self.ledger.observers.append(self._ledger_event)
        self.latency = LatencyWindow(settings.latency_window_seconds)
        self.spool = Spool(settings.spool_dir)
        self.writer = Writer(
            self.ledger,
            self.spool,
            batch_size=settings.writer_batch_size,
            flush_seconds=settings.writer_flush_ms / 1000,
            settle_timeout=settings.writer_settle_timeout_ms / 1000,
            journal_fsync_seconds=settings.writer_journal_fsync_ms / 1000,
            on_batch=self._batch_settled,
        )
        atexit.register(self.writer.spool_pending)
        self.snapshot = Snapshot(credits_per_usd=settings.credits_per_usd)
        self._model_list = model_list
        self._cost_map = cost_map
        register_model_prices(settings)
        settlement_build.set_default_policy(settlement_build.PricingPolicy.of(settings))
        self._tasks: list[asyncio.Task[None]] = []
        self._started = False
        self._start_lock = asyncio.Lock()

    # -- observers -----------------------------------------------------------------

    def subscribe(self, observer: ObserverT) -> ObserverT:
        """Add ``observer`` (once) to everything this runtime reports."""
        if not any(o is observer for o in self.observers):
            self.observers.append(observer)
        return observer

    def observer(self, kind: type[ObserverT]) -> ObserverT | None:
        """The subscribed observer of this type, if any (so installing twice is harmless)."""
        for observer in self.observers:
            if isinstance(observer, kind):
                return observer
        return None

    def _fan_out(self, event: str, call: Callable[[RuntimeObserver], None]) -> None:
        for observer in list(self.observers):
            try:
                call(observer)
            except Exception:  # noqa: BLE001 - one observer must not break the others or the writer
                log.exception("%s observer %s failed", event, type(observer).__name__)

    def _batch_settled(self, batch: Sequence[SettlementRecord],
                       results: Sequence[Mapping[str, Any]], elapsed: float) -> None:
        self._fan_out("batch", lambda o: o.on_batch(batch, results, elapsed))

    def _swept(self, expired: int) -> None:
        self._fan_out("sweep", lambda o: o.on_sweep(expired))

    def _ledger_event(self, event: str, fields: dict[str, Any]) -> None:
        self._fan_out("ledger", lambda o: o.on_ledger_event(event, fields))

    async def ensure_started(self) -> None:
        if self._started:
            return
        async with self._start_lock:
            if self._started:
                return
            await self.db.open(wait=False)
            self.writer.start()
            try:
                await self.refresh()
            except errors.CreditsError as exc:
                # The refresher retries; requests meanwhile follow the fail mode.
                log.warning("credits configuration not loaded yet: %s", exc.message)
                self.refresh_catalog()
            self._tasks = [
                asyncio.create_task(self._refresh_loop(), name="credits-refresh"),
                asyncio.create_task(self._sweep_loop(), name="credits-hold-sweeper"),
            ]
            self._started = True

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks = []
        await self.writer.close()
        await self.db.close()
        self._started = False

    # -- configuration snapshots -------------------------------------------------

    def _catalog(self) -> dict[str, list[routing.Deployment]]:
        """The catalog from the router's model list, after giving LiteLLM's engine the
        entries it lacks (a no-op once they are there: checked, not re-registered)."""
        model_list = list(self._model_list())
        by_model, by_id = price_engine_entries(model_list, self.settings, self._cost_map())
        if by_model:
            cost.register_model_prices(by_model)
        if by_id:
            import litellm

            litellm.register_model(model_cost=by_id)
        return build_catalog(model_list, self.settings, self._cost_map())

    def refresh_catalog(self) -> None:
        catalog = self._catalog()
        self.snapshot = Snapshot(
            levels=self.snapshot.levels,
            credits_per_usd=self.snapshot.credits_per_usd,
            latency_ms=self.snapshot.latency_ms,
            catalog=catalog,
            loaded_at=self.snapshot.loaded_at,
        )

    async def refresh(self) -> None:
        levels_rows = await self.db.fetchall("power_levels")
        setting_rows = await self.db.fetchall("settings")
        latency_ms = await self.latency.refresh(self.db)
        aliases = self.settings.provider_aliases
        values = {r["key"]: r["value"] for r in setting_rows}
        credits_per_usd = self.settings.credits_per_usd
        if "credits_per_usd" in values:
            try:
                parsed = Decimal(values["credits_per_usd"])
                if parsed.is_finite() and parsed > 0:
                    credits_per_usd = parsed
            except ArithmeticError:
                log.error("credit_settings.credits_per_usd is not a number; keeping %s",
                          credits_per_usd)
        self.snapshot = Snapshot(
            levels={r["power_level"]: routing.level_from_row(r, aliases) for r in levels_rows},
            credits_per_usd=credits_per_usd,
            latency_ms=latency_ms,
            catalog=self._catalog(),
            loaded_at=time.monotonic(),
        )
        self._fan_out("refresh", lambda o: o.on_refresh(self))

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(max(self.settings.config_cache_seconds, 0.5))
            try:
                await self.refresh()
            except errors.CreditsError as exc:
                log.warning("credits configuration refresh failed: %s", exc.message)

    async def _sweep_loop(self) -> None:
        while True:
            await asyncio.sleep(30)
            try:
                expired = await self.ledger.sweep_expired_holds()
                if expired:
                    log.warning("released %d expired holds (a proxy died mid-request?)", expired)
                    self._swept(expired)
            except errors.CreditsError as exc:
                log.info("hold sweep skipped: %s", exc.message)

    # -- lookups for the hot path ----------------------------------------------------

    def group(self, model_group: str) -> list[routing.Deployment]:
        deployments = self.snapshot.catalog.get(model_group)
        if deployments is None:
            # A deployment added at run time: rebuild once, cheaply, from memory.
            self.refresh_catalog()
            deployments = self.snapshot.catalog.get(model_group, [])
        return deployments

    def price_of(self, model_group: str, deployment_id: str | None) -> Price | None:
        for d in self.group(model_group):
            if d.id == deployment_id:
                return d.price
        return None


_runtime: Runtime | None = None
# Set by the composition root (litellm_credits.plugin): subscribes the
# observers to the process's runtime when it is created, so that every surface
# using it (hook, API, metrics endpoint) is observed from the first write.
_wiring: Callable[[Runtime], None] | None = None


def set_wiring(wire: Callable[[Runtime], None]) -> None:
    """Have ``wire`` called on the process's runtime (now, if it already exists)."""
    global _wiring
    if _wiring is wire:
        return
    _wiring = wire
    if _runtime is not None:
        wire(_runtime)


def get_runtime(settings_factory: Callable[[], Settings] | None = None) -> Runtime:
    """The process's runtime, created on first use (not yet started)."""
    global _runtime
    if _runtime is None:
        from litellm_credits import settings as settings_module

        _runtime = Runtime((settings_factory or settings_module.load)())
        if _wiring is not None:
            _wiring(_runtime)
    return _runtime
