"""``litellm-credits`` ledger commands: grant, balance, history, usage, levels, tiers.

    grant USER AMOUNT [--type admin_adjustment|bonus] [--description D] [--key K]
    balance USER | history USER [--limit N] | usage [--user U] [--since DAY]
    set-level USER LEVEL | set-tier USER TIER
    packages list | settings set credits_per_usd VALUE

Every write is one SQL function call in one transaction, so a refusal leaves
nothing half-written behind.
"""

from __future__ import annotations

import argparse
import sys
from datetime import date

from litellm_credits import errors
from litellm_credits.cli.common import AddCommand, Context, Subparsers, emit, operator
from litellm_credits.values import check_level, check_user_id, to_decimal


async def cmd_grant(args: argparse.Namespace, ctx: Context) -> int:
    ledger = await ctx.ledger()
    if args.type == "admin_adjustment":
        result = await ledger.adjust(args.user, args.amount, created_by=operator(),
                                     description=args.description, idempotency_key=args.key)
    else:
        result = await ledger.add_credits(args.user, args.amount, type=args.type,
                                          payment_id=args.key, description=args.description,
                                          created_by=operator())
    if not result.success:
        print(f"error: balance {result.new_balance} is too low for that adjustment; "
              "nothing was written", file=sys.stderr)
        return 1
    emit(args, {"user_id": args.user, "new_balance": result.new_balance,
                "transaction_id": result.transaction_id})
    return 0


async def cmd_balance(args: argparse.Namespace, ctx: Context) -> int:
    account = await (await ctx.ledger()).account(args.user)
    emit(args, account.to_dict())
    return 0


async def cmd_history(args: argparse.Namespace, ctx: Context) -> int:
    rows = await (await ctx.ledger()).transactions(args.user, limit=args.limit)
    emit(args, rows)
    return 0


async def cmd_usage(args: argparse.Namespace, ctx: Context) -> int:
    if args.user is not None:
        check_user_id(args.user)
    db = await ctx.db()
    rows = await db.fetchall("usage_summary", {"user_id": args.user, "since": args.since,
                                               "until": None})
    emit(args, rows)
    return 0


async def cmd_set_level(args: argparse.Namespace, ctx: Context) -> int:
    await (await ctx.ledger()).set_power_level(args.user, check_level(args.level),
                                               by=operator())
    emit(args, {"user_id": args.user, "power_level": args.level})
    return 0


async def cmd_set_tier(args: argparse.Namespace, ctx: Context) -> int:
    tier = ctx.settings.tier(args.tier)
    await (await ctx.ledger()).set_tier(
        args.user, args.tier, monthly_quota=tier.monthly_quota,
        low_balance_threshold=tier.low_balance_threshold, by=operator())
    emit(args, {"user_id": args.user, "tier": args.tier, "monthly_quota": tier.monthly_quota,
                "low_balance_threshold": tier.low_balance_threshold})
    return 0


async def cmd_packages(args: argparse.Namespace, ctx: Context) -> int:
    emit(args, await (await ctx.db()).fetchall("packages_all"))
    return 0


async def cmd_settings_set(args: argparse.Namespace, ctx: Context) -> int:
    if args.key != "credits_per_usd":
        raise errors.InvalidInput(f"unknown setting {args.key!r}; settable: credits_per_usd")
    value = to_decimal(args.value, args.key)
    if value <= 0:
        raise errors.InvalidInput("credits_per_usd must be positive")
    await (await ctx.db()).execute("put_setting", {"key": args.key, "value": str(value),
                                                   "by": operator()})
    emit(args, {"key": args.key, "value": str(value)})
    return 0


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-01") from None


def register(sub: Subparsers, add: AddCommand) -> None:
    """Add the ledger commands to the ``litellm-credits`` parser."""
    p = add("grant", cmd_grant, "grant credits (or adjust with a negative amount)")
    p.add_argument("user")
    p.add_argument("amount", help="credits, e.g. 100 or 12.5; negative to take back")
    p.add_argument("--type", choices=("admin_adjustment", "bonus"), default="admin_adjustment")
    p.add_argument("--description")
    p.add_argument("--key", help="idempotency key: a repeat with the same key moves nothing")

    p = add("balance", cmd_balance, "show a user's balance, holds and level")
    p.add_argument("user")
    p = add("history", cmd_history, "show a user's transactions")
    p.add_argument("user")
    p.add_argument("--limit", type=int, default=50)
    p = add("usage", cmd_usage, "usage by day, model and provider")
    p.add_argument("--user", help="one user (default: everyone)")
    p.add_argument("--since", type=_date, help="first day, e.g. 2026-11-01")
    p = add("set-level", cmd_set_level, "set a user's power level")
    p.add_argument("user")
    p.add_argument("level", help="eco, balanced or precision")
    p = add("set-tier", cmd_set_tier, "set a user's tier (quota and alert threshold)")
    p.add_argument("user")
    p.add_argument("tier")

    packages = sub.add_parser("packages", help="credit packages")
    packages_sub = packages.add_subparsers(dest="packages_command", required=True)
    p = packages_sub.add_parser("list", help="list packages")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_packages)

    settings_parser = sub.add_parser("settings", help="shared settings in the database")
    settings_sub = settings_parser.add_subparsers(dest="settings_command", required=True)
    p = settings_sub.add_parser("set", help="set a shared setting (credits_per_usd)")
    p.add_argument("key")
    p.add_argument("value")
    p.add_argument("--json", action="store_true")
    p.set_defaults(handler=cmd_settings_set)
