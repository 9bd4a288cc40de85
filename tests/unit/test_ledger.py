"""The ledger's own rules, against a small in-memory stand-in for the database.

The SQL functions themselves are tested against PostgreSQL in
tests/integration; here: input is refused before any query runs, each
operation calls the named query it should with checked parameters, and an
admin adjustment's sign picks the grant or the debit.
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from litellm_credits import errors
from litellm_credits.ledger import Ledger, TxResult
from litellm_credits.store.db import Database, queries


class FakeDb:
    """Records each named query; answers with a canned row. Refuses unknown names."""

    def __init__(self, row: dict[str, Any] | None = None) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.row = row if row is not None else {
            "success": True, "new_balance": Decimal("10"), "transaction_id": 7}

    async def fetchone(self, name: str, params: dict[str, Any] | None = None
                       ) -> dict[str, Any] | None:
        assert name in queries(), f"no named query {name!r}"
        self.calls.append((name, dict(params or {})))
        return self.row


def ledger(db: FakeDb) -> Ledger:
    fake: Any = db
    real: Database = fake
    return Ledger(real)


async def test_add_credits_calls_add_credits_with_checked_values() -> None:
    db = FakeDb()
    result = await ledger(db).add_credits("alice", "12.5", type="bonus", payment_id="k1")
    assert result == TxResult(True, Decimal("10"), 7)
    [(name, params)] = db.calls
    assert name == "add_credits"
    assert params["amount"] == Decimal("12.5") and params["type"] == "bonus"
    assert params["payment_id"] == "k1" and params["user_id"] == "alice"


@pytest.mark.parametrize(("call", "error"), [
    (lambda lg: lg.add_credits("alice", 1.5), errors.InvalidAmount),
    (lambda lg: lg.add_credits("", "1"), errors.InvalidUserId),
    (lambda lg: lg.add_credits("alice", "1", type="usage"), errors.InvalidTransactionType),
    (lambda lg: lg.add_credits("alice", "1", description="x\x00"), errors.InvalidInput),
    (lambda lg: lg.debit("alice", "1", type="purchase"), errors.InvalidTransactionType),
    (lambda lg: lg.debit("alice", "0"), errors.InvalidAmount),
    (lambda lg: lg.adjust("alice", "-0.000000001", created_by="t"), errors.InvalidAmount),
    (lambda lg: lg.adjust("alice", 2.0, created_by="t"), errors.InvalidAmount),
    (lambda lg: lg.set_power_level("alice", "turbo", by="t"), errors.InvalidPowerLevel),
    (lambda lg: lg.account("a\x01"), errors.InvalidUserId),
    (lambda lg: lg.reserve("alice", "", Decimal(1), None, 60), errors.InvalidInput),
    (lambda lg: lg.reserve("alice", "r1", Decimal("-1"), None, 60), errors.InvalidAmount),
    (lambda lg: lg.reserve("alice", "r1", Decimal(1), "turbo", 60), errors.InvalidPowerLevel),
])
async def test_bad_input_is_refused_before_any_query(call: Any, error: type[Exception]) -> None:
    db = FakeDb()
    with pytest.raises(error):
        await call(ledger(db))
    assert db.calls == []


async def test_adjust_sign_picks_grant_or_debit() -> None:
    db = FakeDb()
    await ledger(db).adjust("alice", "5", created_by="cli:ops", idempotency_key="k")
    await ledger(db).adjust("alice", " -2.5 ", created_by="cli:ops", idempotency_key="k2")
    (grant, g), (debit, d) = db.calls
    assert grant == "add_credits" and g["amount"] == Decimal("5") and g["payment_id"] == "k"
    assert g["type"] == "admin_adjustment" and g["created_by"] == "cli:ops"
    assert debit == "debit_credits" and d["amount"] == Decimal("2.5") and d["request_id"] == "k2"
    assert d["type"] == "admin_adjustment"


async def test_observers_hear_each_movement_after_it_is_written() -> None:
    db = FakeDb()
    lg = ledger(db)
    heard: list[tuple[str, dict[str, Any]]] = []
    lg.observers.append(lambda event, fields: heard.append((event, fields)))
    await lg.add_credits("alice", "1", type="purchase")
    await lg.debit("alice", "1", type="usage")
    assert [e for e, _ in heard] == ["added", "debited"]
    assert heard[0][1]["result"].transaction_id == 7


async def test_account_not_found_says_how_to_create_it() -> None:
    db = FakeDb()
    db.row = None  # type: ignore[assignment]
    with pytest.raises(errors.AccountNotFound, match="litellm-credits grant USER AMOUNT"):
        await ledger(db).account("nobody")
