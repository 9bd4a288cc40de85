"""``litellm-credits reconcile [--json] [--user USER] [--limit N] [--hold-grace SECONDS]
[--stale-hold SECONDS]``.

Exit status: 0 when every check passes ("all checks passed"), 1 when any
check has findings, 2 when the database cannot be reached (see cli.main).
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from litellm_credits import reconcile


def _non_negative(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} must be 0 or more")
    return value


async def cmd_reconcile(args: argparse.Namespace, ctx: Any) -> int:
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


def register(sub: Any, add: Any) -> None:
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
