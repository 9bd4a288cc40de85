"""The database layer keeps no state in a server session (so a transaction-mode pooler
cannot break it), its statement timeout still holds, and closing it is bounded.

On real PostgreSQL; ``tests/e2e/test_pgbouncer.py`` runs the same code through PgBouncer.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from decimal import Decimal

import psycopg
import pytest

from litellm_credits import errors
from litellm_credits.store.db import Database


@pytest.fixture
async def tight(db_url: str) -> AsyncIterator[Database]:
    """One connection, so every call below lands on the same server session."""
    database = Database(db_url, min_size=1, max_size=1, timeout=5.0, statement_timeout_ms=300)
    await database.open(wait=True)
    yield database
    await database.close()


def _reserve(request_id: str) -> dict[str, object]:
    return {"user_id": "ann", "request_id": request_id, "base_amount": Decimal("1"),
            "level": None, "ttl": 60}


async def test_a_single_statement_is_bounded_by_the_statement_timeout(
        tight: Database, db_conn: psycopg.Connection) -> None:
    db_conn.execute("SELECT * FROM add_user_credits('ann', 10, 'admin_adjustment', NULL, 't')")
    with psycopg.connect(tight.conninfo) as locker:  # holds ann's row lock until closed
        locker.execute("SELECT 1 FROM user_credits WHERE user_id = 'ann' FOR UPDATE")
        started = time.monotonic()
        with pytest.raises(errors.DatabaseUnavailable, match="timed out on a statement"):
            await tight.fetchone("reserve", _reserve("r-1"))
        waited = time.monotonic() - started
    # The server's 300 ms, not the client's deadline (5 + 0.3 + 1 s).
    assert 0.25 <= waited < 3.0, waited
    row = await tight.fetchone("reserve", _reserve("r-2"))
    assert row is not None and row["status"] == "placed"


async def test_the_timeout_lasts_one_transaction_and_nothing_is_prepared(
        tight: Database) -> None:
    async with tight.transaction() as conn:
        shown = await (await conn.execute("SHOW statement_timeout")).fetchone()
        assert shown == {"statement_timeout": "300ms"}
    for _ in range(12):  # past psycopg's default prepare threshold (5)
        await tight.fetchone("account", {"user_id": "nobody"})
    async with tight.connection() as conn:  # the same (only) server session
        shown = await (await conn.execute("SHOW statement_timeout")).fetchone()
        prepared = await (await conn.execute(
            "SELECT count(*) AS n FROM pg_prepared_statements")).fetchone()
    assert shown == {"statement_timeout": "0"}  # nothing left for the next client
    assert prepared == {"n": 0}


async def test_errors_keep_their_meaning_and_leave_the_connection_clean(
        tight: Database) -> None:
    with pytest.raises(errors.AccountNotFound):
        await tight.fetchone("reserve", _reserve("r-3"))
    async with tight.connection() as conn:
        assert conn.info.transaction_status == psycopg.pq.TransactionStatus.IDLE


async def test_close_is_bounded_while_a_connection_is_in_use(db_url: str) -> None:
    database = Database(db_url, min_size=1, max_size=2, timeout=2.0)
    await database.open(wait=True)
    entered = asyncio.Event()

    async def holder() -> None:
        async with database.connection():
            entered.set()
            await asyncio.sleep(3600)

    task = asyncio.create_task(holder())
    await entered.wait()
    started = time.monotonic()
    await database.close(timeout=1.0)
    assert time.monotonic() - started < 3.0
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
