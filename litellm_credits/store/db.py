"""The database layer: the connection pool, named queries, and error translation.

SQL lives in ``store/queries/*.sql`` files as blocks headed ``-- name: NAME`` and is
referred to by name; nothing here assembles SQL from strings. psycopg and pool
errors become :mod:`litellm_credits.errors` classes in :func:`translate` and
nowhere else.

The pool is created closed (``open=False``) and opened by :meth:`Database.open`
inside the running event loop, as psycopg_pool asks of async pools.

Behind a pooler (PgBouncer in transaction mode) consecutive transactions of one
client connection may run on different server connections, so nothing here
relies on session state: no startup ``options`` (a default PgBouncer refuses
the connection), no server-side prepared statements (``prepare_threshold=None``),
and the statement timeout is ``SET LOCAL`` inside every transaction this module
opens. A single statement goes out as ``SET LOCAL statement_timeout = N; <statement>``
in one simple-protocol message (client-side binding): PostgreSQL runs the two as
one implicit transaction, so it is still one round trip and one commit, and the
setting ends with it (see docs/operations.md, "PgBouncer", for the measured cost).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Mapping, Sequence
from contextlib import asynccontextmanager
from functools import cache
from importlib import resources
from typing import Any, TypeVar

import psycopg
import psycopg_pool
from psycopg import sql
from psycopg.rows import dict_row

from litellm_credits import errors

log = logging.getLogger(__name__)

Params = Mapping[str, Any] | Sequence[Any] | None
T = TypeVar("T")
Row = dict[str, Any]

_NAME = re.compile(r"^--\s*name:\s*([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)

# Our own SQLSTATEs, raised by the SQL functions (see 0002_ledger.sql).
_SQLSTATE_ERRORS: dict[str, type[errors.CreditsError]] = {
    "CR001": errors.InvalidAmount,
    "CR002": errors.InvalidUserId,
    "CR003": errors.InvalidTransactionType,
    "CR004": errors.InvalidPowerLevel,
    "CR005": errors.AccountNotFound,
    "CR006": errors.InvalidInput,
    "CR007": errors.LevelNotAllowed,
    "CR008": errors.NotFound,
}
# SQLSTATE classes psycopg raises as OperationalError: the server cannot serve
# now (connection, resources, locks, shutdown), so retrying later may work.
_UNAVAILABLE_CLASSES = frozenset({"08", "40", "53", "54", "55", "57", "58"})


def parse_queries(text: str) -> dict[str, str]:
    """Split a queries file into ``{name: sql}``."""
    found: dict[str, str] = {}
    matches = list(_NAME.finditer(text))
    for i, match in enumerate(matches):
        end = matches[i + 1].start() if i + 1 < len(matches) else len(text)
        name = match.group(1)
        if name in found:
            raise errors.ConfigError(f"query {name!r} is defined twice in queries.sql")
        found[name] = text[match.end() : end].strip().rstrip(";")
    return found


@cache
def queries() -> dict[str, str]:
    """Every named query of every ``store/queries/*.sql`` file (one file per module's concern)."""
    found: dict[str, str] = {}
    folder = resources.files("litellm_credits.store").joinpath("queries")
    for entry in sorted(folder.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".sql"):
            for name, sql in parse_queries(entry.read_text("utf-8")).items():
                if name in found:
                    raise errors.ConfigError(f"query {name!r} is defined in two .sql files")
                found[name] = sql
    return found


def query(name: str) -> str:
    try:
        return queries()[name]
    except KeyError:
        raise errors.ConfigError(f"no query named {name!r} in store/queries/*.sql") from None


_TIMEOUT_PARAM = "credits_statement_timeout_ms"


@cache
def _timed(name: str) -> sql.Composed:
    """``SET LOCAL statement_timeout = ...; <named query>``: one implicit transaction."""
    return sql.SQL("; ").join([sql.SQL(query("set_statement_timeout")),
                               sql.SQL(query(name))])


def translate(exc: BaseException) -> errors.CreditsError:
    """The one place where database errors become the package's own errors."""
    if isinstance(exc, errors.CreditsError):
        return exc
    if isinstance(exc, psycopg_pool.PoolTimeout):
        return errors.DatabaseUnavailable(
            "the credits database did not hand out a connection in time; "
            "it may be down or overloaded"
        )
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError) and not exc.sqlstate:
        message = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return errors.DatabaseUnavailable(f"the credits database is unreachable: {message}")
    if isinstance(exc, psycopg.Error):
        diag = exc.diag
        return from_sqlstate(
            exc.sqlstate or "",
            diag.message_primary or str(exc).splitlines()[0],
            diag.message_hint,
        )
    if isinstance(exc, UnicodeEncodeError):
        return errors.InvalidInput("a text value is not valid Unicode (a lone surrogate?)")
    if isinstance(exc, ValueError) and "NUL" in str(exc):
        # psycopg refuses NUL bytes in text before anything reaches the server.
        return errors.InvalidInput("a text value contains a NUL byte")
    raise exc


def from_sqlstate(sqlstate: str, message: str, hint: str | None = None) -> errors.CreditsError:
    """The package error for a server error, given its SQLSTATE and message.

    Used for raised errors (through :func:`translate`) and for the per-item
    errors that ``reserve_credits_many`` returns as values.
    """
    if sqlstate in _SQLSTATE_ERRORS:
        return _SQLSTATE_ERRORS[sqlstate](message + (f" ({hint})" if hint else ""))
    if sqlstate == "23505":
        return errors.Conflict(f"already exists: {message}")
    if sqlstate in ("23514", "23502"):
        return errors.InvalidInput(f"rejected by the database: {message}")
    if sqlstate in ("22003", "22P02"):
        return errors.InvalidInput(f"a value is out of range or malformed: {message}")
    if sqlstate == "57014":
        return errors.DatabaseUnavailable("the credits database timed out on a statement")
    if sqlstate[:2] in _UNAVAILABLE_CLASSES:
        return errors.DatabaseUnavailable(f"the credits database is unreachable: {message}")
    if sqlstate.startswith("22"):
        return errors.InvalidInput(f"a value was refused: {message}")
    return errors.CreditsError(f"database error {sqlstate}: {message}")


@asynccontextmanager
async def translating() -> AsyncIterator[None]:
    try:
        yield
    except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
        raise translate(exc) from None
    except UnicodeEncodeError as exc:
        raise translate(exc) from None
    except ValueError as exc:
        if "NUL" in str(exc):
            raise translate(exc) from None
        raise


class Database:
    """An async pool plus helpers that run named queries with translated errors."""

    def __init__(
        self,
        conninfo: str,
        *,
        min_size: int = 2,
        max_size: int = 10,
        timeout: float = 5.0,
        statement_timeout_ms: int = 5000,
        name: str = "litellm-credits",
    ) -> None:
        self.conninfo = conninfo
        self._statement_timeout_ms = statement_timeout_ms
        self._timeout_ms = str(statement_timeout_ms)
        self._close_timeout = timeout + 1.0
        self._deadline = timeout + statement_timeout_ms / 1000 + 1.0
        self._abandoned: set[asyncio.Future[Any]] = set()
        self.pool: psycopg_pool.AsyncConnectionPool[psycopg.AsyncConnection[Row]] = (
            psycopg_pool.AsyncConnectionPool(
                conninfo,
                open=False,
                min_size=min_size,
                max_size=max_size,
                timeout=timeout,
                name=name,
                connection_class=psycopg.AsyncConnection[Row],
                kwargs={
                    "autocommit": True,
                    "row_factory": dict_row,
                    "connect_timeout": max(1, int(timeout)),
                    "application_name": name,
                    # Named prepared statements live in one server session; behind a
                    # transaction-mode pooler the next execute may land elsewhere.
                    "prepare_threshold": None,
                },
                # Re-check a connection before handing it out only when it was
                # idle long; a dead one then fails fast and is replaced.
                reconnect_timeout=0,
            )
        )

    async def open(self, wait: bool = False) -> None:
        """Open the pool; with ``wait``, fail within the pool timeout if nothing answers."""
        async with translating():
            await self.pool.open(wait=wait, timeout=self.pool.timeout)

    async def close(self, timeout: float | None = None) -> None:
        """Close the pool within ``timeout`` seconds (default: the pool timeout + 1 s).

        psycopg_pool's close waits up to its ``timeout`` for its workers and does
        not wait for connections in use (they are closed when returned). The
        whole close is still bounded here, so a stuck lock or a worker that
        ignores its stop cannot hang a shutdown; work abandoned by
        :meth:`bounded` is cancelled first.
        """
        limit = self._close_timeout if timeout is None else timeout
        for task in list(self._abandoned):
            task.cancel()
        try:
            async with asyncio.timeout(limit + 1.0):
                await self.pool.close(timeout=limit)
        except TimeoutError:
            log.error("the credits database pool %r did not close within %.0f s; left behind",
                      self.pool.name, limit + 1.0)

    # statement_timeout is enforced by the server; a server that froze (or a
    # network that dropped packets) would hang the caller, so the client keeps a
    # deadline of its own as well.

    def _too_slow(self) -> errors.DatabaseUnavailable:
        return errors.DatabaseUnavailable(
            f"the credits database did not answer within {self._deadline:.0f} s; "
            "it may be overloaded or frozen")

    @asynccontextmanager
    async def connection(self) -> AsyncIterator[psycopg.AsyncConnection[Row]]:
        async with translating(), self.pool.connection() as conn:
            yield conn

    @asynccontextmanager
    async def transaction(
        self, start: str | None = None
    ) -> AsyncIterator[psycopg.AsyncConnection[Row]]:
        """A transaction under the statement timeout (set LOCAL: it ends with the transaction).

        ``start`` names a statement that must come first (``SET TRANSACTION ...``).
        """
        async with self.connection() as conn, conn.transaction():
            if start is not None:
                await conn.execute(query(start))
            # SET takes no server-side parameter: bind this one on the client.
            await psycopg.AsyncClientCursor(conn).execute(
                query("set_statement_timeout"), {_TIMEOUT_PARAM: self._timeout_ms})
            yield conn

    async def _one_statement(
        self, conn: psycopg.AsyncConnection[Row], name: str, params: Params
    ) -> psycopg.AsyncClientCursor[Row]:
        """Run one named statement as its own transaction under the statement timeout.

        One simple-protocol message, one round trip; the cursor is left on the
        statement's result. Measured against psycopg's server-side binding in
        bench/pooler_bench.py: no more client CPU, and faster (no Parse/Describe).
        """
        if params is not None and not isinstance(params, Mapping):
            raise TypeError("Database helpers take named parameters only")
        cur = psycopg.AsyncClientCursor(conn)
        async with translating():
            await cur.execute(_timed(name), {**(params or {}), _TIMEOUT_PARAM: self._timeout_ms})
        cur.nextset()  # past the SET
        return cur

    async def bounded(self, work: Awaitable[T], deadline: float | None = None) -> T:
        """Await ``work`` at most ``deadline`` seconds (default: the pool's), not its cleanup.

        On cancellation psycopg asks the server to cancel the query and waits up
        to 10 s for that; a request should not. The work is cancelled and left
        to finish its cleanup in the background (its connection is then
        discarded by the pool), while the caller gets a clear 503 at once.
        """
        task = asyncio.ensure_future(work)
        done, _ = await asyncio.wait((task,), timeout=deadline or self._deadline)
        if done:
            return task.result()
        task.cancel()
        self._abandoned.add(task)
        task.add_done_callback(self._forget)
        raise self._too_slow()

    async def within_deadline(self, future: asyncio.Future[T]) -> T:
        """Await a future that database work will complete, at most the client deadline.

        Awaited directly, so a timeout or a cancelled caller cancels the future
        itself at once, and whoever would complete it can see that and skip it.
        """
        try:
            async with asyncio.timeout(self._deadline):
                return await future
        except TimeoutError:
            raise self._too_slow() from None

    def _forget(self, task: asyncio.Future[Any]) -> None:
        self._abandoned.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: it was already reported as a 503

    async def fetchone(self, name: str, params: Params = None) -> Row | None:
        async def work() -> Row | None:
            async with self.connection() as conn:
                cur = await self._one_statement(conn, name, params)
                return await cur.fetchone()

        return await self.bounded(work())

    async def fetchall(
        self, name: str, params: Params = None, deadline: float | None = None
    ) -> list[Row]:
        async def work() -> list[Row]:
            async with self.connection() as conn:
                cur = await self._one_statement(conn, name, params)
                return await cur.fetchall() if cur.description else []

        return await self.bounded(work(), deadline)

    async def execute(self, name: str, params: Params = None) -> int:
        async def work() -> int:
            async with self.connection() as conn:
                cur = await self._one_statement(conn, name, params)
                return cur.rowcount

        return await self.bounded(work())


async def run(conn: psycopg.AsyncConnection[Row], name: str, params: Params = None) -> list[Row]:
    """Run a named query on a connection the caller already holds."""
    async with translating():
        cur = await conn.execute(query(name), params)
        return await cur.fetchall() if cur.description else []
