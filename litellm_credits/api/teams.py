"""``/credits/teams/{team_id}/...``: a LiteLLM team's wallet (the account ``team:<team_id>``).

Who may do what is decided by LiteLLM's own records of the team (``members_with_roles`` of
its team table, read fresh from LiteLLM's database on every call, so a role change applies
at once):

* **read** (balance, usage, ledger): proxy admins and admin viewers (everyone), the team's
  members (any role), and keys of the team (``team_id`` of the key);
* **manage** (buy credits, set the power level): proxy admins and the team's admins
  (``role: admin``). A key of the team alone does not make its user a team admin.

A caller who is not allowed is refused with 403 before anything is read or written; a team
admin of one team is refused on every other team. Which team a request may bill is decided
in :mod:`litellm_credits.identity`; this module only serves the team's wallet.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import FastAPI, Path, Query
from litellm.proxy._types import UserAPIKeyAuth

from litellm_credits import errors
from litellm_credits.api.auth import Auth, can_read_all, identity, is_admin
from litellm_credits.api.bodies import PowerLevelBody, PurchaseBody, jsonable
from litellm_credits.api.route import new_router
from litellm_credits.api.services import current
from litellm_credits.identity import PLACEHOLDER_USER_IDS
from litellm_credits.values import check_team_id, team_account

__all__ = ["mount", "router", "team_access"]

router = new_router()
_MOUNTED = "litellm_credits_teams_mounted"
_PREFIX = "/credits/teams"

TeamPath = Annotated[str, Path(min_length=1, max_length=250, description="LiteLLM team id")]


def mount(app: FastAPI) -> None:
    """Serve :data:`router` on the proxy's app, under ``/credits/teams`` (inside the
    ``/credits/*`` self-managed routes that api/app.py registers). Mounting twice does
    nothing."""
    if getattr(app.state, _MOUNTED, False):
        return
    app.include_router(router, prefix=_PREFIX, tags=["credits"])
    setattr(app.state, _MOUNTED, True)
    app.openapi_schema = None


async def _team_roles(team_id: str) -> dict[str, str] | None:
    """user id -> role in LiteLLM's team table, or None when LiteLLM has no such team."""
    from fastapi import HTTPException
    from litellm.proxy import proxy_server
    from litellm.proxy.auth.auth_checks import get_team_object

    prisma = getattr(proxy_server, "prisma_client", None)
    if prisma is None:
        raise errors.ConfigError(
            "team wallets need LiteLLM's database (DATABASE_URL) to know the team's members")
    try:
        team = await get_team_object(team_id=team_id, prisma_client=prisma,
                                     user_api_key_cache=proxy_server.user_api_key_cache,
                                     check_db_only=True)
    except HTTPException as exc:
        if exc.status_code == 404:
            return None
        raise
    roles: dict[str, str] = {}
    for member in team.members_with_roles or []:
        user_id = getattr(member, "user_id", None)
        if isinstance(user_id, str) and user_id:
            roles[user_id] = str(getattr(member, "role", "") or "")
    return roles


async def team_access(auth: UserAPIKeyAuth, team_id: str, *, manage: bool) -> str:
    """The team's account if ``auth`` may read (or ``manage``) it; else a 403/404."""
    team_id = check_team_id(team_id)
    account = team_account(team_id)
    if is_admin(auth) or (not manage and can_read_all(auth)):
        return account
    if not manage and getattr(auth, "team_id", None) == team_id:
        return account  # a key of this team sees its wallet
    user = getattr(auth, "user_id", None)
    roles = await _team_roles(team_id)
    if roles is None:
        raise errors.Forbidden(f"this key is not a member of team {team_id[:40]!r}")
    role = roles.get(user) if isinstance(user, str) and user not in PLACEHOLDER_USER_IDS else None
    if role is None:
        raise errors.Forbidden(f"this key is not a member of team {team_id[:40]!r}")
    if manage and role != "admin":
        raise errors.Forbidden(
            f"only an admin of team {team_id[:40]!r} (members_with_roles role 'admin') or a "
            "proxy admin may buy credits for it or change its level")
    return account


@router.get("/{team_id}/balance", summary="A team's balance, held credits, tier and level")
async def team_balance(team_id: TeamPath, auth: Auth) -> dict[str, Any]:
    account = await team_access(auth, team_id, manage=False)
    runtime = (await current()).runtime
    result = (await runtime.ledger.account(account)).to_dict()
    result["team_id"] = team_id
    return result


@router.get("/{team_id}/usage", summary="A team's usage rows: which key and member spent")
async def team_usage(
    team_id: TeamPath,
    auth: Auth,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> dict[str, Any]:
    account = await team_access(auth, team_id, manage=False)
    runtime = (await current()).runtime
    rows = await runtime.db.fetchall(
        "team_usage_rows", {"user_id": account, "limit": limit, "offset": offset})
    return {
        "team_id": team_id,
        "user_id": account,
        "limit": limit,
        "offset": offset,
        "next_offset": offset + len(rows) if len(rows) == limit else None,
        "rows": [jsonable(r) for r in rows],
    }


@router.get("/{team_id}/transactions", summary="A team's credit ledger, newest first")
async def team_transactions(
    team_id: TeamPath,
    auth: Auth,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> dict[str, Any]:
    account = await team_access(auth, team_id, manage=False)
    runtime = (await current()).runtime
    rows = await runtime.ledger.transactions(account, limit=limit, offset=offset,
                                             since=None, until=None)
    return {"team_id": team_id, "user_id": account, "limit": limit, "offset": offset,
            "transactions": [jsonable(r) for r in rows]}


@router.post("/{team_id}/purchase", summary="Team admins: buy credits for the team (Stripe)")
async def team_purchase(team_id: TeamPath, body: PurchaseBody, auth: Auth) -> dict[str, Any]:
    account = await team_access(auth, team_id, manage=True)
    services = await current()
    checkout = await services.purchases.start_checkout(account, body.package_id, body.nonce)
    result = checkout.to_dict()
    result["team_id"] = team_id
    return result


@router.put("/{team_id}/power-level", summary="Team admins: set the team's power level")
async def team_power_level(
    team_id: TeamPath, body: PowerLevelBody, auth: Auth
) -> dict[str, Any]:
    account = await team_access(auth, team_id, manage=True)
    runtime = (await current()).runtime
    await runtime.ledger.set_power_level(account, body.level, by=identity(auth))
    result = (await runtime.ledger.account(account)).to_dict()
    result["team_id"] = team_id
    return result
