"""The durable local spool for settlement records the database could not take (I4).

Records are appended as JSON lines to a segment file owned by this process,
and the file is fsync'd before :meth:`Spool.append` returns, so a batch that
reached the spool survives a crash or restart. Segments are replayed in the
order they were written; a segment is deleted only after every record in it
was settled. Replay is safe to repeat because settlement is idempotent on the
request id (I1). A torn last line (a crash mid-write) is skipped: its append
never returned, so its records were never acknowledged as spooled.

Several processes may share one spool directory (one volume per host): each
writes its own segments, and a segment is replayed under an exclusive
``flock`` so two replayers never work on the same file at once.
"""

from __future__ import annotations

import fcntl
import json
import os
import time
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

Record = dict[str, Any]


class Spool:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.directory.mkdir(parents=True, exist_ok=True)
        self._segment: Path | None = None
        self._seq = 0

    def _new_segment(self) -> Path:
        self._seq += 1
        name = f"{time.time_ns():020d}-{os.getpid()}-{self._seq:06d}.jsonl"
        return self.directory / name

    def append(self, records: Sequence[Record], encode: Callable[[Any], Any]) -> None:
        """Durably append records; returns only after fsync."""
        if not records:
            return
        if self._segment is None:
            self._segment = self._new_segment()
        data = "".join(json.dumps(r, default=encode, separators=(",", ":")) + "\n"
                       for r in records).encode("utf-8")
        fd = os.open(self._segment, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        self._fsync_dir()

    def _fsync_dir(self) -> None:
        fd = os.open(self.directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def segments(self) -> list[Path]:
        return sorted(self.directory.glob("*.jsonl"))

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
    def read(path: Path) -> list[Record]:
        records: list[Record] = []
        with path.open("rb") as fh:
            for line in fh:
                if not line.endswith(b"\n"):
                    break  # torn tail: that append never returned
                records.append(json.loads(line))
        return records

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
        for path in self.segments():
            if path == self._segment:
                # Close our own segment first so new appends go to a fresh file.
                self._segment = None
            with self._locked(path) as mine:
                if not mine:
                    continue
                records = self.read(path)
                for start in range(0, len(records), batch_size):
                    await settle(records[start : start + batch_size])
                path.unlink()
                self._fsync_dir()
                replayed += len(records)
        return replayed
