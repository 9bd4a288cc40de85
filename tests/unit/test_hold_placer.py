"""Hold placement (litellm_credits.holds): group commit against a recording fake database.

The fake answers ``reserve_many`` the way ``reserve_credits_many`` does for what the
placer reads (one row per item, ``ord`` from 1, a per-item SQLSTATE instead of an
error) and ``reserve`` with one row; a gate lets a test keep a statement "in flight"
while more reserves arrive. The SQL itself runs against PostgreSQL in the
integration suite.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

import pytest

from litellm_credits import errors
from litellm_credits.holds import LOCK_NOT_AVAILABLE, HoldPlacer, HoldRequest

D = Decimal

Item = dict[str, Any]


def placed(item: Item) -> dict[str, Any]:
    return {"status": "placed", "hold_amount": D(item["amt"]), "err_state": None,
            "err_message": None, "err_hint": None}


@dataclass
class FakeDb:
    """Records (query name, params); answers from ``per_item`` / ``single``."""

    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    per_item: Callable[[Item], dict[str, Any]] = placed
    single: Callable[[dict[str, Any]], dict[str, Any]] = field(
        default=lambda p: {"status": "placed", "alone": p["request_id"]})
    many_error: BaseException | None = None
    drop_ord: int | None = None
    gate: asyncio.Event | None = None
    deadline: float | None = None

    def statements(self, name: str) -> list[dict[str, Any]]:
        return [p for n, p in self.calls if n == name]

    def batches(self) -> list[list[str]]:
        return [[i["rid"] for i in json.loads(p["items"])] for p in self.statements("reserve_many")]

    async def fetchall(self, name: str, params: dict[str, Any]) -> list[dict[str, Any]]:
        assert name == "reserve_many"
        self.calls.append((name, params))
        if self.gate is not None:
            await self.gate.wait()
        if self.many_error is not None:
            raise self.many_error
        items = json.loads(params["items"])
        return [{"ord": str(n), **self.per_item(item)}  # ord as the driver may give it
                for n, item in enumerate(items, start=1) if n != self.drop_ord]

    async def fetchone(self, name: str, params: dict[str, Any]) -> dict[str, Any] | None:
        assert name == "reserve"
        self.calls.append((name, params))
        return self.single(params)

    async def within_deadline(self, future: asyncio.Future[Any]) -> Any:
        try:
            async with asyncio.timeout(self.deadline):
                return await future
        except TimeoutError:
            raise errors.DatabaseUnavailable("too slow") from None


def req(rid: str, amount: str = "1.5", user: str = "ann") -> HoldRequest:
    return HoldRequest(user, rid, D(amount), "eco", 900)


def placer(db: FakeDb, max_batch: int = 64) -> HoldPlacer:
    return HoldPlacer(db, max_batch=max_batch)  # type: ignore[arg-type]


async def settle_tasks() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_batch_size_below_one_is_a_config_error() -> None:
    with pytest.raises(errors.ConfigError, match="at least 1"):
        HoldPlacer(FakeDb(), max_batch=0)  # type: ignore[arg-type]


def test_request_params_and_item_keep_the_amount_exact() -> None:
    r = HoldRequest("ann", "r1", D("0.00000001"), None, 60)
    assert r.params() == {"user_id": "ann", "request_id": "r1", "base_amount": D("0.00000001"),
                          "level": None, "ttl": 60}
    # The JSON item carries the amount as exact text, never a float.
    assert r.item() == {"u": "ann", "rid": "r1", "amt": "1E-8", "lvl": None, "ttl": 60}
    assert D(json.loads(json.dumps(r.item()))["amt"]) == D("0.00000001")


async def test_an_idle_placer_sends_a_lone_reserve_at_once_through_the_batch_statement() -> None:
    db = FakeDb()
    p = placer(db)
    row = await p.place(req("r1", "2.25"))
    assert row["status"] == "placed" and row["hold_amount"] == D("2.25")
    assert db.batches() == [["r1"]]
    assert json.loads(db.statements("reserve_many")[0]["items"]) == [
        {"u": "ann", "rid": "r1", "amt": "2.25", "lvl": "eco", "ttl": 900}]
    assert (p.batches, p.batched) == (1, 1)


async def test_reserves_arriving_while_one_is_in_flight_go_together_in_the_next_statement() -> None:
    db = FakeDb(gate=asyncio.Event())
    p = placer(db)
    first = asyncio.create_task(p.place(req("r0")))
    await settle_tasks()
    assert db.batches() == [["r0"]]  # in flight, waiting on the gate
    rest = [asyncio.create_task(p.place(req(f"r{i}", f"{i}.5"))) for i in range(1, 6)]
    await settle_tasks()
    assert db.batches() == [["r0"]]  # nothing else sent while one is in flight
    db.gate.set()  # type: ignore[union-attr]
    rows = await asyncio.gather(first, *rest)
    assert db.batches() == [["r0"], ["r1", "r2", "r3", "r4", "r5"]]
    # Each caller gets its own row, matched by position, not its neighbour's.
    assert [r["hold_amount"] for r in rows] == [D("1.5")] + [D(f"{i}.5") for i in range(1, 6)]
    assert (p.batches, p.batched) == (2, 6)
    assert db.statements("reserve") == []


async def test_max_batch_bounds_one_statement() -> None:
    db = FakeDb(gate=asyncio.Event())
    p = placer(db, max_batch=2)
    tasks = [asyncio.create_task(p.place(req(f"r{i}"))) for i in range(5)]
    await settle_tasks()
    db.gate.set()  # type: ignore[union-attr]
    await asyncio.gather(*tasks)
    assert db.batches() == [["r0", "r1"], ["r2", "r3"], ["r4"]]
    assert all(len(b) <= 2 for b in db.batches())


async def test_max_batch_one_sends_each_reserve_alone_with_the_single_query() -> None:
    db = FakeDb()
    p = placer(db, max_batch=1)
    rows = await asyncio.gather(p.place(req("a")), p.place(req("b")))
    assert [r["alone"] for r in rows] == ["a", "b"]
    assert db.statements("reserve_many") == []
    assert db.statements("reserve") == [req("a").params(), req("b").params()]


async def test_an_item_error_fails_that_request_alone() -> None:
    def per_item(item: Item) -> dict[str, Any]:
        if item["rid"] == "bad":
            return {"status": None, "err_state": "CR005", "err_message": "no credit account",
                    "err_hint": "create it first"}
        return placed(item)

    db = FakeDb(per_item=per_item, gate=asyncio.Event())
    p = placer(db)
    tasks = [asyncio.create_task(p.place(req(rid))) for rid in ("x", "good1", "bad", "good2")]
    await settle_tasks()
    db.gate.set()  # type: ignore[union-attr]
    results = await asyncio.gather(*tasks, return_exceptions=True)
    assert [type(r) for r in results] == [dict, dict, errors.AccountNotFound, dict]
    assert "no credit account" in str(results[2]) and "create it first" in str(results[2])
    assert db.statements("reserve") == []  # a definite error is not retried


async def test_a_locked_account_is_retried_alone_with_the_waiting_query() -> None:
    def per_item(item: Item) -> dict[str, Any]:
        if item["rid"] == "locked":
            return {"status": None, "err_state": LOCK_NOT_AVAILABLE,
                    "err_message": "could not obtain lock", "err_hint": None}
        return placed(item)

    db = FakeDb(per_item=per_item)
    p = placer(db)
    row_ok, row_locked = await asyncio.gather(p.place(req("ok")), p.place(req("locked")))
    assert row_ok["status"] == "placed"
    assert row_locked == {"status": "placed", "alone": "locked"}
    assert db.statements("reserve") == [req("locked").params()]


async def test_a_refused_statement_retries_every_item_alone() -> None:
    db = FakeDb(many_error=errors.InvalidInput("malformed jsonb"))
    p = placer(db)
    rows = await asyncio.gather(p.place(req("a")), p.place(req("b")), p.place(req("c")))
    assert [r["alone"] for r in rows] == ["a", "b", "c"]
    assert sorted(p["request_id"] for p in db.statements("reserve")) == ["a", "b", "c"]
    assert (p.batches, p.batched) == (0, 0)  # the refused statement is not counted


async def test_an_item_failing_its_retry_alone_gets_its_own_error() -> None:
    def single(params: dict[str, Any]) -> dict[str, Any]:
        if params["request_id"] == "poison":
            raise errors.InvalidAmount("amount must be positive")
        return {"status": "placed", "alone": params["request_id"]}

    db = FakeDb(many_error=errors.InvalidInput("malformed"), single=single)
    p = placer(db)
    results = await asyncio.gather(p.place(req("fine")), p.place(req("poison")),
                                   return_exceptions=True)
    assert results[0] == {"status": "placed", "alone": "fine"}
    assert isinstance(results[1], errors.InvalidAmount)


async def test_an_outage_fails_every_caller_of_the_batch_and_the_next_reserve_starts_afresh(
) -> None:
    db = FakeDb(many_error=errors.DatabaseUnavailable("down"))
    p = placer(db)
    results = await asyncio.gather(p.place(req("a")), p.place(req("b")), return_exceptions=True)
    assert all(isinstance(r, errors.DatabaseUnavailable) for r in results)
    assert db.statements("reserve") == []  # not retried alone: the database is away
    db.many_error = None
    row = await p.place(req("c"))
    assert row["status"] == "placed"
    assert db.batches()[-1] == ["c"]


async def test_a_missing_row_is_reported_as_a_bug_to_that_caller_only() -> None:
    db = FakeDb(drop_ord=2)
    p = placer(db)
    results = await asyncio.gather(p.place(req("a")), p.place(req("b")), p.place(req("c")),
                                   return_exceptions=True)
    assert isinstance(results[0], dict) and isinstance(results[2], dict)
    assert type(results[1]) is errors.CreditsError and "bug" in str(results[1])


async def test_a_caller_that_gave_up_before_its_turn_is_not_sent() -> None:
    db = FakeDb(gate=asyncio.Event())
    p = placer(db)
    first = asyncio.create_task(p.place(req("first")))
    await settle_tasks()
    gone = asyncio.create_task(p.place(req("gone")))
    stays = asyncio.create_task(p.place(req("stays")))
    await settle_tasks()
    gone.cancel()
    await settle_tasks()
    db.gate.set()  # type: ignore[union-attr]
    await asyncio.gather(first, stays)
    assert gone.cancelled()
    assert db.batches() == [["first"], ["stays"]]  # its hold is never placed


async def test_a_caller_past_its_deadline_gets_unavailable_and_is_skipped() -> None:
    db = FakeDb(gate=asyncio.Event(), deadline=0.05)
    p = placer(db)
    first = asyncio.create_task(p.place(req("first")))
    await settle_tasks()
    late = asyncio.create_task(p.place(req("late")))
    with pytest.raises(errors.DatabaseUnavailable):
        await late
    db.gate.set()  # type: ignore[union-attr]
    with pytest.raises(errors.DatabaseUnavailable):
        await first  # the statement in flight outlived its caller's deadline too
    await settle_tasks()
    assert db.batches() == [["first"]]  # "late" timed out in the queue: never sent


async def test_duplicate_request_ids_each_get_the_row_for_their_position() -> None:
    # Two reserves for the same request id go in one statement; the database
    # answers the second one "exists", and each caller sees its own answer.
    seen: set[str] = set()

    def once(item: Item) -> dict[str, Any]:
        status = "exists" if item["rid"] in seen else "placed"
        seen.add(item["rid"])
        return {**placed(item), "status": status}

    db = FakeDb(per_item=once, gate=asyncio.Event())
    p = placer(db)
    tasks = [asyncio.create_task(p.place(req(rid))) for rid in ("x", "dup", "dup")]
    await settle_tasks()
    db.gate.set()  # type: ignore[union-attr]
    rows = await asyncio.gather(*tasks)
    assert [r["status"] for r in rows] == ["placed", "placed", "exists"]
    assert db.batches() == [["x", "dup", "dup"]]  # queued together before the sender ran
