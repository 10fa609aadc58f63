"""Copying a file's data without filling its holes (``SEEK_DATA``/``SEEK_HOLE``).

A sparse file (a database preallocated with ``truncate``, a disk image) keeps its holes when
it is backed up and restored: only the data extents are read and written, and the copy is
cut to the source's length, so the holes between and after them stay holes. On a file
system without ``SEEK_DATA`` the whole file is copied, as if it were one extent.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from typing import Protocol

__all__ = ["Digest", "copy_range", "copy_sparse", "extents", "feed_zeros", "hash_sparse"]

_CHUNK = 256 << 10
_ZEROS = memoryview(bytes(_CHUNK))
_NO_SEEK_DATA = {errno.EINVAL, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS}
_NO_COPY_RANGE = {errno.EXDEV, errno.EINVAL, errno.EOPNOTSUPP, errno.ENOSYS, errno.EPERM}


class Digest(Protocol):
    def update(self, data: bytes | memoryview, /) -> None: ...


def extents(fd: int, size: int) -> Iterator[tuple[int, int]]:
    """The (start, end) of each data extent of ``fd`` below ``size``, in order; the whole
    file as one extent where the file system cannot tell holes apart. The one walker of
    holes: copies, hashes and restores all go through it."""
    offset = 0
    while offset < size:
        try:
            start = os.lseek(fd, offset, os.SEEK_DATA)
        except OSError as exc:
            if exc.errno == errno.ENXIO:  # only a hole from here to the end
                return
            if exc.errno in _NO_SEEK_DATA and offset == 0:
                yield 0, size
                return
            raise
        if start >= size:
            return
        end = min(os.lseek(fd, start, os.SEEK_HOLE), size)
        yield start, end
        offset = end


def feed_zeros(digest: Digest | None, count: int) -> None:
    """Feed ``count`` zero bytes (a hole) to ``digest`` without reading them."""
    while digest is not None and count > 0:
        step = min(count, _CHUNK)
        digest.update(_ZEROS[:step])
        count -= step


def hash_sparse(fd: int, size: int, digest: Digest) -> None:
    """Feed the first ``size`` bytes of ``fd`` to ``digest``, reading only its data extents
    (holes are fed as zeros)."""
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    position = 0
    for start, end in extents(fd, size):
        feed_zeros(digest, start - position)
        position = start
        while position < end:
            read = os.preadv(fd, [view[: min(_CHUNK, end - position)]], position)
            if read == 0:
                break  # the file shrank: the rest reads as a hole
            digest.update(view[:read])
            position += read
    feed_zeros(digest, size - position)


def copy_range(src_fd: int, dst_fd: int, start: int, end: int) -> int:
    """Copy bytes ``start``..``end`` in the kernel (a reflink where the file system can);
    returns where it stopped (``end``, or earlier: the source shrank, or no kernel copy)."""
    offset = start
    try:
        while offset < end:
            sent = os.copy_file_range(src_fd, dst_fd, end - offset, offset, offset)
            if sent == 0:
                break
            offset += sent
    except OSError as exc:
        if exc.errno not in _NO_COPY_RANGE:
            raise
    return offset


def copy_sparse(src_fd: int, dst_fd: int, size: int, *, digest: Digest | None = None) -> int:
    """Copy the first ``size`` bytes of ``src_fd`` into the empty file ``dst_fd``, writing
    only the source's data extents, and set the copy's length to ``size``.

    ``digest``, when given, is fed every byte of the copy in order, holes as zeros, so that it
    describes the file as a reader sees it (and the data passes through memory once); without
    one, the kernel copies the extents (``copy_file_range``). Returns the number of data bytes
    written (the copy's allocated share). A source shorter than ``size`` reads as zeros at its
    end. Fault injection (``check_write``) is the caller's: wrap ``digest`` to count chunks.
    """
    buffer = bytearray(_CHUNK)
    view = memoryview(buffer)
    position = 0
    written = 0
    for start, end in extents(src_fd, size):
        feed_zeros(digest, start - position)
        offset = start if digest is not None else copy_range(src_fd, dst_fd, start, end)
        written += offset - start
        while offset < end:
            read = os.preadv(src_fd, [view[: min(_CHUNK, end - offset)]], offset)
            if read == 0:
                break  # the source shrank: the rest reads as a hole
            chunk = view[:read]
            done = 0
            while done < read:
                done += os.pwrite(dst_fd, chunk[done:], offset + done)
            if digest is not None:
                digest.update(chunk)
            offset += read
            written += read
        position = offset
    feed_zeros(digest, size - position)
    os.ftruncate(dst_fd, size)
    return written
