"""Applies the numbered SQL migrations in ``store/migrations``.

Each file ``NNNN_name.sql`` runs in its own transaction, under a transaction-
scoped advisory lock, so two proxies or two operators migrating at once
cannot race: the second waits, then finds nothing left to do.
``schema_migrations`` records each file's version, name, checksum and time.
A file whose checksum differs from the applied one is refused: applied
migrations are history and must not change.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources

import psycopg

from litellm_credits import errors
from litellm_credits.store.db import translate

# Any fixed 64-bit number works; this one spells "credits" in hex-ish.
ADVISORY_LOCK_ID = 0x6C6C6D637265

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")

_CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version     INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    checksum    TEXT NOT NULL,
    applied_at  TIMESTAMPTZ NOT NULL DEFAULT now()
)
"""


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode("utf-8")).hexdigest()

    @property
    def filename(self) -> str:
        return f"{self.version:04d}_{self.name}.sql"


def load_migrations() -> list[Migration]:
    """The migration files shipped inside the package, in version order."""
    folder = resources.files("litellm_credits.store").joinpath("migrations")
    found: list[Migration] = []
    for entry in folder.iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match.group(1)), match.group(2), entry.read_text("utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise errors.MigrationError("two migration files share a version number")
    return found


def _applied(conn: psycopg.Connection[tuple[object, ...]]) -> dict[int, tuple[str, str]]:
    rows = conn.execute("SELECT version, name, checksum FROM schema_migrations").fetchall()
    return {int(str(v)): (str(n), str(c)) for v, n, c in rows}


def _check_history(
    migrations: list[Migration], applied: dict[int, tuple[str, str]]
) -> list[Migration]:
    """Refuse changed files; return the pending ones."""
    by_version = {m.version: m for m in migrations}
    for version, (name, checksum) in sorted(applied.items()):
        current = by_version.get(version)
        if current is None:
            raise errors.MigrationError(
                f"migration {version:04d}_{name} is applied in the database but its file is "
                "missing; install the package version that shipped it"
            )
        if current.checksum != checksum:
            raise errors.ChecksumMismatch(
                f"migration {current.filename} was changed after it was applied "
                f"(applied checksum {checksum[:12]}, file {current.checksum[:12]}); "
                "restore the original file and put the change in a new numbered migration"
            )
    return [m for m in migrations if m.version not in applied]


def pending(conninfo: str) -> list[Migration]:
    """Migrations not yet applied, after checking the applied ones are unchanged."""
    migrations = load_migrations()
    try:
        with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
            exists = conn.execute("SELECT to_regclass('schema_migrations') IS NOT NULL").fetchone()
            applied = _applied(conn) if exists and exists[0] else {}
    except psycopg.Error as exc:
        raise translate(exc) from None
    return _check_history(migrations, applied)


def migrate(conninfo: str) -> list[Migration]:
    """Apply every pending migration; return what was applied (empty on a re-run)."""
    migrations = load_migrations()
    done: list[Migration] = []
    try:
        with psycopg.connect(conninfo, autocommit=True, prepare_threshold=None) as conn:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_ID,))
                conn.execute(_CREATE_TABLE)
            for migration in migrations:
                with conn.transaction():
                    # Re-read under the lock: another process may have applied it.
                    conn.execute("SELECT pg_advisory_xact_lock(%s)", (ADVISORY_LOCK_ID,))
                    todo = _check_history(migrations, _applied(conn))
                    if migration not in todo:
                        continue
                    conn.execute(migration.sql.encode("utf-8"))
                    conn.execute(
                        "INSERT INTO schema_migrations (version, name, checksum) "
                        "VALUES (%s, %s, %s)",
                        (migration.version, migration.name, migration.checksum),
                    )
                done.append(migration)
    except psycopg.Error as exc:
        raise translate(exc) from None
    return done
