"""Prometheus metrics on the proxy: ``GET /credits/metrics``, and the wiring that feeds them.

Why a route of our own and not LiteLLM's ``/metrics``: LiteLLM's endpoint
serves prometheus_client's global registry and exists only when LiteLLM's own
(enterprise) Prometheus callback is enabled. Our metrics live in a private
registry (:data:`litellm_credits.observe.metrics.REGISTRY`), so nothing of ours
collides with LiteLLM's names or depends on its licence tier, and the route is
always there once the callback is loaded.

**Authentication.** The route uses LiteLLM's own key auth, like the rest of
``/credits``, and answers only ``proxy_admin`` and ``proxy_admin_viewer``
keys (403 otherwise). The metrics carry no user ids, but they do carry
revenue and traffic, which are an operator's business. Give Prometheus a
``proxy_admin_viewer`` key (read-only) as a bearer token; see
``docs/monitoring.md``.

**What is per process and what is global.** Counters and histograms count what
*this* proxy process did, as Prometheus expects (``sum(rate(...))`` across
replicas). The gauges read from the database on a timer (users below their
threshold, holds in flight, alerts waiting) describe the whole deployment and
are the same on every replica: aggregate them with ``max()``, not ``sum()``.

What feeds the metrics is :mod:`.monitor` (the :class:`Monitor` observer,
:func:`install`); the metrics only it feeds are defined in :mod:`.monitor_metrics`.
Both are re-exported here, so ``monitoring.install`` and ``monitoring.mount`` are
the two calls the composition root makes.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from litellm_credits import errors
from litellm_credits.observe import metrics
from litellm_credits.observe.monitor import Monitor, install, monitor_of
from litellm_credits.observe.monitor_metrics import SETTLEMENTS
from litellm_credits.runtime import Runtime, get_runtime

__all__ = ["SETTLEMENTS", "Monitor", "install", "monitor_of", "mount", "render"]

log = logging.getLogger("litellm_credits.observe.monitoring")

METRICS_PATH = "/credits/metrics"
ADMIN_ROLES = frozenset({"proxy_admin", "proxy_admin_viewer"})

_MOUNTED = "litellm_credits_metrics_mounted"


def render(runtime: Runtime | None = None) -> bytes:
    """The registry in Prometheus text format, with in-process values brought up to date."""
    monitor = monitor_of(runtime) if runtime is not None else None
    if monitor is not None:
        with contextlib.suppress(Exception):
            monitor.sync()
    return bytes(generate_latest(metrics.REGISTRY))


def _role(auth: Any) -> str:
    role = getattr(auth, "user_role", None)
    return str(getattr(role, "value", role) or "")


def _forbidden(auth: Any) -> dict[str, Any]:
    return errors.Forbidden(
        "the credits metrics need a proxy admin key (role proxy_admin or proxy_admin_viewer); "
        f"this key's role is {_role(auth) or 'none'}"
    ).to_dict()


def _endpoint() -> Callable[..., Awaitable[Any]]:
    """The route handler; LiteLLM is imported here, not when this module is."""
    from fastapi import Depends
    from fastapi.responses import JSONResponse, Response
    from litellm.proxy.auth.user_api_key_auth import user_api_key_auth

    # Annotations here are strings (``from __future__ import annotations``) that FastAPI
    # resolves in this module's globals: only ``Any`` may appear, or /openapi.json breaks.
    async def credits_metrics(auth: Any = Depends(user_api_key_auth)) -> Any:  # noqa: B008
        """Prometheus text format. Needs a proxy_admin or proxy_admin_viewer key."""
        if _role(auth) not in ADMIN_ROLES:
            return JSONResponse(status_code=403, content=_forbidden(auth))
        runtime: Runtime | None
        try:
            runtime = get_runtime()
            await runtime.ensure_started()
        except errors.CreditsError as exc:
            log.info("metrics served without a started runtime: %s", exc.message)
            runtime = None
        return Response(render(runtime), media_type=CONTENT_TYPE_LATEST)

    return credits_metrics


def mount(app: Any) -> None:
    """Serve ``GET /credits/metrics`` on ``app`` (the proxy's). Mounting twice does nothing."""
    state = getattr(app, "state", None)
    if state is not None and getattr(state, _MOUNTED, False):
        return
    if any(getattr(r, "path", None) == METRICS_PATH for r in app.router.routes):
        return
    app.add_api_route(
        METRICS_PATH,
        _endpoint(),
        methods=["GET"],
        tags=["credits"],
        summary="Prometheus metrics of the credits plugin (proxy admin keys)",
        response_class=_text_response_class(),
        response_model=None,
    )
    if state is not None:
        setattr(state, _MOUNTED, True)
    app.openapi_schema = None


def _text_response_class() -> Any:
    from fastapi.responses import PlainTextResponse

    return PlainTextResponse
