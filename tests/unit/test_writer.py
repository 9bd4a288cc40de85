"""The settlement writer against an in-memory ledger: batches, spool, isolation, observers.

The fake ledger settles the JSON the writer hands it the way ``settle_usage`` does for
what matters here (one result per request id, duplicates harmless, a batch with a bad
record refused whole); the real function runs against PostgreSQL in
``tests/integration/test_writer_spool.py``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from litellm_credits import errors
from litellm_credits.runtime import Runtime, RuntimeObserver
from litellm_credits.settings import Settings
from litellm_credits.settlement.record import SettlementRecord
from litellm_credits.settlement.spool import Spool
from litellm_credits.settlement.writer import Writer

D = Decimal


@dataclass
class FakeLedger:
    settled: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[list[dict[str, Any]]] = field(default_factory=list)
    down: bool = False

    async def settle(self, records: Sequence[dict[str, Any]],
                     deadline: float | None = None) -> list[dict[str, Any]]:
        json.dumps(list(records))  # what the real ledger sends must be plain JSON
        self.calls.append(list(records))
        if self.down:
            raise errors.DatabaseUnavailable("the database is down")
        if any(D(r["credits_charged"]) < 0 for r in records):
            raise errors.InvalidInput("settle_usage: a record has a bad charge")
        results = []
        for r in records:
            if r["request_id"] in self.settled:
                outcome = "duplicate"
            else:
                self.settled[r["request_id"]] = r
                outcome = "debited" if r["success"] else "failure_logged"
            results.append({"request_id": r["request_id"], "user_id": r["user_id"],
                            "outcome": outcome, "debited": r["credits_charged"]})
        return results


def rec(rid: str, credits: str = "0.25", success: bool = True) -> SettlementRecord:
    return SettlementRecord(request_id=rid, user_id="ann", success=success,
                            credits_charged=D(credits), power_level="eco",
                            request_metadata={"route_rule": "preferred"})


def writer(tmp_path: Path, ledger: FakeLedger, **kw: Any) -> Writer:
    return Writer(ledger, Spool(tmp_path / "spool"), replay_interval=3600,  # type: ignore[arg-type]
                  **kw)


async def test_a_batch_goes_to_the_ledger_as_json_and_to_the_callback_as_records(
        tmp_path: Path) -> None:
    seen: list[tuple[Sequence[SettlementRecord], Sequence[Mapping[str, Any]]]] = []
    ledger = FakeLedger()
    w = writer(tmp_path, ledger, on_batch=lambda b, r, _: seen.append((b, r)))
    records = [rec("a"), rec("b"), rec("c", success=False)]
    for r in records:
        w.submit(r)
    await w.flush()
    assert ledger.calls == [[r.to_json() for r in records]]
    assert ledger.settled["a"]["credits_charged"] == "0.25"
    assert seen[0][0] == records and [x["outcome"] for x in seen[0][1]] == [
        "debited", "debited", "failure_logged"]
    assert w.stats.settled == 3 and w.stats.outcomes == {"debited": 2, "failure_logged": 1}


async def test_an_outage_spools_and_the_replay_settles_the_same_records(tmp_path: Path) -> None:
    ledger = FakeLedger(down=True)
    w = writer(tmp_path, ledger)
    records = [rec(f"r{i}") for i in range(4)]
    for r in records[:2]:
        w.submit(r)
    await w.flush()
    w.submit(records[2])  # during the outage: straight to disk
    w.submit(records[3])
    assert w.depth == 0 and w.stats.spooled == 4
    on_disk = [r for path in w.spool.segments() for r in Spool.read(path)]
    assert on_disk == records  # typed records survive the spool unchanged
    with pytest.raises(errors.DatabaseUnavailable):
        await w.replay_now()
    ledger.down = False
    assert await w.replay_now() == 4
    assert sorted(ledger.settled) == ["r0", "r1", "r2", "r3"] and w.spool.segments() == []
    assert await w.replay_now() == 0


async def test_a_refused_record_is_set_aside_and_the_rest_settle(tmp_path: Path) -> None:
    ledger = FakeLedger()
    w = writer(tmp_path, ledger)
    bad = rec("bad", "-1")
    for r in [rec("g1"), rec("g2"), bad, rec("g3")]:
        w.submit(r)
    await w.flush()
    assert sorted(ledger.settled) == ["g1", "g2", "g3"] and w.stats.rejected == 1
    (kept,) = (w.spool.directory / "rejected").iterdir()
    assert SettlementRecord.from_json(json.loads(kept.read_text())) == bad


async def test_close_spools_what_the_database_did_not_take(tmp_path: Path) -> None:
    ledger = FakeLedger(down=True)
    w = writer(tmp_path, ledger)
    w.submit(rec("late"))
    await w.close(timeout=1)
    assert [r.request_id for p in w.spool.segments() for r in Spool.read(p)] == ["late"]
    w.submit(rec("after-close"))  # shutdown: straight to disk
    assert w.spool.depth() == 2
    assert w.spool_pending() == 0


class Counter(RuntimeObserver):
    def __init__(self) -> None:
        self.batches: list[int] = []
        self.events: list[str] = []

    def on_batch(self, batch: Sequence[SettlementRecord],
                 results: Sequence[Mapping[str, Any]], elapsed: float) -> None:
        self.batches.append(len(batch))

    def on_ledger_event(self, event: str, fields: dict[str, Any]) -> None:
        self.events.append(event)


class Broken(RuntimeObserver):
    def on_batch(self, batch: Sequence[SettlementRecord],
                 results: Sequence[Mapping[str, Any]], elapsed: float) -> None:
        raise RuntimeError("observer bug")


async def test_observers_subscribe_once_on_the_runtime_and_one_failing_stops_nothing(
        tmp_path: Path) -> None:
    rt = Runtime(Settings(database_url="postgresql://unused", spool_dir=tmp_path / "s"),
                 model_list=lambda: [], cost_map=lambda: {})
    counter = Counter()
    assert rt.subscribe(Broken()) is not None
    assert rt.subscribe(counter) is counter and rt.subscribe(counter) is counter
    assert rt.observer(Counter) is counter and len(rt.observers) == 2
    ledger = FakeLedger()
    rt.writer.ledger = ledger  # type: ignore[assignment]
    rt.writer.submit(rec("x"))
    await rt.writer.flush()
    assert counter.batches == [1] and rt.writer.stats.settled == 1
    rt.ledger._notify("released", request_id="x")
    assert counter.events == ["released"]
    rt.writer.spool.close_segment()
