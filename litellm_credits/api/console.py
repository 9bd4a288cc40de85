"""The admin console: ``GET /credits/ui/console`` and the read routes it needs.

The page (``static/console.html``) is one static file like the credits page (:mod:`.ui`): no
build step, no libraries, served with a strict Content-Security-Policy that pins its inline
script and style by hash. It holds no data; the browser calls the API with the admin key the
operator pastes (kept in ``sessionStorage``), and puts answers on the page with
``textContent`` only.

Routes added here (proxy admins only; ``proxy_admin_viewer`` may read):

* ``GET /credits/admin/accounts?q=`` - accounts whose id contains ``q`` (users and
  ``team:<id>`` wallets), with balance, held, tier and level;
* ``GET /credits/admin/accounts/{user_id}`` - one account, its active holds and recent ledger;
* ``GET /credits/admin/refunds`` - recent Stripe refunds (ledger rows of type ``refund``);
* ``GET /credits/admin/failed-webhooks`` - low-balance alert webhooks that failed.

Changes (grant or take back with a reason, level, tier) use the existing admin routes of
:mod:`.admin`, so there is one code path for each change.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Path, Query
from litellm.proxy._types import UserAPIKeyAuth

from litellm_credits import errors
from litellm_credits.api import ui
from litellm_credits.api.auth import Auth, can_read_all
from litellm_credits.api.bodies import jsonable
from litellm_credits.api.route import new_router
from litellm_credits.api.services import current
from litellm_credits.values import check_user_id

__all__ = ["CONSOLE_PATH", "mount", "router"]

CONSOLE_PATH = "/credits/ui/console"
_MOUNTED = "litellm_credits_console_mounted"
_PREFIX = "/credits/admin"
router = new_router()

AccountPath = Annotated[str, Path(min_length=1, max_length=255)]
Limit = Annotated[int, Query(ge=1, le=500)]


def _require_reader(auth: UserAPIKeyAuth) -> None:
    if not can_read_all(auth):
        raise errors.Forbidden("the admin console needs a proxy admin key")


@router.get("/accounts", summary="Admin: find accounts (users and team wallets)")
async def find_accounts(
    auth: Auth,
    q: Annotated[str, Query(max_length=255)] = "",
    limit: Limit = 50,
) -> dict[str, Any]:
    _require_reader(auth)
    if "\x00" in q:
        raise errors.InvalidInput("q contains a NUL byte")
    runtime = (await current()).runtime
    rows = await runtime.db.fetchall("console_accounts", {"q": q, "limit": limit})
    return {"q": q, "accounts": [jsonable(r) for r in rows]}


@router.get("/accounts/{user_id}", summary="Admin: one account, its holds and recent ledger")
async def account_detail(user_id: AccountPath, auth: Auth) -> dict[str, Any]:
    _require_reader(auth)
    who = check_user_id(user_id)
    runtime = (await current()).runtime
    account = (await runtime.ledger.account(who)).to_dict()
    holds = await runtime.db.fetchall("console_holds", {"user_id": who})
    ledger = await runtime.ledger.transactions(who, limit=20, offset=0, since=None,
                                               until=None)
    return {"account": account, "holds": [jsonable(h) for h in holds],
            "transactions": [jsonable(t) for t in ledger],
            "tiers": sorted(runtime.settings.tiers)}


@router.get("/refunds", summary="Admin: recent Stripe refunds")
async def refunds(auth: Auth, limit: Limit = 50) -> dict[str, Any]:
    _require_reader(auth)
    runtime = (await current()).runtime
    rows = await runtime.db.fetchall("console_refunds", {"limit": limit})
    return {"refunds": [jsonable(r) for r in rows]}


@router.get("/failed-webhooks", summary="Admin: alert webhooks that failed")
async def failed_webhooks(auth: Auth, limit: Limit = 50) -> dict[str, Any]:
    _require_reader(auth)
    runtime = (await current()).runtime
    rows = await runtime.db.fetchall("console_failed_webhooks", {"limit": limit})
    return {"failed_webhooks": [jsonable(r) for r in rows]}


def mount(app: FastAPI) -> None:
    """Serve the console page and its routes on the proxy's app. Mounting twice does nothing."""
    if getattr(app.state, _MOUNTED, False):
        return
    from fastapi.responses import HTMLResponse

    async def console_ui() -> Any:
        current = ui.page("static/console.html")
        return HTMLResponse(current.html, headers=current.headers)

    app.include_router(router, prefix=_PREFIX, tags=["credits"])
    app.add_api_route(CONSOLE_PATH, console_ui, methods=["GET"], include_in_schema=False,
                      response_class=HTMLResponse, response_model=None)
    setattr(app.state, _MOUNTED, True)
    app.openapi_schema = None
