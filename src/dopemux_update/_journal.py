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
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import xxhash

from ._faults import check_write, crash_point
from ._fsutil import atomic_write, fsync_dir

__all__ = ["Journal", "Record"]

Record = dict[str, Any]
JOURNAL = "journal.jsonl"


def _line(record: Record) -> bytes:
    body = json.dumps(record, sort_keys=True, separators=(",", ":"))
    return f"{body}\t{xxhash.xxh3_64_hexdigest(body.encode())}\n".encode()


def _parse(line: bytes) -> Record | None:
    try:
        body, checksum = line.rstrip(b"\n").rsplit(b"\t", 1)
    except ValueError:
        return None
    if xxhash.xxh3_64_hexdigest(body) != checksum.decode(errors="replace"):
        return None
    try:
        record = json.loads(body)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


class Journal:
    """The journal of one installation's state folder."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / JOURNAL
        self._fd: int | None = None

    def exists(self) -> bool:
        return self.path.exists()

    def read(self) -> list[Record] | None:
        """The intact records, in order (a torn last line is dropped), or None if no journal."""
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return None
        records = []
        for line in raw.splitlines(keepends=True):
            record = _parse(line)
            if record is None:
                break  # a crash tore this line; nothing after it was made durable
            records.append(record)
        return records

    def start(self, record: Record) -> None:
        """Create the journal with its first record, atomically and durably."""
        check_write()
        atomic_write(self.path, _line(record), mode=0o600)
        crash_point(f"journal.{record['kind']}")

    def append(self, records: Iterable[Record], *, sync: bool = True) -> None:
        """Append records (and make them durable, unless ``sync`` is False), then fire their
        crash points."""
        batch = list(records)
        if not batch:
            return
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC)
        check_write()
        data = b"".join(_line(r) for r in batch)
        written = 0
        while written < len(data):
            written += os.write(self._fd, data[written:])
        if sync:
            os.fdatasync(self._fd)
        for record in batch:
            crash_point(f"journal.{record['kind']}")

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
