"""Holds for requests in flight: reserve_credits, release_hold, sweep_expired_holds,
against a real PostgreSQL, through raw SQL and through the async Ledger."""

from __future__ import annotations

import base64
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import psycopg
import pytest

from litellm_credits import errors
from litellm_credits.ledger import Ledger
from litellm_credits.store.db import Database

D = Decimal
COLUMNS = ("status", "power_level", "cost_multiplier", "hold_amount", "balance", "held",
           "tier", "monthly_quota", "quota_used", "byok_keys")


def grant(conn: psycopg.Connection, user: str, amount: str) -> None:
    conn.execute("SELECT * FROM add_user_credits(%s, %s, 'purchase', NULL, NULL)",
                 (user, amount))


def reserve(conn: psycopg.Connection, user: str, request_id: str, base: Any,
            level: str | None = None, ttl: int = 600) -> dict[str, Any]:
    row = conn.execute("SELECT * FROM reserve_credits(%s, %s, %s, %s, %s)",
                       (user, request_id, base, level, ttl)).fetchone()
    assert row is not None
    return dict(zip(COLUMNS, row, strict=True))


def holds(conn: psycopg.Connection) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(
        "SELECT request_id, user_id, amount FROM credit_holds ORDER BY request_id").fetchall()]


def sqlstate_of(conn: psycopg.Connection, *args: Any) -> str | None:
    with pytest.raises(psycopg.Error) as info:
        reserve(conn, *args)
    return info.value.sqlstate


@pytest.fixture
async def ledger(db_url: str) -> AsyncIterator[Ledger]:
    db = Database(db_url, min_size=1, max_size=2)
    await db.open(wait=True)
    try:
        yield Ledger(db)
    finally:
        await db.close()


def test_placed_then_exists_is_idempotent(db_conn: psycopg.Connection) -> None:
    grant(db_conn, "ann", "100")
    first = reserve(db_conn, "ann", "r-1", "10")
    assert first == {
        "status": "placed", "power_level": "balanced", "cost_multiplier": D("1.000"),
        "hold_amount": D("10.000"), "balance": D("100"), "held": D("10.000"),
        "tier": "free", "monthly_quota": None, "quota_used": D("0"), "byok_keys": [],
    }
    expires = db_conn.execute(
        "SELECT expires_at - created_at FROM credit_holds WHERE request_id = 'r-1'").fetchone()
    assert expires is not None and expires[0].total_seconds() == 600
    # The same request id again (even with another estimate) returns the first hold.
    again = reserve(db_conn, "ann", "r-1", "50")
    assert (again["status"], again["hold_amount"], again["held"]) == ("exists", D("10"), D("10"))
    assert holds(db_conn) == [("r-1", "ann", D("10"))]
    # Holds never touch the balance or the ledger.
    assert db_conn.execute("SELECT balance FROM user_credits").fetchone() == (D("100"),)
    assert db_conn.execute("SELECT count(*) FROM credit_transactions").fetchone() == (1,)


def test_available_is_balance_minus_active_holds(db_conn: psycopg.Connection) -> None:
    grant(db_conn, "ben", "100")
    assert reserve(db_conn, "ben", "h-1", "60")["status"] == "placed"
    assert reserve(db_conn, "ben", "h-2", "30")["status"] == "placed"
    refused = reserve(db_conn, "ben", "h-3", "10.00000001")
    assert (refused["status"], refused["hold_amount"], refused["held"]) == (
        "insufficient", D("10.00000001"), D("90"))
    exact = reserve(db_conn, "ben", "h-4", "10")  # exactly what is left
    assert (exact["status"], exact["held"]) == ("placed", D("100"))
    for rid, base in (("h-5", "0.00000001"), ("h-6", "0")):
        assert reserve(db_conn, "ben", rid, base)["status"] == "insufficient"
    assert [h[0] for h in holds(db_conn)] == ["h-1", "h-2", "h-4"]
    # Releasing one frees exactly its amount.
    assert db_conn.execute("SELECT release_hold('h-2')").fetchone() == (True,)
    assert db_conn.execute("SELECT release_hold('h-2')").fetchone() == (False,)
    assert reserve(db_conn, "ben", "h-7", "30.00000001")["status"] == "insufficient"
    assert reserve(db_conn, "ben", "h-8", "30")["status"] == "placed"


def test_holds_of_other_users_do_not_count(db_conn: psycopg.Connection) -> None:
    grant(db_conn, "cat", "10")
    grant(db_conn, "dan", "10")
    assert reserve(db_conn, "cat", "c-1", "10")["status"] == "placed"
    assert reserve(db_conn, "dan", "d-1", "10")["status"] == "placed"


