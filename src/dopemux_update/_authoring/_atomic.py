"""Atomic file replacement for migrations: readers see the old file or the new one, never a mix.

The new content goes to a temporary file in the target's folder, is flushed and fsynced,
takes the existing file's permission mode (and, when allowed, its owner), is renamed over
the target with :func:`os.replace`, and the folder is fsynced so the rename survives a crash.
Any error removes the temporary file and leaves the original untouched.

A ``path`` that is a symlink is *followed*: the file it points to is replaced and the link
stays a link (a migration editing ``config.yaml -> shared/config.yaml`` edits the shared file).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any, BinaryIO, Literal, TextIO, TypeVar, overload

from .._core._exceptions import EditError
from .._core._fsutil import fsync_dir

__all__ = ["atomic_write", "read_text", "saved_if_changed", "write_bytes", "write_text"]

T = TypeVar("T")

# Mode of a newly created file before the umask, as with a plain open() of a config file.
_NEW_FILE_MODE = 0o644


def _target(path: str | os.PathLike[str]) -> Path:
    """The file to replace: ``path`` itself, or the file a symlink at ``path`` resolves to."""
    return Path(os.path.realpath(path))


@overload
def atomic_write(
    path: str | os.PathLike[str], mode: Literal["w"] = "w", *, encoding: str = "utf-8"
) -> contextlib.AbstractContextManager[TextIO]: ...
@overload
def atomic_write(
    path: str | os.PathLike[str], mode: Literal["wb"], *, encoding: str = "utf-8"
) -> contextlib.AbstractContextManager[BinaryIO]: ...
def atomic_write(
    path: str | os.PathLike[str], mode: Literal["w", "wb"] = "w", *, encoding: str = "utf-8"
) -> contextlib.AbstractContextManager[IO[str]] | contextlib.AbstractContextManager[IO[bytes]]:
    """Open a temporary file that replaces ``path`` atomically when the block ends normally.

    ``mode`` is ``"w"`` (text, written as given: no newline translation) or ``"wb"``. If the
    block raises, the temporary file is removed, ``path`` is untouched and the exception
    propagates unchanged, except an :class:`OSError` (a failed write to the handle: a full
    disk, a file size limit), which becomes an :class:`EditError` naming ``path``, as does
    any OS error while flushing, syncing, closing or replacing.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', not {mode!r}")
    return _atomic_write(_target(path), binary=mode == "wb", encoding=encoding)


@contextlib.contextmanager
def _atomic_write(target: Path, *, binary: bool, encoding: str) -> Iterator[IO[Any]]:
    try:
        existing: os.stat_result | None = target.stat()
    except FileNotFoundError:
        existing = None
    except OSError as exc:
        raise EditError(f"cannot read the file's status: {exc.strerror}", path=target) from exc
    if existing is not None and not stat.S_ISREG(existing.st_mode):
        raise EditError("not a regular file; refusing to replace it", path=target)

    tmp = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, _NEW_FILE_MODE)
    except OSError as exc:
        raise EditError(f"cannot create a temporary file: {exc.strerror}", path=target) from exc
    try:
        # On failure (an unknown encoding), fdopen closes fd itself.
        handle: IO[Any] = (
            os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding=encoding, newline="")
        )
        try:
            yield handle
            # Flush, fsync and close in one place: closing flushes what is still buffered,
            # so a full disk or a file size limit may show up only here.
            handle.flush()
            if existing is not None:
                _copy_mode_and_owner(fd, existing)
            os.fsync(fd)
            handle.close()
        except OSError as exc:
            # Also a failed write of the block to the handle; any other exception of the
            # block propagates as it is.
            raise EditError(f"cannot write: {_reason(exc)}", path=target) from exc
        finally:
            # On an error, closing flushes the buffer again and may fail again: the error
            # that matters is the first one, and the temporary file is removed below.
            with contextlib.suppress(OSError):
                handle.close()
        try:
            tmp.replace(target)
        except OSError as exc:
            raise EditError(f"cannot replace the file: {exc.strerror}", path=target) from exc
        try:
            fsync_dir(target.parent)
        except OSError as exc:
            raise EditError(
                f"replaced, but cannot fsync its folder: {exc.strerror}", path=target
            ) from exc
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _reason(exc: OSError) -> str:
    """The OS's words for ``exc`` (``"File too large"``), or the exception itself."""
    return exc.strerror or str(exc)


def _copy_mode_and_owner(fd: int, existing: os.stat_result) -> None:
    if (existing.st_uid, existing.st_gid) != (os.geteuid(), os.getegid()):
        # Best effort: only root (or a member of the group) may give the file back its
        # owner. Before fchmod, because changing the owner clears set-user-ID bits.
        with contextlib.suppress(PermissionError):
            os.fchown(fd, existing.st_uid, existing.st_gid)
    os.fchmod(fd, stat.S_IMODE(existing.st_mode))


def write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Replace the file at ``path`` with ``data`` atomically (see the module docstring)."""
    with atomic_write(path, "wb") as handle:
        handle.write(data)


def write_text(path: str | os.PathLike[str], text: str, *, encoding: str = "utf-8") -> None:
    """Replace the file at ``path`` with ``text`` atomically; newlines are written as given."""
    with atomic_write(path, "w", encoding=encoding) as handle:
        handle.write(text)


def read_text(path: Path) -> str:
    """The UTF-8 text of the file at ``path``; :class:`EditError` if it cannot be read."""
    try:
        return path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise EditError(f"cannot read: {exc.strerror}", path=path) from exc
    except UnicodeDecodeError as exc:
        raise EditError(f"not valid UTF-8 ({exc.reason})", path=path) from exc


@contextlib.contextmanager
def saved_if_changed(path: Path, doc: T, dump: Callable[[T], str]) -> Iterator[T]:
    """Yield ``doc``; afterwards write ``dump(doc)`` to ``path`` atomically, but only if the
    block ended without an exception and the dump differs from the one before the block."""
    before = dump(doc)
    yield doc
    after = dump(doc)
    if after != before:
        write_text(path, after)
