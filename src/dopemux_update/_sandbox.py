"""Sandbox copies of an installation, to rehearse migrations on without touching the original.

A copy keeps folders, files with their permission bits, and symlinks as symlinks (their
targets unchanged). SQLite databases are copied through SQLite's online backup API, so a
database that a running service holds open, with pages still in its WAL, is copied
consistently; a database in WAL mode stays in WAL mode. Fifos, sockets and devices are left
out, as in a backup.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

from ._copy import copy_file
from ._sqlite import SIDECARS, capture, is_sqlite, is_wal
from ._tree import Scope, walk

__all__ = ["copy_tree", "remove_tree", "temporary_folder"]


def _set_wal(path: Path) -> None:
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA journal_mode=WAL").fetchall()
    finally:
        connection.close()


def copy_tree(scope: Scope, destination: Path) -> int:
    """Copy what ``scope`` covers into the folder ``destination`` (created, or empty).

    Returns the number of bytes of regular files copied.
    """
    destination.mkdir(parents=True, exist_ok=True)
    entries = list(walk(scope))
    files = {entry.rel for entry in entries if entry.kind == "file"}
    folders: list[tuple[Path, int]] = [(destination, stat.S_IMODE(scope.root.stat().st_mode))]
    copied = 0
    for entry in entries:
        source = scope.root / entry.rel
        target = destination / entry.rel
        mode = stat.S_IMODE(entry.info.st_mode)
        if entry.kind == "dir":
            target.mkdir(mode=0o700)
            folders.append((target, mode))
        elif entry.kind == "symlink":
            target.symlink_to(source.readlink())
        elif entry.kind != "file":
            continue
        elif any(entry.rel.endswith(s) and entry.rel[: -len(s)] in files for s in SIDECARS):
            continue  # part of its database, copied with it
        elif is_sqlite(source):
            capture(source, target)
            if is_wal(source):
                _set_wal(target)
            for suffix in SIDECARS:
                with contextlib.suppress(FileNotFoundError):
                    Path(f"{target}{suffix}").unlink()
            target.chmod(mode)
        else:
            copy_file(source, target, mode=mode)
            copied += entry.info.st_size
    # Folder modes last: a read-only folder must still be written into while it is filled.
    for folder, mode in reversed(folders):
        folder.chmod(mode)
    return copied


def remove_tree(path: Path) -> None:
    """Remove a sandbox, even one whose migrations left read-only folders behind."""
    if path.is_symlink() or not path.exists():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    with contextlib.suppress(OSError):
        path.chmod(0o700)
    for folder, names, _ in os.walk(path):
        for name in names:
            child = Path(folder, name)
            if not child.is_symlink():  # never change anything outside the sandbox
                with contextlib.suppress(OSError):
                    child.chmod(0o700)
    shutil.rmtree(path)


@contextlib.contextmanager
def temporary_folder(parent: Path | None, *, keep: bool = False) -> Iterator[Path]:
    """A new private folder under ``parent`` (default: the system's temporary folder),
    removed afterwards unless ``keep``."""
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="dopemux-verify-", dir=parent))
    try:
        yield folder
    finally:
        if not keep:
            remove_tree(folder)