def test_quota_reached_refuses(db_conn: psycopg.Connection) -> None:
    grant(db_conn, "eve", "100")
    db_conn.execute("UPDATE user_credits SET monthly_quota = 50, monthly_usage = 49.99 "
                    "WHERE user_id = 'eve'")
    ok = reserve(db_conn, "eve", "q-1", "1")
    assert (ok["status"], ok["monthly_quota"], ok["quota_used"]) == ("placed", D("50"),
                                                                     D("49.99"))
    db_conn.execute("UPDATE user_credits SET monthly_usage = 50 WHERE user_id = 'eve'")
    refused = reserve(db_conn, "eve", "q-2", "1")
    assert (refused["status"], refused["quota_used"], refused["byok_keys"]) == (
        "quota", D("50"), None)
    # Last month's usage does not count against this month's quota.
    db_conn.execute("UPDATE user_credits SET quota_period_start = "
                    "(date_trunc('month', now() AT TIME ZONE 'UTC') - interval '1 month')::date "
                    "WHERE user_id = 'eve'")
    fresh = reserve(db_conn, "eve", "q-3", "1")
    assert (fresh["status"], fresh["quota_used"]) == ("placed", D("0"))
    # A zero quota refuses everything.
    db_conn.execute("UPDATE user_credits SET monthly_quota = 0, "
                    "quota_period_start = date_trunc('month', now() AT TIME ZONE 'UTC')::date "
                    "WHERE user_id = 'eve'")
    assert reserve(db_conn, "eve", "q-4", "1")["status"] == "quota"
    assert [h[0] for h in holds(db_conn)] == ["q-1", "q-3"]


def test_level_override_and_multipliers(db_conn: psycopg.Connection) -> None:
    grant(db_conn, "fay", "100")
    precise = reserve(db_conn, "fay", "l-1", "10", "precision")
    assert (precise["status"], precise["power_level"], precise["cost_multiplier"],
            precise["hold_amount"]) == ("placed", "precision", D("1.5"), D("15"))
    eco = reserve(db_conn, "fay", "l-2", "10", "eco")
    assert (eco["power_level"], eco["hold_amount"]) == ("eco", D("7"))
    # The account's own level applies when none is asked for.
    db_conn.execute("UPDATE user_credits SET power_level = 'precision' WHERE user_id = 'fay'")
    own = reserve(db_conn, "fay", "l-3", "0.33333333")
    assert (own["power_level"], own["hold_amount"]) == ("precision", D("0.50000000"))
    assert holds(db_conn) == [("l-1", "fay", D("15")), ("l-2", "fay", D("7")),
                              ("l-3", "fay", D("0.50000000"))]


def test_level_override_refused_when_not_allowed(db_conn: psycopg.Connection) -> None:
    grant(db_conn, "gus", "100")
    db_conn.execute("UPDATE user_credits SET level_override_allowed = false, "
                    "power_level = 'eco' WHERE user_id = 'gus'")
    assert sqlstate_of(db_conn, "gus", "o-1", "10", "precision") == "CR007"
    # Asking for the level it already runs at is fine.
    same = reserve(db_conn, "gus", "o-2", "10", "eco")
    assert (same["status"], same["hold_amount"]) == ("placed", D("7"))
    assert holds(db_conn) == [("o-2", "gus", D("7"))]


def test_unknown_level_is_refused(db_conn: psycopg.Connection) -> None:
    grant(db_conn, "hal", "100")
    for level in ("turbo", "", "ECO", "balanced "):
        assert sqlstate_of(db_conn, "hal", "u-1", "10", level) == "CR004"
    assert holds(db_conn) == []


def test_bad_arguments_are_refused(db_conn: psycopg.Connection) -> None:
    grant(db_conn, "ida", "100")
    assert sqlstate_of(db_conn, "nobody", "b-0", "1") == "CR005"
    assert sqlstate_of(db_conn, "ida", "b-1", "1", None, 0) == "CR006"
    assert sqlstate_of(db_conn, "ida", "b-2", "1", None, 86401) == "CR006"
    assert sqlstate_of(db_conn, "ida", "", "1") == "CR006"
    assert sqlstate_of(db_conn, "ida", "x" * 256, "1") == "CR006"
    assert sqlstate_of(db_conn, "ida", "b-3", "-1") == "CR001"
    assert sqlstate_of(db_conn, "ida", "b-4", "NaN") == "CR001"
    assert sqlstate_of(db_conn, "", "b-5", "1") == "CR002"
    assert holds(db_conn) == []


def test_a_request_id_held_for_another_user_is_refused(db_conn: psycopg.Connection) -> None:
    grant(db_conn, "jon", "100")
    grant(db_conn, "kay", "100")
    assert reserve(db_conn, "jon", "shared", "5")["status"] == "placed"
    with pytest.raises(psycopg.Error, match="already held for another account") as info:
        reserve(db_conn, "kay", "shared", "5")
    assert info.value.sqlstate == "CR006"
    assert holds(db_conn) == [("shared", "jon", D("5"))]


