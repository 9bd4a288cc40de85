"""Placing holds: concurrent reserves share one database round trip.

This module owns the queue between the pre-call hook and the database. On a
busy proxy several requests are in the hook at once, and each one's
``reserve_credits`` round trip costs the proxy's single core more client-side
work (psycopg, the event loop) than the rest of the plugin together. So it
works like group commit: a reserve that finds no statement in flight goes out
at once (an idle proxy adds no wait), and reserves that arrive while one is in
flight wait for it and then go together in one ``reserve_credits_many``
statement (0005_reserve_batch.sql) -- one round trip and one commit per batch.

What a request sees does not change: its own status, or its own error.
Inside the statement every item runs in its own subtransaction, so a bad item
fails alone. An item whose account row another transaction holds comes back
as ``55P03`` and is retried on its own with the single ``reserve`` query,
which may wait for the lock; a batch itself never waits on a lock. If the
whole statement is refused for a data error, every item is retried alone, so
one malformed request cannot fail its neighbours. Callers validate their input
before it gets here (:meth:`litellm_credits.ledger.Ledger.reserve`).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from litellm_credits import errors
from litellm_credits.store.db import Database, Row, from_sqlstate

LOCK_NOT_AVAILABLE = "55P03"


@dataclass(frozen=True)
class HoldRequest:
    user_id: str
    request_id: str
    base_amount: Decimal
    level: str | None
    ttl_seconds: int

    def params(self) -> dict[str, Any]:
        return {"user_id": self.user_id, "request_id": self.request_id,
                "base_amount": self.base_amount, "level": self.level, "ttl": self.ttl_seconds}

    def item(self) -> dict[str, Any]:
        return {"u": self.user_id, "rid": self.request_id, "amt": str(self.base_amount),
                "lvl": self.level, "ttl": self.ttl_seconds}


class HoldPlacer:
    """Runs ``reserve_credits`` for callers, batching those that arrive together.

    ``max_batch`` bounds one statement; 1 turns batching off (every reserve is
    its own round trip, as before 0005).
    """

    def __init__(self, db: Database, *, max_batch: int = 64) -> None:
        if max_batch < 1:
            raise errors.ConfigError(f"reserve batch size must be at least 1, got {max_batch}")
        self.db = db
        self.max_batch = max_batch
        self._queue: list[tuple[HoldRequest, asyncio.Future[Row]]] = []
        self._sender: asyncio.Task[None] | None = None
        self._retries: set[asyncio.Task[None]] = set()
        self.batches = 0  # statements sent, for the benchmark and tests
        self.batched = 0  # requests that went in them

    async def place(self, request: HoldRequest) -> Row:
        """The row ``reserve_credits`` returns for this request, or its error."""
        if self.max_batch == 1:
            return await self._alone(request)
        future: asyncio.Future[Row] = asyncio.get_running_loop().create_future()
        self._queue.append((request, future))
        if self._sender is None or self._sender.done():
            self._sender = asyncio.create_task(self._send_all())
        # Each caller keeps the database deadline it had when every reserve was its
        # own round trip, however long the statements ahead of it take. A request
        # that times out or is cancelled before its turn cancels its future, and the
        # sender skips it: its hold is never placed.
        return await self.db.within_deadline(future)

    async def _alone(self, request: HoldRequest) -> Row:
        row = await self.db.fetchone("reserve", request.params())
        assert row is not None  # reserve_credits returns one row or raises
        return row

    async def _send_all(self) -> None:
        while self._queue:
            batch = self._queue[: self.max_batch]
            del self._queue[: self.max_batch]
            try:
                await self._send(batch)
            except BaseException as exc:
                # Nothing may be left waiting: the callers get the error instead
                # (a CreditsError decides fail mode; anything else is a bug and
                # surfaces as one). Later arrivals start a new sender.
                failure = exc if isinstance(exc, Exception) else errors.DatabaseUnavailable(
                    "placing the hold was interrupted; retry")
                for _, future in batch:
                    if not future.done():
                        future.set_exception(failure)
                if not isinstance(exc, Exception):
                    raise

    async def _send(self, batch: list[tuple[HoldRequest, asyncio.Future[Row]]]) -> None:
        live = [(r, f) for r, f in batch if not f.done()]  # a caller may have given up
        if not live:
            return
        # Even a lone reserve goes through reserve_credits_many: its NOWAIT keeps
        # a locked account from stalling the sender and everything queued behind it.
        items = json.dumps([r.item() for r, _ in live])
        try:
            rows = await self.db.fetchall("reserve_many", {"items": items})
        except errors.InvalidInput:
            # The statement as a whole was refused (malformed input slipped past
            # validation): find the culprit by sending each on its own.
            self._retry_alone(live)
            return
        self.batches += 1
        self.batched += len(live)
        by_ord = {int(row["ord"]): row for row in rows}
        retry: list[tuple[HoldRequest, asyncio.Future[Row]]] = []
        for n, (request, future) in enumerate(live, start=1):
            row = by_ord.get(n)
            if future.done():
                continue
            if row is None:
                future.set_exception(errors.CreditsError(
                    "reserve_credits_many returned no row for a request; this is a bug"))
            elif row["err_state"] == LOCK_NOT_AVAILABLE:
                retry.append((request, future))
            elif row["err_state"]:
                future.set_exception(
                    from_sqlstate(row["err_state"], row["err_message"] or "", row["err_hint"]))
            else:
                future.set_result(row)
        self._retry_alone(retry)

    def _retry_alone(self, items: list[tuple[HoldRequest, asyncio.Future[Row]]]) -> None:
        """Send each with the single ``reserve``, without holding up the sender.

        A retry may wait for its account's lock up to the statement timeout; the
        batches queueing behind this one must not wait with it.
        """
        for request, future in items:
            task = asyncio.create_task(self._settle_alone(request, future))
            self._retries.add(task)
            task.add_done_callback(self._retries.discard)

    async def _settle_alone(self, request: HoldRequest, future: asyncio.Future[Row]) -> None:
        try:
            row = await self._alone(request)
        except Exception as exc:  # noqa: BLE001 - re-raised in the one caller it belongs to
            if not future.done():
                future.set_exception(exc)
            return
        if not future.done():
            future.set_result(row)
