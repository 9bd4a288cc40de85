"""The ``litellm-credits`` command for operators.

Human tables by default, ``--json`` for machines. Every refusal prints one
clear line on stderr and exits non-zero; nothing half-written is left behind
because every write is one SQL function call in one transaction. Key
material is read from stdin or a hidden prompt, never from argv.
"""

from __future__ import annotations

import argparse
import asyncio
import getpass
import json
import os
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any

from litellm_credits import errors, settings
from litellm_credits.ledger import Ledger
from litellm_credits.store import migrate as migrations
from litellm_credits.store import verify
from litellm_credits.store.db import Database
from litellm_credits.values import check_level, check_user_id, to_decimal

Handler = Callable[[argparse.Namespace, "Context"], Awaitable[int]]


def _operator() -> str:
    return f"cli:{os.environ.get('SUDO_USER') or getpass.getuser()}"


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return "<bytes>"
    return value


def emit(args: argparse.Namespace, rows: Sequence[dict[str, Any]] | dict[str, Any]) -> None:
    """Print rows as JSON (--json) or as an aligned table."""
    if getattr(args, "json", False):
        print(json.dumps(rows, default=_plain, indent=2))
        return
    items = [rows] if isinstance(rows, dict) else list(rows)
    if not items:
        print("(none)")
        return
    columns = list(items[0].keys())
    cells = [[("" if r.get(c) is None else str(_plain(r.get(c)))) for c in columns] for r in items]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


class Context:
    """What a subcommand needs: settings, and a database opened on demand."""

    def __init__(self, cfg: settings.Settings) -> None:
        self.settings = cfg
        self._db: Database | None = None

    @property
    def url(self) -> str:
        return settings.require_database_url(self.settings)

    async def db(self) -> Database:
        if self._db is None:
            self._db = Database(self.url, min_size=1, max_size=4, timeout=10.0,
                                statement_timeout_ms=600_000, name="litellm-credits-cli")
            await self._db.open(wait=True)
        return self._db

    async def ledger(self) -> Ledger:
        return Ledger(await self.db())

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()


# --- schema ---------------------------------------------------------------------


async def cmd_migrate(args: argparse.Namespace, ctx: Context) -> int:
    if args.dry_run:
        todo = migrations.pending(ctx.url)
        for m in todo:
            print(f"-- {m.filename} (checksum {m.checksum[:12]})\n{m.sql}")
        print(f"-- {len(todo)} pending migration(s); nothing was run", file=sys.stderr)
        return 0
    applied = migrations.migrate(ctx.url)
    for m in applied:
        print(f"applied {m.filename}")
    if not applied:
        print("database is up to date; nothing to apply")
    return 0


async def cmd_verify(args: argparse.Namespace, ctx: Context) -> int:
    checks, support = verify.run_checks(ctx.url)
    ok = all(c.ok for c in checks)
    if args.json:
        print(json.dumps({"checks": [c.to_dict() for c in checks], "support_tables": support,
                          "ok": ok}, indent=2))
    else:
        emit(args, [{"Component": c.component, "Count": c.count, "Expected": c.expected,
                     "Status": "PASS" if c.ok else "FAIL"} for c in checks])
        present = ", ".join(f"{n} ({'present' if p else 'MISSING'})" for n, p in support.items())
        print(f"\nSupport tables: {present}")
    return 0 if ok else 1


# --- credits --------------------------------------------------------------------


async def cmd_grant(args: argparse.Namespace, ctx: Context) -> int:
    ledger = await ctx.ledger()
    if args.type == "admin_adjustment":
        result = await ledger.adjust(args.user, args.amount, created_by=_operator(),
                                     description=args.description, idempotency_key=args.key)
    else:
        result = await ledger.add_credits(args.user, args.amount, type=args.type,
                                          payment_id=args.key, description=args.description,
                                          created_by=_operator())
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
                                               by=_operator())
    emit(args, {"user_id": args.user, "power_level": args.level})
    return 0


async def cmd_set_tier(args: argparse.Namespace, ctx: Context) -> int:
    tier = ctx.settings.tier(args.tier)
    await (await ctx.ledger()).set_tier(
        args.user, args.tier, monthly_quota=tier.monthly_quota,
        low_balance_threshold=tier.low_balance_threshold, by=_operator())
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
                                                   "by": _operator()})
    emit(args, {"key": args.key, "value": str(value)})
    return 0


# --- wiring ---------------------------------------------------------------------


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date like 2026-11-01") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="litellm-credits",
        description="Prepaid credits for the LiteLLM proxy. The database is "
        "CREDITS_DATABASE_URL (or DATABASE_URL).",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    def add(name: str, handler: Handler, help: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help)
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(handler=handler)
        return p

    p = add("migrate", cmd_migrate, "apply pending schema migrations")
    p.add_argument("--dry-run", action="store_true", help="print pending SQL, run nothing")
    add("verify", cmd_verify, "check the schema against the deployment report")

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

    for extend in _extensions():
        extend(sub, add)
    return parser


def _extensions() -> list[Callable[..., None]]:
    """Subcommand groups that live in their own modules (keys, reconcile)."""
    from litellm_credits.cli import keys as cli_keys
    from litellm_credits.cli import reconcile as cli_reconcile

    return [cli_keys.register, cli_reconcile.register]


async def _run(args: argparse.Namespace) -> int:
    ctx = Context(settings.load())
    try:
        handler: Handler = args.handler
        return await handler(args, ctx)
    finally:
        await ctx.close()


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except errors.CreditsError as exc:
        print(f"error: {exc.message}", file=sys.stderr)
        return 2 if isinstance(exc, errors.ConfigError | errors.DatabaseUnavailable) else 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":  # pragma: no cover - python -m litellm_credits.cli.main
    sys.exit(main())
