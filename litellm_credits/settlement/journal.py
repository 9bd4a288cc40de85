"""The pre-response journal: a served request's settlement record on disk before its answer leaves.

LiteLLM runs its success callbacks after the response is sent, so a process killed right after
answering used to lose that request's settlement. The hook now builds the record before the
response leaves the proxy (``async_post_call_success_hook``, or the stream wrapper at the end
of a stream) and hands it to :meth:`Journal.write`: ONE ``os.write`` of one JSON line to the
journal segment this process owns. A write that returned is in the kernel's page cache, which
survives the death of the process (SIGKILL, OOM kill); only a power loss or a kernel crash can
take it. For those, :meth:`Journal.sync` fsyncs the current segment in groups, from a thread, at
most every ``journal_fsync_ms`` (see :class:`~litellm_credits.settlement.writer.Writer`): there is
no fsync per response.

The writer then settles the record from its queue as before and reports it
:meth:`Journal.done` once it is settled, spooled (fsync'd) or set aside. A segment is deleted
once every record in it is done and it is no longer appended to. What a killed process leaves
behind is replayed by :meth:`~litellm_credits.settlement.spool.Spool.replay` on the next start,
like any spool segment; settling a record twice is harmless (I1: ``settle_usage`` skips a
request id already logged).

Segments live in ``<spool>/journal/`` (so ``credits_spool_depth`` keeps meaning "waiting for
the database") with the spool's naming and locking: this process holds an exclusive ``flock``
on each of its segments until it deletes it, so no replayer, in this process or another one
sharing the directory, reads a segment whose records are still on their way to the database.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from litellm_credits.settlement.record import SettlementRecord

JOURNAL_DIR = "journal"
ROTATE_RECORDS = 2000  # a segment takes at most this many records...
ROTATE_SECONDS = 2.0  # ...or is this old, before appends go to a new one


class _Segment:
    __slots__ = ("created", "fd", "path", "pending", "synced", "written")

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self.fd = fd
        self.pending = 0  # records written and not yet done
        self.written = 0
        self.synced = 0  # records covered by the last fsync
        self.created = time.monotonic()


class Journal:
    """Append-only segments of records settled from memory; see the module docstring."""

    def __init__(self, spool_directory: Path) -> None:
        self.directory = spool_directory / JOURNAL_DIR
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._current: _Segment | None = None
        self._retired: list[_Segment] = []
        self._where: dict[str, _Segment] = {}  # request id -> the segment holding its line
        self._seq = 0
        self.writes = 0
        self.syncs = 0

    # -- the hot path ------------------------------------------------------------------

    def write(self, record: SettlementRecord, encoded: Mapping[str, Any] | None = None) -> None:
        """Append one record with one ``os.write``, no fsync; OSError if the disk refuses.

        ``encoded`` is ``record.to_json()`` if the caller already has it.
        """
        obj = record.to_json() if encoded is None else encoded
        line = (json.dumps(obj, separators=(",", ":")) + "\n").encode("utf-8")
        segment = self._segment()
        written = os.write(segment.fd, line)
        if written != len(line):  # a short write to a regular file: disk full mid-line
            os.ftruncate(segment.fd, os.lseek(segment.fd, 0, os.SEEK_CUR) - written)
            raise OSError(28, f"short write to the settlement journal {segment.path}")
        previous = self._where.get(record.request_id)
        if previous is not None:  # the same request journaled twice: count it once
            previous.pending -= 1
        self._where[record.request_id] = segment
        segment.pending += 1
        segment.written += 1
        self.writes += 1

    def done(self, records: Iterable[SettlementRecord]) -> None:
        """These records are settled, spooled or set aside: their lines are no longer needed."""
        any_done = False
        for record in records:
            segment = self._where.pop(record.request_id, None)
            if segment is not None:
                segment.pending -= 1
                any_done = True
        if any_done:
            self._collect()

    @property
    def pending(self) -> int:
        return len(self._where)

    # -- housekeeping (the writer's sync task) ---------------------------------------------

    def due_for_sync(self) -> int | None:
        """A duplicate of the current segment's fd if it has unsynced lines (caller closes it)."""
        segment = self._current
        if segment is None or segment.synced == segment.written or segment.pending == 0:
            return None
        segment.synced = segment.written
        self.syncs += 1
        return os.dup(segment.fd)

    def tick(self) -> None:
        """Retire an idle segment whose records are all done (called periodically)."""
        segment = self._current
        if segment is not None and segment.pending <= 0 \
                and time.monotonic() - segment.created >= ROTATE_SECONDS:
            self._current = None
            self._retire(segment)

    def close(self) -> None:
        """Stop journaling. Segments with records not yet done stay on disk for the next start."""
        for segment in [*self._retired, *([self._current] if self._current else [])]:
            if segment.pending <= 0:
                self._delete(segment)
            else:
                os.close(segment.fd)  # releases the lock: replayable
        self._current = None
        self._retired = []
        self._where.clear()

    # -- internals ---------------------------------------------------------------------------

    def _segment(self) -> _Segment:
        segment = self._current
        if segment is not None and (segment.written >= ROTATE_RECORDS
                                    or time.monotonic() - segment.created >= ROTATE_SECONDS):
            self._current = None
            self._retire(segment)
            segment = None
        if segment is None:
            self._seq += 1
            path = self.directory / f"{time.time_ns():020d}-{os.getpid()}-j{self._seq:06d}.jsonl"
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            segment = self._current = _Segment(path, fd)
        return segment

    def _retire(self, segment: _Segment) -> None:
        if segment.pending <= 0:
            self._delete(segment)
        else:
            self._retired.append(segment)

    def _collect(self) -> None:
        if self._retired:
            keep = []
            for segment in self._retired:
                if segment.pending <= 0:
                    self._delete(segment)
                else:
                    keep.append(segment)
            self._retired = keep

    @staticmethod
    def _delete(segment: _Segment) -> None:
        # Unlink while still holding the lock, so no replayer opens a file being deleted.
        try:
            segment.path.unlink()
        except FileNotFoundError:
            pass
        os.close(segment.fd)
