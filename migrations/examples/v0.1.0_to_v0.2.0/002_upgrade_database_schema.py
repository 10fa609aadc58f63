"""Migration: v0.1.0 to v0.2.0 - Add decision priorities to the ConPort database

ConPort 0.2.0 lets decisions carry a priority (1 = highest ... 5 = lowest). This migration
upgrades ``.dopemux/conport.db`` in a single transaction:

* adds the column ``decisions.priority_level INTEGER NOT NULL DEFAULT 3`` (existing
  decisions get the neutral priority 3);
* creates the index ``idx_decisions_priority`` on ``decisions (priority_level)``.

Parts already present are skipped, so running it twice is harmless.

Rolling back drops the index and the column, again in one transaction, skipping parts
already absent. With SQLite >= 3.35 this uses ``ALTER TABLE ... DROP COLUMN``; with older
SQLite the table is rebuilt from its original ``CREATE TABLE`` text (the stored definition
minus the exact column clause this migration appended), rows are copied with their ids, and
the table's other indexes and triggers are recreated. Either way the table's columns,
indexes and rows end up exactly as they were before the forward migration.

The database is opened read-write without ever creating it (``mode=rw``); its journal mode
is left as it is. Stop ConPort first: a locked database makes the migration fail cleanly.
"""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

MIGRATION_INFO = {
    "version_from": "0.1.0",
    "version_to": "0.2.0",
    "description": "Add decisions.priority_level (default 3) and its index to the ConPort DB",
    "breaking_changes": False,
    "estimated_duration_seconds": 5,
    "requires_restart": ["conport"],
    "backup_required": True,
}

_DB_RELPATH = Path(".dopemux") / "conport.db"
_TABLE = "decisions"
_COLUMN = "priority_level"
_COLUMN_DEF = f"{_COLUMN} INTEGER NOT NULL DEFAULT 3"
_INDEX = "idx_decisions_priority"
_REBUILD_TMP = "_dopemux_decisions_pre_v0_2_0"

# ALTER TABLE ... DROP COLUMN exists since SQLite 3.35.0 (2021-03-12).
_SUPPORTS_DROP_COLUMN = sqlite3.sqlite_version_info >= (3, 35, 0)


class _SchemaError(Exception):
    """A known condition under which the schema cannot be changed safely."""


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def _connect(db_path: Path) -> sqlite3.Connection:
    # mode=rw: fail instead of silently creating an empty database.
    # isolation_level=None: no implicit transactions, we issue BEGIN/COMMIT ourselves.
    uri = db_path.resolve().as_uri() + "?mode=rw"
    return sqlite3.connect(uri, uri=True, isolation_level=None, timeout=5.0)


def _begin(conn: sqlite3.Connection) -> None:
    """Start a write transaction, turning a lock timeout into a known failure."""
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError as exc:
        if "locked" in str(exc) or "busy" in str(exc):
            raise _SchemaError(f"{_DB_RELPATH} is locked ({exc}); stop ConPort and retry") from exc
        raise


def _table_sql(conn: sqlite3.Connection) -> str | None:
    row = conn.execute(
        "SELECT sql FROM sqlite_master WHERE type = 'table' AND name = ?", (_TABLE,)
    ).fetchone()
    return None if row is None else str(row[0])


def _columns(conn: sqlite3.Connection) -> list[str]:
    return [str(row[1]) for row in conn.execute(f"PRAGMA table_info({_quote(_TABLE)})")]


def _index_table(conn: sqlite3.Connection) -> str | None:
    """Name of the table our index is on, or None if there is no such index."""
    row = conn.execute(
        "SELECT tbl_name FROM sqlite_master WHERE type = 'index' AND name = ?", (_INDEX,)
    ).fetchone()
    return None if row is None else str(row[0])


def _rollback_if_open(conn: sqlite3.Connection) -> None:
    if conn.in_transaction:
        conn.execute("ROLLBACK")


# --------------------------------------------------------------------------- forward


def _upgrade(conn: sqlite3.Connection) -> None:
    if _table_sql(conn) is None:
        raise _SchemaError(f"{_DB_RELPATH} has no '{_TABLE}' table; is this a ConPort database?")

    if _COLUMN in _columns(conn):
        print(f"  ✅ column {_TABLE}.{_COLUMN} already present, skipping")
    else:
        print(f"  → Adding column {_TABLE}.{_COLUMN} (existing decisions get priority 3)")
        conn.execute(f"ALTER TABLE {_quote(_TABLE)} ADD COLUMN {_COLUMN_DEF}")

    index_table = _index_table(conn)
    if index_table is None:
        print(f"  → Creating index {_INDEX}")
        conn.execute(f"CREATE INDEX {_quote(_INDEX)} ON {_quote(_TABLE)} ({_quote(_COLUMN)})")
    elif index_table == _TABLE:
        print(f"  ✅ index {_INDEX} already present, skipping")
    else:
        raise _SchemaError(f"an index named {_INDEX} already exists on table {index_table!r}")


