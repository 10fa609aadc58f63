"""What a tree holds, compared by content, and how two such snapshots differ.

Files are compared by hash, permission bits, owners and hard links, symlinks by target,
folders by mode and owners (see :func:`item_difference`, the one definition of identity that
``verify`` and the post-restore check share). SQLite databases are compared *logically*: their
tables' columns, their other schema objects (indexes, views, triggers), their rows, and the
settings their content does not carry (page size, journal mode, auto-vacuum, ``user_version``,
``application_id``). Two databases holding the same data compare equal even when their pages
differ, which is what happens after a column is added and dropped again. Modification times
are ignored here: a migration that rewrites a file with the same bytes has not changed it.
SQLite's ``-wal``/``-shm``/``-journal`` files belong to their database and are not compared on
their own.
"""

from __future__ import annotations

import dataclasses
import os
import re
import sqlite3
import stat
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from ._copy import hash_file
from ._exceptions import UpdateError
from ._sqlite import SIDECARS, is_sqlite, open_for_reading
from ._tree import Scope, TreeEntry, encode_name, link_destination, shown, walk

__all__ = [
    "DatabaseChange",
    "DatabaseDigest",
    "PathChange",
    "TreeDiff",
    "TreeSnapshot",
    "diff_snapshots",
    "item_difference",
    "link_leaders",
    "may_set_owner",
    "same_database",
    "take_snapshot",
]

_EXAMPLES = 3  # rows shown per table in a report


@dataclass(frozen=True, slots=True)
class TableDigest:
    """One table: its definition, columns, and rows keyed by primary key (or counted).

    Rows of a table without a primary key, and rows whose key holds a NULL (a legacy
    non-INTEGER primary key allows several), are counted as whole rows instead.
    """

    sql: str  # the normalised CREATE TABLE: constraints, collations, defaults
    columns: tuple[tuple[str, str, int, str | None, int], ...]
    keyed: bool
    rows: dict[str, str]  # primary key -> row
    counts: Counter[str] = field(default_factory=Counter)  # row -> times present

    @property
    def size(self) -> int:
        return len(self.rows) + self.counts.total()


@dataclass(frozen=True, slots=True)
class DatabaseDigest:
    """The logical content of one SQLite database."""

    tables: dict[str, TableDigest]
    objects: dict[str, str]  # "index name" / "view name" / "trigger name" -> normalised SQL
    #: The settings the content does not carry (see ``SETTINGS``).
    pragmas: dict[str, int | str] = field(default_factory=dict)


#: A database's settings that are part of its identity: ``journal_mode`` is ``wal`` or
#: ``delete`` (the only mode a database file keeps), the others are numbers.
SETTINGS = ("page_size", "journal_mode", "auto_vacuum", "user_version", "application_id")


@dataclass(frozen=True, slots=True)
class Item:
    """One path of a snapshot: what :func:`item_difference` compares."""

    kind: str  # file, dir, symlink, sqlite, other
    mode: int
    digest: str = ""  # file hash, link target, or "" for folders
    database: DatabaseDigest | None = field(default=None, compare=False)
    uid: int = -1  # -1: unknown
    gid: int = -1
    #: For a file sharing its inode with other paths in scope: the first of them in sorted
    #: order ("" for that first one itself, and for a file with one name).
    link: str = ""
    #: Compared only when both sides have one (a backup records it; a snapshot does not).
    mtime_ns: int | None = field(default=None, compare=False)


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
        """One line per difference, for people (names that are not UTF-8 escaped)."""
        lines = [f"added:   {shown(path)}" for path in self.added]
        lines.extend(f"removed: {shown(path)}" for path in self.removed)
        lines.extend(f"changed: {shown(c.path)} ({shown(c.what)})" for c in self.changed)
        lines.extend(
            f"changed: {shown(c.path)}, {shown(c.table)}: {shown(c.what)}" for c in self.databases
        )
        return lines

    def to_json(self) -> dict[str, object]:
        """JSON-safe: a name that is not UTF-8 is encoded as backups encode it."""
        return {
            "added": [encode_name(p) for p in self.added],
            "removed": [encode_name(p) for p in self.removed],
            "changed": [{"path": encode_name(c.path), "what": shown(c.what)} for c in self.changed],
            "databases": [
                {"path": encode_name(c.path), "table": shown(c.table), "what": shown(c.what)}
                for c in self.databases
            ],
        }


