"""Invariant I8 against a real PostgreSQL: bad input gets a clear error naming what
was wrong (a litellm_credits.errors class via the Ledger, SQLSTATE CR00x from raw
SQL) and nothing is written. Hypothesis drives arbitrary user ids and amounts
through the SQL functions and the Ledger: each call either fails cleanly or makes
one correct, chained write, never a partial one."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from litellm_credits import errors
from litellm_credits.ledger import Ledger
from litellm_credits.store.db import Database
from litellm_credits.values import check_user_id, parse_amount

D = Decimal
HYPOTHESIS = settings(max_examples=60, deadline=None, database=None,
                      suppress_health_check=[HealthCheck.function_scoped_fixture])

SQL_INJECTION = "'; DROP TABLE user_credits; --"
BAD_AMOUNTS: list[tuple[Any, str]] = [
    ("-1", "must be positive"),
    ("-0.00000001", "must be positive"),
    ("0", "must be positive"),
    ("0.00000000", "must be positive"),
    ("NaN", "not a"),
    ("Infinity", "not a"),
    ("-Infinity", "not a"),
    ("1e12", "too large"),
    ("1000000000.00000001", "too large"),
    ("0.000000001", "more than 8 decimal places"),
    ("12.345678901", "more than 8 decimal places"),
    ("abc", "is not a number"),
    ("", "is not a number"),
    ("1,5", "is not a number"),
    ("0x10", "is not a number"),
    ("1 000", "is not a number"),
    ("'; DROP TABLE credit_transactions; --", "is not a number"),
    (1.5, "string or integer"),
    (True, "string or integer"),
]
BAD_USER_IDS: list[tuple[str, str]] = [
    ("", "user id is empty"),
    ("x" * 256, "256 characters long; the limit is 255"),
    ("é" * 256, "256 characters long"),
    ("tab\there", "control characters"),
    ("new\nline", "control characters"),
    ("bell\x07", "control characters"),
    ("del\x7f", "control characters"),
    ("nul\x00byte", "control characters"),
]


# --- helpers -------------------------------------------------------------------------------


def snapshot(conn: psycopg.Connection) -> tuple[Any, ...]:
    row = conn.execute(
        "SELECT (SELECT count(*) FROM user_credits), (SELECT count(*) FROM credit_transactions),"
        " (SELECT coalesce(sum(balance), 0) FROM user_credits),"
        " (SELECT count(*) FROM credit_holds), (SELECT count(*) FROM llm_usage_log),"
        " (SELECT max(updated_at) FROM user_credits)").fetchone()
    assert row is not None
    return tuple(row)


def assert_chain(conn: psycopg.Connection, user_id: str) -> Decimal:
    rows = conn.execute(
        "SELECT amount, balance_before, balance_after FROM credit_transactions "
        "WHERE user_id = %s ORDER BY id", (user_id,)).fetchall()
    running = D(0)
    for amount, before, after in rows:
        assert before == running and after == before + amount
        running = after
    row = conn.execute("SELECT balance FROM user_credits WHERE user_id = %s",
                       (user_id,)).fetchone()
    assert row is not None and row[0] == running == sum((r[0] for r in rows), D(0))
    return running


def sql_error(conn: psycopg.Connection, sql: str, params: tuple[Any, ...]) -> psycopg.Error:
    before = snapshot(conn)
    with pytest.raises(psycopg.Error) as info:
        conn.execute(sql, params)
    assert snapshot(conn) == before
    return info.value


class SyncLedger:
    """The async Ledger driven from sync (hypothesis) tests on a private event loop."""

    def __init__(self, url: str) -> None:
        self.loop = asyncio.new_event_loop()
        self.db = Database(url, min_size=1, max_size=2)
        self.loop.run_until_complete(self.db.open(wait=True))
        self.ledger = Ledger(self.db)

    def __call__(self, method: str, *args: Any, **kwargs: Any) -> Any:
        return self.loop.run_until_complete(getattr(self.ledger, method)(*args, **kwargs))

    def close(self) -> None:
        self.loop.run_until_complete(self.db.close())
        self.loop.close()


@pytest.fixture
def sync_ledger(db_url: str) -> Iterator[SyncLedger]:
    ledger = SyncLedger(db_url)
    try:
        yield ledger
    finally:
        ledger.close()


@pytest.fixture
async def ledger(db_url: str) -> AsyncIterator[Ledger]:
    db = Database(db_url, min_size=1, max_size=2)
    await db.open(wait=True)
    try:
        yield Ledger(db)
    finally:
        await db.close()


# --- amounts ---------------------------------------------------------------------------


async def test_bad_amounts_via_the_ledger(ledger: Ledger, db_conn: psycopg.Connection) -> None:
    await ledger.add_credits("amy", "10", type="purchase", payment_id="pi_amy")
    before = snapshot(db_conn)
    for amount, message in BAD_AMOUNTS:
        calls = [
            ledger.add_credits("amy", amount, type="bonus"),
            ledger.add_credits("new-user", amount, type="purchase", payment_id="pi_x"),
            ledger.debit("amy", amount, type="usage", request_id="r-1"),
            ledger.debit("amy", amount, type="admin_adjustment"),
        ]
        # adjust() reads a leading '-' as "take back", so only unsigned text is bad for it.
        if isinstance(amount, str) and not amount.startswith("-"):
            calls.append(ledger.adjust("amy", amount, created_by="t"))
        for call in calls:
            with pytest.raises(errors.InvalidAmount, match=message) as info:
                await call
            assert info.value.http_status == 400, amount
            assert info.value.code == "invalid_amount"
    assert snapshot(db_conn) == before


async def test_adjust_refuses_floats_like_every_other_entry_point(
    ledger: Ledger, db_conn: psycopg.Connection,
) -> None:
    before = snapshot(db_conn)
    with pytest.raises(errors.InvalidAmount, match="string or integer"):
        await ledger.adjust("amy", 1.5, created_by="t")
    assert snapshot(db_conn) == before


def test_bad_amounts_via_raw_sql(db_conn: psycopg.Connection) -> None:
    db_conn.execute("SELECT * FROM add_user_credits('amy', 10, 'purchase', 'pi_amy', NULL)")
    for amount in [a for a, _ in BAD_AMOUNTS if isinstance(a, str)]:
        try:
            Decimal(amount.strip())
            expected = "CR001"
        except InvalidOperation:
            expected = "22P02"  # PostgreSQL's own cast refuses it before our function runs
        for sql in (
            "SELECT * FROM add_user_credits('amy', %s::numeric, 'bonus', NULL, NULL)",
            "SELECT * FROM add_user_credits('someone-new', %s::numeric, 'bonus', NULL, NULL)",
            "SELECT * FROM debit_user_credits('amy', %s::numeric, 'usage', 'r-1', NULL)",
            "SELECT * FROM debit_user_credits('amy', %s::numeric, 'refund', 're-1', NULL)",
            "SELECT * FROM reserve_credits('amy', 'h-1', %s::numeric, NULL, 60)",
        ):
            if "reserve" in sql and amount in ("0", "0.00000000"):
                continue  # a zero estimate is a valid hold (see the next test)
            exc = sql_error(db_conn, sql, (amount,))
            assert exc.sqlstate == expected, (amount, sql, exc)


def test_zero_is_a_valid_hold_estimate_only(db_conn: psycopg.Connection) -> None:
    db_conn.execute("SELECT * FROM add_user_credits('zed', 1, 'bonus', NULL, NULL)")
    assert db_conn.execute(
        "SELECT status, hold_amount FROM reserve_credits('zed', 'z-1', 0, NULL, 60)"
    ).fetchone() == ("placed", D("0"))
    exc = sql_error(db_conn, "SELECT * FROM debit_user_credits('zed', 0, 'usage', 'z-2', NULL)",
                    ())
    assert exc.sqlstate == "CR001"


def test_amounts_at_the_limits_are_accepted(db_conn: psycopg.Connection) -> None:
    assert db_conn.execute(
        "SELECT success, new_balance FROM add_user_credits('lim', 1000000000, 'bonus', NULL, "
        "NULL)").fetchone() == (True, D("1000000000"))
    assert db_conn.execute(
        "SELECT success, new_balance FROM add_user_credits('lim', 0.00000001, 'bonus', NULL, "
        "NULL)").fetchone() == (True, D("1000000000.00000001"))
    # Trailing zeros beyond 8 places are not extra precision.
    assert db_conn.execute(
        "SELECT new_balance FROM debit_user_credits('lim', 0.000000010000, 'usage', 'l-1', "
        "NULL)").fetchone() == (D("1000000000"),)
    assert_chain(db_conn, "lim")


# --- transaction types and power levels --------------------------------------------------


async def test_unknown_transaction_types(ledger: Ledger, db_conn: psycopg.Connection) -> None:
    await ledger.add_credits("tia", "10", type="purchase", payment_id="pi_tia")
    before = snapshot(db_conn)
    with pytest.raises(errors.InvalidTransactionType, match="'gift' cannot add credits"):
        await ledger.add_credits("tia", "1", type="gift")
    with pytest.raises(errors.InvalidTransactionType, match="'usage' cannot add credits"):
        await ledger.add_credits("tia", "1", type="usage")
    with pytest.raises(errors.InvalidTransactionType, match="'purchase' cannot debit"):
        await ledger.debit("tia", "1", type="purchase")
    assert snapshot(db_conn) == before
    for sql, kind in (
        ("SELECT * FROM add_user_credits('tia', 1, %s, NULL, NULL)", "add"),
        ("SELECT * FROM debit_user_credits('tia', 1, %s, 'x-1', NULL)", "debit"),
    ):
        for bad in ("gift", "PURCHASE", "usage" if kind == "add" else "bonus", "", None,
                    SQL_INJECTION):
            exc = sql_error(db_conn, sql, (bad,))
            assert exc.sqlstate == "CR003", (kind, bad)
            assert "transaction type" in str(exc)


async def test_unknown_power_levels(ledger: Ledger, db_conn: psycopg.Connection) -> None:
    await ledger.add_credits("pia", "10", type="purchase", payment_id="pi_pia")
    before = snapshot(db_conn)
    for level in ("turbo", "", "Eco", SQL_INJECTION, None):
        with pytest.raises(errors.InvalidPowerLevel, match="unknown power level"):
            await ledger.set_power_level("pia", level, by="t")  # type: ignore[arg-type]
    for level in ("turbo", "Eco", SQL_INJECTION):
        with pytest.raises(errors.InvalidPowerLevel, match="use eco, balanced or precision"):
            await ledger.reserve("pia", "r-1", D("1"), level, 60)
    assert snapshot(db_conn) == before
    exc = sql_error(db_conn, "UPDATE user_credits SET power_level = 'turbo'", ())
    assert isinstance(exc, psycopg.errors.CheckViolation)


# --- user ids ------------------------------------------------------------------------------


async def test_bad_user_ids_via_the_ledger(ledger: Ledger, db_conn: psycopg.Connection) -> None:
    before = snapshot(db_conn)
    for user_id, message in BAD_USER_IDS:
        for call in (
            ledger.add_credits(user_id, "1", type="bonus"),
            ledger.debit(user_id, "1", type="usage", request_id="r"),
            ledger.adjust(user_id, "-1", created_by="t"),
            ledger.account(user_id),
            ledger.transactions(user_id),
            ledger.set_power_level(user_id, "eco", by="t"),
        ):
            with pytest.raises(errors.InvalidUserId, match=message):
                await call
        # reserve() leaves validation to SQL (one round trip): the same class comes back,
        # except for NUL, which psycopg refuses before sending (still a clean InvalidInput).
        expected = errors.InvalidInput if "\x00" in user_id else errors.InvalidUserId
        with pytest.raises(expected, match=None if "\x00" in user_id else message):
            await ledger.reserve(user_id, "r", D("1"), None, 60)
    assert snapshot(db_conn) == before


def test_bad_user_ids_via_raw_sql(db_conn: psycopg.Connection) -> None:
    for user_id, message in BAD_USER_IDS:
        if "\x00" in user_id:
            continue
        for sql in (
            "SELECT * FROM add_user_credits(%s, 1, 'bonus', NULL, NULL)",
            "SELECT * FROM debit_user_credits(%s, 1, 'usage', 'r', NULL)",
            "SELECT * FROM reserve_credits(%s, 'r', 1, NULL, 60)",
        ):
            exc = sql_error(db_conn, sql, (user_id,))
            assert exc.sqlstate == "CR002", (user_id, sql)
            assert message in str(exc)


def test_a_nul_byte_never_reaches_the_server(db_conn: psycopg.Connection) -> None:
    exc = sql_error(db_conn, "SELECT * FROM add_user_credits(%s, 1, 'bonus', NULL, NULL)",
                    ("nul\x00",))
    assert isinstance(exc, psycopg.DataError)


def test_the_longest_user_id_is_accepted(db_conn: psycopg.Connection) -> None:
    longest = "é" * 255
    assert db_conn.execute("SELECT success FROM add_user_credits(%s, 1, 'bonus', NULL, NULL)",
                           (longest,)).fetchone() == (True,)
    assert assert_chain(db_conn, longest) == 1


async def test_a_lone_surrogate_is_a_clean_refusal(ledger: Ledger) -> None:
    with pytest.raises(errors.InvalidInput):
        await ledger.add_credits("bad\ud800", "1", type="bonus")


async def test_sql_looking_strings_are_stored_verbatim(
    ledger: Ledger, db_conn: psycopg.Connection,
) -> None:
    nasty_description = "Robert'); DROP TABLE credit_transactions; -- \\ $$ %s %(x)s"
    result = await ledger.add_credits(SQL_INJECTION, "5", type="bonus",
                                      description=nasty_description, payment_id=SQL_INJECTION,
                                      metadata={"note": SQL_INJECTION})
    assert (result.success, result.new_balance) == (True, D("5"))
    raw = db_conn.execute(
        "SELECT * FROM add_user_credits(%s, 1, 'bonus', NULL, %s)",
        ("1 OR 1=1; --", "x' || pg_sleep(1) || '")).fetchone()
    assert raw is not None and raw[0] is True
    assert db_conn.execute(
        "SELECT user_id, description, idempotency_key, metadata FROM credit_transactions "
        "ORDER BY id").fetchall() == [
        (SQL_INJECTION, nasty_description, SQL_INJECTION, {"note": SQL_INJECTION}),
        ("1 OR 1=1; --", "x' || pg_sleep(1) || '", None, {}),
    ]
    account = await ledger.account(SQL_INJECTION)
    assert account.balance == D("5")
    history = await ledger.transactions(SQL_INJECTION)
    assert [h["description"] for h in history] == [nasty_description]
    # Every table is still there, and only the two accounts exist.
    assert db_conn.execute("SELECT count(*) FROM user_credits").fetchone() == (2,)
    assert db_conn.execute("SELECT to_regclass('credit_transactions') IS NOT NULL").fetchone() \
        == (True,)
    assert_chain(db_conn, SQL_INJECTION)


async def test_oversized_text_is_refused(ledger: Ledger, db_conn: psycopg.Connection) -> None:
    await ledger.add_credits("tex", "10", type="bonus")
    before = snapshot(db_conn)
    with pytest.raises(errors.InvalidInput, match="description is 1001 characters long"):
        await ledger.add_credits("tex", "1", type="bonus", description="d" * 1001)
    with pytest.raises(errors.InvalidInput, match="request id is 256 characters long"):
        await ledger.debit("tex", "1", type="usage", request_id="r" * 256)
    with pytest.raises(errors.InvalidInput, match="payment id contains a NUL byte"):
        await ledger.add_credits("tex", "1", type="purchase", payment_id="pi\x00")
    assert snapshot(db_conn) == before
    for sql, params in (
        ("SELECT * FROM add_user_credits('tex', 1, 'bonus', NULL, %s)", ("d" * 1001,)),
        ("SELECT * FROM add_user_credits('tex', 1, 'bonus', %s, NULL)", ("p" * 256,)),
        ("SELECT * FROM add_user_credits('tex', 1, 'bonus', '', NULL)", ()),
        ("SELECT * FROM debit_user_credits('tex', 1, 'usage', %s, NULL)", ("r" * 256,)),
    ):
        assert sql_error(db_conn, sql, params).sqlstate == "CR006"


# --- hypothesis ----------------------------------------------------------------------------

user_ids = st.one_of(
    st.text(max_size=300),
    st.text(alphabet=st.characters(max_codepoint=0x7f), min_size=250, max_size=260),
    st.sampled_from(["", "ok-user", SQL_INJECTION, "x" * 255, "x" * 256, "\t", "a\x1fb"]),
)
amounts = st.one_of(
    st.decimals(allow_nan=True, allow_infinity=True),
    st.decimals(min_value=D("-5"), max_value=D("1e10"), places=8),
    st.decimals(min_value=D("0"), max_value=D("100"), places=10),
    st.integers(min_value=-10, max_value=10**10).map(str),
    st.sampled_from(["0", "1e9", "1e-8", "1E+3", " 7 ", "NaN", "-Infinity", "abc", ""]),
)


def python_verdict(user_id: str, amount: Any) -> Decimal | None:
    try:
        check_user_id(user_id)
        return parse_amount(amount)
    except errors.CreditsError:
        return None


@HYPOTHESIS
@given(user_id=user_ids, amount=amounts)
def test_add_user_credits_with_arbitrary_input(
    db_conn: psycopg.Connection, user_id: str, amount: Any,
) -> None:
    before = snapshot(db_conn)
    text = str(amount)
    prior = db_conn.execute("SELECT balance FROM user_credits WHERE user_id = %s",
                            (user_id.replace("\x00", ""),)).fetchone()
    try:
        row = db_conn.execute(
            "SELECT success, new_balance FROM add_user_credits(%s, %s::numeric, 'bonus', NULL, "
            "NULL)", (user_id, text)).fetchone()
    except psycopg.Error as exc:
        assert snapshot(db_conn) == before
        assert exc.sqlstate in ("CR001", "CR002", "22P02") or (
            exc.sqlstate is None and "\x00" in user_id), exc
        # Python's checks may let through what SQL refuses (SQL's [[:cntrl:]] also covers
        # U+0080..U+009F); the Ledger then gets the same clean CR002/CR001 refusal.
        return
    expected = python_verdict(user_id, text)
    assert expected is not None, (user_id, text)  # the Ledger would have refused it
    assert row is not None and row[0] is True
    assert row[1] == (prior[0] if prior else 0) + expected
    after = snapshot(db_conn)
    assert after[1] == before[1] + 1
    assert after[0] == before[0] + (0 if prior else 1)
    assert assert_chain(db_conn, user_id) == row[1]


@HYPOTHESIS
@given(user_id=st.sampled_from(["deb", "deb", "other", "", "x" * 256, "ghost"]),
       amount=amounts,
       type_=st.sampled_from(["usage", "refund", "admin_adjustment", "bonus", "USAGE", ""]),
       request_id=st.one_of(st.none(), st.text(max_size=20).filter(lambda s: "\x00" not in s)))
def test_debit_user_credits_with_arbitrary_input(
    db_conn: psycopg.Connection, user_id: str, amount: Any, type_: str, request_id: str | None,
) -> None:
    db_conn.execute("SELECT * FROM add_user_credits('deb', 1000, 'purchase', 'pi_deb', NULL)")
    before = snapshot(db_conn)
    prior = db_conn.execute("SELECT balance FROM user_credits WHERE user_id = %s",
                            (user_id,)).fetchone()
    try:
        row = db_conn.execute(
            "SELECT success, new_balance, transaction_id FROM debit_user_credits(%s, "
            "%s::numeric, %s, %s, NULL)", (user_id, str(amount), type_, request_id)).fetchone()
    except psycopg.Error as exc:
        assert snapshot(db_conn) == before
        assert exc.sqlstate in ("CR001", "CR002", "CR003", "CR005", "CR006", "22P02"), exc
        return
    assert row is not None and prior is not None
    valid = parse_amount(str(amount))
    after = snapshot(db_conn)
    if not row[0]:  # an admin correction larger than the balance
        assert type_ == "admin_adjustment" and valid > prior[0]
        assert after == before
    elif after[1] == before[1]:  # an idempotent repeat of the same request id
        assert request_id is not None
        assert db_conn.execute(
            "SELECT count(*) FROM credit_transactions WHERE transaction_type = %s "
            "AND idempotency_key = %s", (type_, request_id)).fetchone() == (1,)
        assert row[1] == prior[0]
    else:
        assert after[1] == before[1] + 1
        taken = prior[0] - row[1]
        if type_ == "usage":
            assert taken == min(valid, max(prior[0], D(0)))
        else:
            assert taken == valid
    assert_chain(db_conn, user_id)


@HYPOTHESIS
@given(user_id=user_ids.filter(lambda s: "\x00" not in s), amount=amounts,
       description=st.one_of(st.none(), st.text(max_size=1100)))
def test_ledger_with_arbitrary_input(
    sync_ledger: SyncLedger, db_conn: psycopg.Connection, user_id: str, amount: Any,
    description: str | None,
) -> None:
    before = snapshot(db_conn)
    prior = db_conn.execute("SELECT balance FROM user_credits WHERE user_id = %s",
                            (user_id,)).fetchone()
    try:
        result = sync_ledger("add_credits", user_id, amount, type="bonus",
                             description=description)
    except errors.CreditsError as exc:
        assert isinstance(exc, errors.InvalidInput), exc
        assert exc.http_status == 400 and exc.message
        assert snapshot(db_conn) == before
        return
    value = parse_amount(amount)
    assert result.success and result.new_balance == (prior[0] if prior else 0) + value
    assert snapshot(db_conn)[1] == before[1] + 1
    assert assert_chain(db_conn, user_id) == result.new_balance
    stored = db_conn.execute("SELECT description FROM credit_transactions WHERE id = %s",
                             (result.transaction_id,)).fetchone()
    assert stored == (description,)


@HYPOTHESIS
@given(level=st.one_of(st.none(), st.text(max_size=12).filter(lambda s: "\x00" not in s),
                       st.sampled_from(["eco", "balanced", "precision"])),
       base=amounts, ttl=st.integers(min_value=-5, max_value=90000))
def test_reserve_credits_with_arbitrary_input(
    db_conn: psycopg.Connection, level: str | None, base: Any, ttl: int,
) -> None:
    db_conn.execute("SELECT * FROM add_user_credits('res', 100, 'purchase', 'pi_res', NULL)")
    before = snapshot(db_conn)
    rid = f"r-{before[3]}"
    try:
        row = db_conn.execute(
            "SELECT status, power_level, hold_amount FROM reserve_credits('res', %s, "
            "%s::numeric, %s, %s)", (rid, str(base), level, ttl)).fetchone()
    except psycopg.Error as exc:
        assert exc.sqlstate in ("CR001", "CR004", "CR006", "22P02"), exc
        assert snapshot(db_conn) == before
        return
    assert row is not None
    value = parse_amount(str(base), allow_zero=True)
    assert level in (None, "eco", "balanced", "precision")
    assert 1 <= ttl <= 86400
    expected_level = level or "balanced"
    multiplier = {"eco": D("0.7"), "balanced": D("1"), "precision": D("1.5")}[expected_level]
    assert row[1] == expected_level
    # PostgreSQL's round() goes half away from zero.
    assert row[2] == (value * multiplier).quantize(D("1e-8"), rounding=ROUND_HALF_UP)
    held = db_conn.execute("SELECT coalesce(sum(amount), 0) FROM credit_holds").fetchone()[0]
    assert held <= 100  # available never below zero
    after = snapshot(db_conn)
    assert after[3] == before[3] + (1 if row[0] == "placed" else 0)
    assert after[:3] == before[:3]