def migrate_forward(project_root: Path) -> bool:
    """Add decisions.priority_level and idx_decisions_priority, in one transaction."""
    db_path = Path(project_root) / _DB_RELPATH
    if not db_path.is_file():
        print(f"  ❌ {_DB_RELPATH} not found in {project_root}")
        return False

    print(f"  → Upgrading {_DB_RELPATH} (SQLite {sqlite3.sqlite_version})")
    with closing(_connect(db_path)) as conn:
        try:
            _begin(conn)
            _upgrade(conn)
            conn.execute("COMMIT")
        except _SchemaError as exc:
            _rollback_if_open(conn)
            print(f"  ❌ {exc}")
            return False
        except BaseException:
            _rollback_if_open(conn)
            raise
    print(f"  ✅ {_DB_RELPATH} schema upgraded")
    return True


# --------------------------------------------------------------------------- backward


def _drop_column_by_rebuild(conn: sqlite3.Connection) -> None:
    """Drop the column on SQLite < 3.35, keeping the table's original definition text.

    Must run inside a transaction on a connection with ``foreign_keys=OFF`` and
    ``legacy_alter_table=ON`` (so renaming the table rewrites no references elsewhere).
    The index on the column must already be dropped.
    """
    table_sql = _table_sql(conn) or ""
    # ADD COLUMN appended ", <column definition>" verbatim before the closing parenthesis.
    clause = f", {_COLUMN_DEF}"
    if table_sql.count(clause) != 1:
        raise _SchemaError(
            f"cannot find the exact '{_COLUMN_DEF}' clause added by the forward migration in "
            f"the definition of {_TABLE}; refusing to rebuild the table (restore the backup)"
        )
    original_sql = table_sql.replace(clause, "", 1)

    dependents = [
        str(row[0])
        for row in conn.execute(
            "SELECT sql FROM sqlite_master WHERE tbl_name = ? AND type IN ('index', 'trigger')"
            " AND sql IS NOT NULL ORDER BY rowid",
            (_TABLE,),
        )
    ]
    kept = ", ".join(_quote(name) for name in _columns(conn) if name != _COLUMN)
    has_sequence = (
        conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'sqlite_sequence'"
        ).fetchone()
        is not None
    )
    sequence = (
        conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (_TABLE,)).fetchone()
        if has_sequence
        else None
    )

    conn.execute(f"ALTER TABLE {_quote(_TABLE)} RENAME TO {_quote(_REBUILD_TMP)}")
    conn.execute(original_sql)
    conn.execute(f"INSERT INTO {_quote(_TABLE)} ({kept}) SELECT {kept} FROM {_quote(_REBUILD_TMP)}")
    conn.execute(f"DROP TABLE {_quote(_REBUILD_TMP)}")  # also drops its indexes and triggers
    for sql in dependents:
        conn.execute(sql)
    if sequence is not None:
        conn.execute("DELETE FROM sqlite_sequence WHERE name = ?", (_TABLE,))
        conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES (?, ?)", (_TABLE, sequence[0]))


def _downgrade(conn: sqlite3.Connection) -> None:
    if _table_sql(conn) is None:
        print(f"  ✅ no '{_TABLE}' table, nothing to undo")
        return

    index_table = _index_table(conn)
    if index_table == _TABLE:
        print(f"  → Dropping index {_INDEX}")
        conn.execute(f"DROP INDEX {_quote(_INDEX)}")
    else:
        print(f"  ✅ no index {_INDEX} on {_TABLE}, skipping")

    if _COLUMN not in _columns(conn):
        print(f"  ✅ column {_TABLE}.{_COLUMN} already absent, skipping")
    elif _SUPPORTS_DROP_COLUMN:
        print(f"  → Dropping column {_TABLE}.{_COLUMN}")
        conn.execute(f"ALTER TABLE {_quote(_TABLE)} DROP COLUMN {_quote(_COLUMN)}")
    else:
        print(f"  → Dropping column {_TABLE}.{_COLUMN} by rebuilding {_TABLE} (SQLite < 3.35)")
        _drop_column_by_rebuild(conn)


def migrate_backward(project_root: Path) -> bool:
    """Drop idx_decisions_priority and decisions.priority_level, in one transaction."""
    db_path = Path(project_root) / _DB_RELPATH
    if not db_path.is_file():
        print(f"  ⚠️  {_DB_RELPATH} not found; no schema change to undo")
        return True

    print(f"  → Downgrading {_DB_RELPATH} (SQLite {sqlite3.sqlite_version})")
    with closing(_connect(db_path)) as conn:
        if not _SUPPORTS_DROP_COLUMN:
            # Table-rebuild recipe: these pragmas only take effect outside a transaction.
            conn.execute("PRAGMA foreign_keys = OFF")
            conn.execute("PRAGMA legacy_alter_table = ON")
        try:
            _begin(conn)
            _downgrade(conn)
            conn.execute("COMMIT")
        except _SchemaError as exc:
            _rollback_if_open(conn)
            print(f"  ❌ {exc}")
            return False
        except BaseException:
            _rollback_if_open(conn)
            raise
    print(f"  ✅ {_DB_RELPATH} schema restored to 0.1.0")
    return True