# -- taking a snapshot ----------------------------------------------------------------------


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


_SQL_TOKEN = re.compile(
    r"""(?P<comment>--[^\n]*|/\*.*?(?:\*/|$))"""
    r"""|(?P<literal>'(?:[^']|'')*')"""
    r"""|(?P<quoted>"(?:[^"]|"")*"|`[^`]*`|\[[^\]]*\])"""
    r"""|(?P<space>\s+)"""
    r"""|(?P<word>[A-Za-z_][A-Za-z0-9_$]*)"""
    r"""|(?P<other>.)""",
    re.DOTALL,
)
_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")
_PUNCTUATION = frozenset("(),;")
# Words SQLite's schema text uses as keywords and type names: their case means nothing.
_KEYWORD_TEXT = """
    abort after all always and as asc autoincrement before begin between blob by cascade case
    cast check collate conflict constraint create current_date current_time current_timestamp
    default deferrable deferred delete desc distinct do each else end escape except exists
    fail for foreign from generated glob group having if ignore immediate in index initially
    insert instead int integer into is isnull key like limit match no nocase not notnull null
    numeric of on or order primary raise real references replace restrict rowid rtrim select
    set stored strict table temp temporary text then trigger union unique update using values
    varchar view virtual when where without
"""
_KEYWORDS = frozenset(_KEYWORD_TEXT.split())


def normalise_sql(sql: str) -> str:
    """Schema SQL as SQLite may rewrite it without changing its meaning.

    Comments are dropped and spaces collapsed; keywords and type names are compared in one
    case; a quoted plain identifier is unquoted (a rename quotes names) but keeps its case,
    as every other identifier does. String literals, and quoted names that are not plain
    identifiers, are kept exactly.
    """
    tokens: list[str] = []
    for match in _SQL_TOKEN.finditer(sql):
        kind, text = match.lastgroup, match.group()
        if kind in {"comment", "space"}:
            tokens.append(" ")
        elif kind == "quoted" and _PLAIN_NAME.fullmatch(text[1:-1]):
            tokens.append(text[1:-1])
        elif kind == "word" and text.lower() in _KEYWORDS:
            tokens.append(text.lower())
        else:
            tokens.append(text)
    out: list[str] = []
    for index, piece in enumerate(tokens):
        if piece == " ":
            previous = out[-1] if out else ""
            following = tokens[index + 1] if index + 1 < len(tokens) else ""
            if previous in ("", " ") or previous in _PUNCTUATION or following in _PUNCTUATION:
                continue
            if following in ("", " "):
                continue
        out.append(piece)
    return "".join(out)


def _text(raw: bytes) -> str:
    """TEXT values as str even when they are not valid UTF-8 (kept apart from BLOBs)."""
    return raw.decode("utf-8", "surrogateescape")


def _row_text(row: tuple[object, ...]) -> str:
    return repr(row)


def _table_digest(connection: sqlite3.Connection, table: str, sql: str) -> TableDigest:
    info = connection.execute(f"PRAGMA table_xinfo({_quote(table)})").fetchall()
    columns = tuple((str(r[1]), str(r[2]).upper(), int(r[3]), r[4], int(r[5])) for r in info)
    key_columns = [c[0] for c in sorted((c for c in columns if c[4]), key=lambda c: c[4])]
    names = ", ".join(_quote(c[0]) for c in columns)
    cursor = connection.execute(f"SELECT {names} FROM {_quote(table)}")  # noqa: S608 - quoted
    normalised = normalise_sql(sql)
    if not key_columns:
        counts = Counter(_row_text(row) for row in cursor)
        return TableDigest(normalised, columns, keyed=False, rows={}, counts=counts)
    positions = [next(i for i, c in enumerate(columns) if c[0] == k) for k in key_columns]
    rows: dict[str, str] = {}
    unkeyed: Counter[str] = Counter()
    for row in cursor:
        if any(row[i] is None for i in positions):
            unkeyed[_row_text(row)] += 1  # NULL keys are not unique: count the whole row
            continue
        key = ", ".join(f"{columns[i][0]}={row[i]!r}" for i in positions)
        rows[key] = _row_text(row)
    return TableDigest(normalised, columns, keyed=True, rows=rows, counts=unkeyed)


