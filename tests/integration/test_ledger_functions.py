"""The ledger's SQL functions against a real PostgreSQL: add_user_credits,
debit_user_credits, get_quota_usage_percentage, settle_usage, refund_purchase,
refresh_usage_summary, and the async Ledger over them.

Every test that moves money ends by checking invariant I2 for the users involved:
balance = sum(amounts), and balance_before/balance_after chain by id from 0.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from litellm_credits import errors
from litellm_credits.billing.amounts import refund_credits
from litellm_credits.ledger import Ledger
from litellm_credits.store.db import Database

D = Decimal


# --- helpers -------------------------------------------------------------------------


def assert_chain(conn: psycopg.Connection, user_id: str) -> Decimal:
    """I2 for one user; returns the balance."""
    rows = conn.execute(
        "SELECT id, amount, balance_before, balance_after FROM credit_transactions "
        "WHERE user_id = %s ORDER BY id", (user_id,)).fetchall()
    running = D(0)
    for tx_id, amount, before, after in rows:
        assert before == running, f"transaction {tx_id} does not chain: {before} != {running}"
        assert after == before + amount, f"transaction {tx_id}: {after} != {before} + {amount}"
        running = after
    balance = conn.execute(
        "SELECT balance FROM user_credits WHERE user_id = %s", (user_id,)).fetchone()
    assert balance is not None, f"no account for {user_id}"
    assert balance[0] == running == sum((r[1] for r in rows), D(0))
    return balance[0]


def add(conn: psycopg.Connection, user: str, amount: Any, type_: str = "purchase",
        payment_id: str | None = None, description: str | None = None) -> tuple[Any, ...]:
    row = conn.execute("SELECT * FROM add_user_credits(%s, %s, %s, %s, %s)",
                       (user, amount, type_, payment_id, description)).fetchone()
    assert row is not None
    return tuple(row)


def debit(conn: psycopg.Connection, user: str, amount: Any, type_: str,
          request_id: str | None = None, description: str | None = None) -> tuple[Any, ...]:
    row = conn.execute("SELECT * FROM debit_user_credits(%s, %s, %s, %s, %s)",
                       (user, amount, type_, request_id, description)).fetchone()
    assert row is not None
    return tuple(row)


def settle(conn: psycopg.Connection, records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(
        "SELECT * FROM settle_usage(%s::jsonb)", (json.dumps(records),)).fetchall()]


def record(request_id: str, user_id: str, credits: str, success: bool = True,
           **extra: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "request_id": request_id, "user_id": user_id, "model": "gpt-4o-mini",
        "model_group": "gpt-4o-mini", "provider": "openai", "power_level": "balanced",
        "prompt_tokens": 100, "completion_tokens": 50, "total_tokens": 150,
        "provider_cost_usd": "0.0001500000", "credits_charged": credits,
        "cost_multiplier": "1.0", "latency_ms": 420, "success": success,
        "status_code": 200 if success else 500,
    }
    if not success:
        rec.update(error_type="APIError", error_message="upstream exploded")
    rec.update(extra)
    return rec


def count(conn: psycopg.Connection, sql: str, *params: Any) -> int:
    row = conn.execute(sql, params).fetchone()
    assert row is not None
    return int(row[0])


def hold(conn: psycopg.Connection, user: str, request_id: str, amount: str = "10") -> str:
    row = conn.execute("SELECT status FROM reserve_credits(%s, %s, %s, NULL, 600)",
                       (user, request_id, amount)).fetchone()
    assert row is not None
    return str(row[0])


@pytest.fixture
async def ledger(db_url: str) -> AsyncIterator[Ledger]:
    db = Database(db_url, min_size=1, max_size=4)
    await db.open(wait=True)
    try:
        yield Ledger(db)
    finally:
        await db.close()


# --- add_user_credits ---------------------------------------------------------------


def test_add_creates_the_account_on_first_use(db_conn: psycopg.Connection) -> None:
    assert count(db_conn, "SELECT count(*) FROM user_credits WHERE user_id = 'alice'") == 0
    ok, balance, tx_id = add(db_conn, "alice", "100", "purchase", "pi_1", "Starter Pack")
    assert (ok, balance) == (True, D("100"))
    assert isinstance(tx_id, int)
    account = db_conn.execute(
        "SELECT balance, tier, power_level, level_override_allowed, monthly_quota, "
        "monthly_usage FROM user_credits WHERE user_id = 'alice'").fetchone()
    assert account == (D("100"), "free", "balanced", True, None, D("0"))
    tx = db_conn.execute(
        "SELECT user_id, transaction_type, amount, balance_before, balance_after, "
        "idempotency_key, payment_intent_id, description, status, credits_uncollected "
        "FROM credit_transactions WHERE id = %s", (tx_id,)).fetchone()
    assert tx == ("alice", "purchase", D("100"), D("0"), D("100"), "pi_1", "pi_1",
                  "Starter Pack", "completed", D("0"))
    ok, balance, tx2 = add(db_conn, "alice", "0.00000001", "bonus", None, "dust")
    assert (ok, balance) == (True, D("100.00000001"))
    assert tx2 > tx_id
    assert assert_chain(db_conn, "alice") == D("100.00000001")


def test_add_is_idempotent_on_the_payment_id(db_conn: psycopg.Connection) -> None:
    first = add(db_conn, "bob", "500", "purchase", "pi_same", "Value Pack")
    add(db_conn, "bob", "5", "bonus", None, "welcome")
    # A repeat (even with a different amount) returns the original transaction.
    again = add(db_conn, "bob", "500", "purchase", "pi_same", "Value Pack")
    other_amount = add(db_conn, "bob", "999", "purchase", "pi_same", "tampered")
    assert first == (True, D("500"), first[2])
    assert again == (True, D("505"), first[2])
    assert other_amount == (True, D("505"), first[2])
    assert count(db_conn, "SELECT count(*) FROM credit_transactions "
                          "WHERE idempotency_key = 'pi_same'") == 1
    assert assert_chain(db_conn, "bob") == D("505")


def test_a_payment_id_of_another_account_is_refused(db_conn: psycopg.Connection) -> None:
    add(db_conn, "carol", "100", "purchase", "pi_carol", None)
    with pytest.raises(psycopg.Error) as info:
        add(db_conn, "mallory", "100", "purchase", "pi_carol", None)
    assert (info.value.sqlstate or "").startswith("CR")
    assert count(db_conn, "SELECT count(*) FROM user_credits WHERE user_id = 'mallory'") == 0


def test_add_refuses_debit_types(db_conn: psycopg.Connection) -> None:
    for bad in ("usage", "refund", "gift", None):
        with pytest.raises(psycopg.Error) as info:
            add(db_conn, "dave", "1", bad, None, None)
        assert info.value.sqlstate == "CR003"
    assert count(db_conn, "SELECT count(*) FROM user_credits") == 0


# --- debit_user_credits -----------------------------------------------------------------


def test_admin_adjustment_refused_when_balance_too_low(db_conn: psycopg.Connection) -> None:
    add(db_conn, "erin", "10", "purchase", "pi_e", None)
    before = count(db_conn, "SELECT count(*) FROM credit_transactions")
    assert debit(db_conn, "erin", "10.00000001", "admin_adjustment", None, "too much") == (
        False, D("10"), None)
    assert count(db_conn, "SELECT count(*) FROM credit_transactions") == before
    ok, balance, tx_id = debit(db_conn, "erin", "10", "admin_adjustment", None, "all of it")
    assert (ok, balance) == (True, D("0"))
    assert db_conn.execute("SELECT amount, transaction_type FROM credit_transactions "
                           "WHERE id = %s", (tx_id,)).fetchone() == (D("-10"), "admin_adjustment")
    assert assert_chain(db_conn, "erin") == D("0")


def test_debit_of_an_unknown_account_is_refused(db_conn: psycopg.Connection) -> None:
    with pytest.raises(psycopg.Error) as info:
        debit(db_conn, "ghost", "1", "usage", "req-ghost", None)
    assert info.value.sqlstate == "CR005"
    assert "no credit account for user ghost" in str(info.value)
    assert count(db_conn, "SELECT count(*) FROM user_credits") == 0
    assert count(db_conn, "SELECT count(*) FROM credit_transactions") == 0


def test_refund_may_leave_a_negative_balance(db_conn: psycopg.Connection) -> None:
    add(db_conn, "frank", "30", "purchase", "pi_f", None)
    assert debit(db_conn, "frank", "20", "usage", "req-f1", None)[:2] == (True, D("10"))
    ok, balance, _ = debit(db_conn, "frank", "30", "refund", "re_f", "chargeback")
    assert (ok, balance) == (True, D("-20"))
    # Usage on a negative balance takes nothing and records all of it as uncollected.
    ok, balance, tx_id = debit(db_conn, "frank", "5", "usage", "req-f2", None)
    assert (ok, balance) == (True, D("-20"))
    assert db_conn.execute(
        "SELECT amount, balance_before, balance_after, credits_uncollected "
        "FROM credit_transactions WHERE id = %s", (tx_id,)).fetchone() == (
        D("0"), D("-20"), D("-20"), D("5"))
    assert assert_chain(db_conn, "frank") == D("-20")


def test_usage_caps_at_the_balance_and_records_the_rest(db_conn: psycopg.Connection) -> None:
    add(db_conn, "gina", "10", "purchase", "pi_g", None)
    ok, balance, tx_id = debit(db_conn, "gina", "4.25", "usage", "req-g1", None)
    assert (ok, balance) == (True, D("5.75"))
    ok, balance, tx2 = debit(db_conn, "gina", "8", "usage", "req-g2", None)
    assert (ok, balance) == (True, D("0"))
    rows = db_conn.execute(
        "SELECT request_id, amount, balance_before, balance_after, credits_uncollected "
        "FROM credit_transactions WHERE transaction_type = 'usage' ORDER BY id").fetchall()
    assert rows == [
        ("req-g1", D("-4.25"), D("10"), D("5.75"), D("0")),
        ("req-g2", D("-5.75"), D("5.75"), D("0"), D("2.25")),
    ]
    # Served with nothing left: still recorded, balance stays at zero.
    assert debit(db_conn, "gina", "1", "usage", "req-g3", None)[:2] == (True, D("0"))
    assert db_conn.execute(
        "SELECT amount, credits_uncollected FROM credit_transactions "
        "WHERE request_id = 'req-g3'").fetchone() == (D("0"), D("1"))
    assert count(db_conn, "SELECT count(*) FROM credit_transactions "
                          "WHERE balance_after < 0") == 0
    assert assert_chain(db_conn, "gina") == D("0")


def test_usage_is_idempotent_on_the_request_id(db_conn: psycopg.Connection) -> None:
    add(db_conn, "hank", "50", "purchase", "pi_h", None)
    assert hold(db_conn, "hank", "req-h1", "7") == "placed"
    first = debit(db_conn, "hank", "7", "usage", "req-h1", None)
    assert first[:2] == (True, D("43"))
    # The usage debit released the request's hold.
    assert count(db_conn, "SELECT count(*) FROM credit_holds") == 0
    again = debit(db_conn, "hank", "7", "usage", "req-h1", None)
    bigger = debit(db_conn, "hank", "70", "usage", "req-h1", None)
    assert again == bigger == first
    assert count(db_conn, "SELECT count(*) FROM credit_transactions "
                          "WHERE request_id = 'req-h1'") == 1
    assert assert_chain(db_conn, "hank") == D("43")


def test_usage_needs_a_request_id(db_conn: psycopg.Connection) -> None:
    add(db_conn, "ivy", "5", "purchase", "pi_i", None)
    for rid in (None, ""):
        with pytest.raises(psycopg.Error) as info:
            debit(db_conn, "ivy", "1", "usage", rid, None)
        assert info.value.sqlstate == "CR006"
    assert count(db_conn, "SELECT count(*) FROM credit_transactions") == 1


def test_usage_debit_counts_against_the_monthly_quota(db_conn: psycopg.Connection) -> None:
    add(db_conn, "quincy", "100", "purchase", "pi_q", None)
    db_conn.execute("UPDATE user_credits SET monthly_quota = 40 WHERE user_id = 'quincy'")
    debit(db_conn, "quincy", "10", "usage", "req-q1", None)
    assert db_conn.execute(
        "SELECT get_quota_usage_percentage('quincy')").fetchone() == (D("25.00"),)


def test_every_transaction_chains_across_all_kinds(db_conn: psycopg.Connection) -> None:
    add(db_conn, "jack", "100", "purchase", "pi_j1", None)
    debit(db_conn, "jack", "12.34567891", "usage", "rq-1", None)
    add(db_conn, "jack", "3", "bonus", None, None)
    debit(db_conn, "jack", "0.5", "admin_adjustment", None, None)
    debit(db_conn, "jack", "100", "refund", "re_1", None)
    add(db_conn, "jack", "40", "admin_adjustment", "adj-1", None)
    settle(db_conn, [record("rq-2", "jack", "1.00000001")])
    # Another user's rows interleave by id but do not disturb jack's chain.
    add(db_conn, "kim", "9", "purchase", "pi_k", None)
    debit(db_conn, "jack", "2", "usage", "rq-3", None)
    expected = D("100") - D("12.34567891") + 3 - D("0.5") - 100 + 40 - D("1.00000001") - 2
    assert assert_chain(db_conn, "jack") == expected
    assert assert_chain(db_conn, "kim") == D("9")


# --- get_quota_usage_percentage ------------------------------------------------------------


def test_quota_usage_percentage(db_conn: psycopg.Connection) -> None:
    def pct(user: str) -> Decimal:
        row = db_conn.execute("SELECT get_quota_usage_percentage(%s)", (user,)).fetchone()
        assert row is not None
        return row[0]

    add(db_conn, "lee", "1000", "purchase", "pi_l", None)
    assert pct("lee") == 0  # NULL quota: unlimited
    settle(db_conn, [record("lq-1", "lee", "30"), record("lq-2", "lee", "20")])
    assert pct("lee") == 0
    db_conn.execute("UPDATE user_credits SET monthly_quota = 0 WHERE user_id = 'lee'")
    assert pct("lee") == 100
    db_conn.execute("UPDATE user_credits SET monthly_quota = 200 WHERE user_id = 'lee'")
    assert pct("lee") == D("25.00")
    db_conn.execute("UPDATE user_credits SET monthly_quota = 30 WHERE user_id = 'lee'")
    assert pct("lee") == D("166.67")
    # Usage recorded in an earlier month does not count in this one.
    db_conn.execute("UPDATE user_credits SET monthly_quota = 200, "
                    "quota_period_start = (date_trunc('month', now() AT TIME ZONE 'UTC') "
                    "- interval '1 month')::date WHERE user_id = 'lee'")
    assert pct("lee") == 0
    # The first settlement of the new month starts the count afresh.
    settle(db_conn, [record("lq-3", "lee", "10")])
    assert db_conn.execute(
        "SELECT monthly_usage, quota_period_start = date_trunc('month', now() AT TIME ZONE "
        "'UTC')::date FROM user_credits WHERE user_id = 'lee'").fetchone() == (D("10"), True)
    assert pct("lee") == D("5.00")
    with pytest.raises(psycopg.Error) as info:
        pct("nobody")
    assert info.value.sqlstate == "CR005"


# --- settle_usage -----------------------------------------------------------------------


def test_settle_success_logs_debits_and_releases_the_hold(db_conn: psycopg.Connection) -> None:
    add(db_conn, "mia", "100", "purchase", "pi_m", None)
    assert hold(db_conn, "mia", "s-1", "20") == "placed"
    out = settle(db_conn, [record("s-1", "mia", "12.5", request_metadata={"app": "x"})])
    assert out == [("s-1", "mia", "debited", D("12.5"))]
    assert db_conn.execute(
        "SELECT user_id, success, credits_charged, prompt_tokens, total_tokens, provider, "
        "request_metadata FROM llm_usage_log WHERE request_id = 's-1'").fetchone() == (
        "mia", True, D("12.5"), 100, 150, "openai", {"app": "x"})
    assert db_conn.execute(
        "SELECT transaction_type, amount, request_id, credits_uncollected "
        "FROM credit_transactions WHERE idempotency_key = 's-1'").fetchone() == (
        "usage", D("-12.5"), "s-1", D("0"))
    assert count(db_conn, "SELECT count(*) FROM credit_holds") == 0
    assert db_conn.execute("SELECT monthly_usage FROM user_credits WHERE user_id = 'mia'"
                           ).fetchone() == (D("12.5"),)
    assert assert_chain(db_conn, "mia") == D("87.5")


def test_settle_failure_logs_without_debit_and_releases(db_conn: psycopg.Connection) -> None:
    add(db_conn, "ned", "100", "purchase", "pi_n", None)
    assert hold(db_conn, "ned", "f-1", "20") == "placed"
    out = settle(db_conn, [record("f-1", "ned", "12.5", success=False)])
    assert out == [("f-1", "ned", "failure_logged", D("0"))]
    assert db_conn.execute(
        "SELECT success, credits_charged, error_type, status_code FROM llm_usage_log "
        "WHERE request_id = 'f-1'").fetchone() == (False, D("0"), "APIError", 500)
    assert count(db_conn, "SELECT count(*) FROM credit_transactions "
                          "WHERE transaction_type = 'usage'") == 0
    assert count(db_conn, "SELECT count(*) FROM credit_holds") == 0
    assert assert_chain(db_conn, "ned") == D("100")


def test_settle_duplicates_and_upgrades(db_conn: psycopg.Connection) -> None:
    add(db_conn, "ola", "100", "purchase", "pi_o", None)
    assert settle(db_conn, [record("d-1", "ola", "10")]) == [("d-1", "ola", "debited", D("10"))]
    # Duplicate success: nothing.
    assert settle(db_conn, [record("d-1", "ola", "10")]) == [("d-1", "ola", "duplicate", D("0"))]
    # Failure after success: nothing, the row stays a success.
    assert settle(db_conn, [record("d-1", "ola", "10", success=False)]) == [
        ("d-1", "ola", "duplicate", D("0"))]
    assert db_conn.execute("SELECT success, credits_charged FROM llm_usage_log "
                           "WHERE request_id = 'd-1'").fetchone() == (True, D("10"))
    # Success after failure: the row is upgraded and debited once.
    assert settle(db_conn, [record("d-2", "ola", "3", success=False)]) == [
        ("d-2", "ola", "failure_logged", D("0"))]
    assert settle(db_conn, [record("d-2", "ola", "3", provider="anthropic")]) == [
        ("d-2", "ola", "debited", D("3"))]
    assert db_conn.execute(
        "SELECT success, credits_charged, error_type, error_message, provider, status_code "
        "FROM llm_usage_log WHERE request_id = 'd-2'").fetchone() == (
        True, D("3"), None, None, "anthropic", 200)
    assert settle(db_conn, [record("d-2", "ola", "3")]) == [("d-2", "ola", "duplicate", D("0"))]
    # Failure and success of one request in the same batch: the success wins, once.
    assert settle(db_conn, [record("d-3", "ola", "4", success=False), record("d-3", "ola", "4"),
                            record("d-3", "ola", "4")]) == [("d-3", "ola", "debited", D("4"))]
    assert count(db_conn, "SELECT count(*) FROM llm_usage_log") == 3
    assert db_conn.execute(
        "SELECT idempotency_key, count(*) FROM credit_transactions "
        "WHERE transaction_type = 'usage' GROUP BY 1 ORDER BY 1").fetchall() == [
        ("d-1", 1), ("d-2", 1), ("d-3", 1)]
    assert assert_chain(db_conn, "ola") == D("83")


def test_settle_agrees_with_debit_user_credits(db_conn: psycopg.Connection) -> None:
    """A request debited directly is a duplicate for settle_usage, and the other way round."""
    add(db_conn, "pam", "10", "purchase", "pi_p", None)
    debit(db_conn, "pam", "4", "usage", "x-1", None)
    out = settle(db_conn, [record("x-1", "pam", "4"), record("x-2", "pam", "3")])
    assert out == [("x-1", "pam", "duplicate", D("0")), ("x-2", "pam", "debited", D("3"))]
    assert debit(db_conn, "pam", "3", "usage", "x-2", None)[:2] == (True, D("3"))
    assert assert_chain(db_conn, "pam") == D("3")


def test_settle_mixed_users_in_one_batch(db_conn: psycopg.Connection) -> None:
    add(db_conn, "u-b", "10", "purchase", "pi_ub", None)
    add(db_conn, "u-a", "5", "purchase", "pi_ua", None)
    batch = [
        record("m-1", "u-b", "4"),
        record("m-2", "u-a", "3"),
        record("m-3", "u-new", "2"),            # no account yet: created, all uncollected
        record("m-4", "u-b", "7"),              # caps at what u-b has left (6)
        record("m-5", "u-a", "1", success=False),
        record("m-6", "u-a", "1.5"),
        record("m-7", "u-ghost", "9", success=False),  # failures create no account
    ]
    out = settle(db_conn, batch)
    assert out == [
        ("m-1", "u-b", "debited", D("4")),
        ("m-2", "u-a", "debited", D("3")),
        ("m-3", "u-new", "debited", D("0")),
        ("m-4", "u-b", "debited", D("6")),
        ("m-5", "u-a", "failure_logged", D("0")),
        ("m-6", "u-a", "debited", D("1.5")),
        ("m-7", "u-ghost", "failure_logged", D("0")),
    ]
    assert assert_chain(db_conn, "u-a") == D("0.5")
    assert assert_chain(db_conn, "u-b") == D("0")
    assert assert_chain(db_conn, "u-new") == D("0")
    assert count(db_conn, "SELECT count(*) FROM user_credits WHERE user_id = 'u-ghost'") == 0
    assert db_conn.execute(
        "SELECT request_id, amount, credits_uncollected FROM credit_transactions "
        "WHERE transaction_type = 'usage' ORDER BY request_id").fetchall() == [
        ("m-1", D("-4"), D("0")), ("m-2", D("-3"), D("0")), ("m-3", D("0"), D("2")),
        ("m-4", D("-6"), D("1")), ("m-6", D("-1.5"), D("0"))]
    assert dict(db_conn.execute("SELECT user_id, monthly_usage FROM user_credits").fetchall()) \
        == {"u-a": D("4.5"), "u-b": D("11"), "u-new": D("2")}
    assert count(db_conn, "SELECT count(*) FROM llm_usage_log") == 7


def test_settle_a_batch_of_500_for_one_user_chains_exactly(db_conn: psycopg.Connection) -> None:
    add(db_conn, "bulk", "1000", "purchase", "pi_bulk", None)
    costs = [D(i) / 100 + D("0.00000001") for i in range(1, 501)]
    for i in range(0, 500, 7):  # holds for some of them
        assert hold(db_conn, "bulk", f"b-{i:03d}", "0.01") == "placed"
    out = settle(db_conn, [record(f"b-{i:03d}", "bulk", str(c)) for i, c in enumerate(costs)])
    assert len(out) == 500
    assert [o[0] for o in out] == [f"b-{i:03d}" for i in range(500)]
    assert {o[2] for o in out} == {"debited"}
    total = sum(costs, D(0))
    assert total == D("1252.50000500")
    assert sum((o[3] for o in out), D(0)) == D("1000")
    assert assert_chain(db_conn, "bulk") == D("0")
    assert db_conn.execute(
        "SELECT count(*), sum(-amount), sum(credits_uncollected), min(balance_after) "
        "FROM credit_transactions WHERE transaction_type = 'usage'").fetchone() == (
        500, D("1000"), total - 1000, D("0"))
    # The debits follow the batch order: a prefix is fully paid, one is partial, the rest free.
    taken = [o[3] for o in out]
    running = D(0)
    for cost, got in zip(costs, taken, strict=True):
        assert got == min(cost, D(1000) - running)
        running += got
    assert count(db_conn, "SELECT count(*) FROM credit_holds") == 0
    assert db_conn.execute("SELECT monthly_usage FROM user_credits WHERE user_id = 'bulk'"
                           ).fetchone() == (total,)


def test_settle_refuses_a_non_array(db_conn: psycopg.Connection) -> None:
    for payload in ('{"request_id": "x"}', "null", '"text"'):
        with pytest.raises(psycopg.Error) as info:
            db_conn.execute("SELECT * FROM settle_usage(%s::jsonb)", (payload,))
        assert info.value.sqlstate == "CR006"
    assert count(db_conn, "SELECT count(*) FROM llm_usage_log") == 0


def test_settle_refuses_a_negative_cost_and_writes_nothing(db_conn: psycopg.Connection) -> None:
    add(db_conn, "neg", "10", "purchase", "pi_neg", None)
    hold(db_conn, "neg", "ok-1", "1")
    with pytest.raises(psycopg.Error) as info:
        settle(db_conn, [record("ok-1", "neg", "1"), record("bad-1", "neg", "-5")])
    assert info.value.sqlstate == "CR001"
    # The whole batch is refused: not even the good record was written.
    assert count(db_conn, "SELECT count(*) FROM llm_usage_log") == 0
    assert count(db_conn, "SELECT count(*) FROM credit_holds") == 1
    assert assert_chain(db_conn, "neg") == D("10")


def test_settle_refuses_a_nan_cost(db_conn: psycopg.Connection) -> None:
    add(db_conn, "nan", "10", "purchase", "pi_nan", None)
    try:
        settle(db_conn, [record("nan-1", "nan", "NaN")])
    except psycopg.Error as exc:
        assert (exc.sqlstate or "").startswith("CR") or exc.sqlstate == "23514"
    assert db_conn.execute("SELECT balance, monthly_usage FROM user_credits "
                           "WHERE user_id = 'nan'").fetchone() == (D("10"), D("0"))
    assert count(db_conn, "SELECT count(*) FROM llm_usage_log") == 0


def test_refresh_usage_summary_fills_the_daily_view(db_conn: psycopg.Connection) -> None:
    add(db_conn, "rex", "100", "purchase", "pi_r", None)
    settle(db_conn, [
        record("v-1", "rex", "1.5"),
        record("v-2", "rex", "2.5", prompt_tokens=10, completion_tokens=5, total_tokens=15),
        record("v-3", "rex", "9", success=False),
        record("v-4", "rex", "4", provider="anthropic", model="claude"),
    ])
    assert count(db_conn, "SELECT count(*) FROM usage_daily_summary") == 0
    db_conn.execute("SELECT refresh_usage_summary()")
    rows = db_conn.execute(
        "SELECT day = (now() AT TIME ZONE 'UTC')::date, user_id, model, provider, requests, "
        "successes, prompt_tokens, completion_tokens, total_tokens, credits_charged "
        "FROM usage_daily_summary ORDER BY model").fetchall()
    assert rows == [
        (True, "rex", "claude", "anthropic", 1, 1, 100, 50, 150, D("4")),
        (True, "rex", "gpt-4o-mini", "openai", 3, 2, 210, 105, 315, D("4.0")),
    ]
    settle(db_conn, [record("v-5", "rex", "1")])
    db_conn.execute("SELECT refresh_usage_summary()")  # concurrently, over existing rows
    assert db_conn.execute(
        "SELECT requests, credits_charged FROM usage_daily_summary WHERE model = 'gpt-4o-mini'"
    ).fetchone() == (4, D("5.0"))


# --- refund_purchase ------------------------------------------------------------------------


def test_refund_purchase_proportional_idempotent_partial_then_full(
    db_conn: psycopg.Connection,
) -> None:
    # Value Pack: 500 credits for $45.00.
    ok, _, purchase_id = add(db_conn, "sue", "500", "purchase", "pi_sue", "Value Pack")
    debit(db_conn, "sue", "50", "usage", "sue-1", None)

    def refund(cents: int) -> tuple[Any, ...]:
        target = refund_credits(D("500"), 4500, cents)
        row = db_conn.execute("SELECT * FROM refund_purchase(%s, %s, %s, %s, %s)",
                              ("pi_sue", target, "ch_sue", f"evt_{cents}",
                               D(cents) / 100)).fetchone()
        assert row is not None
        return tuple(row)

    ok, balance, tx1, refunded = refund(900)  # $9 of $45 -> 100 credits
    assert (ok, balance, refunded) == (True, D("350"), D("100"))
    assert db_conn.execute(
        "SELECT transaction_type, amount, related_transaction_id, charge_id, amount_usd, "
        "payment_intent_id FROM credit_transactions WHERE id = %s", (tx1,)).fetchone() == (
        "refund", D("-100"), purchase_id, "ch_sue", D("9.00"), "pi_sue")
    assert refund(900) == (True, D("350"), None, D("0"))    # replayed event
    ok, balance, tx2, refunded = refund(4500)               # then the full refund
    assert (ok, balance, refunded) == (True, D("-50"), D("400"))
    assert tx2 > tx1
    assert refund(900) == (True, D("-50"), None, D("0"))    # late, out of order
    assert refund(4500) == (True, D("-50"), None, D("0"))
    assert count(db_conn, "SELECT count(*) FROM credit_transactions "
                          "WHERE transaction_type = 'refund'") == 2
    assert assert_chain(db_conn, "sue") == D("-50")

    with pytest.raises(psycopg.Error) as info:
        db_conn.execute("SELECT * FROM refund_purchase('pi_sue', 501, NULL, NULL, NULL)")
    assert info.value.sqlstate == "CR001"
    with pytest.raises(psycopg.Error) as info:
        db_conn.execute("SELECT * FROM refund_purchase('pi_nope', 1, NULL, NULL, NULL)")
    assert info.value.sqlstate == "CR008"
    assert count(db_conn, "SELECT count(*) FROM credit_transactions") == 4


# --- the async Ledger ------------------------------------------------------------------------


async def test_ledger_grant_debit_account_and_history(ledger: Ledger, db_url: str) -> None:
    result = await ledger.add_credits("tom", "25.5", type="purchase", payment_id="pi_tom",
                                      amount_usd=D("2.55"))
    assert (result.success, result.new_balance) == (True, D("25.5"))
    assert (await ledger.add_credits("tom", "25.5", type="purchase", payment_id="pi_tom")
            ).transaction_id == result.transaction_id
    used = await ledger.debit("tom", "0.5", type="usage", request_id="t-1")
    assert (used.success, used.new_balance) == (True, D("25.0"))
    reservation = await ledger.reserve("tom", "t-2", D("4"), None, 600)
    assert reservation.status == "placed"
    account = await ledger.account("tom")
    assert (account.balance, account.held, account.available) == (D("25"), D("4"), D("21"))
    assert account.to_dict()["available"] == "21.00000000"
    history = await ledger.transactions("tom")
    assert [(h["transaction_type"], h["amount"]) for h in history] == [
        ("usage", D("-0.5")), ("purchase", D("25.5"))]
    assert history[1]["amount_usd"] == D("2.55")
    with pytest.raises(errors.AccountNotFound, match="no credit account for user nobody"):
        await ledger.account("nobody")
    with pytest.raises(errors.AccountNotFound):
        await ledger.debit("nobody", "1", type="usage", request_id="n-1")
    with psycopg.connect(db_url) as conn:
        assert assert_chain(conn, "tom") == D("25")


async def test_ledger_adjust_positive_and_negative(ledger: Ledger, db_url: str) -> None:
    up = await ledger.adjust("uma", "40", created_by="admin:test", description="grant")
    assert (up.success, up.new_balance) == (True, D("40"))
    down = await ledger.adjust("uma", "-15.25", created_by="admin:test", description="fix")
    assert (down.success, down.new_balance) == (True, D("24.75"))
    refused = await ledger.adjust("uma", "-24.75000001", created_by="admin:test")
    assert refused == type(refused)(False, D("24.75"), None)
    keyed = await ledger.adjust("uma", "-1", created_by="admin:test", idempotency_key="k-1")
    assert (await ledger.adjust("uma", "-1", created_by="admin:test", idempotency_key="k-1")
            ) == keyed
    with pytest.raises(errors.InvalidAmount):
        await ledger.adjust("uma", "-0", created_by="admin:test")
    with pytest.raises(errors.InvalidAmount):
        await ledger.adjust("uma", "--5", created_by="admin:test")
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            "SELECT transaction_type, amount, created_by, description FROM credit_transactions "
            "WHERE user_id = 'uma' ORDER BY id").fetchall()
        assert rows == [
            ("admin_adjustment", D("40"), "admin:test", "grant"),
            ("admin_adjustment", D("-15.25"), "admin:test", "fix"),
            ("admin_adjustment", D("-1"), "admin:test", None),
        ]
        assert assert_chain(conn, "uma") == D("23.75")


async def test_ledger_settle_and_refund(ledger: Ledger, db_url: str) -> None:
    await ledger.add_credits("val", "80", type="purchase", payment_id="pi_val")
    out = await ledger.settle([
        record("l-1", "val", D("1.25")),
        record("l-2", "val", D("2"), success=False),
    ])
    assert [(o["request_id"], o["outcome"], o["debited"]) for o in out] == [
        ("l-1", "debited", D("1.25")), ("l-2", "failure_logged", D("0"))]
    result, refunded = await ledger.refund_purchase(
        "pi_val", D("80"), charge_id="ch_val", stripe_event_id="evt_val", amount_usd=D("8"))
    assert (result.success, result.new_balance, refunded) == (True, D("-1.25"), D("80"))
    with pytest.raises(errors.NotFound, match="no purchase recorded for payment pi_other"):
        await ledger.refund_purchase("pi_other", D("1"), charge_id=None,
                                     stripe_event_id=None, amount_usd=None)
    with pytest.raises(errors.InvalidAmount):
        await ledger.refund_purchase("pi_val", D("81"), charge_id=None,
                                     stripe_event_id=None, amount_usd=None)
    with psycopg.connect(db_url) as conn:
        assert assert_chain(conn, "val") == D("-1.25")
