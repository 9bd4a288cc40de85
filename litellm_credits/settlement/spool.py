"""The durable local spool for settlement records the database could not take (I4).

Records are appended as JSON lines to a segment file owned by this process,
and the file is fsync'd before :meth:`Spool.append` returns, so a batch that
reached the spool survives a crash or restart. Segments are replayed in the
order they were written; a segment is deleted only after every record in it
was settled. Replay is safe to repeat because settlement is idempotent on the
request id (I1). A torn last line (a crash mid-write) is skipped: its append
never returned, so its records were never acknowledged as spooled.

Several processes may share one spool directory (one volume per host): each
writes its own segments and holds an exclusive ``flock`` on the one it is
appending to, and a segment is replayed only under that same lock, so no
replayer reads a file that is still being written or that another replayer
has. A line that is complete but not JSON (a damaged disk block) is moved to
``rejected/`` for an operator instead of blocking the replay forever.

The pre-response journal (:mod:`~litellm_credits.settlement.journal`) keeps its segments in
``journal/`` in the same format and locking; :meth:`Spool.replay` also settles the ones a dead
process left there. They are not counted in :meth:`Spool.depth`.

A line is :meth:`SettlementRecord.to_json` as JSON; reading uses
:meth:`SettlementRecord.from_json`, which also reads the lines older versions
wrote (the same object, Decimals as text). A line that is JSON but not a
record goes to ``rejected/`` as well.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
import weakref
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from litellm_credits.settlement.journal import JOURNAL_DIR
from litellm_credits.settlement.record import RecordFormatError, SettlementRecord

Record = SettlementRecord


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        self._segment: Path | None = None
        self._fd: int | None = None  # open, and flock'ed, while _segment is current
        self._finalizer: weakref.finalize[Any, Any]
        self._seq = 0

    def _open_segment(self) -> int:
        if self._fd is None:
            self._seq += 1
            name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.jsonl"
            self._segment = self.directory / name
            fd = os.open(self._segment, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._fd = fd
            # A spool dropped without close_segment() (a writer that "died" in
            # process) must still release its lock for the next replayer.
            self._finalizer = weakref.finalize(self, os.close, fd)
            self._fsync_dir()
        return self._fd

    def close_segment(self) -> None:
        """Stop appending to the current segment so it can be replayed."""
        if self._fd is not None:
            self._finalizer.detach()
            os.close(self._fd)  # releases the flock
        self._fd = None
        self._segment = None


    def append(self, records: Sequence[Record]) -> None:
        """Durably append records; returns only after every byte is written and fsync'd."""
        if not records:
            return
        data = memoryview("".join(json.dumps(r.to_json(), separators=(",", ":")) + "\n"
                                  for r in records).encode("utf-8"))
        fd = self._open_segment()
        while data:
            written = os.write(fd, data)
            data = data[written:]
        os.fsync(fd)

    def _fsync_dir(self, directory: Path | None = None) -> None:
        fd = os.open(directory or self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def segments(self) -> list[Path]:
        """The spool's own segments (records that waited for the database)."""
        return sorted(self.directory.glob("*.jsonl"))

    def journal_segments(self) -> list[Path]:
        """Pre-response journal segments (:mod:`~litellm_credits.settlement.journal`)."""
        return sorted((self.directory / JOURNAL_DIR).glob("*.jsonl"))

    def depth(self) -> int:
        """Records waiting in the spool (lines in all segments)."""
        total = 0
        for path in self.segments():
            try:
                with path.open("rb") as fh:
                    total += sum(1 for line in fh if line.endswith(b"\n"))
            except FileNotFoundError:
                continue
        return total

    @staticmethod
    def read(path: Path, on_bad: Callable[[str, bytes], object] | None = None) -> list[Record]:
        """The complete records of a segment; damaged lines go to ``on_bad``."""
        records: list[Record] = []
        with path.open("rb") as fh:
            for number, line in enumerate(fh, 1):
                if not line.endswith(b"\n"):
                    break  # torn tail: that append never returned
                try:
                    records.append(SettlementRecord.from_json(json.loads(line)))
                except (ValueError, RecordFormatError):
                    if on_bad is not None:
                        on_bad(f"{path.stem}-line{number}.jsonl", line)
        return records

    def set_aside(self, name: str, data: bytes) -> Path:
        """Keep something the database or the parser refused, for an operator."""
        folder = self.directory / "rejected"
        folder.mkdir(exist_ok=True, mode=0o700)
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in name)[:120]
        path = folder / f"{time.time_ns()}-{safe}"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        return path

    @contextmanager
    def _locked(self, path: Path) -> Iterator[bool]:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            yield False
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                yield False
                return
            yield path.exists()
        finally:
            os.close(fd)

    async def replay(self, settle: Callable[[list[Record]], Awaitable[object]],
                     batch_size: int = 500) -> int:
        """Settle every spooled record in order; return how many were replayed.

        Stops at the first failure (the exception propagates) and leaves the
        failing segment in place for the next attempt.
        """
        replayed = 0
        # Journal segments a live writer still appends to are locked, so skipped here; what a
        # killed process left behind is settled like any spool segment (I1 makes it harmless
        # if some of it was settled already).
        for path in sorted(self.segments() + self.journal_segments(), key=lambda p: p.name):
            if path == self._segment:
                # Close our own segment first so new appends go to a fresh file.
                self.close_segment()
            with self._locked(path) as mine:
                if not mine:
                    continue
                records = self.read(path, self.set_aside)
                for start in range(0, len(records), batch_size):
                    await settle(records[start : start + batch_size])
                path.unlink()
                self._fsync_dir(path.parent)
                replayed += len(records)
        return replayed
