"""Shared pytest fixtures: a throwaway PostgreSQL server and a fresh database per test.

Database fixtures
-----------------
``pg_cluster`` (session)
    The :class:`devtools.pg.PgCluster` the suite talks to: ``.run/pg-test`` on
    port 55432 (another free port in 55400-55499 if something else holds
    55432), started on demand and stopped at the end of the session. If
    ``CREDITS_TEST_PG_PORT`` is set, the suite attaches to the server already
    listening on 127.0.0.1 at that port (user ``postgres``, trust auth) and never
    starts or stops it. Do not stop this cluster from a test; use
    ``pg_cluster_factory`` for that.
``db_url`` (function)
    URL of a brand-new database with every migration applied. Migrations run
    once per session into a template database; each test gets a cheap clone.
``empty_db_url`` (function)
    URL of a brand-new, empty database (for migration tests).
``db_conn`` (function)
    An autocommit psycopg connection to ``db_url``'s database.
``pg_cluster_factory`` (function)
    ``pg_cluster_factory(start=True, dbname=None, migrate=False) -> PgCluster``:
    a whole extra cluster on a free port in 55400-55499, for fault tests that
    stop (``stop("immediate")``) and restart the server. Destroyed after the test.

Databases are dropped after each test even if the test leaked connections.
Several pytest sessions may share ``.run/pg-test`` at once (see
``PgCluster.shared``); database names carry the session's pid so they never clash.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import random
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg.rows import TupleRow
from pytest_postgresql import factories
from pytest_postgresql.executors import NoopExecutor
from pytest_postgresql.janitor import DatabaseJanitor

REPO_ROOT = Path(__file__).resolve().parent.parent
# `python -m pytest` puts the repo root on sys.path, a bare `pytest` does not;
# devtools/ is not an installed package, so make it importable either way.
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from devtools.pg import DB_USER, HOST, ClusterFactory, PgCluster, port_is_free  # noqa: E402
from litellm_credits.store.db import Database  # noqa: E402

RUN_DIR = REPO_ROOT / ".run"
DEFAULT_TEST_PORT = 55432
DEV_PORT = 55433
SPARE_PORTS = range(55400, 55500)
_ATTACH_PORT = os.environ.get("CREDITS_TEST_PG_PORT")


def _choose_test_port() -> int:
    """The port of the session cluster; decided at import because the
    pytest-postgresql factory below needs it then."""
    if _ATTACH_PORT:
        return int(_ATTACH_PORT)
    ours = PgCluster(RUN_DIR, DEFAULT_TEST_PORT, "test")
    if ours.is_running():  # another session of this checkout is using it
        return ours.running_port() or DEFAULT_TEST_PORT
    if port_is_free(DEFAULT_TEST_PORT):
        return DEFAULT_TEST_PORT
    # Something else (another checkout's test cluster?) holds the usual port.
    for port in SPARE_PORTS:
        if port not in (DEFAULT_TEST_PORT, DEV_PORT) and port_is_free(port):
            return port
    raise RuntimeError("no free TCP port in 55400-55499 for the test PostgreSQL cluster")


TEST_PORT = _choose_test_port()

# Every database this suite creates starts with DB_PREFIX; the pid keeps
# concurrent sessions on a shared server apart.
DB_PREFIX = "credits_t"
SESSION_DB = f"{DB_PREFIX}{os.getpid()}"

# Ports handed to pg_cluster_factory; the fixed ones belong to the test and dev clusters.
FACTORY_PORTS = [p for p in SPARE_PORTS if p not in (DEFAULT_TEST_PORT, TEST_PORT, DEV_PORT)]


def _migrate_template(host: str, port: int | str, user: str, dbname: str, **_: object) -> None:
    """pytest-postgresql loader: apply the package's migrations to the template db."""
    # Imported lazily so that a broken migrations module fails the database
    # tests with a clear error instead of breaking collection of every test.
    from litellm_credits.store.migrate import migrate

    migrate(f"postgresql://{user}@{host}:{port}/{dbname}")


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgCluster]:
    if _ATTACH_PORT:
        cluster = PgCluster(RUN_DIR, TEST_PORT, "test")
        cluster.wait_ready(timeout=30)
        yield cluster
        return
    cluster = PgCluster(RUN_DIR, TEST_PORT, "test")
    with cluster.shared() as alone:
        if alone:
            # Nobody else uses the cluster, so anything of ours in it was left
            # by a session that died before its teardown.
            for name in cluster.list_databases(DB_PREFIX):
                cluster.drop_database(name)
        yield cluster


