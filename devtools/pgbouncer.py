"""A throwaway PgBouncer in front of a test PostgreSQL cluster.

Operators are told to put PgBouncer in front of the credits database, so the
tests run the plugin and the CLI through a real one. :class:`PgBouncer` writes
a configuration into a temp directory it owns, starts Debian's ``pgbouncer``
on a free 127.0.0.1 port (as the ``postgres`` account when we are root, since
PgBouncer refuses to run as root), and stops it by the pid in its pidfile.

The configuration is PgBouncer's default apart from what a test harness must
say: where the server is, the listen address, the pool mode, and trust
authentication for the cluster's superuser (the cluster itself trusts it).
In particular ``ignore_startup_parameters`` is NOT set: a client that sends a
startup ``options`` parameter is refused, as it is by a default install.

    python -m devtools.pgbouncer --pg-port 55432 --mode transaction   # runs until Ctrl-C
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from devtools.pg import DB_USER, HOST, _chown, _run_as_prefix, _service_ids, port_is_free

PoolMode = Literal["session", "transaction"]
PORTS = range(57000, 57500)


class PgBouncerError(RuntimeError):
    pass


def find_pgbouncer() -> str | None:
    """The pgbouncer binary, or None when it is not installed."""
    found = shutil.which("pgbouncer")
    if found:
        return found
    return "/usr/sbin/pgbouncer" if os.access("/usr/sbin/pgbouncer", os.X_OK) else None


def missing_reason() -> str | None:
    """Why the pooler tests cannot run here, or None when they can."""
    if find_pgbouncer():
        return None
    if os.geteuid() == 0 and shutil.which("apt-get"):
        return None  # :func:`ensure_installed` can install it
    return ("pgbouncer is not installed and cannot be installed here (not root); "
            "Debian: sudo apt-get install -y pgbouncer, or `make pgbouncer` as root")


def ensure_installed(repo_root: Path) -> str:
    """The pgbouncer binary, installed with ``make pgbouncer`` (apt, as root) when missing."""
    found = find_pgbouncer()
    if found:
        return found
    subprocess.run(["make", "-s", "pgbouncer"], cwd=repo_root, check=True,
                   stdin=subprocess.DEVNULL, timeout=600)
    found = find_pgbouncer()
    if not found:
        raise PgBouncerError("`make pgbouncer` ran but no pgbouncer binary was found")
    return found


def _free_port() -> int:
    candidates = list(PORTS)
    random.shuffle(candidates)
    for port in candidates:
        if port_is_free(port):
            return port
    raise PgBouncerError(f"no free TCP port in {PORTS.start}-{PORTS.stop - 1}")


class PgBouncer:
    """One PgBouncer process in front of ``pg_host:pg_port``; use as a context manager."""

    def __init__(self, pg_port: int, *, mode: PoolMode = "transaction",
                 pg_host: str = HOST, port: int | None = None) -> None:
        self.pg_host = pg_host
        self.pg_port = pg_port
        self.mode = mode
        self.port = port or _free_port()
        self.dir: Path | None = None
        self.pid: int | None = None

    def url(self, dbname: str) -> str:
        return f"postgresql://{DB_USER}@{HOST}:{self.port}/{dbname}"

    @property
    def log_file(self) -> Path:
        assert self.dir is not None
        return self.dir / "pgbouncer.log"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except (FileNotFoundError, AssertionError):
            return "(no pgbouncer log)"

    def log_text(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _write_config(self, folder: Path) -> Path:
        ini = folder / "pgbouncer.ini"
        ini.write_text(
            "; Written by devtools/pgbouncer.py; defaults apart from these lines.\n"
            "[databases]\n"
            f"* = host={self.pg_host} port={self.pg_port}\n"
            "[pgbouncer]\n"
            f"listen_addr = {HOST}\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            f"pool_mode = {self.mode}\n"
            "auth_type = trust\n"
            f"auth_file = {folder / 'userlist.txt'}\n"
            f"admin_users = {DB_USER}\n"
            f"logfile = {folder / 'pgbouncer.log'}\n"
            f"pidfile = {folder / 'pgbouncer.pid'}\n"
        )
        # trust still needs the user to be listed in the auth file.
        (folder / "userlist.txt").write_text(f'"{DB_USER}" ""\n')
        return ini

    def start(self, timeout: float = 20.0) -> PgBouncer:
        binary = find_pgbouncer()
        if binary is None:
            raise PgBouncerError(missing_reason() or "pgbouncer is not installed")
        folder = Path(tempfile.mkdtemp(prefix="credits-pgbouncer-"))
        self.dir = folder
        ini = self._write_config(folder)
        ids = _service_ids()
        for path in (folder, ini, folder / "userlist.txt"):
            _chown(path, ids)
        # -d: daemonize once listening; the pidfile then names the process to stop.
        done = subprocess.run([*_run_as_prefix(), binary, "-d", str(ini)], cwd=folder,
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=timeout, check=False)
        if done.returncode != 0:
            self._cleanup()
            raise PgBouncerError(f"pgbouncer did not start (exit {done.returncode}):\n"
                                 f"{done.stdout}{done.stderr}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pid_text = (folder / "pgbouncer.pid").read_text().strip() \
                if (folder / "pgbouncer.pid").exists() else ""
            if pid_text.isdigit():
                self.pid = int(pid_text)
                if self._accepts():
                    return self
            time.sleep(0.05)
        self.stop()
        raise PgBouncerError(f"pgbouncer did not listen on {self.port} within {timeout} s")

    def _accepts(self) -> bool:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.settimeout(0.5)
            return sock.connect_ex((HOST, self.port)) == 0

    def alive(self) -> bool:
        if self.pid is None:
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """SIGINT (a safe shutdown), then SIGKILL if it is still there after ``timeout``."""
        if self.pid is not None and self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGINT)
            deadline = time.monotonic() + timeout
            while self.alive() and time.monotonic() < deadline:
                time.sleep(0.05)
            if self.alive():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
        self.pid = None
        self._cleanup()

    def _cleanup(self) -> None:
        if self.dir is not None and not os.environ.get("CREDITS_E2E_KEEP"):
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None

    def __enter__(self) -> PgBouncer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


@contextlib.contextmanager
def running(pg_port: int, mode: PoolMode = "transaction") -> Iterator[PgBouncer]:
    bouncer = PgBouncer(pg_port, mode=mode)
    with bouncer:
        yield bouncer


def _main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pg-port", type=int, required=True)
    parser.add_argument("--mode", choices=("session", "transaction"), default="transaction")
    parser.add_argument("--port", type=int, default=None)
    args = parser.parse_args(argv)
    with PgBouncer(args.pg_port, mode=args.mode, port=args.port) as bouncer:
        print(f"pgbouncer ({args.mode} mode) on {bouncer.url('DBNAME')}; pid {bouncer.pid}; "
              "Ctrl-C stops it", flush=True)
        with contextlib.suppress(KeyboardInterrupt):
            while bouncer.alive():
                time.sleep(0.5)
    return 0


if __name__ == "__main__":
    raise SystemExit(_main())
