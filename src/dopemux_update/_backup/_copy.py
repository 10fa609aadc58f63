"""Copying and hashing files fast: reflinks, then the kernel's copy paths, then plain I/O.

Hashes are XXH3-128 (``xxhash``): fast enough (several GB/s, and the GIL is released) that
hashing a backup does not dominate the cost of copying it; they guard against corruption,
not against an attacker who can write to the backups folder.

Sparse files stay sparse: a file with fewer blocks allocated than its length is copied extent
by extent (``SEEK_DATA``/``SEEK_HOLE``, through the one walker of ``_sparse``), and the copy is
cut to the source's length so that its holes stay holes. A hash always describes a file's
*logical* content, what a reader sees, holes read as zeros: a sparse file and a fully written
copy of it hash alike, and hashes in older manifests keep their meaning. The holes are fed to
the hash from one block of zeros kept in memory, never read from disk; data is still read
once, hashed as it is copied.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import mmap
import os
from collections.abc import Iterator
from pathlib import Path

import xxhash

from .._core._faults import check_write
from .._core._fsutil import open_to_read, start_writeback
from ._sparse import copy_range, copy_sparse, hash_sparse

__all__ = ["HASH_NAME", "allocated", "copy_and_hash", "copy_file", "hash_file", "is_sparse"]

HASH_NAME = "xxh3_128"
_CHUNK = 256 << 10  # fits the CPU caches: measured faster than 1 or 4 MiB here
#: From this size on, a file is copied by the kernel (``copy_file_range``: the data is not
#: copied through this process) and the copy hashed through a mapping; smaller ones cost
#: their system calls more than their bytes and are read, hashed and written in one pass.
_KERNEL_COPY_FROM = 1 << 20
#: Each ``copy_file_range`` call (and fault-injection check) moves up to this much: calls
#: of 256 KiB measured 15-20 % slower than of 4 MiB on this project's machine.
_KERNEL_CHUNK = 4 << 20
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


def is_sparse(info: os.stat_result) -> bool:
    """Whether a file has fewer bytes allocated than its length (it has holes)."""
    return info.st_blocks * 512 < info.st_size


def allocated(info: os.stat_result) -> int:
    """The bytes a copy of a file will take: its length, or less when it is sparse."""
    return min(info.st_size, info.st_blocks * 512) if is_sparse(info) else info.st_size


class _Checked:
    """A digest that passes each chunk of a copy through the write fault point first."""

    def __init__(self, digest: xxhash.xxh3_128) -> None:
        self.digest = digest

    def update(self, data: bytes | memoryview, /) -> None:
        check_write()
        self.digest.update(data)


def hash_file(path: Path) -> tuple[str, int]:
    """The XXH3-128 hex digest and size of the file at ``path`` (holes are not read)."""
    digest = xxhash.xxh3_128()
    size = 0
    with path.open("rb", buffering=0) as handle:
        info = os.fstat(handle.fileno())
        if is_sparse(info):
            hash_sparse(handle.fileno(), info.st_size, digest)
            return digest.hexdigest(), info.st_size
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
    src = open_to_read(source, os.O_NOFOLLOW)
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
    copy holds. A reflink when the file system has them (then the clone is hashed). A sparse
    file is copied extent by extent and keeps its holes. The kernel is asked to start writing
    the copy back at once, so that the sync that makes a backup durable finds little left to do.
    """
    with _open_pair(source, destination, mode) as (src, dst):
        info = os.fstat(src)
        if _try_reflink(src, dst, info):
            result = hash_file(destination)
        elif is_sparse(info):
            digest = xxhash.xxh3_128()
            copy_sparse(src, dst, info.st_size, digest=_Checked(digest))
            result = (digest.hexdigest(), info.st_size)
        elif info.st_size >= _KERNEL_COPY_FROM and _copy_in_kernel(src, dst, info.st_size):
            result = _hash_copy(destination)
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


def _copy_in_kernel(source: int, target: int, size: int) -> bool:
    """Copy ``size`` bytes (fewer if the source shrinks) with ``copy_file_range``, one chunk
    per fault-injection check; False, with nothing written, where the kernel cannot."""
    copied = 0
    while copied < size:
        check_write()
        try:
            sent = os.copy_file_range(source, target, min(_KERNEL_CHUNK, size - copied))
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED or copied:
                raise
            return False
        if sent == 0:
            break
        copied += sent
    return True  # a file that grew or shrank meanwhile: the signature check after the copy


def _hash_copy(path: Path) -> tuple[str, int]:
    """The hash and size of a copy just written, read back from the page cache through a
    mapping (no second copy of the data into this process)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        if not size:
            return xxhash.xxh3_128_hexdigest(b""), 0
        with mmap.mmap(fd, size, prot=mmap.PROT_READ) as mapped:
            mapped.madvise(mmap.MADV_SEQUENTIAL)
            return xxhash.xxh3_128_hexdigest(mapped), size
    finally:
        os.close(fd)


def _kernel_copy(source: int, target: int, size: int) -> None:
    """Copy ``size`` bytes (fewer if the source shrinks): by ``copy_file_range`` as far as
    the kernel goes, the rest by ``sendfile``."""
    copied = copy_range(source, target, 0, size)
    while copied < size:
        os.lseek(target, copied, os.SEEK_SET)
        sent = os.sendfile(target, source, copied, size - copied)
        if sent == 0:
            return
        copied += sent


def copy_file(source: Path, destination: Path, *, mode: int = 0o600, fsync: bool = False) -> None:
    """Copy ``source`` to a new file ``destination`` (created with ``mode``, never followed).

    A reflink (``FICLONE``) when the file system has them, else ``copy_file_range``/``sendfile``;
    a sparse file extent by extent, keeping its holes. A file that changes while it is copied
    is caught by comparing hashes afterwards.
    """
    with _open_pair(source, destination, mode) as (src, dst):
        info = os.fstat(src)
        if _try_reflink(src, dst, info):
            pass
        elif is_sparse(info):
            copy_sparse(src, dst, info.st_size)
        else:
            _kernel_copy(src, dst, info.st_size)
        if fsync:
            os.fsync(dst)
