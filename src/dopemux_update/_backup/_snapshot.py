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
their own. A virtual table (FTS5, FTS4, R-tree...) is compared by what it shows (its rows in
rowid order) and its definition, a full-text index also by its terms; its shadow tables
(``<name>_data``, ``_idx``, ``_segments``...) are how it stores them, and are not compared.

A snapshot taken with ``texts=True`` keeps the text of small text files, so that a changed
one is reported with a unified diff.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
import re
import sqlite3
import stat
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import xxhash

from .._core._exceptions import UpdateError
from ._copy import hash_file
from ._sqlite import SETTINGS, SIDECARS, database_settings, is_sqlite, open_for_reading
from ._tree import (
    Scope,
    TreeEntry,
    encode_name,
    link_destination,
    link_leaders,
    may_set_owner,
    shown,
    walk,
)

__all__ = [
    "DatabaseChange",
    "DatabaseDigest",
    "FileChange",
    "PathChange",
    "TableChange",
    "TableFilter",
    "TreeChanges",
    "TreeDiff",
    "TreeSnapshot",
    "diff_snapshots",
    "file_text",
    "forward_changes",
    "item_difference",
    "link_leaders",
    "may_set_owner",
    "read_item",
    "same_database",
    "take_snapshot",
    "tree_items",
]

_EXAMPLES = 3  # rows shown per table in a report
TEXT_LIMIT = 1 << 20  # bytes: a larger file is reported changed without a diff
TEXTS_LIMIT = 64 << 20  # bytes of text a snapshot keeps in all; past it, no more diffs
DIFF_LINES = 200  # lines of a unified diff kept per file
#: Shadow tables of the full-text modules, by suffix (used where ``PRAGMA table_list``,
#: SQLite 3.37, is not there to say which tables are shadows).
_FTS_SHADOWS = {
    "fts5": ("_data", "_idx", "_docsize", "_config", "_content"),
    "fts4": ("_segments", "_segdir", "_docsize", "_stat", "_content"),
    "fts3": ("_segments", "_segdir", "_docsize", "_stat", "_content"),
}
INDEX_SUFFIX = " (full-text index)"


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
    #: The table each schema object belongs to ("index name" -> table), so that leaving a
    #: table out of a comparison leaves its indexes and triggers out too.
    owners: dict[str, str] = field(default_factory=dict, compare=False)


#: A database's settings that are part of its identity: ``journal_mode`` is ``wal`` or
#: ``delete`` (the only mode a database file keeps), the others are numbers.


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
    #: A small text file's text, kept by ``take_snapshot(texts=True)`` for diffs.
    text: str | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class TreeSnapshot:
    """Every path of a tree, relative to its root, with what it holds."""

    root: Path
    items: dict[str, Item]


@dataclass(frozen=True, slots=True)
class PathChange:
    """A path present on both sides whose content, kind or mode differs; ``diff`` holds a
    changed text file's unified diff (at most :data:`DIFF_LINES` lines, then a line saying
    how many were left out), empty otherwise."""

    path: str
    what: str
    diff: tuple[str, ...] = ()


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
        lines.extend(self._database_lines())
        return lines

    def _database_lines(self) -> list[str]:
        return [
            f"changed: {shown(c.path)}, {shown(c.table)}: {shown(c.what)}" for c in self.databases
        ]

    def describe_with_diffs(self, lines_per_file: int = 20) -> list[str]:
        """As :meth:`describe`, each changed text file followed by its diff (indented, at
        most ``lines_per_file`` lines, then how many more there are)."""
        lines = [f"added:   {shown(path)}" for path in self.added]
        lines.extend(f"removed: {shown(path)}" for path in self.removed)
        for change in self.changed:
            lines.append(f"changed: {shown(change.path)} ({shown(change.what)})")
            lines.extend(f"    {line}" for line in trimmed(change.diff, lines_per_file))
        lines.extend(self._database_lines())
        return lines

    def to_json(self) -> dict[str, object]:
        """JSON-safe: a name that is not UTF-8 is encoded as backups encode it."""
        return {
            "added": [encode_name(p) for p in self.added],
            "removed": [encode_name(p) for p in self.removed],
            "changed": [
                {
                    "path": encode_name(c.path),
                    "what": shown(c.what),
                    "diff": "\n".join(c.diff) if c.diff else None,
                }
                for c in self.changed
            ],
            "databases": [
                {"path": encode_name(c.path), "table": shown(c.table), "what": shown(c.what)}
                for c in self.databases
            ],
        }


