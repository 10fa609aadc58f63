"""SQLite databases in a backup: captured and put back through SQLite's online backup API.

A database that a running service holds open, in WAL mode with pages not yet checkpointed,
is copied consistently (the backup API reads through SQLite's own locking and sees the WAL),
and a restore writes into the live database the same way, so that the service's own open
connection sees the restored content. ``-wal``, ``-shm`` and ``-journal`` files belong to
SQLite: they are never copied as files, and are removed only when a database file is replaced
wholesale, so that none is left paired with the wrong database.

Where the backup API cannot write into the live database (its page size changed under WAL,
it was made read-only, a sidecar is a symlink), :func:`put_back` says so and the restore
replaces the file as a whole (:func:`replace_file`). A database another program keeps locked
(``locking_mode=EXCLUSIVE``) is waited for at most :data:`BUSY_SECONDS`, in short steps
between which a cancelled run (Ctrl-C) stops the copy; then a :class:`BackupError` names it,
and nothing was changed.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import stat
import sys
import threading
import time
import urllib.parse
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TypeVar

from .._core._exceptions import BackupError
from .._core._fsutil import open_to_read
from .._core._log import get_logger

__all__ = [
    "BUSY_SECONDS",
    "SETTINGS",
    "SIDECARS",
    "apply_settings",
    "capture",
    "check_cancelled",
    "check_settings",
    "database_settings",
    "is_sqlite",
    "is_wal",
    "open_for_reading",
    "put_back",
    "read_settings",
    "replace_file",
]

logger = get_logger()

HEADER = b"SQLite format 3\x00"
SIDECARS = ("-wal", "-shm", "-journal")
#: The longest a locked database is waited for by a backup or a restore (tests lower it).
BUSY_SECONDS = 30.0
#: A database's settings that are restored with its content (``Entry.sqlite``).
SETTINGS = ("page_size", "auto_vacuum", "journal_mode", "user_version", "application_id")
JOURNAL_MODES = frozenset({"delete", "truncate", "persist", "memory", "wal", "off"})
_BUSY_TIMEOUT_SECONDS = 30.0  # reading for a comparison (verify, the post-restore check)
_POLL_SECONDS = 0.05  # SQLite's own wait per attempt: short, so a cancellation is prompt
_STEP_PAGES = 1024  # pages per backup step: 4 MiB at the default page size
_T = TypeVar("_T")


def is_sqlite(path: Path) -> bool:
    """Whether the file at ``path`` starts with a sane SQLite 3 header: the magic string, a
    page size SQLite can have, file format versions 1 or 2, and the payload fractions every
    SQLite file carries (64, 32, 32). A damaged file that only starts with the magic string
    is a plain file to us (its bytes are all that can be kept of it)."""
    try:  # three system calls: a backup asks this of every new or changed file
        fd = open_to_read(path)
        try:
            header = os.pread(fd, 100, 0)
        finally:
            os.close(fd)
    except OSError:
        return False
    if len(header) < 100 or not header.startswith(HEADER):
        return False
    page_size = int.from_bytes(header[16:18], "big")
    sane_size = page_size == 1 or (512 <= page_size <= 32768 and page_size & (page_size - 1) == 0)
    return sane_size and header[18] in (1, 2) and header[19] in (1, 2) and header[21:24] == b"@  "


def is_wal(path: Path) -> bool:
    """Whether the database's header says WAL mode (file format versions 2)."""
    with path.open("rb") as handle:
        header = handle.read(20)
    return len(header) == 20 and header[18] == 2


def _uri(path: Path, **params: str) -> str:
    query = urllib.parse.urlencode(params)
    # Quoted from the bytes: a file name that is not UTF-8 still names the same file.
    return f"file:{urllib.parse.quote(os.fsencode(path.resolve()))}?{query}"


def check_cancelled() -> None:
    """Raise the run's cancellation if this worker thread's task was cancelled (Ctrl-C).

    Only in a thread started by ``anyio.to_thread.run_sync``; called elsewhere (the plain
    sync API) it does nothing, and a Ctrl-C arrives between two steps as KeyboardInterrupt.
    """
    if "anyio" not in sys.modules:
        return  # no event loop of anyio's, so no worker thread of one (the command line's)
    from anyio import from_thread  # noqa: PLC0415 - only when copying

    with contextlib.suppress(RuntimeError):  # not an anyio worker thread
        from_thread.check_cancelled()


def _is_busy(exc: sqlite3.Error) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    if isinstance(code, int):
        return code & 0xFF in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED)
    return "locked" in str(exc)


