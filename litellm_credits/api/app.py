"""The ``/credits`` HTTP API on the LiteLLM proxy: one router, and :func:`mount`.

:data:`router` gathers the parts under the ``/credits`` prefix and the
``credits`` tag: :mod:`.account` (balance, transactions, usage, packages),
:mod:`.billing` (purchase, Stripe webhook), :mod:`.admin` and :mod:`.keys`.
:func:`mount` adds it to the proxy's own FastAPI app, so the API is served on
the proxy's port and listed in its ``/openapi.json``.

Who may do what is :mod:`.auth`; bodies and size caps are :mod:`.bodies`; the
error shape is :mod:`.route`. Money is always a string (``"12.50000000"``),
never a JSON number, in and out.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI

from litellm_credits.api import account, admin, billing, keys
from litellm_credits.api.route import CreditsRoute

__all__ = ["SELF_MANAGED_PATTERN", "allow_for_virtual_keys", "mount", "router"]

_MOUNTED = "litellm_credits_api_mounted"
SELF_MANAGED_PATTERN = "/credits/*"

router = APIRouter(prefix="/credits", tags=["credits"], route_class=CreditsRoute)
for _part in (account.router, billing.router, admin.router, keys.router):
    router.include_router(_part)


def _is_ours(route: Any) -> bool:
    # FastAPI 0.165 keeps an included router as one entry (``original_router``);
    # older versions copy its routes into the app.
    return (
        getattr(route, "original_router", None) is router
        or getattr(route, "path", None) == "/credits/balance"
    )


def mount(app: FastAPI) -> None:
    """Serve :data:`router` on ``app`` (the proxy's). Mounting twice does nothing."""
    if getattr(app.state, _MOUNTED, False):
        return
    if any(_is_ours(r) for r in app.router.routes):
        setattr(app.state, _MOUNTED, True)
        return
    app.include_router(router)
    allow_for_virtual_keys()
    setattr(app.state, _MOUNTED, True)
    app.openapi_schema = None  # rebuilt with our paths on the next /openapi.json


def allow_for_virtual_keys() -> None:
    """Let non-admin virtual keys reach /credits.

    LiteLLM refuses routes it does not know to non-admin keys stored in its
    database (``RouteChecks.non_proxy_admin_allowed_routes_check``) unless the
    route is "self-managed": one whose handler checks access itself. Every
    /credits handler does (users see only their own data, /admin needs a
    proxy admin), so the routes are registered there.
    """
    from litellm.proxy._types import LiteLLMRoutes

    routes = LiteLLMRoutes.self_managed_routes.value
    if SELF_MANAGED_PATTERN not in routes:
        routes.append(SELF_MANAGED_PATTERN)
