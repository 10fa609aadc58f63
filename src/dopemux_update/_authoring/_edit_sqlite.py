"""SQLite schema changes for migrations, each in one transaction.

Every helper takes a database path or an open connection. With a path, it opens the database
read-write without ever creating it, takes the write lock with ``BEGIN IMMEDIATE`` (waiting up
to :data:`BUSY_TIMEOUT_SECONDS` for a service that is writing; readers of a WAL database never
block it), commits, rolls back on any error, and always closes the connection. With a
connection (from :func:`sqlite_transaction`), it runs inside the caller's transaction, so that
several changes commit or roll back together.

Identifiers are double-quoted with embedded quotes doubled; names are matched like SQLite
does, ignoring ASCII case. A column *declaration* (``"INTEGER NOT NULL DEFAULT 3"``) is SQL
written by the migration's author and is used as given.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import string
from collections.abc import Iterator, Sequence
from pathlib import Path

from .._core._exceptions import EditError
from .._core._log import get_logger

__all__ = [
    "BUSY_TIMEOUT_SECONDS",
    "Database",
    "add_column",
    "add_index",
    "column_exists",
    "drop_column",
    "drop_index",
    "index_exists",
    "quote_identifier",
    "sqlite_transaction",
    "table_exists",
]

Database = str | os.PathLike[str] | sqlite3.Connection
"""A database file's path, or a connection inside a :func:`sqlite_transaction`."""

BUSY_TIMEOUT_SECONDS = 30.0
"""How long to wait for another connection's write lock before giving up."""

logger = get_logger()

_FOLD = str.maketrans(string.ascii_uppercase, string.ascii_lowercase)
_REBUILD_SUFFIX = "__dopemux_update_rebuild"


def quote_identifier(name: str) -> str:
    """``name`` as an SQL identifier: ``my"table`` becomes ``"my""table"``."""
    return '"' + name.replace('"', '""') + '"'


@contextlib.contextmanager
def sqlite_transaction(db_path: str | os.PathLike[str]) -> Iterator[sqlite3.Connection]:
    """Open the existing database at ``db_path`` and yield a connection in a write transaction.

    Commits when the block ends normally; rolls back if it raises (the exception propagates
    as it is). The connection is closed either way. A missing database, a lock still held
    after :data:`BUSY_TIMEOUT_SECONDS` or a failed commit raises :class:`EditError`.
    """
    with _transaction(Path(db_path), rebuild_pragmas=False) as conn:
        yield conn


def table_exists(db: Database, table: str) -> bool:
    """Whether the database has a table named ``table`` (ASCII case ignored)."""
    with _using(db, write=False, doing=f"look for table {table!r}") as conn:
        return _table_name(conn, table) is not None


def column_exists(db: Database, table: str, column: str) -> bool:
    """Whether ``table`` has a column ``column``; :class:`EditError` if there is no ``table``."""
    with _using(db, write=False, doing=f"look for column {column!r} of {table!r}") as conn:
        return _column_name(conn, _require_table(conn, table), column) is not None


def add_column(db: Database, table: str, column: str, decl: str) -> bool:
    """Add ``column`` with the declaration ``decl`` to ``table`` unless it has it already.

    Returns True if the column was added, False if it was there. Existing rows get the
    declaration's default. A declaration SQLite refuses raises :class:`EditError`, and
    nothing is changed.
    """
    with _using(db, write=True, doing=f"add column {column!r} to {table!r}") as conn:
        name = _require_table(conn, table)
        if _column_name(conn, name, column) is not None:
            return False
        _run(
            conn,
            f"ALTER TABLE {quote_identifier(name)} ADD COLUMN {quote_identifier(column)} {decl}",
        )
        return True


