"""Content snapshots and their differences: files, modes, symlinks, and SQLite by content."""

from __future__ import annotations

import sqlite3
from contextlib import closing
from pathlib import Path

from dopemux_update._snapshot import diff_snapshots, take_snapshot
from dopemux_update._tree import Scope


def snap(root: Path):  # type: ignore[no-untyped-def]
    return take_snapshot(Scope(root))


def sql(db: Path, *statements: str) -> None:
    with closing(sqlite3.connect(db)) as conn, conn:
        for statement in statements:
            conn.execute(statement)


def test_identical_trees_have_no_difference(installation: Path) -> None:
    assert diff_snapshots(snap(installation), snap(installation)).is_empty


def test_rewriting_a_file_with_the_same_bytes_is_no_change(installation: Path) -> None:
    before = snap(installation)
    app = installation / "config" / "app.yaml"
    app.write_bytes(app.read_bytes())
    assert diff_snapshots(before, snap(installation)).is_empty


def test_added_removed_changed_and_mode_are_reported(installation: Path) -> None:
    before = snap(installation)
    (installation / "new.txt").write_text("x")
    (installation / "secret.env").unlink()
    (installation / "config" / "app.yaml").write_text("log_level: debug\n")
    (installation / "config" / "nested" / "deep.json").chmod(0o600)
    (installation / "link-to-app").unlink()
    (installation / "link-to-app").symlink_to("elsewhere")
    diff = diff_snapshots(before, snap(installation))
    assert diff.added == ("new.txt",)
    assert diff.removed == ("secret.env",)
    changes = {c.path: c.what for c in diff.changed}
    assert changes == {
        "config/app.yaml": "content",
        "config/nested/deep.json": "mode 644 → 600",
        "link-to-app": "link target",
    }
    assert "added:   new.txt" in diff.describe()


def test_sqlite_compares_by_content_not_pages(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    sql(db, "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)", "INSERT INTO t VALUES (1, 'a')")
    before = snap(tmp_path)
    raw = db.read_bytes()
    sql(db, "ALTER TABLE t ADD COLUMN extra TEXT", "ALTER TABLE t DROP COLUMN extra")
    sql(db, "INSERT INTO t VALUES (2, 'b')", "DELETE FROM t WHERE id = 2")
    assert db.read_bytes() != raw  # the pages differ...
    assert diff_snapshots(before, snap(tmp_path)).is_empty  # ...the content does not


def test_sqlite_rows_and_columns_are_named(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    sql(
        db,
        "CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT)",
        "INSERT INTO t VALUES (1, 'a'), (2, 'b'), (3, 'c')",
        "CREATE TABLE log (line TEXT)",
        "INSERT INTO log VALUES ('x'), ('x')",
        "CREATE TABLE gone (v)",
    )
    before = snap(tmp_path)
    sql(
        db,
        "UPDATE t SET name = 'z' WHERE id = 1",
        "DELETE FROM t WHERE id = 2",
        "INSERT INTO t VALUES (9, 'new')",
        "DELETE FROM log WHERE rowid = 1",
        "DROP TABLE gone",
        "CREATE INDEX idx_name ON t (name)",
    )
    diff = diff_snapshots(before, snap(tmp_path))
    assert diff.added == diff.removed == diff.changed == ()
    found = {(c.path, c.table): c.what for c in diff.databases}
    assert found == {
        ("app.db", "t"): ("1 row changed (id=1); 1 row added (id=9); 1 row removed (id=2)"),
        ("app.db", "log"): "1 row removed (('x',))",
        ("app.db", "gone"): "table removed (0 rows)",
        ("app.db", "index idx_name"): "added",
    }


def test_sqlite_column_changes_are_reported_once(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    sql(db, "CREATE TABLE t (id INTEGER PRIMARY KEY)", "INSERT INTO t VALUES (1)")
    before = snap(tmp_path)
    sql(db, "ALTER TABLE t ADD COLUMN priority INTEGER DEFAULT 3")
    diff = diff_snapshots(before, snap(tmp_path))
    assert [(c.table, c.what) for c in diff.databases] == [("t", "columns added priority")]


def test_sqlite_sidecars_are_part_of_their_database(tmp_path: Path) -> None:
    db = tmp_path / "app.db"
    sql(db, "PRAGMA journal_mode=WAL", "CREATE TABLE t (v)")
    before = snap(tmp_path)
    with closing(sqlite3.connect(db)) as holder:
        holder.execute("PRAGMA wal_autocheckpoint=0")
        with holder:
            holder.execute("INSERT INTO t VALUES (1)")
        assert Path(f"{db}-wal").exists()
        diff = diff_snapshots(before, snap(tmp_path))
    assert diff.added == ()
    assert [(c.table, c.what) for c in diff.databases] == [("t", "1 row added ((1,))")]
