"""The composition root: what happens when LiteLLM loads ``litellm_credits.handler``.

:func:`handler` (reached lazily through ``litellm_credits.handler``) builds,
once per process:

1. the runtime wiring - every process runtime gets its settlement observers
   (metrics, low-balance alerts) subscribed here and nowhere else;
2. the :class:`~litellm_credits.hook.CreditsHandler`;
3. the route guard in front of the proxy's app (:mod:`litellm_credits.guard`), with
   ``allow_unbilled_routes`` and ``pass_through_billing`` from the settings, refusals
   counted in ``credits_route_refusals_total`` (always, when there is a proxy);
4. the routers on the proxy's own app: the ``/credits`` API, the team wallets
   (``/credits/teams``), ``/credits/metrics``, the UI and the admin console
   (unless ``mount_api`` is off, or there is no proxy: CLI, tests);
5. the runtime's start, when the proxy's loop already runs, so the spool is
   replayed without waiting for traffic.

No other module does any of this on import.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from litellm_credits import errors, guard, settings
from litellm_credits.hook import CreditsHandler
from litellm_credits.observe import metrics
from litellm_credits.runtime import Runtime, set_wiring

log = logging.getLogger("litellm_credits.plugin")

_handler: CreditsHandler | None = None
_startup: list[asyncio.Task[None]] = []


def observe(runtime: Runtime) -> None:
    """Subscribe the settlement observers to ``runtime`` (idempotent)."""
    from litellm_credits.observe import alerts, monitoring

    monitoring.install(runtime)
    alerts.install(runtime)


def handler() -> CreditsHandler:
    """The process's callback, built and wired on first use."""
    global _handler
    if _handler is None:
        set_wiring(observe)
        _handler = CreditsHandler()
        _install_guard()
        _mount_routers(_handler)
    return _handler


def route_policy(loaded: settings.Settings,
                 general_settings: Any = None) -> guard.RoutePolicy:
    """The guard's policy from the credits settings and LiteLLM's ``general_settings``."""
    try:
        chosen = guard.GuardSettings(allow_unbilled_routes=loaded.allow_unbilled_routes,
                                     pass_through_billing=loaded.pass_through_billing)
    except ValueError as exc:  # an unknown route family name
        raise errors.ConfigError(str(exc)) from None
    return guard.RoutePolicy.from_settings(
        chosen, guard.custom_pass_through_paths(general_settings))


def _count_refusal(refusal: guard.Refusal) -> None:
    metrics.count(metrics.ROUTE_REFUSALS, refusal.family)


def _install_guard() -> None:
    """Refuse, before LiteLLM routes them, the requests the plugin cannot bill (I5)."""
    try:
        from litellm.proxy import proxy_server
    except ImportError:  # the package is used without the proxy (CLI, tests)
        return
    app = getattr(proxy_server, "app", None)
    if app is None:
        return
    policy = route_policy(settings.load(), getattr(proxy_server, "general_settings", None))
    guard.install(app, policy, on_refusal=_count_refusal)


def _mount_routers(callback: CreditsHandler) -> None:
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
        teams.mount(app)  # /credits/teams/{team_id}/...: a LiteLLM team's wallet
        console.mount(app)  # /credits/ui/console and the console's /credits/admin reads
        monitoring.mount(app)
        ui.mount(app)
    _start_when_loaded(callback)


def _start_when_loaded(callback: CreditsHandler) -> None:
    """Start the runtime now if the proxy's loop runs, so the spool replays without traffic."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return  # loaded outside the proxy's loop: the first request starts it
    if settings.load().database_url:
        _startup.append(loop.create_task(callback.runtime.ensure_started()))
