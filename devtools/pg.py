"""Throwaway and persistent local PostgreSQL clusters.

Used by the test suite (``tests/conftest.py``), ``make demo``/``make run``
(a persistent cluster in ``.run/pg-dev``), the benchmark, and fault tests that
stop and restart a server mid-test.

PostgreSQL refuses to run as root. When we are root, every server-side command
(initdb, pg_ctl) runs as the unprivileged ``postgres`` account and the cluster
directory is chowned to it. If that account cannot reach the requested
directory (e.g. the repository lives under ``/root``), the cluster is created
under the temp dir instead and the requested path becomes a symlink to it, so
callers can keep addressing it by the path they asked for.

Layout of a cluster directory (``<root>/pg-<name>``)::

    data/           PGDATA; the Unix socket lives here too
    postgres.log    server log (appended across restarts)
    .lock           flock used by :meth:`PgCluster.shared`

CLI::

    python -m devtools.pg start|stop|status|url|destroy|database-url --dir DIR [--port PORT]
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import glob
import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Literal, Protocol
from urllib.parse import quote

SERVICE_ACCOUNT = "postgres"
"""OS account that owns and runs clusters when we are root."""

DB_USER = "postgres"
"""Database superuser created by initdb; trust auth, so no password."""

HOST = "127.0.0.1"

StopMode = Literal["smart", "fast", "immediate"]

# Linux caps sun_path at 108 bytes including the NUL; leave room for ".s.PGSQL.NNNNN".
_MAX_SOCKET_DIR_LEN = 107 - len("/.s.PGSQL.65535")


class PgError(RuntimeError):
    """A local cluster could not be created, started or stopped."""


class ClusterFactory(Protocol):
    """Signature of the ``pg_cluster_factory`` test fixture."""

    def __call__(
        self, *, start: bool = True, dbname: str | None = None, migrate: bool = False
    ) -> PgCluster: ...


def find_bindir() -> Path:
    """Locate the PostgreSQL server binaries (initdb, pg_ctl, postgres).

    ``PG_BINDIR`` wins; then the newest Debian-style ``/usr/lib/postgresql/N/bin``;
    then whatever ``initdb`` is on PATH (Debian does not put it there).
    """
    env = os.environ.get("PG_BINDIR")
    if env:
        if (Path(env) / "initdb").exists():
            return Path(env)
        raise PgError(f"PG_BINDIR={env} does not contain initdb")

    def major(path: str) -> int:
        version = Path(path).parent.name
        return int(version) if version.isdigit() else 0

    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=major, reverse=True):
        if (Path(candidate) / "initdb").exists():
            return Path(candidate)
    on_path = shutil.which("initdb")
    if on_path:
        return Path(on_path).parent
    raise PgError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found. Install them with "
        "`sudo apt-get install -y postgresql` (or run `make install` as root), "
        "or point PG_BINDIR at the directory that contains initdb."
    )


def _service_ids() -> tuple[int, int] | None:
    """(uid, gid) to run the server as, or None when we can run it ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(SERVICE_ACCOUNT)
    except KeyError:
        raise PgError(
            f"running as root, but PostgreSQL must run as an unprivileged user and there is "
            f"no '{SERVICE_ACCOUNT}' account. Create it (`useradd --system --home-dir "
            f"/var/lib/postgresql {SERVICE_ACCOUNT}`) or install the `postgresql` package."
        ) from None
    return entry.pw_uid, entry.pw_gid


def _run_as_prefix() -> list[str]:
    if _service_ids() is None:
        return []
    if shutil.which("runuser"):
        return ["runuser", "-u", SERVICE_ACCOUNT, "--"]
    if shutil.which("setpriv"):
        uid, gid = _service_ids() or (0, 0)
        return ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--init-groups", "--"]
    raise PgError("running as root but neither `runuser` nor `setpriv` is available")