# pytest-postgresql's noproc fixture creates SESSION_DB_tmpl as a template and
# runs the loader in it once. It knows nothing about pg_cluster, so it is only
# ever requested through `credits_pg`, which starts the server first.
_credits_pg_noproc = factories.postgresql_noproc(
    host=HOST,
    port=TEST_PORT,
    user=DB_USER,
    dbname=SESSION_DB,
    load=[_migrate_template],
)


@pytest.fixture(scope="session")
def credits_pg(pg_cluster: PgCluster, request: pytest.FixtureRequest) -> NoopExecutor:
    """Connection details of the test server; ``.template_dbname`` is migrated."""
    executor: NoopExecutor = request.getfixturevalue("_credits_pg_noproc")
    return executor


def _fresh_database(executor: NoopExecutor, template: str) -> Iterator[str]:
    name = f"{SESSION_DB}_{uuid.uuid4().hex[:10]}"
    janitor = DatabaseJanitor(
        user=executor.user,
        host=executor.host,
        port=executor.port,
        dbname=name,
        template_dbname=template,
        maintenance_dbname=executor.maintenance_dbname,
        password=executor.password,
    )
    with janitor:  # drop() terminates leftover connections first
        yield f"postgresql://{executor.user}@{executor.host}:{executor.port}/{name}"


@pytest.fixture
def db_url(credits_pg: NoopExecutor) -> Iterator[str]:
    yield from _fresh_database(credits_pg, credits_pg.template_dbname)


@pytest.fixture
def empty_db_url(credits_pg: NoopExecutor) -> Iterator[str]:
    # template0 is guaranteed pristine; template1 may have been altered by hand.
    yield from _fresh_database(credits_pg, "template0")


@pytest.fixture
def db_conn(db_url: str) -> Iterator[psycopg.Connection[TupleRow]]:
    with psycopg.connect(db_url, autocommit=True) as conn:
        yield conn


@pytest.fixture
async def database(db_url: str) -> AsyncIterator[Database]:
    """The package's own async pool on a fresh database, opened in the test's loop."""
    pool = Database(db_url, min_size=1, max_size=4)
    await pool.open(wait=True)
    try:
        yield pool
    finally:
        await pool.close()


_factory_serial = itertools.count()


def _reap_orphaned_factory_clusters() -> None:
    """Destroy factory clusters whose pytest process died before cleaning up."""
    for home in RUN_DIR.glob("pg-f*-*"):
        pid_text = home.name.removeprefix("pg-f").split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        try:
            os.kill(int(pid_text), 0)
        except ProcessLookupError:
            PgCluster.at(home, 0).destroy()
        except PermissionError:
            pass


@pytest.fixture
def pg_cluster_factory() -> Iterator[ClusterFactory]:
    _reap_orphaned_factory_clusters()
    created: list[PgCluster] = []

    def make(*, start: bool = True, dbname: str | None = None, migrate: bool = False) -> PgCluster:
        ports = random.sample(FACTORY_PORTS, len(FACTORY_PORTS))
        free = [p for p in ports if port_is_free(p)]
        if not free:
            raise RuntimeError("no free port in 55400-55499 for an extra test cluster")
        # Another process can grab a port between the check and the start;
        # a second and third candidate make that race harmless.
        last_error: Exception | None = None
        for port in free[:3]:
            cluster = PgCluster(RUN_DIR, port, f"f{os.getpid()}-{next(_factory_serial)}")
            created.append(cluster)
            if not (start or dbname):
                return cluster
            try:
                cluster.start()
            except Exception as exc:
                last_error = exc
                cluster.destroy()
                continue
            if dbname:
                url = cluster.create_database(dbname)
                if migrate:
                    from litellm_credits.store.migrate import migrate as run_migrations

                    run_migrations(url)
            return cluster
        raise RuntimeError(f"could not start an extra test cluster: {last_error}")

    yield make
    for cluster in reversed(created):
        with contextlib.suppress(Exception):
            cluster.destroy()
