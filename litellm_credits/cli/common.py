"""What every ``litellm-credits`` subcommand shares: the context, output and types.

The command modules (:mod:`.ledger`, :mod:`.keys`, :mod:`.ops`) import this
module and nothing of each other; :mod:`.main` imports them all to build the
parser. So no command module needs the entry point, and there is no cycle.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
from collections.abc import Awaitable, Callable, Sequence
from datetime import date, datetime
from decimal import Decimal
from typing import Any, TypeAlias

from litellm_credits import settings
from litellm_credits.ledger import Ledger
from litellm_credits.store.db import Database

#: A subcommand: parsed arguments and the context in, exit status out.
Handler = Callable[[argparse.Namespace, "Context"], Awaitable[int]]
#: ``add(name, handler, help)``: a subcommand with ``--json``, bound to ``handler``.
AddCommand = Callable[[str, Handler, str], argparse.ArgumentParser]
#: The top-level subparsers, where groups like ``keys`` add their own parser.
Subparsers: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"


def operator() -> str:
    """Who ran the command, as written to ``created_by`` (the sudo user if any)."""
    return f"cli:{os.environ.get('SUDO_USER') or getpass.getuser()}"


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return "<bytes>"
    return value


def emit(args: argparse.Namespace, rows: Sequence[dict[str, Any]] | dict[str, Any]) -> None:
    """Print rows as JSON (--json) or as an aligned table."""
    if getattr(args, "json", False):
        print(json.dumps(rows, default=_plain, indent=2))
        return
    items = [rows] if isinstance(rows, dict) else list(rows)
    if not items:
        print("(none)")
        return
    columns = list(items[0].keys())
    cells = [[("" if r.get(c) is None else str(_plain(r.get(c)))) for c in columns] for r in items]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.ljust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)))


class Context:
    """What a subcommand needs: settings, and a database opened on demand."""

    def __init__(self, cfg: settings.Settings) -> None:
        self.settings = cfg
        self._db: Database | None = None

    @property
    def url(self) -> str:
        return settings.require_database_url(self.settings)

    async def db(self) -> Database:
        if self._db is None:
            # Operator commands may scan the whole ledger (verify, reconcile):
            # a long statement timeout, a small pool.
            self._db = Database(self.url, min_size=1, max_size=4, timeout=10.0,
                                statement_timeout_ms=600_000, name="litellm-credits-cli")
            await self._db.open(wait=True)
        return self._db

    async def ledger(self) -> Ledger:
        return Ledger(await self.db())

    async def close(self) -> None:
        if self._db is not None:
            await self._db.close()

