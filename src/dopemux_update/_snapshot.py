"""What a tree holds, compared by content, and how two such snapshots differ.

Files are compared by hash and permission bits, symlinks by target, folders by mode. SQLite
databases are compared *logically*: their tables' columns, their other schema objects
(indexes, views, triggers) and their rows. Two databases holding the same data compare equal
even when their pages differ, which is what happens after a column is added and dropped again.
Modification times are ignored: a migration that rewrites a file with the same bytes has not
changed it. SQLite's ``-wal``/``-shm``/``-journal`` files belong to their database and are not
compared on their own.
"""

from __future__ import annotations

import contextlib
import re
import sqlite3
import stat
import urllib.parse
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from ._copy import hash_file
from ._sqlite import SIDECARS, is_sqlite
from ._tree import Scope, walk

__all__ = [
    "DatabaseChange",
    "DatabaseDigest",
    "PathChange",
    "TreeDiff",
    "TreeSnapshot",
    "diff_snapshots",
    "take_snapshot",
]

_EXAMPLES = 3  # rows shown per table in a report
_SPACES = re.compile(r"\s+")


@dataclass(frozen=True, slots=True)
class TableDigest:
    """One table: its columns, and its rows keyed by primary key (or counted, without one)."""

    columns: tuple[tuple[str, str, int, str | None, int], ...]
    keyed: bool
    rows: dict[str, str]  # primary key -> row, for a table with a primary key
    counts: Counter[str] = field(default_factory=Counter)  # row -> times present, without one

    @property
    def size(self) -> int:
        return len(self.rows) if self.keyed else self.counts.total()


@dataclass(frozen=True, slots=True)
class DatabaseDigest:
    """The logical content of one SQLite database."""

    tables: dict[str, TableDigest]
    objects: dict[str, str]  # "index name" / "view name" / "trigger name" -> normalised SQL


@dataclass(frozen=True, slots=True)
class Item:
    """One path of a snapshot."""

    kind: str  # file, dir, symlink, sqlite, other
    mode: int
    digest: str = ""  # file hash, link target, or "" for folders
    database: DatabaseDigest | None = field(default=None, compare=False)


@dataclass(frozen=True, slots=True)
class TreeSnapshot:
    """Every path of a tree, relative to its root, with what it holds."""

    root: Path
    items: dict[str, Item]


@dataclass(frozen=True, slots=True)
class PathChange:
    """A path present on both sides whose content, kind or mode differs."""

    path: str
    what: str


@dataclass(frozen=True, slots=True)
class DatabaseChange:
    """One difference inside a SQLite database: ``table`` is a table, or a schema object."""

    path: str
    table: str
    what: str


