"""Check, after a restore, that the tree in a backup's scope is identical to the backup.

A second, read-only walk of the scope, compared path by path with the manifest in the sense
of :func:`~dopemux_update._backup._snapshot.item_difference` (the one definition of identity, which
``verify`` uses too), modification times of files included: every path the backup holds is
there with the same kind, mode, owners (where the process may set them), symlink target,
hard links and content; nothing else is in scope (SQLite's sidecars and special files aside,
as in the restore).

A file whose (inode, size, mtime, ctime) still equals what was recorded when it was captured
has not been written since, and is taken as holding what was captured, as the restore itself
does; so is a file whose size or mtime already differs (it is reported without being read).
Every other file is re-hashed. A database that changed is compared by content and settings
(as ``verify`` compares them), since the restore writes it back through SQLite's backup API,
not byte for byte.
"""

from __future__ import annotations

import functools
import os
import sqlite3
import stat
from collections.abc import Callable
from pathlib import Path

from ._copy import hash_file
from ._manifest import Entry, database_signature, file_signature
from ._restore import _matches, _removals
from ._snapshot import (
    DatabaseDigest,
    Difference,
    Item,
    database_digest,
    database_hash,
    item_difference,
    link_leaders,
)
from ._sqlite import SIDECARS
from ._store import BackupStore
from ._tree import Scope, TreeEntry, walk

__all__ = ["differences"]


def differences(store: BackupStore, backup_id: str, root: Path) -> list[str]:
    """Every way the scope under ``root`` differs from backup ``backup_id`` (empty: identical).

    Raises :class:`~dopemux_update.BackupError` when the backup's manifest can't be read.
    """
    manifest = store.read_manifest(backup_id)
    wanted = manifest.decoded()
    scope = Scope(root.resolve(), manifest.excluded, manifest.included)
    walked = list(walk(scope))
    live = {item.rel: item for item in walked}
    databases = {rel for rel, entry in wanted.items() if entry.type == "sqlite"}
    sqlite_owned = databases | {rel + suffix for rel in databases for suffix in SIDECARS}
    leaders = link_leaders(item for item in walked if item.rel not in sqlite_owned)
    found = [
        f"{rel}: {'not in the backup' if rel not in wanted else 'of another kind'}"
        for rel in _removals(wanted, live)
    ]
    for rel in sorted(wanted):
        entry, item = wanted[rel], live.get(rel)
        if item is None:
            found.append(f"{rel}: missing")
        elif _matches(entry, item):
            stored = functools.partial(store.stored_file, manifest, rel, entry)
            expected, actual = _items(scope.root / rel, stored, entry, item, leaders.get(rel))
            problems = [_describe(d, entry) for d in item_difference(expected, actual)]
            if problems:
                found.append(f"{rel}: {'; '.join(problems)}")
    return found


def _items(
    path: Path, stored: Callable[[], Path], entry: Entry, item: TreeEntry, leader: str | None
) -> tuple[Item, Item]:
    """What the backup says ``path`` is, and what it is, as the identity compares them;
    content is read only where nothing cheaper tells (``stored()``: the stored copy)."""
    info = item.info
    mode = stat.S_IMODE(info.st_mode)
    if entry.type == "symlink":
        target = os.readlink(path)  # noqa: PTH115 - names that are not UTF-8 stay str
        return Item("symlink", 0, entry.target, uid=entry.uid, gid=entry.gid), Item(
            "symlink", 0, target, uid=info.st_uid, gid=info.st_gid
        )
    if entry.type == "dir":
        return Item("dir", entry.mode, uid=entry.uid, gid=entry.gid), Item(
            "dir", mode, uid=info.st_uid, gid=info.st_gid
        )
    if entry.type == "sqlite":
        expected = Item("sqlite", entry.mode, entry.hash, uid=entry.uid, gid=entry.gid)
        actual = Item("sqlite", mode, entry.hash, uid=info.st_uid, gid=info.st_gid)
        if database_signature(path, info) == entry.sig:
            return expected, actual  # not written since it was captured
        try:
            old = _stored_database(stored(), entry)
            new = database_digest(path)
        except sqlite3.Error:
            return expected, Item("sqlite", mode, "unreadable", uid=info.st_uid, gid=info.st_gid)
        return (
            Item("sqlite", entry.mode, database_hash(old), old, uid=entry.uid, gid=entry.gid),
            Item("sqlite", mode, database_hash(new), new, uid=info.st_uid, gid=info.st_gid),
        )
    link = entry.target if entry.type == "hardlink" else ""
    expected = Item(
        "file",
        entry.mode,
        entry.hash,
        link=link,
        mtime_ns=entry.mtime_ns,
        uid=entry.uid,
        gid=entry.gid,
    )
    content = entry.hash  # unless the file may have been written since it was captured
    if info.st_size != entry.size:
        content = f"{info.st_size} bytes"
    elif info.st_mtime_ns != entry.mtime_ns:
        pass  # reported as a modification time: no need to read it
    elif file_signature(info) != entry.sig and not (link and leader == link):
        content = hash_file(path)[0]  # a hard link's content is its first name's, checked there
    actual = Item(
        "file",
        mode,
        content,
        link=leader or "",
        mtime_ns=info.st_mtime_ns,
        uid=info.st_uid,
        gid=info.st_gid,
    )
    return expected, actual


def _stored_database(stored: Path, entry: Entry) -> DatabaseDigest:
    """The stored copy's content with the live database's settings when it was captured (the
    copy itself is kept in rollback-journal mode)."""
    database = database_digest(stored)
    settings = dict(database.pragmas)
    settings.update(entry.sqlite)
    if not entry.sqlite:  # a backup of an older format recorded only WAL or not
        settings["journal_mode"] = "wal" if entry.wal else "delete"
    return DatabaseDigest(database.tables, database.objects, settings)


def _describe(difference: Difference, entry: Entry) -> str:
    aspect, expected, actual = difference.aspect, difference.expected, difference.actual
    if aspect == "kind":
        return f"a {actual}, not a {expected}"
    if aspect == "target":
        return f"links to {actual!r}, not {expected!r}"
    if aspect == "content":
        if actual.endswith(" bytes"):
            return f"{actual}, not {entry.size}"
        return "database content differs" if entry.type == "sqlite" else "content differs"
    if aspect == "link":
        if not expected:
            return f"a hard link to {actual}, not a file of its own"
        if not actual:
            return f"not a hard link to {expected}"
        return f"a hard link to {actual}, not to {expected}"
    if aspect == "mtime":
        return "modification time differs"
    return f"{aspect} {actual}, not {expected}"  # mode, owner, PRAGMA ...