class _Deadline:
    """The one wait a database gets, shared by every step that may meet its lock."""

    def __init__(self, path: Path, cancelled: threading.Event | None = None) -> None:
        self.path = path
        self.ends = time.monotonic() + BUSY_SECONDS
        self.cancelled = cancelled

    def check(self) -> None:
        self.check_cancelled()
        if time.monotonic() >= self.ends:
            raise BackupError(
                f"the database {self.path} is locked by another program; waited"
                f" {BUSY_SECONDS:g} s (a service holding it with locking_mode=EXCLUSIVE?)."
                " Nothing was changed: stop that program and try again"
            )

    def check_cancelled(self) -> None:
        check_cancelled()
        if self.cancelled is not None and self.cancelled.is_set():
            raise BackupError(f"the copy of the database {self.path} was cancelled")

    def retry(self, call: Callable[[], _T]) -> _T:
        """``call()``, again after each "database is locked" until the deadline."""
        while True:
            try:
                return call()
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc):
                    raise
            self.check()

    def copy(self, source: sqlite3.Connection, target: sqlite3.Connection) -> None:
        """The backup API in steps; between them, a cancellation or the deadline stops it
        (an unfinished copy leaves the target as it was)."""

        def progress(status: int, remaining: int, total: int) -> None:
            if status in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_LOCKED):
                self.check()
            elif status != sqlite3.SQLITE_DONE:
                self.check_cancelled()

        self.retry(
            lambda: source.backup(target, pages=_STEP_PAGES, progress=progress, sleep=_POLL_SECONDS)
        )


def capture(live: Path, copy: Path, *, cancelled: threading.Event | None = None) -> None:
    """Copy the database at ``live`` into a new file ``copy``, consistently, while it may be
    in use. The copy is left in rollback-journal mode, so that reading it never creates
    ``-wal``/``-shm`` files beside it.

    Raises :class:`BackupError` when another program keeps the database locked longer than
    :data:`BUSY_SECONDS`, or when ``cancelled`` is set (a thread that is no anyio worker,
    e.g. of a pool, learns of a cancellation so); other SQLite errors (a damaged file) are
    raised as they are.
    """
    deadline = _Deadline(live, cancelled)
    try:
        with contextlib.ExitStack() as stack:
            source = deadline.retry(lambda: open_for_reading(live, timeout=_POLL_SECONDS))
            stack.callback(source.close)
            target = sqlite3.connect(copy)
            stack.callback(target.close)
            deadline.copy(source, target)
            target.execute("PRAGMA journal_mode=DELETE").fetchall()
    finally:
        for suffix in SIDECARS:
            with contextlib.suppress(FileNotFoundError):
                Path(f"{copy}{suffix}").unlink()


def open_for_reading(live: Path, *, timeout: float = _BUSY_TIMEOUT_SECONDS) -> sqlite3.Connection:
    """A connection that reads ``live`` and leaves no file behind.

    A read-only connection to a WAL database with no ``-wal`` file (closed cleanly, nobody
    has it open) would create ``-wal``/``-shm`` files and leave them there. An ordinary
    connection, kept read-only with ``query_only``, removes them when it closes as the last
    one; with a ``-wal`` already there (someone has it open), a read-only one uses it as is.
    """
    if is_wal(live) and not Path(f"{live}-wal").exists():
        source = sqlite3.connect(live, timeout=timeout)
        source.execute("PRAGMA query_only=1")
        return source
    source = sqlite3.connect(_uri(live, mode="ro"), uri=True, timeout=timeout)
    try:
        source.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
    except sqlite3.Error as exc:
        source.close()
        if isinstance(exc, sqlite3.OperationalError) and _is_busy(exc):
            raise
        # e.g. a -shm it may not read: read through an ordinary connection
        source = sqlite3.connect(live, timeout=timeout)
        source.execute("PRAGMA query_only=1")
    return source


def read_settings(connection: sqlite3.Connection) -> dict[str, int | str]:
    """The database's :data:`SETTINGS`, as ``PRAGMA`` reports them."""
    found: dict[str, int | str] = {}
    for name in SETTINGS:
        value = connection.execute(f"PRAGMA {name}").fetchone()[0]
        found[name] = value.lower() if isinstance(value, str) else int(value)
    return found


def check_settings(settings: Mapping[str, int | str]) -> dict[str, int | str]:
    """``settings`` as :func:`apply_settings` may use them; ValueError for anything that is
    not a known setting with a value SQLite accepts (they come from an untrusted manifest)."""
    wanted: dict[str, int | str] = {}
    for name, value in settings.items():
        if name == "journal_mode":
            if not isinstance(value, str) or value.lower() not in JOURNAL_MODES:
                raise ValueError(f"unknown journal_mode {value!r}")
            wanted[name] = value.lower()
            continue
        if name not in SETTINGS:
            raise ValueError(f"unknown SQLite setting {name!r}")
        if not isinstance(value, int) or isinstance(value, bool):
            raise ValueError(f"SQLite setting {name} is not a number: {value!r}")  # noqa: TRY004
        if name == "page_size" and (value < 512 or value > 65536 or value & (value - 1)):
            raise ValueError(f"page_size {value} is not a power of two from 512 to 65536")
        if name == "auto_vacuum" and value not in (0, 1, 2):
            raise ValueError(f"auto_vacuum {value} is not 0, 1 or 2")
        if name in ("user_version", "application_id") and not -(1 << 31) <= value < 1 << 32:
            raise ValueError(f"{name} {value} is not a 32-bit number")
        wanted[name] = value
    return wanted


