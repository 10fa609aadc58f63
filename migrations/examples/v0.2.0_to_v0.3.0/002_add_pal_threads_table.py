"""Migration: v0.2.0 to v0.3.0 - Store PAL's threads in the ConPort database

PAL keeps a thread of reasoning per ConPort decision. This migration adds, in one
transaction on ``.dopemux/conport.db``:

* the table ``pal_threads (id, decision_id -> decisions.id, title, created_at)``;
* the index ``idx_pal_threads_decision`` on ``pal_threads (decision_id, created_at)``, with
  ``edit.add_index`` (``CREATE INDEX IF NOT EXISTS``, names quoted).

The database also holds ConPort's full-text index ``decisions_fts`` (FTS5, external content,
kept current by triggers on ``decisions``). This migration neither writes to ``decisions``
nor touches the FTS index, so the index's shadow tables (``decisions_fts_data`` & co.) stay
exactly as they were, and a rehearsal compares them equal. (Writing rows to ``decisions``
and deleting them again would leave the same search results but a different segment layout
in the shadow tables.)

Backward drops the index and the table, in one transaction, each only if present. A
``pal_threads`` table that holds rows is dropped with them: they belong to PAL, which a
downgrade removes.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from dopemux_update import edit

MIGRATION_INFO = {
    "version_from": "0.2.0",
    "version_to": "0.3.0",
    "description": "Add the pal_threads table and its index to the ConPort database",
    "breaking_changes": False,
    "estimated_duration_seconds": 5,
    "requires_restart": ["conport"],
    "backup_required": True,
}

DB = Path(".dopemux") / "conport.db"
TABLE = "pal_threads"
INDEX = "idx_pal_threads_decision"
CREATE_TABLE = """CREATE TABLE IF NOT EXISTS pal_threads (
    id INTEGER PRIMARY KEY,
    decision_id INTEGER NOT NULL REFERENCES decisions (id) ON DELETE CASCADE,
    title TEXT NOT NULL,
    created_at TEXT NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%SZ', 'now'))
)"""


def migrate_forward(project_root: Path) -> bool:
    """Create pal_threads and its index, in one transaction."""
    db = Path(project_root) / DB
    if not db.is_file():
        print(f"  ❌ {DB} not found")
        return False
    try:
        with edit.sqlite_transaction(db) as conn:
            if not edit.table_exists(conn, "decisions"):
                print(f"  ❌ {DB} has no 'decisions' table; is this a ConPort database?")
                return False
            if edit.table_exists(conn, TABLE):
                print(f"  ✅ table {TABLE} already present")
            else:
                print(f"  → Creating table {TABLE}")
                conn.execute(CREATE_TABLE)
            if edit.add_index(conn, TABLE, INDEX, ["decision_id", "created_at"]):
                print(f"  → Created index {INDEX}")
    except (edit.EditError, sqlite3.Error) as exc:
        print(f"  ❌ {exc}")
        return False
    return True


def migrate_backward(project_root: Path) -> bool:
    """Drop the index and pal_threads, in one transaction."""
    db = Path(project_root) / DB
    if not db.is_file():
        print(f"  ⚠️  {DB} not found; nothing to undo")
        return True
    try:
        with edit.sqlite_transaction(db) as conn:
            if edit.drop_index(conn, INDEX):
                print(f"  → Dropped index {INDEX}")
            if edit.table_exists(conn, TABLE):
                print(f"  → Dropping table {TABLE}")
                conn.execute(f"DROP TABLE {edit.quote_identifier(TABLE)}")
    except (edit.EditError, sqlite3.Error) as exc:
        print(f"  ❌ {exc}")
        return False
    return True
