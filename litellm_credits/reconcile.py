"""``litellm-credits reconcile``: prove from the data that the ledger invariants hold.

Each check is one set-based SQL statement in ``sql/reconcile.sql`` (named
``reconcile_*``); all of them run in a single REPEATABLE READ, READ ONLY
transaction, so the report describes one consistent snapshot even while
proxies keep settling. A check returns how many findings it has and up to
``limit`` examples. The report is clean when every check has zero findings.

Checks (see docs/reliability.md):

* ``balance_matches_ledger``  I2: balance = sum of the account's transactions.
* ``chain``                   I2: balance_before/after chain in id order.
* ``usage_debited_once``      I1: every successful usage row has exactly one
  usage debit of the same user, with -amount + credits_uncollected = credits_charged.
* ``debit_has_usage_row``     I1: no usage debit without a successful usage row.
* ``no_lingering_holds``      no hold past expiry + grace, none of a settled request.
* ``no_unsettled_holds``      I1: no unexpired hold older than ``stale_hold_seconds``
  without a usage row (a request served but never settled, or one whose proxy died).
* ``no_unexplained_negative`` no negative balance without a refund before it.

Nothing here writes; running it against a live database is safe.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from litellm_credits import errors
from litellm_credits.store.db import Database, Row, run
from litellm_credits.values import check_user_id, money

DEFAULT_LIMIT = 10
MAX_LIMIT = 1000
#: The hold sweeper runs every 30 s in each proxy; a hold that expired less
#: than this long ago may simply not have been swept yet.
DEFAULT_HOLD_GRACE_SECONDS = 120
#: A request still holding credits this long after it began is presumed lost
#: (served and never settled, or its proxy died). Below the default hold TTL
#: (900 s), so the hold is found before the sweeper deletes it at expiry.
DEFAULT_STALE_HOLD_SECONDS = 600


@dataclass(frozen=True)
class CheckSpec:
    name: str
    query: str
    invariant: str
    description: str


CHECKS: tuple[CheckSpec, ...] = (
    CheckSpec("balance_matches_ledger", "reconcile_balance_matches_ledger", "I2",
              "each account's balance equals the sum of its transactions"),
    CheckSpec("chain", "reconcile_chain", "I2",
              "balance_before/balance_after chain from 0 in transaction id order"),
    CheckSpec("usage_debited_once", "reconcile_usage_debited_once", "I1",
              "every successful usage row has exactly one usage debit of the same user, "
              "and -amount + credits_uncollected = credits_charged"),
    CheckSpec("debit_has_usage_row", "reconcile_debit_has_usage_row", "I1",
              "every usage debit belongs to a successful usage row"),
    CheckSpec("no_lingering_holds", "reconcile_expired_holds", "I3",
              "no hold lingers past its expiry (plus grace) or after its request settled"),
    CheckSpec("no_unsettled_holds", "reconcile_unsettled_holds", "I1",
              "no hold older than the stale-hold age without a usage row (a request "
              "served but never settled, or one whose proxy died mid-request)"),
    CheckSpec("no_unexplained_negative", "reconcile_negative_balance", "I2",
              "no balance below zero without a refund at or before that point"),
)


@dataclass
class CheckResult:
    name: str
    invariant: str
    description: str
    findings: int
    examples: list[dict[str, Any]]
    seconds: float

    @property
    def ok(self) -> bool:
        return self.findings == 0

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "invariant": self.invariant,
            "description": self.description,
            "ok": self.ok,
            "findings": self.findings,
            "examples": [_plain_row(r) for r in self.examples],
            "seconds": round(self.seconds, 3),
        }


@dataclass
class Report:
    checks: list[CheckResult]
    totals: dict[str, Any]
    user_id: str | None
    seconds: float
    hold_grace_seconds: int
    failed: list[str] = field(init=False)
    stale_hold_seconds: int = DEFAULT_STALE_HOLD_SECONDS

    def __post_init__(self) -> None:
        self.failed = [c.name for c in self.checks if not c.ok]

    @property
    def ok(self) -> bool:
        return not self.failed

    def check(self, name: str) -> CheckResult:
        for c in self.checks:
            if c.name == name:
                return c
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "user_id": self.user_id,
            "failed": list(self.failed),
            "checks": [c.to_dict() for c in self.checks],
            "totals": {k: _plain(v) for k, v in self.totals.items()},
            "hold_grace_seconds": self.hold_grace_seconds,
            "stale_hold_seconds": self.stale_hold_seconds,
            "seconds": round(self.seconds, 3),
        }


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return money(value)
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return value


def _plain_row(row: Row) -> dict[str, Any]:
    return {k: _plain(v) for k, v in row.items() if k != "findings"}


async def reconcile(
    db: Database,
    *,
    user_id: str | None = None,
    limit: int = DEFAULT_LIMIT,
    hold_grace_seconds: int = DEFAULT_HOLD_GRACE_SECONDS,
    stale_hold_seconds: int = DEFAULT_STALE_HOLD_SECONDS,
) -> Report:
    """Run every check in one read-only snapshot and return the report."""
    if user_id is not None:
        user_id = check_user_id(user_id)
    if isinstance(limit, bool) or not isinstance(limit, int) or not 0 <= limit <= MAX_LIMIT:
        raise errors.InvalidInput(f"limit must be an integer from 0 to {MAX_LIMIT}")
    if (isinstance(hold_grace_seconds, bool) or not isinstance(hold_grace_seconds, int)
            or not 0 <= hold_grace_seconds <= 86400):
        raise errors.InvalidInput("hold grace must be 0 to 86400 seconds")
    if (isinstance(stale_hold_seconds, bool) or not isinstance(stale_hold_seconds, int)
            or not 0 <= stale_hold_seconds <= 86400):
        raise errors.InvalidInput("stale hold age must be 0 to 86400 seconds")
    params = {"user_id": user_id, "limit": limit, "grace_seconds": hold_grace_seconds,
              "stale_seconds": stale_hold_seconds}
    started = time.perf_counter()
    results: list[CheckResult] = []
    async with db.transaction(start="reconcile_snapshot") as conn:
        await run(conn, "reconcile_work_mem")
        for spec in CHECKS:
            t0 = time.perf_counter()
            rows = await run(conn, spec.query, params)
            findings = int(rows[0]["findings"]) if rows else 0
            if not rows and limit == 0:
                # LIMIT 0 returns no row to carry the count; ask once more for one.
                probe = await run(conn, spec.query, {**params, "limit": 1})
                findings = int(probe[0]["findings"]) if probe else 0
            results.append(CheckResult(spec.name, spec.invariant, spec.description,
                                       findings, rows, time.perf_counter() - t0))
        totals_rows = await run(conn, "reconcile_totals", params)
    totals = dict(totals_rows[0]) if totals_rows else {}
    return Report(results, totals, user_id, time.perf_counter() - started, hold_grace_seconds,
                  stale_hold_seconds)


def format_report(report: Report) -> str:
    """The report for people: one line per check, examples under failures."""
    lines: list[str] = []
    scope = f"user {report.user_id}" if report.user_id else "all accounts"
    totals = report.totals
    lines.append(
        f"reconcile ({scope}): {totals.get('accounts', 0)} accounts, "
        f"{totals.get('transactions', 0)} transactions, {totals.get('usage_rows', 0)} usage "
        f"rows, {totals.get('active_holds', 0)} active holds, "
        f"{_plain(totals.get('credits_uncollected', Decimal(0)))} credits uncollected"
    )
    width = max(len(c.name) for c in report.checks)
    for c in report.checks:
        status = "PASS" if c.ok else "FAIL"
        detail = "" if c.ok else f"  {c.findings} finding(s)"
        lines.append(f"  {status}  {c.name.ljust(width)}  [{c.invariant}] {c.description}"
                     f"{detail}")
        if not c.ok:
            for example in c.examples:
                shown = ", ".join(f"{k}={_plain(v)}" for k, v in _plain_row(example).items())
                lines.append(f"          - {shown}")
            if c.findings > len(c.examples):
                lines.append(f"          ... and {c.findings - len(c.examples)} more")
    if report.ok:
        lines.append(f"all checks passed ({report.seconds:.2f} s)")
    else:
        lines.append(f"{len(report.failed)} check(s) failed: {', '.join(report.failed)} "
                     f"({report.seconds:.2f} s)")
    return "\n".join(lines)