def drop_column(db: Database, table: str, column: str, *, decl: str | None = None) -> bool:
    """Drop ``column`` from ``table`` if it has it; True if it was dropped, False if absent.

    With SQLite >= 3.35 this is ``ALTER TABLE ... DROP COLUMN``, which SQLite refuses (an
    :class:`EditError`, nothing changed) for a column that is indexed, part of a key or
    constraint, or used by a view or trigger: drop those first.

    Older SQLite has no ``DROP COLUMN``. There, pass ``decl``, the declaration the column was
    added with by :func:`add_column`: the table is rebuilt from its stored ``CREATE TABLE``
    text minus exactly that ``ADD COLUMN`` clause, rows are copied (ids and AUTOINCREMENT
    counter included), and its indexes and triggers are recreated, so the table ends up as
    it was before the column was added. Without ``decl``, or when the clause cannot be found
    exactly once, :class:`EditError` is raised. Given a connection, the rebuild needs
    ``PRAGMA foreign_keys`` off on it.
    """
    rebuild = sqlite3.sqlite_version_info < (3, 35, 0)
    doing = f"drop column {column!r} from {table!r}"
    with _using(db, write=True, rebuild_pragmas=rebuild, doing=doing) as conn:
        name = _require_table(conn, table)
        existing = _column_name(conn, name, column)
        if existing is None:
            return False
        if not rebuild:
            _run(
                conn,
                f"ALTER TABLE {quote_identifier(name)} DROP COLUMN {quote_identifier(existing)}",
            )
        elif decl is None:
            raise EditError(
                f"SQLite {sqlite3.sqlite_version} has no ALTER TABLE DROP COLUMN (3.35+); "
                f"pass the declaration {column!r} was added with to rebuild {table!r} without it",
                path=_db_path(conn),
            )
        else:
            _rebuild_without(conn, name, existing, decl)
        return True


def index_exists(db: Database, name: str) -> bool:
    """Whether the database has an index named ``name`` (ASCII case ignored)."""
    with _using(db, write=False, doing=f"look for index {name!r}") as conn:
        return _index(conn, name) is not None


def add_index(
    db: Database, table: str, name: str, columns: Sequence[str], *, unique: bool = False
) -> bool:
    """Create the index ``name`` on ``table`` (``columns``, in order) unless it exists.

    ``CREATE [UNIQUE] INDEX IF NOT EXISTS``, names quoted. Returns True if it created the
    index, False if an index of that name was already on ``table``. Raises
    :class:`EditError`, changing nothing, for a missing table or column, an index of that
    name on another table, or a unique index the rows violate.
    """
    with _using(db, write=True, doing=f"add index {name!r} on {table!r}") as conn:
        stored = _require_table(conn, table)
        if isinstance(columns, str):  # one column, not its letters
            columns = (columns,)
        if not columns:
            raise EditError(f"index {name!r} needs at least one column", path=_db_path(conn))
        names = []
        for column in columns:
            found = _column_name(conn, stored, column)
            if found is None:
                raise EditError(f"no column {column!r} in {table!r}", path=_db_path(conn))
            names.append(quote_identifier(found))
        existing = _index(conn, name)
        if existing is not None:
            if existing.translate(_FOLD) != stored.translate(_FOLD):
                raise EditError(
                    f"an index named {name!r} already exists on table {existing!r}",
                    path=_db_path(conn),
                )
            return False
        kind = "UNIQUE INDEX" if unique else "INDEX"
        _run(
            conn,
            f"CREATE {kind} IF NOT EXISTS {quote_identifier(name)} "
            f"ON {quote_identifier(stored)} ({', '.join(names)})",
        )
        return True


def drop_index(db: Database, name: str) -> bool:
    """Drop the index ``name`` if it exists (``DROP INDEX IF EXISTS``); True if it did.

    An index SQLite made for a ``UNIQUE`` or ``PRIMARY KEY`` constraint cannot be dropped:
    :class:`EditError`, nothing changed.
    """
    with _using(db, write=True, doing=f"drop index {name!r}") as conn:
        if _index(conn, name) is None:
            return False
        _run(conn, f"DROP INDEX IF EXISTS {quote_identifier(name)}")
        return True