@dataclass(frozen=True, slots=True)
class TreeDiff:
    """How one snapshot differs from another (``before`` → ``after``)."""

    added: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    changed: tuple[PathChange, ...] = ()
    databases: tuple[DatabaseChange, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not (self.added or self.removed or self.changed or self.databases)

    def describe(self) -> list[str]:
        """One line per difference, for people."""
        lines = [f"added:   {path}" for path in self.added]
        lines.extend(f"removed: {path}" for path in self.removed)
        lines.extend(f"changed: {change.path} ({change.what})" for change in self.changed)
        lines.extend(
            f"changed: {change.path}, {change.table}: {change.what}" for change in self.databases
        )
        return lines

    def to_json(self) -> dict[str, object]:
        return {
            "added": list(self.added),
            "removed": list(self.removed),
            "changed": [{"path": c.path, "what": c.what} for c in self.changed],
            "databases": [
                {"path": c.path, "table": c.table, "what": c.what} for c in self.databases
            ],
        }


# -- taking a snapshot ----------------------------------------------------------------------


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


@contextlib.contextmanager
def _read_only(path: Path) -> Iterator[sqlite3.Connection]:
    uri = f"file:{urllib.parse.quote(str(path.resolve()))}?mode=ro"
    connection = sqlite3.connect(uri, uri=True, timeout=30.0)
    try:
        yield connection
    finally:
        connection.close()


def _row_text(row: tuple[object, ...]) -> str:
    return repr(row)


def _table_digest(connection: sqlite3.Connection, table: str) -> TableDigest:
    info = connection.execute(f"PRAGMA table_xinfo({_quote(table)})").fetchall()
    columns = tuple((str(r[1]), str(r[2]).upper(), int(r[3]), r[4], int(r[5])) for r in info)
    key_columns = [c[0] for c in sorted((c for c in columns if c[4]), key=lambda c: c[4])]
    names = ", ".join(_quote(c[0]) for c in columns)
    cursor = connection.execute(f"SELECT {names} FROM {_quote(table)}")  # noqa: S608 - quoted
    if not key_columns:
        counts = Counter(_row_text(row) for row in cursor)
        return TableDigest(columns=columns, keyed=False, rows={}, counts=counts)
    positions = [next(i for i, c in enumerate(columns) if c[0] == k) for k in key_columns]
    rows: dict[str, str] = {}
    for row in cursor:
        key = ", ".join(f"{columns[i][0]}={row[i]!r}" for i in positions)
        rows[key] = _row_text(row)
    return TableDigest(columns=columns, keyed=True, rows=rows)


def database_digest(path: Path) -> DatabaseDigest:
    """The tables, schema objects and rows of the SQLite database at ``path``."""
    with _read_only(path) as connection:
        master = connection.execute(
            "SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE 'sqlite_%'"
        ).fetchall()
        tables: dict[str, TableDigest] = {}
        objects: dict[str, str] = {}
        for kind, name, sql in master:
            if kind == "table":
                tables[name] = _table_digest(connection, name)
            else:
                objects[f"{kind} {name}"] = _SPACES.sub(" ", sql or "").strip()
    return DatabaseDigest(tables=tables, objects=objects)


def _database_hash(database: DatabaseDigest) -> str:
    digest = xxhash.xxh3_128()
    digest.update(repr(sorted(database.objects.items())).encode())
    for name in sorted(database.tables):
        table = database.tables[name]
        rows = sorted(table.rows.items()) if table.keyed else sorted(table.counts.items())
        digest.update(repr((name, table.columns, rows)).encode())
    return digest.hexdigest()


def _is_sidecar(rel: str, files: set[str]) -> bool:
    return any(rel.endswith(suffix) and rel[: -len(suffix)] in files for suffix in SIDECARS)


def take_snapshot(scope: Scope) -> TreeSnapshot:
    """Read everything under ``scope`` (symlinks are never followed)."""
    entries = list(walk(scope))
    files = {entry.rel for entry in entries if entry.kind == "file"}
    items: dict[str, Item] = {}
    for entry in entries:
        mode = stat.S_IMODE(entry.info.st_mode)
        path = scope.root / entry.rel
        if entry.kind == "dir":
            items[entry.rel] = Item("dir", mode)
        elif entry.kind == "symlink":
            items[entry.rel] = Item("symlink", 0, str(path.readlink()))
        elif entry.kind != "file":
            items[entry.rel] = Item("other", mode, entry.kind)
        elif _is_sidecar(entry.rel, files):
            continue
        elif is_sqlite(path):
            database = database_digest(path)
            items[entry.rel] = Item("sqlite", mode, _database_hash(database), database)
        else:
            items[entry.rel] = Item("file", mode, hash_file(path)[0])
    return TreeSnapshot(root=scope.root, items=items)


# -- comparing ------------------------------------------------------------------------------


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' if count != 1 else ''}"


def _examples(keys: list[str]) -> str:
    shown = ", ".join(keys[:_EXAMPLES])
    return f" ({shown}{', ...' if len(keys) > _EXAMPLES else ''})"


def _table_changes(
    path: str, name: str, old: TableDigest, new: TableDigest
) -> list[DatabaseChange]:
    changes: list[DatabaseChange] = []
    if old.columns != new.columns:
        old_names = [c[0] for c in old.columns]
        new_names = [c[0] for c in new.columns]
        parts = []
        if added := [n for n in new_names if n not in old_names]:
            parts.append("added " + ", ".join(added))
        if removed := [n for n in old_names if n not in new_names]:
            parts.append("removed " + ", ".join(removed))
        if not parts:
            parts.append("definitions or order changed")
        changes.append(DatabaseChange(path, name, "columns " + "; ".join(parts)))
        return changes  # the rows differ in shape; listing them would say nothing more
    parts = []
    if old.keyed != new.keyed:
        parts.append("primary key changed")
    elif old.keyed:
        groups = (
            ([k for k in old.rows if k in new.rows and old.rows[k] != new.rows[k]], "changed"),
            ([k for k in new.rows if k not in old.rows], "added"),
            ([k for k in old.rows if k not in new.rows], "removed"),
        )
        parts.extend(
            f"{_plural(len(keys), 'row')} {verb}{_examples(keys)}" for keys, verb in groups if keys
        )
    else:
        gained, lost = new.counts - old.counts, old.counts - new.counts
        if gained:
            parts.append(f"{_plural(gained.total(), 'row')} added{_examples(sorted(gained))}")
        if lost:
            parts.append(f"{_plural(lost.total(), 'row')} removed{_examples(sorted(lost))}")
    if parts:
        changes.append(DatabaseChange(path, name, "; ".join(parts)))
    return changes


def _database_changes(path: str, old: DatabaseDigest, new: DatabaseDigest) -> list[DatabaseChange]:
    changes: list[DatabaseChange] = []
    for name in sorted(old.tables.keys() | new.tables.keys()):
        if name not in new.tables:
            rows = old.tables[name].size
            changes.append(DatabaseChange(path, name, f"table removed ({_plural(rows, 'row')})"))
        elif name not in old.tables:
            changes.append(DatabaseChange(path, name, "table added"))
        else:
            changes.extend(_table_changes(path, name, old.tables[name], new.tables[name]))
    for name in sorted(old.objects.keys() | new.objects.keys()):
        if name not in new.objects:
            changes.append(DatabaseChange(path, name, "removed"))
        elif name not in old.objects:
            changes.append(DatabaseChange(path, name, "added"))
        elif old.objects[name] != new.objects[name]:
            changes.append(DatabaseChange(path, name, "definition changed"))
    return changes


def _what_changed(old: Item, new: Item) -> str:
    if old.kind != new.kind:
        return f"was a {old.kind}, now a {new.kind}"
    if old.digest != new.digest:
        return {"symlink": "link target", "other": "kind"}.get(old.kind, "content")
    return f"mode {old.mode:o} → {new.mode:o}"


def diff_snapshots(before: TreeSnapshot, after: TreeSnapshot) -> TreeDiff:
    """What changed from ``before`` to ``after``; empty when they hold the same."""
    added = tuple(sorted(after.items.keys() - before.items.keys()))
    removed = tuple(sorted(before.items.keys() - after.items.keys()))
    changed: list[PathChange] = []
    databases: list[DatabaseChange] = []
    for rel in sorted(before.items.keys() & after.items.keys()):
        old, new = before.items[rel], after.items[rel]
        if old == new:
            continue
        if old.kind == new.kind == "sqlite" and old.digest != new.digest:
            assert old.database is not None  # noqa: S101 - always set for kind "sqlite"
            assert new.database is not None  # noqa: S101
            databases.extend(_database_changes(rel, old.database, new.database))
            if old.mode != new.mode:
                changed.append(PathChange(rel, f"mode {old.mode:o} → {new.mode:o}"))
        else:
            changed.append(PathChange(rel, _what_changed(old, new)))
    return TreeDiff(added, removed, tuple(changed), tuple(databases))