def test_expired_holds_do_not_count_and_are_swept(db_conn: psycopg.Connection) -> None:
    grant(db_conn, "liv", "100")
    assert reserve(db_conn, "liv", "e-1", "80")["status"] == "placed"
    assert reserve(db_conn, "liv", "e-2", "30")["status"] == "insufficient"
    db_conn.execute("UPDATE credit_holds SET expires_at = now() - interval '1 second' "
                    "WHERE request_id = 'e-1'")
    placed = reserve(db_conn, "liv", "e-2", "30")
    assert (placed["status"], placed["held"]) == ("placed", D("30"))
    assert reserve(db_conn, "liv", "e-3", "70")["status"] == "placed"
    assert reserve(db_conn, "liv", "e-4", "0.00000001")["status"] == "insufficient"
    assert db_conn.execute("SELECT sweep_expired_holds()").fetchone() == (1,)
    assert db_conn.execute("SELECT sweep_expired_holds()").fetchone() == (0,)
    assert holds(db_conn) == [("e-2", "liv", D("30")), ("e-3", "liv", D("70"))]


def test_re_reserving_after_expiry_renews_the_hold(db_conn: psycopg.Connection) -> None:
    grant(db_conn, "max", "100")
    reserve(db_conn, "max", "x-1", "60")
    db_conn.execute("UPDATE credit_holds SET expires_at = now() - interval '1 second'")
    again = reserve(db_conn, "max", "x-1", "60")
    assert again["status"] in ("placed", "exists")
    # Whatever the status, the hold must count again: 60 + 60 > 100.
    assert reserve(db_conn, "max", "x-2", "60")["status"] == "insufficient"


def test_byok_keys_come_back_with_the_hold(db_conn: psycopg.Connection) -> None:
    grant(db_conn, "ned", "10")
    db_conn.execute(
        "INSERT INTO user_provider_keys (user_id, provider, key_name, encrypted_key, "
        "encryption_key_id, key_hint, is_default) VALUES "
        "('ned', 'openai', 'main', '\\x01020304'::bytea, 'k1', '…abcd', true), "
        "('ned', 'anthropic', 'old', '\\x05'::bytea, 'k1', '…wxyz', false)")
    db_conn.execute("UPDATE user_provider_keys SET is_active = false WHERE key_name = 'old'")
    keys = reserve(db_conn, "ned", "k-1", "1")["byok_keys"]
    assert len(keys) == 1
    assert {k: keys[0][k] for k in ("provider", "key_name", "is_default", "fallback", "key_id")} \
        == {"provider": "openai", "key_name": "main", "is_default": True, "fallback": False,
            "key_id": "k1"}
    assert base64.b64decode(keys[0]["blob"]) == b"\x01\x02\x03\x04"
    assert "…abcd" not in str(keys)  # the hint is for people, not the hot path


async def test_ledger_reserve_release_and_errors(ledger: Ledger, db_url: str) -> None:
    await ledger.add_credits("oli", "20", type="purchase", payment_id="pi_oli")
    r = await ledger.reserve("oli", "a-1", D("8"), "precision", 600)
    assert (r.status, r.ok, r.power_level, r.cost_multiplier, r.hold_amount) == (
        "placed", True, "precision", D("1.5"), D("12"))
    assert r.available_after == D("8")
    r2 = await ledger.reserve("oli", "a-2", D("8"), "precision", 600)
    assert (r2.status, r2.ok) == ("insufficient", False)
    assert (await ledger.account("oli")).held == D("12")
    assert await ledger.release("a-1") is True
    assert await ledger.release("a-1") is False
    assert (await ledger.account("oli")).held == D("0")

    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE user_credits SET level_override_allowed = false")
    with pytest.raises(errors.LevelNotAllowed, match="runs at balanced") as info:
        await ledger.reserve("oli", "a-3", D("1"), "eco", 600)
    assert (info.value.http_status, info.value.code) == (403, "power_level_not_allowed")
    with pytest.raises(errors.InvalidPowerLevel, match="unknown power level 'warp'"):
        await ledger.reserve("oli", "a-4", D("1"), "warp", 600)
    with pytest.raises(errors.AccountNotFound):
        await ledger.reserve("nobody", "a-5", D("1"), None, 600)
    with pytest.raises(errors.InvalidInput):
        await ledger.reserve("oli", "a\x00", D("1"), None, 600)

    placed = await ledger.reserve("oli", "a-6", D("5"), None, 600)
    assert placed.status == "placed"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute("UPDATE credit_holds SET expires_at = now() - interval '1 minute'")
    assert (await ledger.account("oli")).held == D("0")
    assert await ledger.sweep_expired_holds() == 1
    assert await ledger.sweep_expired_holds() == 0
    with psycopg.connect(db_url) as conn:
        assert conn.execute("SELECT count(*) FROM credit_holds").fetchone() == (0,)
        assert conn.execute("SELECT balance FROM user_credits").fetchone() == (D("20"),)
