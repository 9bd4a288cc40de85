"""The background settlement writer.

The hook hands finished requests to :meth:`Writer.submit`, which only puts a
record on an in-memory queue. A task in the proxy's event loop takes records
in batches and settles each batch in one transaction through
``Ledger.settle`` (one usage row + one debit + the hold released, per request).

When the database is unreachable, the batch and everything queued behind it
go to the durable spool, and until a replay succeeds new records go straight
to the spool too (an outage must not keep served requests in memory, where a
crash would lose them). A replay loop settles the spool once the database
answers again (I4). A batch the database refuses as invalid is split to find
the bad record, so one malformed record cannot block the others; the bad
record is kept in ``rejected/`` for an operator, never dropped silently.

The batch being settled is remembered until it is written, so a shutdown
spools it too; settling it twice is harmless (I1).

Records of served requests arrive through :meth:`Writer.submit_served` before the response leaves
the proxy: one line appended to the pre-response journal (no fsync; it survives a process
kill), then the queue. Once a record is settled, spooled or set aside, the journal is told
(:meth:`Journal.done`) and drops segments that are all done. A sync task fsyncs the journal
in groups, every ``journal_fsync_seconds`` (1 s by default) from a thread, and retires idle
segments; nothing on the request path waits for a disk.

Records are :class:`SettlementRecord`; what reaches ``settle_usage`` is each
record's :meth:`~SettlementRecord.to_json`. The one ``on_batch`` callback is
given at construction (the runtime's, which fans out to its observers).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from litellm_credits import errors
from litellm_credits.ledger import Ledger
from litellm_credits.settlement.journal import Journal
from litellm_credits.settlement.record import JsonObject, SettlementRecord
from litellm_credits.settlement.spool import Spool

Record = SettlementRecord
BatchCallback = Callable[[Sequence[SettlementRecord], Sequence[Mapping[str, Any]], float], None]

log = logging.getLogger("litellm_credits.settlement.writer")


@dataclass
class WriterStats:
    settled: int = 0
    spooled: int = 0
    replayed: int = 0
    rejected: int = 0
    batches: int = 0
    failures: int = 0
    last_batch_size: int = 0
    last_batch_seconds: float = 0.0
    outcomes: dict[str, int] = field(default_factory=dict)


class Writer:
    def __init__(
        self,
        ledger: Ledger,
        spool: Spool,
        *,
        batch_size: int = 500,
        flush_seconds: float = 0.05,
        replay_interval: float = 2.0,
        settle_timeout: float | None = None,
        on_batch: BatchCallback | None = None,
        # writer.journal_fsync_ms in the settings; a process kill loses nothing
        # either way, this bounds what a power loss can take.
        journal_fsync_seconds: float = 1.0,
    ) -> None:
        self.ledger = ledger
        self.spool = spool
        self.batch_size = batch_size
        self.flush_seconds = flush_seconds
        self.replay_interval = replay_interval
        # How long a live batch may take before it is spooled instead: short, so
        # records served while the database is going away reach the disk within
        # about a second. A batch abandoned this way is replayed later, which is
        # harmless if it committed after all (I1). Replays use the full deadline.
        self.settle_timeout = settle_timeout
        self._on_batch = on_batch
        self.queue: asyncio.Queue[Record] = asyncio.Queue()
        self.stats = WriterStats()
        self._tasks: list[asyncio.Task[None]] = []
        self.journal = Journal(spool.directory)
        self._encoded: dict[str, tuple[Record, JsonObject]] = {}
        self.journal_fsync_seconds = journal_fsync_seconds
        self._spool_dirty = bool(spool.segments() or spool.journal_segments())
        self._closing = False
        self._outage = False  # spool directly until a replay succeeds
        self._inflight: list[Record] = []

    # -- surface used by the hook --------------------------------------------------

    def submit(self, record: Record) -> None:
        if self._closing or self._outage:
            # Shutdown, or the database is away: straight to disk.
            self._to_spool([record])
            return
        self.queue.put_nowait(record)

    def submit_served(self, record: Record) -> None:
        """Keep the record of a request about to be answered, then queue it.

        One ``os.write`` to the journal (page cache, no fsync): from here on a killed process
        does not lose it. Raises OSError if the disk refuses; the caller decides what then.
        """
        if self._closing or self._outage:
            self._to_spool([record])  # fsync'd: the database is away anyway
            return
        encoded = record.to_json()
        self.journal.write(record, encoded)
        # The same object goes to settle_usage: encoded once per record, not twice.
        self._encoded[record.request_id] = (record, encoded)
        self.queue.put_nowait(record)

    @property
    def depth(self) -> int:
        return self.queue.qsize()

    # -- lifecycle -----------------------------------------------------------------

    def start(self) -> None:
        if not self._tasks:
            self._tasks = [
                asyncio.create_task(self._run(), name="credits-writer"),
                asyncio.create_task(self._replay_loop(), name="credits-spool-replay"),
                asyncio.create_task(self._sync_loop(), name="credits-journal-sync"),
            ]

    async def close(self, timeout: float = 10.0) -> None:
        """Stop taking new work, settle or spool what is queued."""
        self._closing = True
        for task in self._tasks:
            task.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=timeout)
            for task in stuck:  # never wait forever on shutdown; what is queued is spooled below
                log.error("writer task %s did not stop within %.0f s", task.get_name(), timeout)
        self._tasks = []
        pending = self._take_inflight() + self._drain_queue()
        if pending:
            try:
                await asyncio.wait_for(self._settle(pending), timeout)
            except (TimeoutError, errors.CreditsError):
                self._to_spool(pending)
        self.journal.close()

    def spool_pending(self) -> int:
        """Write whatever is still queued to the spool, synchronously.

        Registered with ``atexit``: when the proxy shuts down normally its event
        loop is gone, but queued records of served requests must not be lost.
        """
        pending = self._take_inflight() + self._drain_queue()
        if pending:
            self._to_spool(pending)
        self.journal.close()
        return len(pending)

    def _take_inflight(self) -> list[Record]:
        batch, self._inflight = self._inflight, []
        return batch

    async def flush(self) -> None:
        """Settle everything queued now (tests and shutdown)."""
        batch = self._drain_queue()
        if batch:
            await self._settle_or_spool(batch)

    # -- internals -----------------------------------------------------------------

    def _drain_queue(self) -> list[Record]:
        batch: list[Record] = []
        while not self.queue.empty():
            batch.append(self.queue.get_nowait())
        return batch

    async def _next_batch(self) -> list[Record]:
        # Built in self._inflight, so records taken off the queue are never only
        # in a local variable when the task is cancelled.
        batch = self._inflight = [await self.queue.get()]
        deadline = time.monotonic() + self.flush_seconds
        while len(batch) < self.batch_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            # asyncio.timeout, not wait_for: on 3.11 wait_for can drop a cancellation
            # that lands as the item arrives, and close() would then wait forever.
            try:
                async with asyncio.timeout(remaining):
                    batch.append(await self.queue.get())
            except TimeoutError:
                break
        return batch

    async def _run(self) -> None:
        while True:
            self._inflight = await self._next_batch()
            try:
                await self._settle_or_spool(self._inflight)
            except Exception:  # noqa: BLE001 - the writer must outlive any one batch
                log.exception("settlement writer: unexpected error; spooling %d records",
                              len(self._inflight))
                await self._spool_or_hold(self._inflight)
            self._inflight = []

    async def _settle_or_spool(self, batch: list[Record]) -> None:
        if self._outage:
            await self._spool_or_hold(batch)
            return
        try:
            await self._settle(batch)
        except errors.DatabaseUnavailable as exc:
            self.stats.failures += 1
            self._outage = True
            behind = self._drain_queue()
            log.warning("credits database unavailable, spooling %d records until it is "
                        "back: %s", len(batch) + len(behind), exc.message)
            await self._spool_or_hold(batch + behind)
        except errors.InvalidInput:
            await self._isolate(batch)
        except errors.CreditsError as exc:
            # Unknown database trouble: keep the records, retry later.
            self.stats.failures += 1
            log.error("settlement failed, spooling %d records: %s", len(batch), exc.message)
            await self._spool_or_hold(batch)

    async def _spool_or_hold(self, batch: list[Record]) -> None:
        """Spool a batch; if even the disk refuses, keep it queued and slow down."""
        try:
            self._to_spool(batch)
        except OSError as exc:
            log.critical("cannot write the settlement spool in %s (%s); keeping %d records "
                         "in memory", self.spool.directory, exc.strerror, len(batch))
            for record in batch:
                self.queue.put_nowait(record)
            await asyncio.sleep(1.0)

    async def _settle(self, batch: list[Record], live: bool = True) -> None:
        started = time.perf_counter()
        results = await self.ledger.settle([self._json(r) for r in batch],
                                           self.settle_timeout if live else None)
        elapsed = time.perf_counter() - started
        self.stats.settled += len(batch)
        self.stats.batches += 1
        self.stats.last_batch_size = len(batch)
        self.stats.last_batch_seconds = elapsed
        self._done(batch)
        for row in results:
            self.stats.outcomes[row["outcome"]] = self.stats.outcomes.get(row["outcome"], 0) + 1
        if self._on_batch is not None:
            self._on_batch(batch, results, elapsed)

    async def _isolate(self, batch: list[Record]) -> None:
        """Split a refused batch until the bad records are alone; keep those aside."""
        if len(batch) == 1:
            self._reject(batch[0])
            return
        middle = len(batch) // 2
        for half in (batch[:middle], batch[middle:]):
            try:
                await self._settle(half)
            except errors.InvalidInput:
                await self._isolate(half)
            except errors.CreditsError as exc:
                log.warning("settlement failed while isolating a bad record, spooling %d: %s",
                            len(half), exc.message)
                await self._spool_or_hold(half)

    def _reject(self, record: Record) -> None:
        self.stats.rejected += 1
        path = self.spool.set_aside(
            f"{record.request_id[:64]}.json", json.dumps(record.to_json()).encode("utf-8"))
        self._done([record])
        log.error("settlement record %s was refused by the database; kept in %s",
                  record.request_id, path)

    def _to_spool(self, batch: list[Record]) -> None:
        self.spool.append(batch)
        self._done(batch)
        self.stats.spooled += len(batch)
        self._spool_dirty = True

    def _json(self, record: Record) -> JsonObject:
        entry = self._encoded.get(record.request_id)
        return entry[1] if entry is not None and entry[0] is record else record.to_json()

    def _done(self, batch: Sequence[Record]) -> None:
        """Settled, spooled or set aside: the journal no longer needs these lines."""
        self.journal.done(batch)
        for record in batch:
            entry = self._encoded.get(record.request_id)
            if entry is not None and entry[0] is record:
                del self._encoded[record.request_id]

    async def replay_now(self) -> int:
        replayed = await self.spool.replay(self._settle_replayed, self.batch_size)
        self.stats.replayed += replayed
        self._outage = False  # the database took everything that was waiting
        self._spool_dirty = bool(self.spool.segments())
        return replayed

    async def _settle_replayed(self, batch: list[Record]) -> None:
        try:
            await self._settle(batch, live=False)
        except errors.InvalidInput:
            await self._isolate(batch)

    async def _replay_loop(self) -> None:
        while True:
            if self._spool_dirty or self._outage:
                try:
                    replayed = await self.replay_now()
                    if replayed:
                        log.warning("replayed %d spooled settlement records", replayed)
                except errors.CreditsError as exc:
                    log.info("spool replay waits for the database: %s", exc.message)
                except Exception:  # noqa: BLE001 - retried next round; records stay on disk
                    log.exception("spool replay failed; will retry")
            await asyncio.sleep(self.replay_interval)

    async def _sync_loop(self) -> None:
        """Group fsync of the journal (for a power loss; a process kill needs none)."""
        while True:
            await asyncio.sleep(self.journal_fsync_seconds)
            try:
                self.journal.tick()
                fd = self.journal.due_for_sync()
                if fd is not None:
                    await asyncio.to_thread(_fsync_and_close, fd, self.journal.directory)
            except OSError as exc:
                log.error("cannot fsync the settlement journal in %s: %s",
                          self.journal.directory, exc.strerror)


def _fsync_and_close(fd: int, directory: Any) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