# --------------------------------------------------------------------------- internals


def _connect(path: Path) -> sqlite3.Connection:
    if not path.is_file():
        raise EditError("no such database file", path=path)
    # mode=rw: never create a database; isolation_level=None: we issue BEGIN/COMMIT ourselves.
    uri = path.resolve().as_uri() + "?mode=rw"
    try:
        return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=BUSY_TIMEOUT_SECONDS)
    except sqlite3.Error as exc:
        raise EditError(f"cannot open the database: {exc}", path=path) from exc


@contextlib.contextmanager
def _transaction(path: Path, *, rebuild_pragmas: bool) -> Iterator[sqlite3.Connection]:
    with contextlib.closing(_connect(path)) as conn:
        try:
            if rebuild_pragmas:
                # The table-rebuild recipe; this only takes effect outside a transaction.
                conn.execute("PRAGMA foreign_keys = OFF")
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise EditError(f"cannot start a write transaction: {exc}", path=path) from exc
        try:
            yield conn
        except BaseException:
            _rollback(conn, path)
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            _rollback(conn, path)
            raise EditError(f"cannot commit: {exc}", path=path) from exc


def _rollback(conn: sqlite3.Connection, path: Path) -> None:
    """Roll back while another error propagates, which a failed ROLLBACK must not replace.

    Closing the connection then rolls back what is left: SQLite never commits on close.
    """
    if not conn.in_transaction:
        return
    try:
        conn.execute("ROLLBACK")
    except sqlite3.Error as exc:
        logger.warning("sqlite.rollback_failed", path=str(path), error=str(exc))


@contextlib.contextmanager
def _using(
    db: Database, *, write: bool, doing: str, rebuild_pragmas: bool = False
) -> Iterator[sqlite3.Connection]:
    """The caller's connection as it is, or a new one on ``db`` (in a write transaction when
    ``write``), closed afterwards.

    An SQLite error in the block (a file that is not a database, a corrupt page) becomes an
    :class:`EditError` naming the database and saying what the block was ``doing``.
    """
    try:
        if isinstance(db, sqlite3.Connection):
            if rebuild_pragmas:
                _require_foreign_keys_off(db)
            yield db
        elif write:
            with _transaction(Path(db), rebuild_pragmas=rebuild_pragmas) as conn:
                yield conn
        else:
            with contextlib.closing(_connect(Path(db))) as conn:
                yield conn
    except sqlite3.Error as exc:
        path = _connection_path(db) if isinstance(db, sqlite3.Connection) else Path(db)
        raise EditError(f"cannot {doing}: {exc}", path=path) from exc


def _connection_path(conn: sqlite3.Connection) -> Path | None:
    """The connection's database file, or None if it has none or cannot say."""
    try:
        return _db_path(conn)
    except sqlite3.Error:
        return None


def _db_path(conn: sqlite3.Connection) -> Path | None:
    for _seq, name, file in conn.execute("PRAGMA database_list"):
        if name == "main":
            return Path(file) if file else None
    return None


def _run(conn: sqlite3.Connection, sql: str, params: tuple[object, ...] = ()) -> None:
    try:
        conn.execute(sql, params)
    except sqlite3.Error as exc:
        raise EditError(f"{sql!r} failed: {exc}", path=_db_path(conn)) from exc


def _table_name(conn: sqlite3.Connection, table: str) -> str | None:
    """The stored name of ``table`` (SQLite ignores ASCII case), or None if there is none."""
    row = conn.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name = ? COLLATE NOCASE",
        (table,),
    ).fetchone()
    return None if row is None else str(row[0])


def _index(conn: sqlite3.Connection, name: str) -> str | None:
    """The table the index ``name`` is on, or None if there is no such index."""
    row = conn.execute(
        "SELECT tbl_name FROM sqlite_master WHERE type = 'index' AND name = ? COLLATE NOCASE",
        (name,),
    ).fetchone()
    return None if row is None else str(row[0])


