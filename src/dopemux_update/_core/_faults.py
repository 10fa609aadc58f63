"""Fault injection for the crash-safety tests: named crash points and failing writes.

Off unless the environment asks for it, and then read once at import:

- ``DOPEMUX_UPDATE_CRASH_AT=NAME`` or ``NAME:N``: the process kills itself (``SIGKILL``, no
  cleanup of any kind) the first, or the N-th, time it reaches the crash point ``NAME``.
- ``DOPEMUX_UPDATE_FAIL_WRITE=N``: the N-th guarded write raises ``OSError(ENOSPC)``;
  ``N+``: the N-th and every later one (a disk that stays full).

The hooks cost one comparison when these are unset.
"""

from __future__ import annotations

import errno
import os
import threading

__all__ = ["CRASH_POINTS", "check_write", "crash_point"]

CRASH_POINTS = (
    "backup.file",  # after each file of a backup is stored
    "backup.before_rename",  # the backup is complete but not yet visible
    "backup.before_collect",  # backups deleted, their unreferenced objects not yet removed
    "journal.run_started",  # after each journal record is durable ...
    "journal.step_begun",
    "journal.step_done",
    "journal.rollback_step",
    "journal.committed",
    "commit.state_written",  # the installed version is recorded, the journal not yet retired
    "rollback.step",  # after each undo of a rollback
    "restore.file",  # after each file a restore writes
    "recovery.restored",  # recovery restored the tree, its journal record not yet written
    "recovery.before_clear",  # recovery is done but the journal is not yet retired
    "journal.restore_started",  # `backups restore` journaled, the tree not yet touched
    "restore.before_record",  # a journaled restore is done, its version not yet recorded
)


def _parse(value: str | None) -> tuple[str, int] | None:
    if not value:
        return None
    name, _, count = value.partition(":")
    return name, int(count) if count else 1


_CRASH = _parse(os.environ.get("DOPEMUX_UPDATE_CRASH_AT"))
_FAIL_SPEC = os.environ.get("DOPEMUX_UPDATE_FAIL_WRITE", "0") or "0"
_FAIL_WRITE = int(_FAIL_SPEC.rstrip("+"))
_FAIL_LATER = _FAIL_SPEC.endswith("+")
_counts: dict[str, int] = {}
_writes = 0
_lock = threading.Lock()


def crash_point(name: str) -> None:
    """Die here, at once and without cleanup, if the environment names this point."""
    if _CRASH is None or _CRASH[0] != name:
        return
    with _lock:
        _counts[name] = _counts.get(name, 0) + 1
        hit = _counts[name] == _CRASH[1]
    if hit:
        import signal  # noqa: PLC0415 - only where a test asked to die

        os.kill(os.getpid(), signal.SIGKILL)


def check_write() -> None:
    """Raise ``ENOSPC`` if this is the write the environment says must fail."""
    global _writes  # noqa: PLW0603 - one counter per process, by design
    if not _FAIL_WRITE:
        return
    with _lock:
        _writes += 1
        failing = _writes == _FAIL_WRITE or (_FAIL_LATER and _writes > _FAIL_WRITE)
    if failing:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
