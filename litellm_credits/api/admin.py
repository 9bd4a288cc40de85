"""The admin routes (``/credits/admin/...``, proxy admins only): grants, levels, tiers,
packages."""

from __future__ import annotations

from decimal import Decimal
from typing import Annotated, Any

from fastapi import Path

from litellm_credits import errors
from litellm_credits.api.auth import Auth, require_admin, shown
from litellm_credits.api.bodies import (
    MAX_INT4,
    GrantBody,
    PackageCreateBody,
    PackageUpdateBody,
    PowerLevelBody,
    TierBody,
    jsonable,
)
from litellm_credits.api.route import new_router
from litellm_credits.api.services import current
from litellm_credits.billing.amounts import to_cents
from litellm_credits.errors import PaymentError
from litellm_credits.values import check_user_id, money, parse_amount, parse_signed_amount

__all__ = ["router"]

router = new_router()

AdminUserPath = Annotated[str, Path(min_length=1, max_length=255)]
PackagePath = Annotated[int, Path(ge=1, le=MAX_INT4)]


@router.post("/admin/grant", summary="Admin: grant (positive) or take back (negative) credits")
async def admin_grant(body: GrantBody, auth: Auth) -> dict[str, Any]:
    runtime = (await current()).runtime
    by = require_admin(auth)
    who = check_user_id(body.user_id)
    negative, amount = parse_signed_amount(body.amount)  # refuses before anything is written
    signed = -amount if negative else amount
    result = await runtime.ledger.adjust(
        who,
        signed,
        created_by=by,
        description=body.description or ("admin adjustment" if negative else "admin grant"),
        idempotency_key=body.idempotency_key,
    )
    if not result.success:
        raise errors.Conflict(
            f"user {shown(who)} has {money(result.new_balance)} credits, less than the "
            f"{money(amount)} to take back; nothing was written",
            balance=money(result.new_balance),
        )
    return {
        "user_id": who,
        "amount": money(signed),
        "transaction_id": result.transaction_id,
        "balance": money(result.new_balance),
        "created_by": by,
    }


@router.put("/admin/users/{user_id}/power-level", summary="Admin: set a user's power level")
async def admin_power_level(
    user_id: AdminUserPath, body: PowerLevelBody, auth: Auth
) -> dict[str, Any]:
    runtime = (await current()).runtime
    by = require_admin(auth)
    who = check_user_id(user_id)
    await runtime.ledger.set_power_level(who, body.level, by=by)
    return (await runtime.ledger.account(who)).to_dict()


@router.put("/admin/users/{user_id}/tier", summary="Admin: set a user's tier")
async def admin_tier(user_id: AdminUserPath, body: TierBody, auth: Auth) -> dict[str, Any]:
    runtime = (await current()).runtime
    by = require_admin(auth)
    who = check_user_id(user_id)
    tier = runtime.settings.tier(body.tier)
    await runtime.ledger.set_tier(
        who, body.tier, monthly_quota=tier.monthly_quota,
        low_balance_threshold=tier.low_balance_threshold, by=by,
    )
    return (await runtime.ledger.account(who)).to_dict()


# --- packages ----------------------------------------------------------------------------


def _package_credits(text: str) -> Decimal:
    try:
        return parse_amount(text)
    except errors.InvalidAmount as exc:
        raise errors.InvalidAmount(f"credits: {exc.message}") from None


def _package_price(text: str) -> Decimal:
    try:
        price = parse_amount(text)
        to_cents(price)  # whole cents, within Stripe's limit
    except (errors.InvalidAmount, PaymentError) as exc:
        raise errors.InvalidAmount(f"price_usd: {exc.message}") from None
    return price


def _discount(text: str) -> Decimal:
    try:
        value = parse_amount(text, allow_zero=True)
    except errors.InvalidAmount as exc:
        raise errors.InvalidAmount(f"discount_percentage: {exc.message}") from None
    if value >= 100 or value != value.quantize(Decimal("0.01")):
        raise errors.InvalidAmount(
            f"discount_percentage must be 0 to 99.99 with at most 2 decimals, got {value}"
        )
    return value


def _text(what: str, value: str | None) -> str | None:
    if value is not None and "\x00" in value:
        raise errors.InvalidInput(f"{what} contains a NUL byte")
    return value


def _name(value: str) -> str:
    name = value.strip()
    if not name:
        raise errors.InvalidInput("name is empty")
    _text("name", name)
    return name


@router.post("/admin/packages", status_code=201, summary="Admin: create a credit package")
async def admin_create_package(body: PackageCreateBody, auth: Auth) -> dict[str, Any]:
    runtime = (await current()).runtime
    by = require_admin(auth)
    row = await runtime.db.fetchone(
        "api_package_insert",
        {
            "name": _name(body.name),
            "description": _text("description", body.description),
            "credits": _package_credits(body.credits),
            "price_usd": _package_price(body.price_usd),
            "discount_percentage": _discount(body.discount_percentage),
            "badge": _text("badge", body.badge),
            "stripe_price_id": _text("stripe_price_id", body.stripe_price_id),
            "is_active": body.is_active,
            "sort_order": body.sort_order,
            "by": by,
        },
    )
    assert row is not None
    return jsonable(row)


_REQUIRED_PACKAGE_FIELDS = ("name", "credits", "price_usd", "discount_percentage", "is_active",
                            "sort_order")


@router.patch("/admin/packages/{package_id}", summary="Admin: change a credit package")
async def admin_update_package(
    package_id: PackagePath, body: PackageUpdateBody, auth: Auth
) -> dict[str, Any]:
    runtime = (await current()).runtime
    by = require_admin(auth)
    given = body.model_fields_set
    if not given:
        raise errors.InvalidInput(
            "nothing to change: give at least one of " + ", ".join(PackageUpdateBody.model_fields)
        )
    for name in _REQUIRED_PACKAGE_FIELDS:
        if name in given and getattr(body, name) is None:
            raise errors.InvalidInput(f"{name} cannot be null")
    fields = PackageUpdateBody.model_fields
    params: dict[str, Any] = {f"set_{name}": name in given for name in fields}
    params.update(
        id=package_id,
        by=by,
        name=_name(body.name) if body.name is not None else None,
        description=_text("description", body.description),
        credits=_package_credits(body.credits) if body.credits is not None else None,
        price_usd=_package_price(body.price_usd) if body.price_usd is not None else None,
        discount_percentage=(
            _discount(body.discount_percentage) if body.discount_percentage is not None else None
        ),
        badge=_text("badge", body.badge),
        stripe_price_id=_text("stripe_price_id", body.stripe_price_id),
        is_active=body.is_active,
        sort_order=body.sort_order,
    )
    row = await runtime.db.fetchone("api_package_update", params)
    if row is None:
        raise errors.NotFound(f"there is no credit package {package_id}")
    return jsonable(row)


@router.delete("/admin/packages/{package_id}", summary="Admin: stop selling a package")
async def admin_deactivate_package(package_id: PackagePath, auth: Auth) -> dict[str, Any]:
    runtime = (await current()).runtime
    by = require_admin(auth)
    row = await runtime.db.fetchone("api_package_deactivate", {"id": package_id, "by": by})
    if row is None:
        raise errors.NotFound(f"there is no credit package {package_id}")
    return jsonable(row)