def _require_table(conn: sqlite3.Connection, table: str) -> str:
    name = _table_name(conn, table)
    if name is None:
        raise EditError(f"no table {table!r} in the database", path=_db_path(conn))
    return name


def _columns(conn: sqlite3.Connection, table: str) -> list[tuple[str, int]]:
    """(name, hidden) of every column; hidden is 0 for ordinary columns, else generated etc."""
    rows = conn.execute(f"PRAGMA table_xinfo({quote_identifier(table)})").fetchall()
    return [(str(row[1]), int(row[6])) for row in rows]


def _column_name(conn: sqlite3.Connection, table: str, column: str) -> str | None:
    wanted = column.translate(_FOLD)
    for name, _hidden in _columns(conn, table):
        if name.translate(_FOLD) == wanted:
            return name
    return None


def _require_foreign_keys_off(conn: sqlite3.Connection) -> None:
    if conn.execute("PRAGMA foreign_keys").fetchone()[0]:
        raise EditError(
            "rebuilding a table needs PRAGMA foreign_keys off on this connection; "
            "call drop_column with the database path instead",
            path=_db_path(conn),
        )


def _rebuild_without(conn: sqlite3.Connection, table: str, column: str, decl: str) -> None:
    """Drop ``column`` on SQLite < 3.35 by rebuilding ``table`` from its original text."""
    # Legacy renaming leaves references to the table in other tables, views and triggers
    # alone, so they point at the rebuilt table, not at the temporary name.
    legacy = conn.execute("PRAGMA legacy_alter_table").fetchone()[0]
    conn.execute("PRAGMA legacy_alter_table = ON")
    try:
        _rebuild(conn, table, column, decl)
    finally:
        conn.execute(f"PRAGMA legacy_alter_table = {int(legacy)}")


def _rebuild(conn: sqlite3.Connection, table: str, column: str, decl: str) -> None:
    path = _db_path(conn)
    sql = str(
        conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)
        ).fetchone()[0]
    )
    # ADD COLUMN appended ", <column> <decl>", as written, before the closing parenthesis.
    clauses = [f", {quote_identifier(column)} {decl}", f", {column} {decl}"]
    found = [clause for clause in clauses if sql.count(clause) == 1]
    if len(found) != 1 or any(sql.count(clause) > 1 for clause in clauses):
        raise EditError(
            f"cannot find the clause adding {column!r} with {decl!r} exactly once in the "
            f"definition of {table!r}; refusing to rebuild it",
            path=path,
        )
    original_sql = sql.replace(found[0], "", 1)
    dependents = [
        str(row[0])
        for row in conn.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND type IN ('index', 'trigger')"
            " AND sql IS NOT NULL ORDER BY rowid",
            (table,),
        )
    ]
    kept = ", ".join(
        quote_identifier(name)
        for name, hidden in _columns(conn, table)
        if name != column and hidden == 0
    )
    sequence = (
        conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
        if _table_name(conn, "sqlite_sequence") is not None
        else None
    )
    old, temporary = quote_identifier(table), quote_identifier(table + _REBUILD_SUFFIX)
    _run(conn, f"ALTER TABLE {old} RENAME TO {temporary}")
    _run(conn, original_sql)
    insert = f"INSERT INTO {old} ({kept}) SELECT {kept} FROM {temporary}"  # noqa: S608 -- quoted identifiers
    _run(conn, insert)
    _run(conn, f"DROP TABLE {temporary}")  # also drops its indexes and triggers
    for dependent in dependents:
        _run(conn, dependent)
    if sequence is not None:
        _run(conn, "DELETE FROM sqlite_sequence WHERE name = ?", (table,))
        _run(conn, "INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (table, sequence[0]))
    if conn.execute(f"PRAGMA foreign_key_check({old})").fetchone() is not None:
        raise EditError(f"rebuilding {table!r} broke a foreign key; nothing changed", path=path)
