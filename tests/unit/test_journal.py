"""The pre-response journal: one write per record, deleted once done, replayed after a crash."""

from __future__ import annotations

import asyncio
import os
import time
from decimal import Decimal
from pathlib import Path

import pytest

from litellm_credits.settlement import journal as journal_module
from litellm_credits.settlement.journal import Journal
from litellm_credits.settlement.record import SettlementRecord
from litellm_credits.settlement.spool import Spool


def record(i: int) -> SettlementRecord:
    return SettlementRecord(request_id=f"req_{i:06d}", user_id="u", success=True,
                            status_code=200, credits_charged=Decimal("0.00012345"),
                            request_metadata={"route_rule": "preferred"})


def lines(path: Path) -> int:
    return path.read_bytes().count(b"\n")


def test_each_record_is_one_line_and_done_records_free_their_segment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    j = Journal(tmp_path)
    for i in range(3):
        j.write(record(i))
    files = list(j.directory.glob("*.jsonl"))
    assert len(files) == 1 and lines(files[0]) == 3
    assert j.pending == 3
    j.done([record(0), record(1)])
    assert j.pending == 1
    j.done([record(2), record(99)])  # a record never journaled is ignored
    assert j.pending == 0
    # The current segment stays until it is old enough, then the tick deletes it.
    monkeypatch.setattr(journal_module, "ROTATE_SECONDS", 0.0)
    j.tick()
    assert list(j.directory.glob("*.jsonl")) == []


def test_a_full_segment_rotates_and_is_deleted_when_its_records_are_done(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(journal_module, "ROTATE_RECORDS", 2)
    j = Journal(tmp_path)
    for i in range(5):
        j.write(record(i))
    assert len(list(j.directory.glob("*.jsonl"))) == 3
    j.done([record(0), record(1)])
    assert len(list(j.directory.glob("*.jsonl"))) == 2  # the first, all done, is gone
    j.done([record(2)])
    assert len(list(j.directory.glob("*.jsonl"))) == 2  # record 3 still pending there
    j.done([record(3)])
    assert len(list(j.directory.glob("*.jsonl"))) == 1


def test_what_a_dead_process_left_is_replayed_and_a_live_segment_is_not(tmp_path: Path) -> None:
    dead = Journal(tmp_path)
    for i in range(4):
        dead.write(record(i))
    dead.done([record(0)])
    dead.close()  # the process is gone: its lock too; the segment stays
    live = Journal(tmp_path)
    live.write(record(100))

    settled: list[str] = []

    async def settle(batch: list[SettlementRecord]) -> None:
        settled.extend(r.request_id for r in batch)

    spool = Spool(tmp_path)
    replayed = asyncio.run(spool.replay(settle))

    # All four lines of the dead segment (settling one twice is harmless: I1); never the
    # segment this process still appends to.
    assert replayed == 4
    assert settled == [f"req_{i:06d}" for i in range(4)]
    remaining = spool.journal_segments()
    assert len(remaining) == 1 and lines(remaining[0]) == 1
    assert spool.depth() == 0  # the journal is not "waiting for the database"


def test_the_same_request_journaled_twice_counts_once(tmp_path: Path) -> None:
    j = Journal(tmp_path)
    j.write(record(1))
    j.write(record(1))
    assert j.pending == 1
    j.done([record(1)])
    assert j.pending == 0


def test_sync_hands_out_a_duplicate_fd_only_when_there_is_something_to_sync(
    tmp_path: Path,
) -> None:
    j = Journal(tmp_path)
    assert j.due_for_sync() is None
    j.write(record(1))
    fd = j.due_for_sync()
    assert fd is not None
    os.fsync(fd)
    os.close(fd)
    assert j.due_for_sync() is None  # nothing new since


def test_a_journal_write_costs_one_syscall_not_an_fsync(tmp_path: Path) -> None:
    """The hot-path price: well under 100 us per record (no fsync)."""
    j = Journal(tmp_path)
    recs = [record(i) for i in range(2000)]
    for r in recs[:200]:
        j.write(r)
    samples = []
    for r in recs[200:]:
        started = time.perf_counter()
        j.write(r)
        samples.append(time.perf_counter() - started)
    samples.sort()
    p50, p99 = samples[len(samples) // 2], samples[int(len(samples) * .99)]
    print(f"\njournal write p50 {p50 * 1e6:.1f} us, p99 {p99 * 1e6:.1f} us")
    assert p50 < 100e-6, p50
