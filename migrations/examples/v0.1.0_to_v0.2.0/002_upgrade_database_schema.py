"""Migration: v0.1.0 to v0.2.0 - Add decision priorities to the ConPort database

ConPort 0.2.0 lets decisions carry a priority (1 = highest ... 5 = lowest). This migration
upgrades ``.dopemux/conport.db`` in a single transaction:

* adds the column ``decisions.priority_level INTEGER NOT NULL DEFAULT 3`` (existing
  decisions get the neutral priority 3);
* creates the index ``idx_decisions_priority`` on ``decisions (priority_level)``.

Parts already present are skipped, so running it twice is harmless.

Rolling back drops the index and the column, again in one transaction, skipping parts
already absent. ``dopemux_update.edit.drop_column`` uses ``ALTER TABLE ... DROP COLUMN`` on
SQLite >= 3.35; on older SQLite it rebuilds the table from its original ``CREATE TABLE``
text (the stored definition minus the exact clause ``add_column`` appended), keeping rows,
ids, indexes and triggers. Either way the table's columns, indexes and rows end up exactly
as they were before the forward migration.

The database is opened read-write without ever creating it; its journal mode is left as it
is. A service holding the database is waited for (up to 30 s); a lock held longer makes the
migration fail cleanly, with nothing changed.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from dopemux_update import edit

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
_DECL = "INTEGER NOT NULL DEFAULT 3"
_INDEX = "idx_decisions_priority"


class _SchemaError(Exception):
    """A known condition under which the schema cannot be changed safely."""


def _index_table(conn: sqlite3.Connection) -> str | None:
    """Name of the table our index is on, or None if there is no such index."""
    row = conn.execute(
        "SELECT tbl_name FROM sqlite_master WHERE type = 'index' AND name = ?", (_INDEX,)
    ).fetchone()
    return None if row is None else str(row[0])


def _upgrade(conn: sqlite3.Connection) -> None:
    if not edit.table_exists(conn, _TABLE):
        raise _SchemaError(f"{_DB_RELPATH} has no '{_TABLE}' table; is this a ConPort database?")

    if edit.add_column(conn, _TABLE, _COLUMN, _DECL):
        print(f"  → Added column {_TABLE}.{_COLUMN} (existing decisions get priority 3)")
    else:
        print(f"  ✅ column {_TABLE}.{_COLUMN} already present, skipping")

    index_table = _index_table(conn)
    if index_table is None:
        print(f"  → Creating index {_INDEX}")
        q = edit.quote_identifier
        conn.execute(f"CREATE INDEX {q(_INDEX)} ON {q(_TABLE)} ({q(_COLUMN)})")
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
    try:
        with edit.sqlite_transaction(db_path) as conn:  # rolled back if anything raises
            _upgrade(conn)
    except (_SchemaError, edit.EditError) as exc:
        print(f"  ❌ {exc}")
        return False
    print(f"  ✅ {_DB_RELPATH} schema upgraded")
    return True


def _downgrade(conn: sqlite3.Connection) -> None:
    if not edit.table_exists(conn, _TABLE):
        print(f"  ✅ no '{_TABLE}' table, nothing to undo")
        return

    if _index_table(conn) == _TABLE:
        print(f"  → Dropping index {_INDEX}")
        conn.execute(f"DROP INDEX {edit.quote_identifier(_INDEX)}")
    else:
        print(f"  ✅ no index {_INDEX} on {_TABLE}, skipping")

    if edit.drop_column(conn, _TABLE, _COLUMN, decl=_DECL):
        print(f"  → Dropped column {_TABLE}.{_COLUMN}")
    else:
        print(f"  ✅ column {_TABLE}.{_COLUMN} already absent, skipping")


def migrate_backward(project_root: Path) -> bool:
    """Drop idx_decisions_priority and decisions.priority_level, in one transaction."""
    db_path = Path(project_root) / _DB_RELPATH
    if not db_path.is_file():
        print(f"  ⚠️  {_DB_RELPATH} not found; no schema change to undo")
        return True

    print(f"  → Downgrading {_DB_RELPATH} (SQLite {sqlite3.sqlite_version})")
    try:
        with edit.sqlite_transaction(db_path) as conn:
            _downgrade(conn)
    except edit.EditError as exc:
        print(f"  ❌ {exc}")
        return False
    print(f"  ✅ {_DB_RELPATH} schema restored to 0.1.0")
    return True