def _internal(name: str) -> bool:
    """SQLite's own objects (names starting with ``sqlite_``, in any case), except the
    AUTOINCREMENT counters of ``sqlite_sequence``, which are data."""
    folded = name.casefold()
    return folded.startswith("sqlite_") and folded != "sqlite_sequence"


def database_digest(path: Path) -> DatabaseDigest:
    """The tables, schema objects, rows and version pragmas of the database at ``path``."""
    connection = open_for_reading(path)
    try:
        connection.text_factory = _text
        master = connection.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
        tables: dict[str, TableDigest] = {}
        objects: dict[str, str] = {}
        for kind, name, sql in master:
            if _internal(name):
                continue
            if kind == "table":
                table = _table_digest(connection, name, sql or "")
                if name.casefold() == "sqlite_sequence" and not table.size:
                    continue  # SQLite creates it with the first AUTOINCREMENT table, for good
                tables[name] = table
            else:
                objects[f"{kind} {name}"] = normalise_sql(sql or "")
        pragmas = database_settings(connection)
    finally:
        connection.close()
    return DatabaseDigest(tables=tables, objects=objects, pragmas=pragmas)


def database_settings(connection: sqlite3.Connection) -> dict[str, int | str]:
    """The :data:`SETTINGS` of the database ``connection`` reads, read without changing any
    (``PRAGMA journal_mode`` without a value only answers)."""
    settings: dict[str, int | str] = {}
    for name in SETTINGS:
        value = connection.execute(f"PRAGMA {name}").fetchone()[0]
        if name == "journal_mode":
            settings[name] = "wal" if str(value).lower() == "wal" else "delete"
        else:
            settings[name] = int(value)
    return settings


def same_database(first: Path, second: Path) -> bool:
    """Whether two SQLite databases hold the same tables, schema, rows and settings."""
    return database_hash(database_digest(first)) == database_hash(database_digest(second))


