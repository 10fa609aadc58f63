"""Files and folders moved within an installation, cleaning up the folders left empty."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from .._core._exceptions import EditError
from .._core._fsutil import fsync_dir
from .._core._log import get_logger

__all__ = ["move"]

logger = get_logger()


def move(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    *,
    root: str | os.PathLike[str] | None = None,
) -> bool:
    """Move the file, symlink or folder ``src`` to ``dst`` with one atomic rename.

    Creates the missing parent folders of ``dst``, then removes the folders above ``src``
    that the move left empty, up to ``root`` (never ``root`` itself), or, without ``root``,
    up to the deepest folder holding both ``src`` and ``dst``. Mode, owner and timestamps
    are kept (it is a rename). Returns True if it moved ``src``; False if ``src`` is gone
    and ``dst`` is there (moved already). Raises :class:`EditError`, changing nothing,
    when neither exists, when ``dst`` exists too (it is never overwritten), or when the two
    are on different file systems.
    """
    source, target = Path(src), Path(dst)
    if not os.path.lexists(source):
        if os.path.lexists(target):
            return False
        raise EditError(f"nothing to move to {target}: no such file or folder", path=source)
    if os.path.lexists(target):
        raise EditError(
            f"cannot move to {target}: it exists; refusing to overwrite it", path=source
        )
    limit = Path(root) if root is not None else _common_folder(source, target)
    if not _is_below(source.parent, limit) and source.parent != limit:
        raise EditError(f"{source} is not inside {limit}", path=source)
    created = _make_parents(target.parent)
    try:
        source.rename(target)
    except OSError as exc:
        _remove_empty(created)
        reason = "on another file system" if exc.errno == errno.EXDEV else exc.strerror
        raise EditError(f"cannot move to {target}: {reason}", path=source) from exc
    try:
        fsync_dir(target.parent)
        if source.parent != target.parent:
            fsync_dir(source.parent)
    except OSError as exc:
        raise EditError(
            f"moved, but cannot fsync the folders: {exc.strerror}", path=target
        ) from exc
    _prune(source.parent, limit)
    logger.debug("edit.moved", source=str(source), target=str(target))
    return True


def _common_folder(source: Path, target: Path) -> Path:
    return Path(os.path.commonpath([_absolute(source.parent), _absolute(target)]))


def _is_below(path: Path, folder: Path) -> bool:
    path, folder = _absolute(path), _absolute(folder)
    return path != folder and path.is_relative_to(folder)


def _absolute(path: Path) -> Path:
    """``path`` made absolute and without ``..``, symlinks not followed."""
    return Path(os.path.normpath(path.absolute()))


def _make_parents(folder: Path) -> list[Path]:
    """Create ``folder`` and its missing parents; return those created, deepest first."""
    missing: list[Path] = []
    current = folder
    while not current.exists():
        missing.append(current)
        current = current.parent
    for path in reversed(missing):
        try:
            path.mkdir()
        except OSError as exc:
            _remove_empty(missing)
            raise EditError(f"cannot create the folder: {exc.strerror}", path=path) from exc
    return missing


def _remove_empty(folders: list[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:
            return


def _prune(folder: Path, limit: Path) -> None:
    """Remove ``folder`` and its parents while they are empty and below ``limit``."""
    while _is_below(folder, limit):
        try:
            folder.rmdir()
        except OSError:  # not empty (or not ours to remove): stop here
            return
        try:
            fsync_dir(folder.parent)
        except OSError as exc:
            raise EditError(f"removed, but cannot fsync: {exc.strerror}", path=folder) from exc
        folder = folder.parent
