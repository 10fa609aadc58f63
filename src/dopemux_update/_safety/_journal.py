"""The write-ahead journal of a run: ``<state>/journal.jsonl``.

Each record is written before the step it announces. The journal is created atomically with
its first record (temporary file, fsync, rename, fsync of the folder); later records are
appended, one JSON object a line, each with a checksum so that a line torn by a crash is
recognised and ignored.

Every record recovery depends on is ``fdatasync``-ed before the step it announces: the start
of the run (with its backup id), the commit point, a rollback, a run left needing recovery,
and, in a run without a backup, each migration's start and end. In a run with a backup the
per-migration records are written but not synced: a killed process never loses them (they
are in the page cache), and after a power loss recovery restores the backup whichever
migration was running, so it does not need them. A thousand ``fdatasync`` calls cost 0.2 to
0.4 s here, more than a thousand small migrations. A journal that exists means a run that did not
finish: the next command, or ``dopemux-update recover``, finishes or undoes it. The journal is
retired (unlinked, folder fsynced) only once the run's outcome is recorded in ``state.json``.

An append that fails (a full disk) is cut back off the file, so that a half-written record
never sits in front of the records written after it. Reading keeps going past a damaged line:
a crash can only tear the last line, so a damaged line in the middle is damage, and what
comes after it is still reported (see :meth:`Journal.inspect`).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, NamedTuple

from .._core._faults import check_write, crash_point
from .._core._fsutil import atomic_write, fsync_dir
from ._private import JOURNAL as JOURNAL  # noqa: PLC0414 - named there, for status

__all__ = ["Journal", "JournalContents", "Record"]

Record = dict[str, Any]


# One encoder for every record: ``json.dumps`` with options builds a new one per call.
_ENCODER = json.JSONEncoder(sort_keys=True, separators=(",", ":"))


def _digest(data: bytes) -> str:
    import xxhash  # noqa: PLC0415 - status looks for a journal without reading one

    return xxhash.xxh3_64_hexdigest(data)


def _line(record: Record) -> bytes:
    body = _ENCODER.encode(record)
    return f"{body}\t{_digest(body.encode())}\n".encode()


def _parse(line: bytes) -> Record | None:
    try:
        body, checksum = line.rstrip(b"\n").rsplit(b"\t", 1)
    except ValueError:
        return None
    if _digest(body) != checksum.decode(errors="replace"):
        return None
    try:
        record = json.loads(body)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


class JournalContents(NamedTuple):
    """What a journal file holds: its intact records in order, and how many lines were not
    readable (``damaged``) and whether the first one was among them."""

    records: list[Record]
    damaged: int = 0
    first_damaged: bool = False

    def kinds(self) -> set[str]:
        return {str(r.get("kind")) for r in self.records}


class Journal:
    """The journal of one installation's state folder."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / JOURNAL
        self._fd: int | None = None
        #: How long this process made the file (None until it wrote it): a file of another
        #: length was changed behind its back.
        self.size: int | None = None

    def exists(self) -> bool:
        return self.path.exists()

    def read(self) -> list[Record] | None:
        """The intact records, in order (damaged lines are skipped), or None if no journal."""
        contents = self.inspect()
        return None if contents is None else contents.records

    def inspect(self) -> JournalContents | None:
        """Every intact record, and how many lines were damaged; None if there is no journal.

        A torn last line (a crash in the middle of an append) is not counted as damage.
        """
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        lines = raw.splitlines(keepends=True)
        records: list[Record] = []
        damaged = 0
        first_damaged = False
        for number, line in enumerate(lines):
            record = _parse(line)
            if record is None:
                torn = number == len(lines) - 1 and not line.endswith(b"\n")
                if not torn:
                    damaged += 1
                    first_damaged = first_damaged or number == 0
                elif number == 0:
                    first_damaged = True
                continue
            records.append(record)
        if not lines:
            first_damaged = True  # an empty journal: its first record never arrived whole
        return JournalContents(records, damaged, first_damaged)

    def start(self, record: Record) -> None:
        """Create the journal with its first record, atomically and durably."""
        check_write()
        data = _line(record)
        atomic_write(self.path, data, mode=0o600)
        self.size = len(data)
        crash_point(f"journal.{record['kind']}")

    def append(self, records: Iterable[Record], *, sync: bool = True) -> None:
        """Append records (and make them durable, unless ``sync`` is False), then fire their
        crash points."""
        batch = list(records)
        if not batch:
            return
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        data = b"".join([_line(r) for r in batch])
        # The length this process made it, when it made it: a failed append is cut back to
        # that, and bytes someone else added stay visible to the state guard as a mismatch.
        size = self.size if self.size is not None else os.fstat(self._fd).st_size
        try:
            check_write()
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
            if sync:
                os.fdatasync(self._fd)
            self.size = size + len(data)
        except OSError:
            # Cut a half-written record back off: records appended later must not sit behind
            # a damaged line, and a record that failed must not count as written.
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, size)
            raise
        for record in batch:
            crash_point(f"journal.{record['kind']}")

    def identity(self) -> tuple[int, int] | None:
        """The journal file's (device, inode), or None if it is gone."""
        try:
            info = self.path.stat()
        except OSError:
            return None
        return info.st_dev, info.st_ino

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def retire(self) -> None:
        """The run's outcome is recorded elsewhere: remove the journal, durably."""
        self.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        fsync_dir(self.path.parent)
