"""Copying and hashing files fast: reflinks, then the kernel's copy paths, then plain I/O.

Hashes are XXH3-128 (``xxhash``): fast enough (several GB/s, and the GIL is released) that
hashing a backup does not dominate the cost of copying it; they guard against corruption,
not against an attacker who can write to the backups folder.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

import xxhash

from ._faults import check_write
from ._fsutil import start_writeback

__all__ = ["HASH_NAME", "copy_and_hash", "copy_file", "hash_file"]

HASH_NAME = "xxh3_128"
_CHUNK = 256 << 10  # fits the CPU caches: measured faster than 1 or 4 MiB here
_FICLONE = 0x40049409  # _IOW(0x94, 9, int) from <linux/fs.h>
_NO_REFLINK_DEVICES: set[int] = set()
_UNSUPPORTED = {
    errno.EOPNOTSUPP,
    errno.ENOTTY,
    errno.EXDEV,
    errno.EINVAL,
    errno.ENOSYS,
    errno.EPERM,
}


def hash_file(path: Path) -> tuple[str, int]:
    """The XXH3-128 hex digest and size of the file at ``path``."""
    digest = xxhash.xxh3_128()
    size = 0
    with path.open("rb", buffering=0) as handle:
        buffer = bytearray(_CHUNK)
        view = memoryview(buffer)
        while read := handle.readinto(buffer):
            digest.update(view[:read])
            size += read
    return digest.hexdigest(), size


def _try_reflink(source: int, target: int, info: os.stat_result) -> bool:
    if info.st_dev in _NO_REFLINK_DEVICES or not info.st_size:
        return False
    try:
        fcntl.ioctl(target, _FICLONE, source)
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED:
            raise
        _NO_REFLINK_DEVICES.add(info.st_dev)
        return False
    return True


@contextlib.contextmanager
def _open_pair(source: Path, destination: Path, mode: int) -> Iterator[tuple[int, int]]:
    """The source, and a new destination (never following symlinks), removed if anything
    fails before the block ends."""
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW)
    try:
        dst = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
        try:
            yield src, dst
        except BaseException:
            os.close(dst)
            with contextlib.suppress(OSError):
                destination.unlink()
            raise
        os.close(dst)
    finally:
        os.close(src)


def copy_and_hash(source: Path, destination: Path, *, mode: int = 0o600) -> tuple[str, int]:
    """Copy ``source`` to a new file and return the hash and size of the bytes written.

    One pass: each chunk is hashed as it is written, so the hash describes exactly what the
    copy holds. A reflink when the file system has them (then the clone is hashed). The
    kernel is asked to start writing the copy back at once, so that the sync that makes a
    backup durable finds little left to do.
    """
    with _open_pair(source, destination, mode) as (src, dst):
        if _try_reflink(src, dst, os.fstat(src)):
            result = hash_file(destination)
        else:
            digest = xxhash.xxh3_128()
            size = 0
            buffer = bytearray(_CHUNK)
            view = memoryview(buffer)
            while read := os.readv(src, [buffer]):
                check_write()
                chunk = view[:read]
                digest.update(chunk)
                written = 0
                while written < read:
                    written += os.write(dst, chunk[written:])
                size += read
            result = (digest.hexdigest(), size)
        start_writeback(dst)
    return result


def _kernel_copy(source: int, target: int, size: int) -> None:
    copied = 0
    try:
        while copied < size:
            sent = os.copy_file_range(source, target, size - copied, copied, copied)
            if sent == 0:
                return
            copied += sent
    except OSError as exc:
        if exc.errno not in _UNSUPPORTED or copied:
            raise
        while copied < size:
            os.lseek(target, copied, os.SEEK_SET)
            sent = os.sendfile(target, source, copied, size - copied)
            if sent == 0:
                return
            copied += sent


def copy_file(source: Path, destination: Path, *, mode: int = 0o600, fsync: bool = False) -> None:
    """Copy ``source`` to a new file ``destination`` (created with ``mode``, never followed).

    A reflink (``FICLONE``) when the file system has them, else ``copy_file_range``/``sendfile``.
    A file that changes while it is copied is caught by comparing hashes afterwards.
    """
    with _open_pair(source, destination, mode) as (src, dst):
        info = os.fstat(src)
        if not _try_reflink(src, dst, info):
            _kernel_copy(src, dst, info.st_size)
        if fsync:
            os.fsync(dst)