def trimmed(lines: tuple[str, ...] | list[str], limit: int) -> list[str]:
    """At most ``limit`` of ``lines``, then a line saying how many more there are."""
    if len(lines) <= limit:
        return list(lines)
    more = len(lines) - limit
    last = lines[-1]
    if last.startswith("… ") and last.endswith(" more lines"):  # already cut once
        more += int(last.split()[1]) - 1
    return [*lines[:limit], f"… {more} more lines"]


def text_diff(path: str, old: str, new: str) -> tuple[str, ...]:
    """The unified diff from ``old`` to ``new`` (``/dev/null`` for a side that is not
    there, given as ""), at most :data:`DIFF_LINES` lines then how many were left out."""
    lines = [
        line.rstrip("\n")
        for line in difflib.unified_diff(
            old.splitlines(keepends=True),
            new.splitlines(keepends=True),
            fromfile=shown(path) if old else "/dev/null",
            tofile=shown(path) if new else "/dev/null",
            n=3,
        )
    ]
    return tuple(trimmed(lines, DIFF_LINES))


@dataclass(frozen=True, slots=True)
class TableFilter:
    """Tables left out of a comparison: ``TABLE`` in any database, or ``DB:TABLE`` in the
    database whose path (relative to the root) or file name is ``DB``. Names compare
    case-insensitively, as SQLite compares them."""

    rules: tuple[tuple[str | None, str], ...] = ()

    @classmethod
    def parse(cls, values: Iterable[str]) -> TableFilter:
        """Raises :class:`ValueError` naming a value that is not ``TABLE`` or ``DB:TABLE``."""
        rules: list[tuple[str | None, str]] = []
        for value in values:
            database, colon, table = value.rpartition(":")
            if not table.strip() or (colon and not database.strip()):
                raise ValueError(f"{value!r}: expected TABLE or DATABASE:TABLE")
            rules.append((database or None, table))
        return cls(tuple(rules))

    def __bool__(self) -> bool:
        return bool(self.rules)

    def ignores(self, path: str, table: str) -> bool:
        """Whether ``table`` (a table, or a full-text table's index) of the database at
        ``path`` is left out."""
        name = table.removesuffix(INDEX_SUFFIX).casefold()
        return any(
            name == rule.casefold()
            and (database is None or database in (path, path.rsplit("/", 1)[-1]))
            for database, rule in self.rules
        )

    def shown(self) -> list[str]:
        return [f"{db}:{table}" if db else table for db, table in self.rules]


@dataclass(frozen=True, slots=True)
class FileChange:
    """A path the forward pass adds, removes or changes (``change``), with what changed and,
    for a text file, its unified diff."""

    path: str
    change: str  # "added", "removed" or "changed"
    what: str = ""
    diff: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TableChange:
    """A table (or schema object, or setting) of a database that the forward pass changes:
    rows added, removed and changed (by primary key; counted as whole rows without one)."""

    path: str
    table: str
    what: str
    added: int = 0
    removed: int = 0
    changed: int = 0


