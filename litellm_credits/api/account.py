"""A user's own credits: balance, ledger, usage and the packages on sale (read only)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import Query

from litellm_credits import errors
from litellm_credits.api.auth import Auth, UserIdQuery, can_read_all, require_admin, subject
from litellm_credits.api.bodies import jsonable, plain, window
from litellm_credits.api.route import new_router
from litellm_credits.api.services import current

__all__ = ["SUMMARY_MAX_ROWS", "router"]

#: Rows of the daily summary returned at most.
SUMMARY_MAX_ROWS = 1000

router = new_router()


@router.get("/balance", summary="Balance, held credits, tier, power level and quota use")
async def get_balance(auth: Auth, user_id: UserIdQuery = None) -> dict[str, Any]:
    runtime = (await current()).runtime
    who = subject(auth, user_id, write=False)
    account = await runtime.ledger.account(who)
    return account.to_dict()


@router.get("/transactions", summary="The credit ledger, newest first")
async def get_transactions(
    auth: Auth,
    user_id: UserIdQuery = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 50,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    since: Annotated[datetime | None, Query(description="inclusive, ISO 8601")] = None,
    until: Annotated[datetime | None, Query(description="exclusive, ISO 8601")] = None,
) -> dict[str, Any]:
    runtime = (await current()).runtime
    who = subject(auth, user_id, write=False)
    since, until = window(since, until)
    rows = await runtime.ledger.transactions(
        who, limit=limit, offset=offset, since=since, until=until
    )
    return {
        "user_id": who,
        "limit": limit,
        "offset": offset,
        "next_offset": offset + len(rows) if len(rows) == limit else None,
        "transactions": [jsonable(r) for r in rows],
    }


@router.get("/usage", summary="Usage rows, and a daily summary per model and provider")
async def get_usage(
    auth: Auth,
    user_id: UserIdQuery = None,
    all_users: Annotated[bool, Query(description="admins: everyone's usage")] = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
    since: Annotated[datetime | None, Query(description="inclusive, ISO 8601")] = None,
    until: Annotated[datetime | None, Query(description="exclusive, ISO 8601")] = None,
) -> dict[str, Any]:
    services = await current()
    db = services.runtime.db
    who: str | None
    if all_users:
        if not can_read_all(auth):
            raise errors.Forbidden("all_users=true needs a proxy admin key")
        if user_id is not None:
            raise errors.InvalidInput("give either user_id or all_users=true, not both")
        who = None
    else:
        who = subject(auth, user_id, write=False)
    since, until = window(since, until)
    rows = await db.fetchall(
        "usage_rows",
        {"user_id": who, "limit": limit, "offset": offset, "since": since, "until": until},
    )
    await services.summary.maybe_refresh(db)
    summary = await db.fetchall(
        "api_usage_daily",
        {
            "user_id": who,
            "since": since.astimezone(UTC).date() if since else None,
            "until": until.astimezone(UTC).date() if until else None,
            "limit": SUMMARY_MAX_ROWS + 1,
        },
    )
    return {
        "user_id": who,
        "limit": limit,
        "offset": offset,
        "next_offset": offset + len(rows) if len(rows) == limit else None,
        "rows": [jsonable(r) for r in rows],
        "daily_summary": [jsonable(r) for r in summary[:SUMMARY_MAX_ROWS]],
        "daily_summary_truncated": len(summary) > SUMMARY_MAX_ROWS,
        "daily_summary_source": "usage_daily_summary",
        "daily_summary_refreshed_at": plain(services.summary.refreshed_at),
    }


@router.get("/packages", summary="The credit packages on sale")
async def get_packages(
    auth: Auth,
    include_inactive: Annotated[bool, Query(description="admins: deactivated ones too")] = False,
) -> dict[str, Any]:
    runtime = (await current()).runtime
    if include_inactive:
        require_admin(auth)
        rows = await runtime.db.fetchall("packages_all")
    else:
        rows = await runtime.db.fetchall("packages_active")
    return {"packages": [jsonable(r) for r in rows]}
