"""Small durable file-system operations shared by the state, journal and backup modules."""

from __future__ import annotations

import contextlib
import errno
import functools
import os
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import ctypes

__all__ = ["atomic_write", "fsync_dir", "open_to_read", "start_writeback", "sync_filesystem"]

_SYNC_FILE_RANGE_WRITE = 2


_NOATIME = getattr(os, "O_NOATIME", 0)


def open_to_read(path: str | Path, flags: int = 0) -> int:
    """Open ``path`` to read (with ``flags``) without updating its access time where the
    system allows it (Linux ``O_NOATIME``: the file's owner, or root): reading an
    installation to back it up leaves it as it was, and writes no inode for each file read.
    """
    flags |= os.O_RDONLY | os.O_CLOEXEC
    if _NOATIME:
        try:
            return os.open(path, flags | _NOATIME)
        except PermissionError as exc:
            if exc.errno != errno.EPERM:  # EACCES: not readable at all, say so
                raise
    return os.open(path, flags)


def start_writeback(fd: int) -> None:
    """Ask the kernel to start writing ``fd``'s dirty pages now, without waiting (Linux)."""
    libc = _libc()
    if libc is not None:
        libc.sync_file_range(fd, 0, 0, _SYNC_FILE_RANGE_WRITE)


def sync_filesystem(path: Path) -> None:
    """Flush every file written on ``path``'s file system (``syncfs``; ``sync`` elsewhere).

    One call instead of an ``fsync`` per file: a backup of thousands of files is made
    durable at once, before it is renamed into place.
    """
    libc = _libc()
    if libc is not None:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            if libc.syncfs(fd) == 0:
                return
        finally:
            os.close(fd)
    os.sync()


@functools.cache
def _libc() -> ctypes.CDLL | None:
    import ctypes  # noqa: PLC0415 - for backups only: the state's writes need none of it

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.syncfs.argtypes = [ctypes.c_int]
        libc.sync_file_range.argtypes = [
            ctypes.c_int,
            ctypes.c_longlong,
            ctypes.c_longlong,
            ctypes.c_uint,
        ]
    except (OSError, AttributeError):
        return None
    return libc


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o600) -> None:
    """Replace ``path`` with ``data`` so that readers see the old or the new file, never a mix.

    Writes a temporary file beside it, fsyncs it, renames it over ``path`` and fsyncs the folder.
    A symlink at ``path`` is replaced, never written through. The new file has exactly
    ``mode`` (private to the owner unless asked otherwise), whatever the umask.
    """
    tmp = path.with_name(f".{path.name}.tmp-{os.urandom(4).hex()}")  # secrets.token_hex
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    try:
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(fd, mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        tmp.replace(path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)
