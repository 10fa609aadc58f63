"""Sandbox copies of an installation, to rehearse migrations on without touching the original.

A copy keeps folders, files with their permission bits, and symlinks as symlinks. A symlink
that leads (as the kernel resolves it) to a path inside the installation leads to the same
path inside the copy: it is rewritten as a relative link to it. A symlink that leads
*outside* the installation is refused, all of them listed at once: a migration writing
through it would write to the real files, not to the sandbox. SQLite databases are copied
through SQLite's online backup API, so a database that a running service holds open, with
pages still in its WAL, is copied consistently; a database in WAL mode stays in WAL mode. A
file is a database's ``-wal``/``-shm``/``-journal`` only beside a database. Fifos, sockets and
devices are left out, as in a backup.
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

from .._backup._copy import copy_file
from .._backup._sqlite import SIDECARS, capture, is_sqlite, is_wal
from .._backup._tree import Scope, TreeEntry, link_destination, shown, walk
from .._core._exceptions import PreflightError, UpdateError
from .._core._log import get_logger

__all__ = ["SandboxEscapeError", "copy_tree", "remove_tree", "temporary_folder"]

_SHOWN_LINKS = 5

logger = get_logger()


class SandboxEscapeError(PreflightError):
    """Symlinks in the installation lead outside it; a rehearsal could not contain them."""

    def __init__(self, root: Path, links: list[tuple[str, str]]) -> None:
        self.links = tuple(links)
        listed = ", ".join(
            f"{shown(rel)} -> {shown(target)}" for rel, target in links[:_SHOWN_LINKS]
        )
        more = f" and {len(links) - _SHOWN_LINKS} more" if len(links) > _SHOWN_LINKS else ""
        super().__init__(
            f"{root}: {len(links)} symlink(s) lead outside the installation ({listed}{more});"
            " a migration writing through them would change the real files, not the sandbox."
            " Leave them out with --exclude"
        )


def _links(root: Path, entries: list[TreeEntry]) -> dict[str, str]:
    """Where each symlink finally leads, relative to ``root``; raises if any leads outside.

    Resolved as the kernel resolves it, through every symlink on the way: a link whose text
    looks inside but climbs out through another link, or to ``/`` and back in, is outside.
    """
    destinations: dict[str, str] = {}
    escaping: list[tuple[str, str]] = []
    for entry in entries:
        if entry.kind != "symlink":
            continue
        inside = link_destination(root, root / entry.rel)
        if inside is None:
            escaping.append((entry.rel, os.readlink(root / entry.rel)))  # noqa: PTH115
        else:
            destinations[entry.rel] = inside
    if escaping:
        raise SandboxEscapeError(root, escaping)
    return destinations


def _set_wal(path: Path) -> None:
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA journal_mode=WAL").fetchall()
    finally:
        connection.close()


def copy_tree(scope: Scope, destination: Path) -> int:
    """Copy what ``scope`` covers into the folder ``destination`` (created, or empty).

    Returns the number of bytes of regular files copied. Raises
    :class:`SandboxEscapeError` (before copying anything) when a symlink leads outside the
    scope's root, and :class:`~dopemux_update.UpdateError` naming the path that could not be
    read or copied.
    """
    root = scope.root.resolve()
    entries = list(walk(Scope(root, scope.excluded, scope.included)))
    links = _links(root, entries)
    databases = {e.rel for e in entries if e.kind == "file" and is_sqlite(root / e.rel)}
    destination.mkdir(parents=True, exist_ok=True)
    folders: list[tuple[Path, int]] = [(destination, stat.S_IMODE(root.stat().st_mode))]
    copied = 0
    for entry in entries:
        if entry.kind == "file" and any(
            entry.rel.endswith(s) and entry.rel[: -len(s)] in databases for s in SIDECARS
        ):
            continue  # part of its database, copied with it
        try:
            copied += _copy_entry(root, destination, entry, links, databases, folders)
        except (OSError, sqlite3.Error) as exc:
            raise UpdateError(
                f"{shown(entry.rel)}: cannot be copied into the sandbox: {exc}"
            ) from exc
    # Folder modes last: a read-only folder must still be written into while it is filled.
    for folder, mode in reversed(folders):
        folder.chmod(mode)
    return copied


def _copy_entry(  # noqa: PLR0917 - one private step of copy_tree
    root: Path,
    destination: Path,
    entry: TreeEntry,
    links: dict[str, str],
    databases: set[str],
    folders: list[tuple[Path, int]],
) -> int:
    source, target = root / entry.rel, destination / entry.rel
    mode = stat.S_IMODE(entry.info.st_mode)
    if entry.kind == "dir":
        target.mkdir(mode=0o700)
        folders.append((target, mode))
    elif entry.kind == "symlink":
        # Relative, to where the original finally leads, but inside the copy: whatever the
        # original's text (absolute, or climbing out and back in), it cannot leave the copy.
        target.symlink_to(os.path.relpath(destination / links[entry.rel], target.parent))
    elif entry.kind != "file":
        return 0
    elif entry.rel in databases:
        capture(source, target)
        if is_wal(source):
            _set_wal(target)
        for suffix in SIDECARS:
            with contextlib.suppress(FileNotFoundError):
                Path(f"{target}{suffix}").unlink()
        target.chmod(mode)
    else:
        copy_file(source, target, mode=mode)
        return entry.info.st_size
    return 0


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
            try:
                remove_tree(folder)
            except OSError as exc:  # e.g. an abandoned migration thread still writing there
                logger.warning("verify.sandbox_not_removed", path=str(folder), error=str(exc))
