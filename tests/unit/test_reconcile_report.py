"""Reconcile's report and its refusals; the checks themselves run in tests/integration."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from litellm_credits import errors
from litellm_credits.reconcile import (
    CHECKS,
    MAX_LIMIT,
    CheckResult,
    Report,
    format_report,
    reconcile,
)
from litellm_credits.store.db import Database, queries


def test_every_check_names_a_query_that_exists() -> None:
    known = queries()
    for spec in CHECKS:
        assert spec.query in known, spec
    assert {"reconcile_snapshot", "reconcile_work_mem", "reconcile_totals"} <= set(known)
    assert len({spec.name for spec in CHECKS}) == len(CHECKS)


def _report(findings: int) -> Report:
    checks = [CheckResult(spec.name, spec.invariant, spec.description, 0, [], 0.01)
              for spec in CHECKS]
    if findings:
        first = checks[0]
        checks[0] = CheckResult(first.name, first.invariant, first.description, findings,
                                [{"user_id": "alice", "balance": Decimal("1.50000000"),
                                  "findings": findings}], 0.01)
    return Report(checks, {"accounts": 3, "transactions": 9, "usage_rows": 4,
                           "active_holds": 0, "credits_uncollected": Decimal("0E-8")},
                  None, 0.5, 120)


def test_a_clean_report() -> None:
    report = _report(0)
    text = format_report(report)
    assert report.ok and report.failed == []
    assert text.splitlines()[0].startswith("reconcile (all accounts): 3 accounts, 9 transactions")
    assert "0.00000000 credits uncollected" in text
    assert text.splitlines()[-1].startswith("all checks passed")
    assert report.to_dict()["totals"]["credits_uncollected"] == "0.00000000"


def test_a_failed_check_shows_its_examples_and_the_rest_count() -> None:
    report = _report(3)
    text = format_report(report)
    assert not report.ok and report.failed == [CHECKS[0].name]
    assert "user_id=alice, balance=1.50000000" in text
    assert "... and 2 more" in text
    assert f"1 check(s) failed: {CHECKS[0].name}" in text
    assert report.to_dict()["checks"][0]["examples"] == [
        {"user_id": "alice", "balance": "1.50000000"}]


class NoDb:
    def transaction(self) -> Any:
        raise AssertionError("refused input must not open a transaction")


@pytest.mark.parametrize("kwargs", [
    {"limit": -1}, {"limit": MAX_LIMIT + 1}, {"limit": True},
    {"hold_grace_seconds": -1}, {"hold_grace_seconds": 86401},
    {"user_id": ""}, {"user_id": "a\x00"},
])
async def test_bad_arguments_are_refused_before_the_database(kwargs: dict[str, Any]) -> None:
    db: Any = NoDb()
    real: Database = db
    with pytest.raises(errors.InvalidInput):
        await reconcile(real, **kwargs)