def database_hash(database: DatabaseDigest) -> str:
    """One hash of a database's content and settings: equal hashes, equal databases."""
    digest = xxhash.xxh3_128()
    digest.update(repr(sorted(database.objects.items())).encode("utf-8", "surrogateescape"))
    digest.update(repr(sorted(database.pragmas.items())).encode())
    for name in sorted(database.tables):
        table = database.tables[name]
        content = (
            name,
            table.sql,
            table.columns,
            sorted(table.rows.items()),
            sorted(table.counts.items()),
        )
        digest.update(repr(content).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()


def link_leaders(entries: Iterable[TreeEntry]) -> dict[str, str]:
    """Hard links among ``entries``: each file that shares its inode with an earlier one (in
    the sorted order of names as a manifest stores them) mapped to that first path. Links to
    files outside ``entries`` do not count."""
    groups: dict[tuple[int, int], list[str]] = {}
    for entry in entries:
        if entry.kind == "file" and entry.info.st_nlink > 1:
            groups.setdefault((entry.info.st_dev, entry.info.st_ino), []).append(entry.rel)
    leaders: dict[str, str] = {}
    for names in groups.values():
        first, *others = sorted(names, key=encode_name)
        leaders.update(dict.fromkeys(others, first))
    return leaders


def take_snapshot(scope: Scope) -> TreeSnapshot:
    """Read everything under ``scope`` (symlinks are never followed), the root's own mode and
    owners included (as ``"."``). Raises :class:`~dopemux_update.UpdateError` naming a path
    that cannot be read."""
    root = scope.root.resolve()
    entries = list(walk(Scope(root, scope.excluded, scope.included)))
    databases = {e.rel for e in entries if e.kind == "file" and is_sqlite(root / e.rel)}
    leaders = link_leaders(entries)
    top = root.stat()
    items: dict[str, Item] = {
        ".": Item("dir", stat.S_IMODE(top.st_mode), uid=top.st_uid, gid=top.st_gid)
    }
    for entry in entries:
        if entry.kind == "file" and any(
            entry.rel.endswith(s) and entry.rel[: -len(s)] in databases for s in SIDECARS
        ):
            continue  # part of its database, which is compared by content
        try:
            item = _item(root, entry, databases)
        except (OSError, sqlite3.Error) as exc:
            raise UpdateError(f"{shown(entry.rel)}: cannot be read: {exc}") from exc
        items[entry.rel] = dataclasses.replace(
            item, uid=entry.info.st_uid, gid=entry.info.st_gid, link=leaders.get(entry.rel, "")
        )
    return TreeSnapshot(root=scope.root, items=items)


def _item(root: Path, entry: TreeEntry, databases: set[str]) -> Item:
    mode = stat.S_IMODE(entry.info.st_mode)
    path = root / entry.rel
    if entry.kind == "dir":
        return Item("dir", mode)
    if entry.kind == "symlink":
        # A link into the tree is recorded by where it finally leads, relative to the tree: a
        # copy whose link leads to the same place inside the copy holds the same.
        inside = link_destination(root, path)
        target = os.readlink(path) if inside is None else f"<root>/{inside}"  # noqa: PTH115
        return Item("symlink", 0, target)
    if entry.kind != "file":
        return Item("other", mode, entry.kind)
    if entry.rel in databases:
        database = database_digest(path)
        return Item("sqlite", mode, database_hash(database), database)
    return Item("file", mode, hash_file(path)[0])


# -- identity -------------------------------------------------------------------------------


def may_set_owner(uid: int, gid: int) -> bool:
    """Whether this process may give a path owner ``uid`` and group ``gid``: as root, any
    known owner; otherwise only its own user with one of its own groups. Owners are compared,
    and a restore sets them, exactly where this holds."""
    if uid < 0 or gid < 0:
        return False
    if os.geteuid() == 0:
        return True
    return uid == os.geteuid() and (gid == os.getegid() or gid in os.getgroups())


@dataclass(frozen=True, slots=True)
class Difference:
    """One way a path differs from what was expected: ``aspect`` is one of ``kind``,
    ``target``, ``mode``, ``owner``, ``link``, ``content``, ``PRAGMA <setting>``, ``mtime``."""

    aspect: str
    expected: str
    actual: str


def item_difference(expected: Item, actual: Item) -> list[Difference]:
    """Every way the path ``actual`` differs from ``expected`` (empty: identical).

    This is what "identical" means for a tree, for ``verify`` and for the check after a
    restore alike. Two trees are identical when they hold the same paths (empty folders
    included), and each path has the same:

    - kind: folder, file, symlink, SQLite database, or special file (fifo, socket, device);
    - permission bits, setuid, setgid and sticky bits included (folders, files, databases);
    - owner and group, wherever the process may set them: as root always, otherwise where
      they are the process's own user and one of its groups;
    - symlink target, as written (never followed);
    - file content, byte for byte; a hole in a sparse file reads as zeros, so sparseness is
      how the content is stored, not part of it;
    - hard links: which other paths in scope share the file's inode;
    - SQLite database content (tables with their columns and rows, indexes, views, triggers,
      AUTOINCREMENT counters) and settings (page size, journal mode WAL or not, auto-vacuum,
      ``user_version``, ``application_id``); not the page layout, nor the ``-wal``, ``-shm``
      and ``-journal`` files, which belong to SQLite;
    - modification time of files, only where both sides record one: a backup does, ``verify``
      does not (a migration that writes a file back with the same bytes has not changed it).
    """
    if expected.kind != actual.kind:
        return [Difference("kind", expected.kind, actual.kind)]
    found: list[Difference] = []
    if expected.kind == "symlink" and expected.digest != actual.digest:
        found.append(Difference("target", expected.digest, actual.digest))
    if expected.mode != actual.mode:
        found.append(Difference("mode", f"{expected.mode:o}", f"{actual.mode:o}"))
    if (expected.uid, expected.gid) != (actual.uid, actual.gid) and may_set_owner(
        expected.uid, expected.gid
    ):
        found.append(
            Difference("owner", f"{expected.uid}:{expected.gid}", f"{actual.uid}:{actual.gid}")
        )
    if expected.link != actual.link:
        found.append(Difference("link", expected.link, actual.link))
    if expected.kind != "symlink" and expected.digest != actual.digest:
        old, new = expected.database, actual.database
        settings = []
        if old is not None and new is not None:
            settings = [
                Difference(f"PRAGMA {name}", str(old.pragmas.get(name)), str(new.pragmas.get(name)))
                for name in SETTINGS
                if old.pragmas.get(name) != new.pragmas.get(name)
            ]
        found.extend(settings)
        if not settings or old is None or new is None or _content_hash(old) != _content_hash(new):
            found.append(Difference("content", expected.digest, actual.digest))
    if None not in (expected.mtime_ns, actual.mtime_ns) and expected.mtime_ns != actual.mtime_ns:
        found.append(Difference("mtime", str(expected.mtime_ns), str(actual.mtime_ns)))
    return found


def _content_hash(database: DatabaseDigest) -> str:
    return database_hash(dataclasses.replace(database, pragmas={}))


# -- comparing ------------------------------------------------------------------------------


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'s' if count != 1 else ''}"


