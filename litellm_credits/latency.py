"""Recent latency per deployment, for the routing filter, kept up incrementally.

This module owns the running window behind ``Snapshot.latency_ms``. Reading
the whole window of ``llm_usage_log`` on every refresh cost each proxy time in
proportion to the whole fleet's traffic (the window holds everyone's rows), and
every proxy paid it every few seconds. Instead each proxy keeps per-minute sums
in memory and each refresh reads only the usage rows after the last id it saw
(``latency_since``), a few seconds of traffic, from the primary key.

Two approximations, both harmless for a routing heuristic and neither touching
money: the window is kept in whole minutes (it spans between
``latency_window_seconds`` and a minute more), and a usage row whose id was
allocated before the last one read but committed after it is not counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from litellm_credits.store.db import Database

Key = tuple[str, str]  # (model group, deployment id)


class LatencyWindow:
    def __init__(self, window_seconds: int, clock: Callable[[], float] = time.time) -> None:
        self.window_seconds = window_seconds
        self.last_id = 0
        self._clock = clock
        self._minutes: dict[tuple[str, str, int], tuple[int, int]] = {}

    async def refresh(self, db: Database) -> dict[Key, int]:
        """Read what is new and return the mean latency (ms) per deployment."""
        rows = await db.fetchall(
            "latency_since",
            {"after_id": self.last_id, "window_seconds": self.window_seconds},
        )
        self.add(rows)
        return self.means()

    def add(self, rows: list[dict[str, object]]) -> None:
        for row in rows:
            # Advance past every row read, kept or not, so the next refresh never reads it again.
            self.last_id = max(self.last_id, _int(row["last_id"]))
            deployment = row["deployment_id"]
            if not deployment:
                continue
            key = (str(row["model_group"]), str(deployment), _int(row["minute"]))
            total, count = self._minutes.get(key, (0, 0))
            self._minutes[key] = (total + _int(row["total_ms"]), count + _int(row["n"]))

    def means(self) -> dict[Key, int]:
        oldest = int(self._clock() - self.window_seconds) // 60
        for key in [k for k in self._minutes if k[2] < oldest]:
            del self._minutes[key]
        sums: dict[Key, tuple[int, int]] = {}
        for (group, deployment, _), (total, count) in self._minutes.items():
            t, n = sums.get((group, deployment), (0, 0))
            sums[(group, deployment)] = (t + total, n + count)
        # Rounded half up in integers, as avg(...)::integer did.
        return {key: (2 * t + n) // (2 * n) for key, (t, n) in sums.items() if n}


def _int(value: object) -> int:
    if isinstance(value, int):
        return value
    return int(str(value))
