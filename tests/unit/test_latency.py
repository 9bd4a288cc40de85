"""The latency window's incremental per-minute sums, against a fake that returns rows.

The fake stands in for ``latency_since``: it records the parameters of each read and
hands back the rows queued for it (grouped per deployment and minute, as the query
groups them). The query itself runs against PostgreSQL in the integration suite.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import pytest

from litellm_credits.latency import LatencyWindow

NOW = 1_800_000_000.0  # a whole minute: 30_000_000 * 60
MINUTE = int(NOW) // 60


@dataclass
class FakeDb:
    replies: list[list[dict[str, Any]]] = field(default_factory=list)
    reads: list[tuple[str, dict[str, Any]]] = field(default_factory=list)

    async def fetchall(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        self.reads.append((name, dict(params)))
        return self.replies.pop(0) if self.replies else []


def row(deployment: str | None, total_ms: int, n: int, last_id: int, *, minute: int = MINUTE,
        group: str = "chat") -> dict[str, Any]:
    return {"model_group": group, "deployment_id": deployment, "minute": minute,
            "total_ms": total_ms, "n": n, "last_id": last_id}


class Clock:
    def __init__(self, now: float = NOW) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


async def test_each_refresh_reads_only_after_the_last_id_seen() -> None:
    db = FakeDb([[row("d1", 300, 3, 17), row("d2", 50, 1, 12)], [row("d1", 100, 1, 20)], []])
    w = LatencyWindow(600, clock=Clock())
    assert await w.refresh(db) == {("chat", "d1"): 100, ("chat", "d2"): 50}  # type: ignore[arg-type]
    assert await w.refresh(db) == {("chat", "d1"): 100, ("chat", "d2"): 50}  # type: ignore[arg-type]
    await w.refresh(db)  # type: ignore[arg-type]
    assert db.reads == [
        ("latency_since", {"after_id": 0, "window_seconds": 600}),
        ("latency_since", {"after_id": 17, "window_seconds": 600}),
        ("latency_since", {"after_id": 20, "window_seconds": 600}),
    ]


async def test_new_rows_of_a_minute_already_seen_add_to_its_sums() -> None:
    db = FakeDb([[row("d1", 100, 1, 5)], [row("d1", 300, 1, 9)]])
    w = LatencyWindow(600, clock=Clock())
    assert await w.refresh(db) == {("chat", "d1"): 100}  # type: ignore[arg-type]
    # Same deployment, same minute: the mean is over both reads (400 / 2), not the last.
    assert await w.refresh(db) == {("chat", "d1"): 200}  # type: ignore[arg-type]


def test_the_mean_spans_minutes_and_keeps_groups_and_deployments_apart() -> None:
    w = LatencyWindow(600, clock=Clock())
    w.add([row("d1", 100, 1, 1, minute=MINUTE - 2), row("d1", 500, 3, 2, minute=MINUTE),
           row("d1", 1000, 1, 3, group="embed"), row("d2", 7, 1, 4)])
    assert w.means() == {("chat", "d1"): 150, ("embed", "d1"): 1000, ("chat", "d2"): 7}
    assert w.last_id == 4


def test_the_mean_rounds_half_up_like_the_sql_cast() -> None:
    w = LatencyWindow(600, clock=Clock())
    w.add([row("half", 3, 2, 1), row("below", 5, 4, 2), row("above", 7, 4, 3)])
    # 1.5 -> 2, 1.25 -> 1, 1.75 -> 2 (avg(...)::integer rounds half away from zero)
    assert w.means() == {("chat", "half"): 2, ("chat", "below"): 1, ("chat", "above"): 2}


def test_minutes_that_left_the_window_are_dropped() -> None:
    clock = Clock()
    w = LatencyWindow(120, clock=clock)
    w.add([row("d1", 1000, 1, 1, minute=MINUTE - 3), row("d1", 100, 1, 2, minute=MINUTE - 2),
           row("d1", 200, 1, 3, minute=MINUTE)])
    # The window is kept in whole minutes: now - 120 s starts minute MINUTE - 2, kept.
    assert w.means() == {("chat", "d1"): 150}
    clock.now += 60
    assert w.means() == {("chat", "d1"): 200}
    clock.now += 10 * 60
    assert w.means() == {}  # nothing left: the deployment has no mean, not 0


def test_rows_without_a_deployment_are_not_counted() -> None:
    w = LatencyWindow(600, clock=Clock())
    w.add([row(None, 999, 1, 1), row("", 999, 1, 2), row("d1", 10, 1, 3)])
    assert w.means() == {("chat", "d1"): 10}


def test_rows_without_a_deployment_still_advance_the_last_id() -> None:
    w = LatencyWindow(600, clock=Clock())
    w.add([row("d1", 10, 1, 3), row(None, 999, 5, 40)])
    assert w.last_id == 40


def test_values_as_the_driver_may_give_them_are_accepted() -> None:
    from decimal import Decimal

    w = LatencyWindow(600, clock=Clock())
    w.add([{"model_group": "chat", "deployment_id": "d1", "minute": str(MINUTE),
            "total_ms": Decimal(90), "n": "3", "last_id": Decimal(8)}])
    assert w.means() == {("chat", "d1"): 30}
    assert w.last_id == 8


def test_a_non_numeric_value_is_an_error_not_a_silent_zero() -> None:
    w = LatencyWindow(600, clock=Clock())
    with pytest.raises(ValueError):
        w.add([row("d1", 10, 1, 1) | {"total_ms": "fast"}])


def test_last_id_never_goes_backwards() -> None:
    w = LatencyWindow(600, clock=Clock())
    w.add([row("d1", 10, 1, 50)])
    w.add([row("d1", 10, 1, 7)])  # a late-committed row with a lower id
    assert w.last_id == 50
    assert w.means() == {("chat", "d1"): 10}
