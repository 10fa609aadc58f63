"""Check, after a restore, that the tree in a backup's scope is identical to the backup.

A second, read-only walk of the scope: every path the backup holds is there with the same
kind, mode and symlink target; files have the same size, mtime and content; nothing else is
in scope (SQLite's sidecars and special files aside, as in the restore). A file whose
(inode, size, mtime, ctime) still equals what was recorded when it was captured has not been
written since, and is taken as identical, as the restore itself does; every other file is
re-hashed. A database that changed is compared by content (tables, schema and rows, as
``verify`` compares them), since the restore writes it back through SQLite's backup API, not
byte for byte.
"""

from __future__ import annotations

import sqlite3
import stat
from pathlib import Path

from ._backup import TREE, BackupStore, Entry, database_signature, file_signature
from ._copy import hash_file
from ._restore import _matches, _removals
from ._snapshot import same_database
from ._tree import Scope, TreeEntry, walk

__all__ = ["differences"]


def differences(store: BackupStore, backup_id: str, root: Path) -> list[str]:
    """Every way the scope under ``root`` differs from backup ``backup_id`` (empty: identical).

    Raises :class:`~dopemux_update.BackupError` when the backup's manifest can't be read.
    """
    manifest = store.read_manifest(backup_id)
    wanted = manifest.decoded()
    scope = Scope(root.resolve(), manifest.excluded, manifest.included)
    live = {item.rel: item for item in walk(scope)}
    found = [
        f"{rel}: {'not in the backup' if rel not in wanted else 'of another kind'}"
        for rel in _removals(wanted, live)
    ]
    tree = store.path_of(backup_id) / TREE
    for rel in sorted(wanted):
        entry, item = wanted[rel], live.get(rel)
        if item is None:
            found.append(f"{rel}: missing")
        elif _matches(entry, item):
            problem = _compare(scope.root / rel, tree / rel, entry, item)
            if problem is not None:
                found.append(f"{rel}: {problem}")
    return found


def _compare(path: Path, stored: Path, entry: Entry, item: TreeEntry) -> str | None:
    info = item.info
    if entry.type == "symlink":
        target = str(path.readlink())
        return None if target == entry.target else f"links to {target!r}, not {entry.target!r}"
    mode = stat.S_IMODE(info.st_mode)
    if mode != entry.mode:
        return f"mode {mode:o}, not {entry.mode:o}"
    if entry.type == "dir":
        return None
    if entry.type == "sqlite":
        if database_signature(path, info) == entry.sig:
            return None
        try:
            same = same_database(stored, path)
        except sqlite3.Error:
            same = False
        return None if same else "database content differs"
    if info.st_size != entry.size:
        return f"{info.st_size} bytes, not {entry.size}"
    if info.st_mtime_ns != entry.mtime_ns:
        return "modification time differs"
    if file_signature(info) == entry.sig:
        return None
    return None if hash_file(path)[0] == entry.hash else "content differs"
