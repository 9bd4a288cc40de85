"""The database harness itself: fresh databases per test and restartable clusters."""

from __future__ import annotations

import os
import socket

import psycopg
import pytest

from devtools.pg import ClusterFactory, PgCluster, PgError

_seen_databases: list[str] = []

_USER_TABLES = """
    SELECT count(*) FROM pg_tables
    WHERE schemaname NOT IN ('pg_catalog', 'information_schema')
"""


@pytest.mark.parametrize("attempt", [1, 2])
def test_each_test_gets_its_own_fresh_database(db_url: str, attempt: int) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:
        name = conn.execute("SELECT current_database()").fetchone()
        assert name is not None
        assert name[0] not in _seen_databases
        _seen_databases.append(name[0])
        # If the database were shared, the second attempt would find the table.
        assert conn.execute("SELECT to_regclass('harness_probe')").fetchone() == (None,)
        conn.execute("CREATE TABLE harness_probe (id int)")


def test_db_url_is_migrated_and_empty_db_url_is_not(db_url: str, empty_db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        migrated = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
        assert migrated is not None and migrated[0] > 0
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute(_USER_TABLES).fetchone() == (0,)


def test_database_is_dropped_after_the_test_even_with_open_connections(db_url: str) -> None:
    # The connection is deliberately left open; the fixture must still drop the
    # database. The check happens in the next test via the session-wide list.
    conn = psycopg.connect(db_url)
    conn.execute("SELECT 1")
    _seen_databases.append(db_url.rsplit("/", 1)[1])


def test_previous_databases_are_gone(pg_cluster: PgCluster) -> None:
    if not _seen_databases:
        pytest.skip("only meaningful after the earlier tests of this module")
    existing = set(pg_cluster.list_databases())
    assert not existing & set(_seen_databases)


def test_session_cluster_start_is_idempotent(pg_cluster: PgCluster) -> None:
    if os.environ.get("CREDITS_TEST_PG_PORT"):
        pytest.skip("attached to an external server")
    assert pg_cluster.is_running()
    assert pg_cluster.init() is False
    pg_cluster.start()  # already running: no-op, must not raise
    assert pg_cluster.is_running()


@pytest.mark.slow
def test_factory_cluster_survives_immediate_stop(pg_cluster_factory: ClusterFactory) -> None:
    cluster = pg_cluster_factory(dbname="credits", migrate=True)
    url = cluster.url("credits")
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE durable (v text)")
        conn.execute("INSERT INTO durable VALUES ('committed')")
    idle = psycopg.connect(url)  # a client that will see the server vanish

    cluster.stop("immediate")
    assert not cluster.is_running()
    with pytest.raises(psycopg.OperationalError):
        idle.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(url, connect_timeout=2)

    cluster.start()  # crash recovery replays the WAL
    with psycopg.connect(url) as conn:
        assert conn.execute("SELECT v FROM durable").fetchall() == [("committed",)]
        applied = conn.execute("SELECT count(*) FROM schema_migrations").fetchone()
        assert applied is not None and applied[0] > 0

    cluster.restart()
    assert cluster.is_running()
    cluster.stop()
    cluster.stop()  # stopping a stopped cluster is a no-op
    assert not cluster.is_running()


def test_start_on_busy_port_fails_clearly(pg_cluster_factory: ClusterFactory) -> None:
    cluster = pg_cluster_factory(start=False)
    with socket.socket() as blocker:
        # Like postgres itself: a TIME_WAIT left by an earlier cluster must not block us.
        blocker.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        blocker.bind(("127.0.0.1", cluster.port))
        blocker.listen()
        with pytest.raises(PgError, match=f"port 127.0.0.1:{cluster.port} is already in use"):
            cluster.start(timeout=10)
    assert not cluster.is_running()
