"""Regenerate the sample ConPort database of the example installation (Dopemux 0.1.0).

Usage::

    python examples/make_sample_db.py [OUTPUT_DB]

By default the database is written to ``examples/installation/.dopemux/conport.db``.
The file is rebuilt from scratch with the 0.1.0 schema (no ``priority_level`` column,
which migration ``v0.1.0_to_v0.2.0/002`` adds; the FTS5 index ``decisions_fts`` over the
decisions, with its triggers, as ConPort has) in rollback-journal mode (``delete``,
SQLite's default; never WAL), so that the database is a single self-contained file.
Only the standard library is used.
"""

from __future__ import annotations

import argparse
import sqlite3
import sys
from contextlib import closing
from pathlib import Path

DEFAULT_OUTPUT = Path(__file__).resolve().parent / "installation" / ".dopemux" / "conport.db"

SCHEMA: tuple[str, ...] = (
    """CREATE TABLE decisions (
    id INTEGER PRIMARY KEY,
    summary TEXT NOT NULL,
    rationale TEXT,
    created_at TEXT
)""",
    "CREATE INDEX idx_decisions_created_at ON decisions (created_at)",
    # ConPort's full-text search: an FTS5 index over the decisions table (external content),
    # kept up to date by triggers. Migrations must leave its shadow tables alone.
    """CREATE VIRTUAL TABLE decisions_fts USING fts5(
    summary, rationale, content='decisions', content_rowid='id'
)""",
    """CREATE TRIGGER decisions_ai AFTER INSERT ON decisions BEGIN
    INSERT INTO decisions_fts (rowid, summary, rationale)
    VALUES (new.id, new.summary, new.rationale);
END""",
    """CREATE TRIGGER decisions_ad AFTER DELETE ON decisions BEGIN
    INSERT INTO decisions_fts (decisions_fts, rowid, summary, rationale)
    VALUES ('delete', old.id, old.summary, old.rationale);
END""",
    """CREATE TRIGGER decisions_au AFTER UPDATE ON decisions BEGIN
    INSERT INTO decisions_fts (decisions_fts, rowid, summary, rationale)
    VALUES ('delete', old.id, old.summary, old.rationale);
    INSERT INTO decisions_fts (rowid, summary, rationale)
    VALUES (new.id, new.summary, new.rationale);
END""",
)

# (id, summary, rationale, created_at) -- fixed values so the file is reproducible.
ROWS: list[tuple[int, str, str | None, str]] = [
    (
        1,
        "Store ConPort data in a local SQLite database",
        "Zero-ops, a single file that is backed up together with the project.",
        "2024-10-02T09:14:00Z",
    ),
    (
        2,
        "Run every MCP server behind one broker",
        "One port to expose; the broker owns restarts and health checks.",
        "2024-10-09T16:40:00Z",
    ),
    (
        3,
        "Pin MCP server images to explicit version tags",
        "Floating :latest tags broke serena twice in October.",
        "2024-10-21T11:03:00Z",
    ),
    (
        4,
        "Never overwrite hand-edited config files on update",
        "Updates edit YAML in place so comments and custom values survive — team rule.",
        "2024-11-05T08:27:00Z",
    ),
    (
        5,
        "Evaluate Leantime for task tracking",
        None,
        "2024-11-18T14:55:00Z",
    ),
]


def build(db_path: Path) -> None:
    """Create ``db_path`` from scratch and fill it with the sample rows."""
    db_path.parent.mkdir(parents=True, exist_ok=True)
    for suffix in ("", "-journal", "-wal", "-shm"):
        db_path.with_name(db_path.name + suffix).unlink(missing_ok=True)

    with closing(sqlite3.connect(db_path, isolation_level=None)) as conn:
        mode = conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0]
        if mode != "delete":
            raise RuntimeError(f"expected rollback-journal mode 'delete', got {mode!r}")
        conn.execute("BEGIN")
        for statement in SCHEMA:
            conn.execute(statement)
        conn.executemany(
            "INSERT INTO decisions (id, summary, rationale, created_at) VALUES (?, ?, ?, ?)",
            ROWS,
        )
        conn.execute("COMMIT")
        conn.execute("VACUUM")
        check = conn.execute("PRAGMA integrity_check").fetchone()[0]
        if check != "ok":
            raise RuntimeError(f"integrity_check failed: {check}")

    leftovers = [
        name
        for name in (db_path.name + "-journal", db_path.name + "-wal")
        if db_path.with_name(name).exists()
    ]
    if leftovers:
        raise RuntimeError(f"unexpected SQLite side files left behind: {leftovers}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("output", nargs="?", type=Path, default=DEFAULT_OUTPUT)
    args = parser.parse_args(argv)
    build(args.output)
    print(f"wrote {args.output} ({len(ROWS)} decisions)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