def _examples(keys: list[str]) -> str:
    first = ", ".join(keys[:_EXAMPLES])
    return f" ({first}{', ...' if len(keys) > _EXAMPLES else ''})"


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
    if old.sql != new.sql:
        parts.append("definition changed (constraints, collations or defaults)")
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
    if old.keyed == new.keyed:
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
    for name in sorted(old.pragmas.keys() | new.pragmas.keys()):
        before, after = old.pragmas.get(name), new.pragmas.get(name)
        if before != after:
            changes.append(DatabaseChange(path, f"PRAGMA {name}", f"{before} → {after}"))
    return changes


def _what_changed(difference: Difference) -> str:
    aspect, old, new = difference.aspect, difference.expected, difference.actual
    if aspect == "kind":
        return f"was a {old}, now a {new}"
    if aspect == "target":
        return "link target"
    if aspect == "content":
        return "content"
    if aspect == "link":
        return f"hard link {old or 'none'} → {new or 'none'}"
    return f"{aspect} {old} → {new}"


def diff_snapshots(before: TreeSnapshot, after: TreeSnapshot) -> TreeDiff:
    """What changed from ``before`` to ``after``; empty when they hold the same (in the sense
    of :func:`item_difference`)."""
    added = tuple(sorted(after.items.keys() - before.items.keys()))
    removed = tuple(sorted(before.items.keys() - after.items.keys()))
    changed: list[PathChange] = []
    databases: list[DatabaseChange] = []
    for rel in sorted(before.items.keys() & after.items.keys()):
        old, new = before.items[rel], after.items[rel]
        if old.kind == "other" and old.kind == new.kind and old.digest != new.digest:
            changed.append(PathChange(rel, "kind"))
            continue
        found = item_difference(old, new)
        if old.kind == "sqlite" and new.kind == "sqlite" and old.digest != new.digest:
            assert old.database is not None  # noqa: S101 - always set for kind "sqlite"
            assert new.database is not None  # noqa: S101
            databases.extend(_database_changes(rel, old.database, new.database))
            found = [d for d in found if d.aspect in ("mode", "owner", "link")]
        if found:
            changed.append(PathChange(rel, "; ".join(_what_changed(d) for d in found)))
    return TreeDiff(added, removed, tuple(changed), tuple(databases))