def apply_settings(connection: sqlite3.Connection, settings: Mapping[str, int | str]) -> bool:
    """Give the database ``settings`` (a subset of :data:`SETTINGS`); whether any changed.

    A new ``page_size`` or ``auto_vacuum`` takes a ``VACUUM``, out of WAL mode.
    """
    wanted = check_settings(settings)
    current = read_settings(connection)
    changes = {k: v for k, v in wanted.items() if current[k] != v}
    if not changes:
        return False
    mode = str(wanted.get("journal_mode", current["journal_mode"]))
    if "page_size" in changes or "auto_vacuum" in changes:
        if current["journal_mode"] == "wal":
            connection.execute("PRAGMA journal_mode=DELETE").fetchall()
            current["journal_mode"] = "delete"
        for name in ("page_size", "auto_vacuum"):
            if name in wanted:
                connection.execute(f"PRAGMA {name}={int(wanted[name])}")
        connection.execute("VACUUM")
    for name in ("user_version", "application_id"):
        if name in changes:
            connection.execute(f"PRAGMA {name}={int(wanted[name])}")
    if current["journal_mode"] != mode:
        connection.execute(f"PRAGMA journal_mode={mode}").fetchall()
    return True


def _sidecars_are_files(live: Path) -> bool:
    for suffix in SIDECARS:
        try:
            info = Path(f"{live}{suffix}").lstat()
        except FileNotFoundError:
            continue
        if not stat.S_ISREG(info.st_mode):
            return False
    return True


def put_back(copy: Path, live: Path, *, settings: Mapping[str, int | str] | None = None) -> bool:
    """Write the stored ``copy`` into the live database at ``live`` through the backup API,
    then give it ``settings``; False when that cannot be done (then nothing was written, and
    the file is to be replaced as a whole: :func:`replace_file`).

    Connections other processes hold on ``live`` stay valid and see the restored content;
    a live database in WAL mode stays in WAL mode unless ``settings`` say otherwise. Raises
    :class:`BackupError` when another program keeps it locked longer than :data:`BUSY_SECONDS`.
    """
    if not _sidecars_are_files(live):
        logger.warning("restore.sqlite_replaced", path=str(live), reason="a sidecar is no file")
        return False
    deadline = _Deadline(live)
    try:
        with contextlib.ExitStack() as stack:
            source = sqlite3.connect(_uri(copy, mode="ro", immutable="1"), uri=True)
            stack.callback(source.close)
            target = sqlite3.connect(live, timeout=_POLL_SECONDS)
            stack.callback(target.close)
            deadline.copy(source, target)
            if settings:
                deadline.retry(lambda: apply_settings(target, settings))
    except sqlite3.Error as exc:
        logger.warning("restore.sqlite_replaced", path=str(live), reason=str(exc))
        return False
    return True


def replace_file(
    copy: Path,
    live: Path,
    *,
    wal: bool,
    mode: int,
    settings: Mapping[str, int | str] | None = None,
) -> None:
    """Put the stored ``copy`` at ``live`` as a new file, removing the sidecars that belonged
    to what was there (symlinks among them are removed, never followed), and restoring WAL
    mode (``wal``) or the ``settings`` the database had.

    The new file is built beside ``live`` under a short temporary name (a long ``live`` name
    does not make it too long), then renamed over it.
    """
    tmp = live.with_name(f".dmx-restore-{os.urandom(6).hex()}")
    try:
        with contextlib.ExitStack() as stack:
            source = sqlite3.connect(_uri(copy, mode="ro", immutable="1"), uri=True)
            stack.callback(source.close)
            target = sqlite3.connect(tmp)
            stack.callback(target.close)
            _Deadline(live).copy(source, target)
            if settings:
                apply_settings(target, settings)
            elif wal:
                target.execute("PRAGMA journal_mode=WAL").fetchall()
        for suffix in SIDECARS:
            with contextlib.suppress(FileNotFoundError):
                Path(f"{tmp}{suffix}").unlink()
        tmp.chmod(mode)
        for suffix in SIDECARS:
            with contextlib.suppress(FileNotFoundError):
                Path(f"{live}{suffix}").unlink()
        tmp.replace(live)
    except sqlite3.Error as exc:
        raise BackupError(f"the database {live} could not be put back: {exc}") from exc
    finally:
        for leftover in (tmp, *(Path(f"{tmp}{suffix}") for suffix in SIDECARS)):
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def database_settings(connection: sqlite3.Connection) -> dict[str, int | str]:
    """The :data:`SETTINGS` of the database ``connection`` reads, read without changing any
    (``PRAGMA journal_mode`` without a value only answers)."""
    settings = read_settings(connection)
    # Identity knows WAL or not: every other mode is SQLite's rollback journal.
    settings["journal_mode"] = "wal" if settings.get("journal_mode") == "wal" else "delete"
    return settings