def port_is_free(port: int) -> bool:
    """True when nothing listens on HOST:port.

    SO_REUSEADDR mirrors what postgres does, so a TIME_WAIT left by a server we
    just stopped does not count as "in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                return False
            raise
    return True


class PgCluster:
    """One local PostgreSQL cluster living in ``root_dir/pg-<name>``.

    Every operation is idempotent: ``init`` on an initialised directory,
    ``start`` on a running server and ``stop`` on a stopped one do nothing.
    """

    def __init__(
        self, root_dir: Path, port: int, name: str = "dev", *, cluster_dir: Path | None = None
    ) -> None:
        self.port = port
        self.name = name
        self.home = Path(cluster_dir or Path(root_dir) / f"pg-{name}").absolute()

    @classmethod
    def at(cls, cluster_dir: Path, port: int) -> PgCluster:
        """A cluster addressed by its directory (what the CLI's ``--dir`` names)."""
        cluster_dir = Path(cluster_dir).absolute()
        return cls(
            cluster_dir.parent, port, cluster_dir.name.removeprefix("pg-"), cluster_dir=cluster_dir
        )

    def __repr__(self) -> str:
        return f"PgCluster({str(self.home)!r}, port={self.port})"

    # -- paths ---------------------------------------------------------------

    @property
    def real_home(self) -> Path:
        """Where the files really are (follows the temp-dir fallback symlink)."""
        return self.home.resolve()

    @property
    def data_dir(self) -> Path:
        return self.real_home / "data"

    @property
    def log_file(self) -> Path:
        return self.real_home / "postgres.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{DB_USER}@{HOST}:{self.port}/{quote(dbname, safe='')}"

    # -- lifecycle -----------------------------------------------------------

    def is_initialized(self) -> bool:
        return (self.data_dir / "PG_VERSION").exists()

    def init(self) -> bool:
        """Create the cluster if needed. Returns True when initdb actually ran."""
        self._prepare_home()
        if self.is_initialized():
            return False
        if self.data_dir.exists():
            # A half-finished initdb (interrupted run) would make initdb refuse forever.
            shutil.rmtree(self.data_dir)
        bindir = find_bindir()
        self._run(
            [
                str(bindir / "initdb"),
                "--pgdata",
                str(self.data_dir),
                "--username",
                DB_USER,
                "--auth",
                "trust",
                "--encoding",
                "UTF8",
                "--locale",
                "C",
                # Only skips initdb's final fsync of a cluster we just created;
                # the server itself keeps fsync on.
                "--no-sync",
            ],
            what="initdb",
        )
        with (self.data_dir / "postgresql.conf").open("a") as conf:
            conf.write(
                "\n# Settings managed by devtools/pg.py (rewritten on every start).\n"
                "include 'devtools.conf'\n"
            )
        self._write_settings()
        return True

    def start(self, timeout: float = 60.0) -> None:
        """Start the server (initialising it first) and wait until it accepts connections."""
        self.init()
        if self.is_running():
            running_port = self.running_port()
            if running_port is not None and running_port != self.port:
                raise PgError(
                    f"{self.home} is already running on port {running_port}, not {self.port}; "
                    f"stop it first (python -m devtools.pg stop --dir {self.home})"
                )
            self.wait_ready(timeout)
            return
        if not port_is_free(self.port):
            raise PgError(
                f"cannot start {self.home}: port {HOST}:{self.port} is already in use by "
                "another process (another cluster? pick another port or stop it)"
            )
        self._write_settings()
        result = self._run(
            [
                str(find_bindir() / "pg_ctl"),
                "start",
                "--pgdata",
                str(self.data_dir),
                "--log",
                str(self.log_file),
                "--wait",
                "--timeout",
                str(int(timeout)),
            ],
            what="pg_ctl start",
            check=False,
        )
        if result.returncode != 0 and not self.is_running():
            raise PgError(
                f"pg_ctl start failed for {self.home} (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}{self._log_tail()}"
            )
        # pg_ctl may also fail because a concurrent process won the race to
        # start the same cluster; as long as it is up now that is fine.
        self.wait_ready(timeout)

    def stop(self, mode: StopMode = "fast", timeout: float = 60.0) -> None:
        """Stop the server; ``immediate`` skips the shutdown checkpoint like a crash would."""
        if not self.is_running():
            return
        result = self._run(
            [
                str(find_bindir() / "pg_ctl"),
                "stop",
                "--pgdata",
                str(self.data_dir),
                "--mode",
                mode,
                "--wait",
                "--timeout",
                str(int(timeout)),
            ],
            what="pg_ctl stop",
            check=False,
        )
        if result.returncode == 0 or not self.is_running():
            return
        if mode != "immediate":
            # A client stuck in a long query can outlast a fast shutdown; we
            # still must not leak a server, so escalate.
            self.stop("immediate", timeout)
            return
        raise PgError(
            f"pg_ctl stop -m immediate failed for {self.home}:\n"
            f"{result.stdout}{result.stderr}{self._log_tail()}"
        )

    def restart(self, mode: StopMode = "fast", timeout: float = 60.0) -> None:
        self.stop(mode, timeout)
        self.start(timeout)

    def is_running(self) -> bool:
        pid = self._postmaster_pid()
        if pid is None:
            return False
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # alive but owned by someone else
        # A stale postmaster.pid whose pid got reused by an unrelated process
        # (e.g. after a container restart) must not count as running.
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            return True
        return b"postgres" in cmdline

    def destroy(self) -> None:
        """Stop the server (immediately; it is throwaway) and delete all its files."""
        with contextlib.suppress(PgError):
            self.stop("immediate")
        if self.home.is_symlink():
            target = self.home.resolve()
            self.home.unlink()
            shutil.rmtree(target, ignore_errors=True)
            with contextlib.suppress(OSError):
                target.parent.rmdir()  # the per-path temp parent, if now empty
        elif self.home.exists():
            shutil.rmtree(self.home, ignore_errors=True)

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Block until a client connection succeeds, or raise with the server log tail."""
        import psycopg

        deadline = time.monotonic() + timeout
        last_error: Exception | None = None
        while True:
            try:
                with psycopg.connect(self.url(), connect_timeout=2, autocommit=True) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError as exc:
                last_error = exc
            if time.monotonic() >= deadline:
                break
            if self.data_dir.exists() and not self.is_running():
                # The postmaster died (bad config, port clash): waiting longer is pointless.
                # A cluster we merely attach to (no local data dir) gets the full timeout.
                break
            time.sleep(0.1)
        raise PgError(
            f"PostgreSQL at {self.url()} ({self.home}) did not accept connections within "
            f"{timeout:.0f}s: {last_error}{self._log_tail()}"
        )

    # -- databases -----------------------------------------------------------

    def create_database(self, name: str, template: str | None = None) -> str:
        """Create database ``name`` unless it exists; returns its URL."""
        import psycopg
        from psycopg import errors, sql

        with psycopg.connect(self.url(), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not exists:
                query = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
                if template:
                    query += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
                with contextlib.suppress(errors.DuplicateDatabase):  # lost a creation race
                    conn.execute(query)
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop ``name`` even if clients are still connected or it is a template."""
        import psycopg
        from psycopg import sql

        with psycopg.connect(self.url(), autocommit=True) as conn:
            exists = conn.execute(
                "SELECT 1 FROM pg_database WHERE datname = %s", (name,)
            ).fetchone()
            if not exists:
                return
            ident = sql.Identifier(name)
            conn.execute(sql.SQL("ALTER DATABASE {} WITH is_template false").format(ident))
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(ident))

    def list_databases(self, prefix: str = "") -> list[str]:
        import psycopg

        with psycopg.connect(self.url(), autocommit=True) as conn:
            rows = conn.execute(
                "SELECT datname FROM pg_database WHERE starts_with(datname, %s) ORDER BY 1",
                (prefix,),
            ).fetchall()
        return [row[0] for row in rows]

    # -- sharing between processes -------------------------------------------

    @contextlib.contextmanager
    def shared(self, timeout: float = 60.0) -> Iterator[bool]:
        """Keep the cluster running for the duration of the block, across processes.

        Several pytest sessions (or a test run and the benchmark) may use the
        same cluster at once; the last one to leave stops it. Yields True when
        no other process was using the cluster on entry, i.e. anything left in
        it comes from an earlier, dead session and may be swept.
        """
        self._prepare_home()
        lock_path = self.real_home / ".lock"
        with lock_path.open("a") as lock:
            # An exclusive lock succeeds only when no other session holds its
            # shared lock; sessions starting concurrently serialise here.
            alone = _try_flock(lock, fcntl.LOCK_EX)
            if not alone:
                fcntl.flock(lock, fcntl.LOCK_SH)
            try:
                self.start(timeout)
                if alone:
                    fcntl.flock(lock, fcntl.LOCK_SH)  # downgrade: let others join
                yield alone
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)
                if _try_flock(lock, fcntl.LOCK_EX):
                    try:
                        self.stop("fast", timeout)
                    finally:
                        fcntl.flock(lock, fcntl.LOCK_UN)

    # -- internals -----------------------------------------------------------

    def _prepare_home(self) -> None:
        """Create the cluster directory so that the server account can use it."""
        ids = _service_ids()
        if self.home.is_symlink():
            target = self.home.resolve()
            if not target.exists():  # temp dir was cleaned (reboot): start afresh
                target.mkdir(parents=True, mode=0o755)
                _chown(target, ids)
            return
        if self.home.is_dir():
            if ids is not None and self.home.stat().st_uid != ids[0]:
                _chown(self.home, ids)
            return
        self.home.parent.mkdir(parents=True, exist_ok=True)
        if ids is None or self._service_can_reach(self.home.parent):
            self.home.mkdir(mode=0o755, exist_ok=True)
            _chown(self.home, ids)
            return
        digest = hashlib.sha256(str(self.home).encode()).hexdigest()[:12]
        fallback = Path(tempfile.gettempdir()) / f"litellm-credits-{digest}" / self.home.name
        fallback.parent.mkdir(mode=0o755, exist_ok=True)
        fallback.mkdir(mode=0o755, exist_ok=True)
        _chown(fallback, ids)
        self.home.symlink_to(fallback, target_is_directory=True)

    @staticmethod
    def _service_can_reach(directory: Path) -> bool:
        """Whether the server account can traverse every component of ``directory``."""
        probe = subprocess.run(
            [*_run_as_prefix(), "test", "-x", str(directory)],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=False,
        )
        return probe.returncode == 0

    def _write_settings(self) -> None:
        socket_dir = str(self.data_dir)
        if len(socket_dir) > _MAX_SOCKET_DIR_LEN:
            # Postgres refuses to start with an over-long socket path; we only use TCP anyway.
            socket_dir = ""
        settings = (
            "# Rewritten by devtools/pg.py on every start; edits here are lost.\n"
            f"port = {self.port}\n"
            f"listen_addresses = '{HOST}'\n"
            f"unix_socket_directories = '{socket_dir}'\n"
            "max_connections = 200\n"
            "shared_buffers = 256MB\n"
            "logging_collector = off\n"
            "log_line_prefix = '%m [%p] %q%u@%d '\n"
        )
        path = self.data_dir / "devtools.conf"
        path.write_text(settings)
        _chown(path, _service_ids())

    def _postmaster_pid(self) -> int | None:
        try:
            first_line = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
        except (FileNotFoundError, NotADirectoryError):
            return None
        return int(first_line) if first_line.strip().isdigit() else None

    def running_port(self) -> int | None:
        """Port of the running server according to postmaster.pid."""
        try:
            lines = (self.data_dir / "postmaster.pid").read_text().splitlines()
        except FileNotFoundError:
            return None
        return int(lines[3]) if len(lines) > 3 and lines[3].strip().isdigit() else None

    def _log_tail(self, lines: int = 30) -> str:
        try:
            tail = self.log_file.read_text(errors="replace").splitlines()[-lines:]
        except FileNotFoundError:
            return f"\n(no server log at {self.log_file})"
        return f"\n--- last {len(tail)} lines of {self.log_file} ---\n" + "\n".join(tail)

    def _run(
        self, cmd: list[str], *, what: str, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        # cwd: postgres tools complain when the current directory is unreadable
        # for the server account (e.g. /root).
        result = subprocess.run(
            [*_run_as_prefix(), *cmd],
            cwd=self.real_home,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            check=False,
        )
        if check and result.returncode != 0:
            raise PgError(
                f"{what} failed for {self.home} (exit {result.returncode}):\n"
                f"{result.stdout}{result.stderr}"
            )
        return result


def _try_flock(lock: IO[str], operation: int) -> bool:
    try:
        fcntl.flock(lock, operation | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _chown(path: Path, ids: tuple[int, int] | None) -> None:
    if ids is not None:
        os.chown(path, *ids)


# -- CLI ---------------------------------------------------------------------

DEFAULT_DIR = Path(".run/pg-dev")
DEFAULT_PORT = 55433


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m devtools.pg",
        description="Manage a local PostgreSQL cluster. Only URLs go to stdout.",
    )
    parser.add_argument(
        "command",
        choices=["start", "stop", "status", "url", "destroy", "database-url"],
        help=(
            "database-url prints $CREDITS_DATABASE_URL or $DATABASE_URL when set; otherwise "
            "it starts the cluster, creates --db and prints its URL"
        ),
    )
    parser.add_argument("--dir", type=Path, default=DEFAULT_DIR, help="cluster directory")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--db", default=None, help="database to create (start) / to name (url)")
    parser.add_argument("--mode", choices=["smart", "fast", "immediate"], default="fast")
    args = parser.parse_args(argv)
    cluster = PgCluster.at(args.dir, args.port)
    dbname: str = args.db or "postgres"

    try:
        if args.command == "database-url":
            external = os.environ.get("CREDITS_DATABASE_URL") or os.environ.get("DATABASE_URL")
            if external:
                print(external)
                return 0
            args.command = "start"
        if args.command == "start":
            if cluster.init():
                print(f"initialised {cluster.home}", file=sys.stderr)
            was_running = cluster.is_running()
            cluster.start()
            if not was_running:
                print(f"started {cluster.home} (log: {cluster.log_file})", file=sys.stderr)
            print(cluster.create_database(dbname) if args.db else cluster.url(dbname))
        elif args.command == "stop":
            cluster.stop(args.mode)
        elif args.command == "status":
            if not cluster.is_running():
                print(f"{cluster.home}: stopped", file=sys.stderr)
                return 3  # same convention as `pg_ctl status`
            cluster.port = cluster.running_port() or cluster.port
            print(cluster.url(dbname))
        elif args.command == "url":
            print(cluster.url(dbname))
        elif args.command == "destroy":
            cluster.destroy()
    except PgError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(_main())