@dataclass(frozen=True, slots=True)
class TreeChanges:
    """What a forward pass changes in an installation, file by file and table by table."""

    files: tuple[FileChange, ...] = ()
    tables: tuple[TableChange, ...] = ()

    @property
    def is_empty(self) -> bool:
        return not (self.files or self.tables)

    def describe(self, lines_per_file: int = 20) -> list[str]:
        if self.is_empty:
            return ["nothing"]
        lines: list[str] = []
        for change in self.files:
            what = f" ({shown(change.what)})" if change.what not in {"", "file"} else ""
            lines.append(f"{change.change + ':':<8} {shown(change.path)}{what}")
            lines.extend(f"    {line}" for line in trimmed(change.diff, lines_per_file))
        lines.extend(f"{shown(t.path)}, {shown(t.table)}: {shown(t.what)}" for t in self.tables)
        return lines

    def to_json(self) -> dict[str, object]:
        return {
            "files": [
                {
                    "path": encode_name(f.path),
                    "change": f.change,
                    "what": shown(f.what),
                    "diff": "\n".join(f.diff) if f.diff else None,
                }
                for f in self.files
            ],
            "tables": [
                {
                    "path": encode_name(t.path),
                    "table": shown(t.table),
                    "what": shown(t.what),
                    "added": t.added,
                    "removed": t.removed,
                    "changed": t.changed,
                }
                for t in self.tables
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


_VIRTUAL = re.compile(r"\s*create\s+virtual\s+table\b.*?\busing\s+(\w+)", re.I | re.S)


def _module(sql: str | None) -> str | None:
    """The module of a virtual table's ``CREATE VIRTUAL TABLE`` (lower case), else None."""
    match = _VIRTUAL.match(sql or "")
    return match.group(1).lower() if match else None


def _shadow_tables(connection: sqlite3.Connection, master: list[tuple[str, str, str]]) -> set[str]:
    """The shadow tables of the database's virtual tables: SQLite says which (``PRAGMA
    table_list``, 3.37 on); before that, the full-text modules' by their names."""
    try:
        listed = connection.execute("PRAGMA main.table_list").fetchall()
    except sqlite3.Error:
        listed = []  # e.g. a virtual table whose module this SQLite lacks
    if listed:
        return {str(row[1]) for row in listed if row[2] == "shadow"}
    tables = {name.casefold(): name for kind, name, _ in master if kind == "table"}
    found: set[str] = set()
    for _, name, sql in master:
        for suffix in _FTS_SHADOWS.get(_module(sql) or "", ()):
            if (shadow := tables.get((name + suffix).casefold())) is not None:
                found.add(shadow)
    return found


def _virtual_digests(
    connection: sqlite3.Connection, table: str, sql: str
) -> dict[str, TableDigest]:
    """A virtual table as it shows itself: its definition and its rows by rowid (counted
    whole where it has none); a full-text table's index also by its terms, under
    ``<name> (full-text index)``. A table this SQLite cannot read (its module is missing)
    is compared by its definition alone."""
    normalised = normalise_sql(sql)
    quoted = _quote(table)
    try:
        info = connection.execute(f"PRAGMA table_info({quoted})").fetchall()
    except sqlite3.Error:
        return {table: TableDigest(normalised, (), keyed=False, rows={})}
    columns = tuple((str(r[1]), str(r[2]).upper(), int(r[3]), r[4], int(r[5])) for r in info)
    names = ", ".join(_quote(c[0]) for c in columns) or "*"
    digest = TableDigest(normalised, columns, keyed=False, rows={})
    try:
        query = f"SELECT rowid, {names} FROM {quoted} ORDER BY rowid"  # noqa: S608 - quoted
        rows = {f"rowid={row[0]!r}": _row_text(row[1:]) for row in connection.execute(query)}
        digest = TableDigest(normalised, columns, keyed=True, rows=rows)
    except sqlite3.Error:
        try:
            cursor = connection.execute(f"SELECT {names} FROM {quoted}")  # noqa: S608
            digest = TableDigest(
                normalised, columns, keyed=False, rows={}, counts=Counter(map(_row_text, cursor))
            )
        except sqlite3.Error:
            pass  # its module cannot read it here: its definition stands for it
    found = {table: digest}
    index = _index_digest(connection, table, _module(sql))
    if index is not None:
        found[table + INDEX_SUFFIX] = index
    return found


_VOCAB = "dopemux_update_vocab"


def _index_digest(
    connection: sqlite3.Connection, table: str, module: str | None
) -> TableDigest | None:
    """A full-text index by its content, whatever its segments: FTS5's every term with the
    (row, column, offset) of each of its occurrences, hashed per term (``fts5vocab``); FTS3
    and FTS4's terms per column with their document and occurrence counts (``fts4aux``).
    Read through a temporary table (in the ``temp`` schema: the database is not written)."""
    if module == "fts5":
        using = f"fts5vocab(main, {_literal(table)}, 'instance')"
    elif module in {"fts3", "fts4"}:
        using = f"fts4aux(main, {_literal(table)})"
    else:
        return None
    (query_only,) = connection.execute("PRAGMA query_only").fetchone()
    try:
        connection.execute("PRAGMA query_only = 0")
        connection.execute(f"CREATE VIRTUAL TABLE temp.{_VOCAB} USING {using}")
        try:
            rows = _index_rows(connection, module)
        finally:
            connection.execute(f"DROP TABLE temp.{_VOCAB}")
    except sqlite3.Error:
        return None  # this SQLite lacks the module: the visible rows stand for it
    finally:
        connection.execute(f"PRAGMA query_only = {int(query_only)}")
    columns = (("term", "", 0, None, 1),)
    return TableDigest(f"{module} index", columns, keyed=True, rows=rows)


def _index_rows(connection: sqlite3.Connection, module: str) -> dict[str, str]:
    rows: dict[str, str] = {}
    if module != "fts5":
        query = f"SELECT term, col, documents, occurrences FROM temp.{_VOCAB}"  # noqa: S608
        for term, column, documents, occurrences in connection.execute(query):
            rows[f"term={term!r}, col={column!r}"] = repr((documents, occurrences))
        return rows
    query = f"SELECT term, doc, col, offset FROM temp.{_VOCAB}"  # noqa: S608
    current: str | None = None
    digest = xxhash.xxh3_128()
    for term, doc, column, offset in connection.execute(query):
        if term != current:
            if current is not None:
                rows[f"term={current!r}"] = digest.hexdigest()
            current, digest = term, xxhash.xxh3_128()
        digest.update(repr((doc, column, offset)).encode())
    if current is not None:
        rows[f"term={current!r}"] = digest.hexdigest()
    return rows


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def database_digest(path: Path) -> DatabaseDigest:
    """The tables, schema objects, rows and version pragmas of the database at ``path``
    (virtual tables by what they show, their shadow tables left out)."""
    connection = open_for_reading(path)
    try:
        connection.text_factory = _text
        master = connection.execute("SELECT type, name, sql FROM sqlite_master").fetchall()
        owners = dict(
            connection.execute(
                "SELECT type || ' ' || name, tbl_name FROM sqlite_master WHERE type != 'table'"
            ).fetchall()
        )
        shadows = _shadow_tables(connection, master)
        tables: dict[str, TableDigest] = {}
        objects: dict[str, str] = {}
        for kind, name, sql in master:
            if _internal(name) or name in shadows:
                continue
            if kind == "table" and _module(sql) is not None:
                tables.update(_virtual_digests(connection, name, sql))
            elif kind == "table":
                table = _table_digest(connection, name, sql or "")
                if name.casefold() == "sqlite_sequence" and not table.size:
                    continue  # SQLite creates it with the first AUTOINCREMENT table, for good
                tables[name] = table
            else:
                objects[f"{kind} {name}"] = normalise_sql(sql or "")
        pragmas = database_settings(connection)
    finally:
        connection.close()
    return DatabaseDigest(tables=tables, objects=objects, pragmas=pragmas, owners=owners)


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


def take_snapshot(scope: Scope, *, texts: bool = False) -> TreeSnapshot:
    """Read everything under ``scope`` (symlinks are never followed), the root's own mode and
    owners included (as ``"."``); with ``texts``, the text of each UTF-8 file of at most
    :data:`TEXT_LIMIT` bytes too (up to :data:`TEXTS_LIMIT` in all). Raises
    :class:`~dopemux_update.UpdateError` naming a path that cannot be read."""
    root = scope.root.resolve()
    entries = list(walk(Scope(root, scope.excluded, scope.included)))
    databases = {e.rel for e in entries if e.kind == "file" and is_sqlite(root / e.rel)}
    budget = TEXTS_LIMIT

    def read(entry: TreeEntry) -> Item:
        nonlocal budget
        item = read_item(root, entry, databases)
        size = entry.info.st_size
        if texts and item.kind == "file" and size <= min(TEXT_LIMIT, budget):
            item = dataclasses.replace(item, text=file_text((root / entry.rel).read_bytes()))
            budget -= size
        return item

    return TreeSnapshot(root=scope.root, items=tree_items(root, entries, databases, read))


def tree_items(
    root: Path, entries: list[TreeEntry], databases: set[str], read: Callable[[TreeEntry], Item]
) -> dict[str, Item]:
    """The items of a snapshot of ``root`` whose walk gave ``entries``: the root's own mode
    and owners (as ``"."``), and each entry as ``read`` gives it, with its mode, owners and
    hard-link leader from the walk; a database's ``-wal``/``-shm``/``-journal`` files are part
    of it. Raises :class:`~dopemux_update.UpdateError` naming a path that cannot be read."""
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
            item = read(entry)
        except (OSError, sqlite3.Error) as exc:
            raise UpdateError(f"{shown(entry.rel)}: cannot be read: {exc}") from exc
        items[entry.rel] = dataclasses.replace(
            item,
            mode=stat.S_IMODE(entry.info.st_mode) if item.kind != "symlink" else 0,
            uid=entry.info.st_uid,
            gid=entry.info.st_gid,
            link=leaders.get(entry.rel, ""),
        )
    return items


def file_text(raw: bytes) -> str | None:
    """A file's text from its bytes, or None when it is not UTF-8 text (a NUL byte says
    binary)."""
    if b"\0" in raw:
        return None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return None


def read_item(
    root: Path,
    entry: TreeEntry,
    databases: set[str],
    read_file: Callable[[Path], Item] | None = None,
) -> Item:
    """What a snapshot records of ``entry`` (owners and links are added after); a plain file
    is read by ``read_file`` when given (the sandbox's reader keeps texts too)."""
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
    if read_file is not None:
        return read_file(path)
    return Item("file", mode, hash_file(path)[0])


# -- identity -------------------------------------------------------------------------------


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
      AUTOINCREMENT counters; a virtual table by its definition and the rows it shows, a
      full-text one also by the terms of its index, not by its shadow tables) and settings
      (page size, journal mode WAL or not, auto-vacuum, ``user_version``,
      ``application_id``); not the page layout, nor the ``-wal``, ``-shm`` and ``-journal``
      files, which belong to SQLite;
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


def diff_snapshots(
    before: TreeSnapshot, after: TreeSnapshot, *, ignore: TableFilter | None = None
) -> TreeDiff:
    """What changed from ``before`` to ``after``; empty when they hold the same (in the sense
    of :func:`item_difference`), apart from the tables ``ignore`` leaves out. A changed text
    file whose text both snapshots kept comes with its unified diff."""
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
            owners = {**old.database.owners, **new.database.owners}
            databases.extend(
                change
                for change in _database_changes(rel, old.database, new.database)
                if ignore is None or not ignore.ignores(rel, owners.get(change.table, change.table))
            )
            found = [d for d in found if d.aspect in ("mode", "owner", "link")]
        if found:
            diff: tuple[str, ...] = ()
            if any(d.aspect == "content" for d in found) and None not in (old.text, new.text):
                diff = text_diff(rel, old.text or "", new.text or "")
            changed.append(PathChange(rel, "; ".join(_what_changed(d) for d in found), diff))
    return TreeDiff(added, removed, tuple(changed), tuple(databases))


_KINDS = {
    "file": "file",
    "dir": "folder",
    "symlink": "symlink",
    "sqlite": "SQLite database",
    "other": "special",
}


def forward_changes(
    before: TreeSnapshot, after: TreeSnapshot, *, ignore: TableFilter | None = None
) -> TreeChanges:
    """What changed from ``before`` to ``after``, for an operator's preview: each path
    added, removed or changed (a text file with its diff), and each table with how many rows
    were added, removed and changed."""
    difference = diff_snapshots(before, after, ignore=ignore)
    files: list[FileChange] = []
    tables: list[TableChange] = []
    for rel in difference.added:
        item = after.items[rel]
        diff = text_diff(rel, "", item.text) if item.text else ()
        files.append(FileChange(rel, "added", _KINDS.get(item.kind, ""), diff))
        if item.database is not None:
            empty = DatabaseDigest(tables={}, objects={}, pragmas=item.database.pragmas)
            tables.extend(_table_counts(rel, empty, item.database, ignore))
    for rel in difference.removed:
        item = before.items[rel]
        diff = text_diff(rel, item.text, "") if item.text else ()
        files.append(FileChange(rel, "removed", _KINDS.get(item.kind, ""), diff))
    files.extend(FileChange(c.path, "changed", c.what, c.diff) for c in difference.changed)
    for rel in sorted({c.path for c in difference.databases}):
        old, new = before.items[rel].database, after.items[rel].database
        if old is not None and new is not None:
            tables.extend(_table_counts(rel, old, new, ignore))
    files.sort(key=lambda f: encode_name(f.path))
    return TreeChanges(tuple(files), tuple(tables))


def _table_counts(
    path: str, old: DatabaseDigest, new: DatabaseDigest, ignore: TableFilter | None
) -> list[TableChange]:
    found: list[TableChange] = []
    owners = {**old.owners, **new.owners}
    for change in _database_changes(path, old, new):
        if ignore is not None and ignore.ignores(path, owners.get(change.table, change.table)):
            continue
        before, after = old.tables.get(change.table), new.tables.get(change.table)
        if before is None and after is None:  # a schema object or a setting
            found.append(TableChange(path, change.table, change.what))
            continue
        empty = TableDigest("", (), keyed=True, rows={})
        added, removed, changed = _row_counts(before or empty, after or empty)
        counts = [
            (n, verb)
            for n, verb in ((added, "added"), (removed, "removed"), (changed, "changed"))
            if n
        ]
        parts = [] if before is not None and after is not None else [change.what.split(" (")[0]]
        if before is not None and after is not None and before.columns != after.columns:
            parts.append(change.what)
        if counts:
            (first, verb), *rest = counts
            parts.append(
                ", ".join([f"{_plural(first, 'row')} {verb}", *(f"{n} {v}" for n, v in rest)])
            )
        found.append(
            TableChange(
                path, change.table, "; ".join(parts) or change.what, added, removed, changed
            )
        )
    return found


def _row_counts(old: TableDigest, new: TableDigest) -> tuple[int, int, int]:
    """Rows added, removed and changed from ``old`` to ``new`` (by key where both have the
    same primary key; otherwise whole rows, added and removed)."""
    gained, lost = new.counts - old.counts, old.counts - new.counts
    added, removed, changed = gained.total(), lost.total(), 0
    if old.keyed and new.keyed:
        added += len(new.rows.keys() - old.rows.keys())
        removed += len(old.rows.keys() - new.rows.keys())
        changed = sum(1 for k in old.rows.keys() & new.rows.keys() if old.rows[k] != new.rows[k])
    else:
        added += len(new.rows)
        removed += len(old.rows)
    return added, removed, changed
