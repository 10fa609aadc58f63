"""One updater per installation: a ``flock`` on ``<state>/lock`` that dies with its process.

The kernel releases the lock when the holding process ends, however it ends, so a crash never
leaves a stale lock. The holder writes who it is (pid, host, start time, command) into the
file, so that a second updater can say who is in the way. A symlink at the lock's path is
refused, and so is a state folder that another user could change (see ``_private``). The
lock is re-entrant within one context (the command line holds it, and the
orchestration it runs takes it again). Reading who holds it imports no async library.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import fcntl
import json
import os
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path

from .._core._exceptions import LockError
from ._private import check_state_dir, make_private_dirs, open_private, tighten

__all__ = ["holding_lock", "holding_lock_async", "lock_holder"]

# Locks this context already holds: the command line takes the lock and the orchestration
# it runs takes it again. A context variable, not a process-wide table, so that two updates
# started side by side in one process still exclude each other.
_held: contextvars.ContextVar[frozenset[tuple[int, int]]] = contextvars.ContextVar(
    "dopemux_update_locks", default=frozenset()
)


def _host() -> str:
    """This machine's name (``gethostname(2)`` is the kernel's nodename, as here), without
    importing :mod:`socket`, which ``status`` would pay for at start-up."""
    return os.uname().nodename


def _describe_holder(fd: int, path: Path) -> str:
    try:
        raw = os.pread(fd, 4096, 0)
        info = json.loads(raw or b"{}")
    except (OSError, ValueError):
        info = {}
    if not info:
        return f"another process holds {path}"
    return (
        f"pid {info.get('pid')} on {info.get('host')} since {info.get('started_at')}"
        f" ({info.get('command')})"
    )


def _open(path: Path) -> int:
    try:
        return open_private(path, os.O_RDWR | os.O_CREAT)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise LockError(f"{path} is a symlink; refusing to use it as the update lock") from exc
        raise LockError(f"cannot open the update lock {path}: {exc.strerror}") from exc


def _acquire(state_dir: Path) -> tuple[int, tuple[int, int]] | None:
    """Open and lock ``<state>/lock``; None if this context already holds it. Blocking I/O.

    Every command that changes anything comes through here first: a state folder that
    another user could change is refused before anything in it is used.
    """
    make_private_dirs(state_dir)
    check_state_dir(state_dir)
    tighten(state_dir)
    path = state_dir / "lock"
    fd = _open(path)
    info = os.fstat(fd)
    key = (info.st_dev, info.st_ino)
    if key in _held.get():
        os.close(fd)
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError as exc:
        holder = _describe_holder(fd, path)
        os.close(fd)
        raise LockError(f"another update is running on this installation: {holder}") from exc
    me = {
        "pid": os.getpid(),
        "host": _host(),
        "started_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(sys.argv) or sys.executable,
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps(me).encode(), 0)
    return fd, key


def lock_holder(state_dir: Path) -> str | None:
    """Who holds the installation's update lock right now, or None; reads only.

    The holder writes its pid, host and start time into the lock file and empties it on
    release. A file left filled by a process that died (the kernel released its lock) names a
    pid that is gone: that is nobody. Never takes the lock, so it cannot make a starting
    update fail.
    """
    path = state_dir / "lock"
    try:
        info = json.loads(path.read_bytes() or b"{}")
    except (OSError, ValueError):
        return None
    pid = info.get("pid")
    if not isinstance(pid, int) or info.get("host") != _host():
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass  # alive, owned by another user
    return f"pid {pid} on {info.get('host')} since {info.get('started_at')} ({info.get('command')})"


def _release(fd: int) -> None:
    os.ftruncate(fd, 0)
    os.close(fd)  # closing the descriptor releases the flock


@contextlib.contextmanager
def holding_lock(state_dir: Path) -> Iterator[None]:
    """Hold the installation's update lock for the duration; fail at once if it is taken."""
    acquired = _acquire(state_dir)
    if acquired is None:
        yield
        return
    fd, key = acquired
    token = _held.set(_held.get() | {key})
    try:
        yield
    finally:
        _held.reset(token)
        _release(fd)


@contextlib.asynccontextmanager
async def holding_lock_async(state_dir: Path) -> AsyncIterator[None]:
    """:func:`holding_lock` for async code: its file-system work runs in a worker thread."""
    import anyio.to_thread  # noqa: PLC0415 - only async code needs it: status reads the lock

    acquired = await anyio.to_thread.run_sync(_acquire, state_dir)
    if acquired is None:
        yield
        return
    fd, key = acquired
    token = _held.set(_held.get() | {key})
    try:
        yield
    finally:
        _held.reset(token)
        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(_release, fd)
