"""``litellm-credits`` operations: ``migrate``, ``verify`` and ``reconcile``.

    migrate [--dry-run]      apply pending schema migrations (or print them)
    verify                   check the schema against the deployment report
    reconcile [--user U] [--limit N] [--hold-grace SECONDS] [--stale-hold SECONDS]
                             check the ledger invariants in the data

Exit status of ``verify`` and ``reconcile``: 0 when every check passes, 1
when any check has findings, 2 when the database cannot be reached (see
:func:`litellm_credits.cli.main.main`).
"""

from __future__ import annotations

import argparse
import json
import sys

from litellm_credits import reconcile
from litellm_credits.cli.common import AddCommand, Context, Subparsers, emit
from litellm_credits.store import migrate as migrations
from litellm_credits.store import verify


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


async def cmd_reconcile(args: argparse.Namespace, ctx: Context) -> int:
    report = await reconcile.reconcile(
        await ctx.db(),
        user_id=args.user,
        limit=args.limit,
        hold_grace_seconds=args.hold_grace,
        stale_hold_seconds=args.stale_hold,
    )
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(reconcile.format_report(report))
    return 0 if report.ok else 1


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


def register_schema(sub: Subparsers, add: AddCommand) -> None:
    """``migrate`` and ``verify``: first in the help, as the first things an operator runs."""
    p = add("migrate", cmd_migrate, "apply pending schema migrations")
    p.add_argument("--dry-run", action="store_true", help="print pending SQL, run nothing")
    add("verify", cmd_verify, "check the schema against the deployment report")


def register_reconcile(sub: Subparsers, add: AddCommand) -> None:
    p = add("reconcile", cmd_reconcile,
            "check the ledger invariants in the data (exit 1 on any finding)")
    p.add_argument("--user", help="check one account only (default: every account)")
    p.add_argument("--limit", type=_non_negative, default=reconcile.DEFAULT_LIMIT,
                   help=f"examples shown per failed check (default {reconcile.DEFAULT_LIMIT}, "
                   f"at most {reconcile.MAX_LIMIT})")
    p.add_argument("--hold-grace", type=_non_negative,
                   default=reconcile.DEFAULT_HOLD_GRACE_SECONDS, metavar="SECONDS",
                   help="how long past expiry a hold may wait for the sweeper "
                   f"(default {reconcile.DEFAULT_HOLD_GRACE_SECONDS})")
    p.add_argument("--stale-hold", type=_non_negative,
                   default=reconcile.DEFAULT_STALE_HOLD_SECONDS, metavar="SECONDS",
                   help="age after which an unexpired hold without a usage row is a finding "
                   f"(default {reconcile.DEFAULT_STALE_HOLD_SECONDS}; keep it below "
                   "hold_ttl_seconds, or the sweeper deletes the evidence first)")
