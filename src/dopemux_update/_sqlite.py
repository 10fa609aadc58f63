"""SQLite databases in a backup: captured and put back through SQLite's online backup API.

A database that a running service holds open, in WAL mode with pages not yet checkpointed,
is copied consistently (the backup API reads through SQLite's own locking and sees the WAL),
and a restore writes into the live database the same way, so that the service's own open
connection sees the restored content. ``-wal``, ``-shm`` and ``-journal`` files belong to
SQLite: they are never copied as files, and are removed only when a database file is replaced
wholesale, so that none is left paired with the wrong database.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import urllib.parse
from pathlib import Path

__all__ = [
    "SIDECARS",
    "capture",
    "is_sqlite",
    "is_wal",
    "open_for_reading",
    "put_back",
    "replace_file",
]

HEADER = b"SQLite format 3\x00"
SIDECARS = ("-wal", "-shm", "-journal")
_BUSY_TIMEOUT_SECONDS = 30.0


def is_sqlite(path: Path) -> bool:
    """Whether the file at ``path`` starts with the SQLite 3 header."""
    try:
        with path.open("rb") as handle:
            return handle.read(len(HEADER)) == HEADER
    except OSError:
        return False


def is_wal(path: Path) -> bool:
    """Whether the database's header says WAL mode (file format versions 2)."""
    with path.open("rb") as handle:
        header = handle.read(20)
    return len(header) == 20 and header[18] == 2


def _uri(path: Path, **params: str) -> str:
    query = urllib.parse.urlencode(params)
    # Quoted from the bytes: a file name that is not UTF-8 still names the same file.
    return f"file:{urllib.parse.quote(os.fsencode(path.resolve()))}?{query}"


def capture(live: Path, copy: Path) -> None:
    """Copy the database at ``live`` into a new file ``copy``, consistently, while it may be
    in use. The copy is left in rollback-journal mode, so that reading it never creates
    ``-wal``/``-shm`` files beside it."""
    with contextlib.ExitStack() as stack:
        source = open_for_reading(live)
        stack.callback(source.close)
        target = sqlite3.connect(copy)
        stack.callback(target.close)
        source.backup(target)
        target.execute("PRAGMA journal_mode=DELETE").fetchall()
    for suffix in SIDECARS:
        with contextlib.suppress(FileNotFoundError):
            Path(f"{copy}{suffix}").unlink()


def open_for_reading(live: Path) -> sqlite3.Connection:
    """A connection that reads ``live`` and leaves no file behind.

    A read-only connection to a WAL database with no ``-wal`` file (closed cleanly, nobody
    has it open) would create ``-wal``/``-shm`` files and leave them there. An ordinary
    connection, kept read-only with ``query_only``, removes them when it closes as the last
    one; with a ``-wal`` already there (someone has it open), a read-only one uses it as is.
    """
    if is_wal(live) and not Path(f"{live}-wal").exists():
        source = sqlite3.connect(live, timeout=_BUSY_TIMEOUT_SECONDS)
        source.execute("PRAGMA query_only=1")
        return source
    source = sqlite3.connect(_uri(live, mode="ro"), uri=True, timeout=_BUSY_TIMEOUT_SECONDS)
    try:
        source.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.Error:
        source.close()  # e.g. a -shm it may not read: read through an ordinary connection
        source = sqlite3.connect(live, timeout=_BUSY_TIMEOUT_SECONDS)
        source.execute("PRAGMA query_only=1")
    return source


def put_back(copy: Path, live: Path) -> None:
    """Write the stored ``copy`` into the live database at ``live`` through the backup API.

    Connections other processes hold on ``live`` stay valid and see the restored content;
    a live database in WAL mode stays in WAL mode.
    """
    with contextlib.ExitStack() as stack:
        source = sqlite3.connect(_uri(copy, mode="ro", immutable="1"), uri=True)
        stack.callback(source.close)
        target = sqlite3.connect(live, timeout=_BUSY_TIMEOUT_SECONDS)
        stack.callback(target.close)
        source.backup(target)


def replace_file(copy: Path, live: Path, *, wal: bool, mode: int) -> None:
    """Put the stored ``copy`` at ``live`` as a new file (the live one is gone or is no longer
    a database), removing sidecars that belonged to what was there, and restoring WAL mode."""
    for suffix in SIDECARS:
        with contextlib.suppress(FileNotFoundError):
            Path(f"{live}{suffix}").unlink()
    tmp = live.with_name(f".{live.name}.restore-{os.getpid()}")
    try:
        with contextlib.ExitStack() as stack:
            source = sqlite3.connect(_uri(copy, mode="ro", immutable="1"), uri=True)
            stack.callback(source.close)
            target = sqlite3.connect(tmp)
            stack.callback(target.close)
            source.backup(target)
            if wal:
                target.execute("PRAGMA journal_mode=WAL").fetchall()
        for suffix in SIDECARS:
            with contextlib.suppress(FileNotFoundError):
                Path(f"{tmp}{suffix}").unlink()
        tmp.chmod(mode)
        tmp.replace(live)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
