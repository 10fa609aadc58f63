"""Content snapshots and their differences: files, modes, symlinks, and SQLite by content."""

from __future__ import annotations

import json
import os
import sqlite3
from contextlib import closing
from pathlib import Path

from dopemux_update._backup._snapshot import diff_snapshots, take_snapshot
from dopemux_update._backup._tree import Scope, decode_name


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


def changes(tmp_path: Path, *statements: str, setup: tuple[str, ...] = ()) -> list[tuple[str, str]]:
    tmp_path.mkdir(exist_ok=True)
    db = tmp_path / "app.db"
    sql(db, *setup)
    before = snap(tmp_path)
    sql(db, *statements)
    return [(c.table, c.what) for c in diff_snapshots(before, snap(tmp_path)).databases]


def test_tables_whose_names_merely_start_like_sqlites_own_are_compared(tmp_path: Path) -> None:
    found = changes(
        tmp_path,
        "DROP TABLE SQLiteCache",
        "UPDATE sqlite1_data SET v = 2",
        setup=(
            "CREATE TABLE SQLiteCache (v)",
            "CREATE TABLE sqlite1_data (v)",
            "INSERT INTO sqlite1_data VALUES (1)",
        ),
    )
    assert ("SQLiteCache", "table removed (0 rows)") in found
    assert ("sqlite1_data", "1 row added ((2,)); 1 row removed ((1,))") in found


def test_user_version_and_lost_constraints_and_autoincrement_counters_are_compared(
    tmp_path: Path,
) -> None:
    found = changes(
        tmp_path,
        "PRAGMA user_version = 2",
        "CREATE TABLE t2 (v TEXT)",  # a rebuild that forgets the CHECK
        "INSERT INTO t2 SELECT v FROM t",
        "DROP TABLE t",
        "ALTER TABLE t2 RENAME TO t",
        "INSERT INTO seq (v) VALUES ('x')",
        "DELETE FROM seq",
        setup=(
            "PRAGMA user_version = 1",
            "CREATE TABLE t (v TEXT CHECK (length(v) < 10))",
            "CREATE TABLE seq (id INTEGER PRIMARY KEY AUTOINCREMENT, v)",
        ),
    )
    assert ("PRAGMA user_version", "1 → 2") in found
    assert ("t", "definition changed (constraints, collations or defaults)") in found
    assert any(table == "sqlite_sequence" for table, _ in found)


def test_rows_with_null_keys_are_counted_not_merged(tmp_path: Path) -> None:
    found = changes(
        tmp_path,
        "DELETE FROM t WHERE rowid = (SELECT max(rowid) FROM t)",
        setup=(
            "CREATE TABLE t (k TEXT PRIMARY KEY, v)",
            "INSERT INTO t VALUES (NULL, 1), (NULL, 1)",
        ),
    )
    assert found == [("t", "1 row removed ((None, 1))")]


def test_a_rename_and_back_is_no_change_though_sqlite_requotes_the_schema(
    tmp_path: Path,
) -> None:
    found = changes(
        tmp_path,
        "ALTER TABLE decisions RENAME TO d2",
        "ALTER TABLE d2 RENAME TO decisions",
        setup=(
            "CREATE TABLE decisions (id INTEGER PRIMARY KEY, a TEXT)",
            "CREATE INDEX i ON decisions(a)",
            "CREATE VIEW v AS SELECT * FROM decisions",
        ),
    )
    assert found == []


def test_text_that_is_not_utf8_is_compared_not_a_crash(tmp_path: Path) -> None:
    found = changes(
        tmp_path,
        "UPDATE t SET x = CAST(x'ff42' AS TEXT)",
        setup=(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, x TEXT)",
            "INSERT INTO t VALUES (1, CAST(x'ff41' AS TEXT))",
        ),
    )
    assert found == [("t", "1 row changed (id=1)")]


def test_a_file_named_like_a_sidecar_is_a_file_unless_beside_a_database(tmp_path: Path) -> None:
    (tmp_path / "trip").write_text("not a database")
    (tmp_path / "trip-journal").write_text("day 1")
    before = snap(tmp_path)
    (tmp_path / "trip-journal").write_text("day 2")
    diff = diff_snapshots(before, snap(tmp_path))
    assert [(c.path, c.what) for c in diff.changed] == [("trip-journal", "content")]


def test_the_roots_own_mode_is_compared(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir(mode=0o755)
    before = snap(root)
    root.chmod(0o700)
    assert [(c.path, c.what) for c in diff_snapshots(before, snap(root)).changed] == [
        (".", "mode 755 → 700")
    ]


def test_names_that_are_not_utf8_are_escaped_for_people_and_encoded_for_json(
    tmp_path: Path,
) -> None:
    before = snap(tmp_path)
    (tmp_path / os.fsdecode(b"caf\xe9.txt")).write_text("x")
    diff = diff_snapshots(before, snap(tmp_path))
    assert diff.describe() == ["added:   caf\\xe9.txt"]
    encoded = json.dumps(diff.to_json(), ensure_ascii=False).encode("utf-8")  # strict: no crash
    assert decode_name(json.loads(encoded)["added"][0]) == os.fsdecode(b"caf\xe9.txt")


def test_schema_text_is_compared_by_meaning(tmp_path: Path) -> None:
    """Comments, spacing and keyword case mean nothing; quoted names' case and literals do."""
    found = changes(
        tmp_path,
        "DROP VIEW v",
        'CREATE VIEW v AS SELECT a AS "total" FROM t',
        "DROP INDEX p",
        "create   index p ON t (a) where a = 'active'",
        "DROP TABLE c",
        "CREATE TABLE c (a -- don't\n, b CHECK (b IN ('yes','no')))",
        setup=(
            "CREATE TABLE t (a)",
            'CREATE VIEW v AS SELECT a AS "Total" FROM t',
            "CREATE INDEX p ON t(a) WHERE a = 'Active'",
            "CREATE TABLE c (a -- don't\n, b CHECK (b IN ('Yes','No')))",
        ),
    )
    assert sorted(found) == [
        ("c", "definition changed (constraints, collations or defaults)"),
        ("index p", "definition changed"),
        ("view v", "definition changed"),
    ]
    assert (
        changes(
            tmp_path / "again",
            "DROP INDEX p",
            "create index p on t (a)  -- recreated by hand\n",
            setup=("CREATE TABLE t (a)", "CREATE INDEX p ON t(a)"),
        )
        == []
    )


def test_an_empty_autoincrement_counter_table_is_not_a_difference(tmp_path: Path) -> None:
    """SQLite never drops sqlite_sequence: a backward that drops its table is still exact."""
    found = changes(
        tmp_path,
        "CREATE TABLE log (id INTEGER PRIMARY KEY AUTOINCREMENT, v)",
        "DROP TABLE log",
        setup=("CREATE TABLE t (v)",),
    )
    assert found == []
