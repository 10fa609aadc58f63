"""`verify` tells the whole truth: every responsible migration, diffs of changed files, SQLite
virtual tables by content, ignored tables, restart names, and a preview of the changes."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from conftest import MigrationWriter, tree_digest
from dopemux_update._authoring._rehearsal import rehearse
from dopemux_update._core._models import Direction, UpdateResult
from dopemux_update.cli import main
from dopemux_update.cli._summary import build_summary
from dopemux_update.testing import (
    assert_reversible,
    copy_installation,
    run_backward,
    run_forward,
    tree_differences,
)

V1 = "v0.1.0_to_v0.2.0"


def verify(root: Path, migrations: Path, *extra: str) -> int:
    return main(["verify", "--root", str(root), "--migrations", str(migrations), *extra])


def verify_json(
    root: Path, migrations: Path, capsys: pytest.CaptureFixture[str], *extra: str
) -> tuple[int, dict[str, Any]]:
    code = verify(root, migrations, "--from", "0.1.0", "--json", *extra)
    return code, json.loads(capsys.readouterr().out)


def leaves(name: str) -> str:
    return f"(project_root / {name!r}).write_text('left behind')\nreturn True"


def test_every_irreversible_migration_is_named_and_every_difference_reported(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add(V1, "001_first.py", forward=leaves("first.txt"))
    migrations.add(V1, "002_clean.py")
    migrations.add(V1, "003_third.py", forward=leaves("third.txt"))
    code, payload = verify_json(installation, migrations.root, capsys)
    assert code == 1
    assert payload["culprit"] == f"{V1}/001_first"
    assert payload["culprits"] == [f"{V1}/001_first", f"{V1}/003_third"]
    assert payload["differences"]["added"] == ["first.txt", "third.txt"]
    found = {f["culprit"]: f["differences"]["added"] for f in payload["findings"]}
    assert found == {f"{V1}/001_first": ["first.txt"], f"{V1}/003_third": ["third.txt"]}
    assert verify(installation, migrations.root, "--from", "0.1.0") == 1
    out = capsys.readouterr().out
    assert f"Responsible: {V1}/001_first, {V1}/003_third" in out


def test_a_backward_failure_does_not_hide_a_later_irreversible_migration(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add(V1, "001_leaves.py", forward=leaves("first.txt"))
    migrations.add(V1, "002_cannot.py", backward="return False")
    code, payload = verify_json(installation, migrations.root, capsys)
    assert code == 1
    assert payload["culprits"] == [f"{V1}/001_leaves", f"{V1}/002_cannot"]
    stages = {f["culprit"]: f["stage"] for f in payload["findings"]}
    assert stages == {f"{V1}/001_leaves": "compare", f"{V1}/002_cannot": "revert"}


def test_a_backward_that_fails_only_in_the_whole_plan_is_still_named(
    installation: Path,
    migrations: MigrationWriter,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    count = tmp_path / "forward-count"  # outside the installation: no revert undoes it
    migrations.add(
        V1,
        "001_counts.py",
        forward=(
            f"c = Path({str(count)!r})\n"
            "c.write_text(str(int(c.read_text()) + 1) if c.exists() else '1')\nreturn True"
        ),
    )
    migrations.add(V1, "002_moody.py", backward=f"return Path({str(count)!r}).read_text() != '1'")
    code, payload = verify_json(installation, migrations.root, capsys)
    assert code == 1
    assert (payload["stage"], payload["culprits"]) == ("revert", [f"{V1}/002_moody"])
    assert payload["error"] == f"{V1}/002_moody: migrate_backward returned False"


def config_rewrite(lines: int) -> tuple[str, str]:
    body = "".join(f"key_{i}: {i}\\n" for i in range(lines))
    forward = f"(project_root / 'config' / 'app.yaml').write_text('{body}')\nreturn True"
    return forward, "return True"


def test_a_changed_text_file_is_reported_with_a_unified_diff(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    forward, backward = config_rewrite(300)
    migrations.add(V1, "001_rewrites.py", forward=forward, backward=backward)
    code, payload = verify_json(installation, migrations.root, capsys)
    assert code == 1
    [changed] = payload["differences"]["changed"]
    assert changed["path"] == "config/app.yaml"
    diff = changed["diff"].splitlines()
    assert diff[0].startswith("--- config/app.yaml")
    assert "-# keep me" in diff
    assert "+key_0: 0" in diff
    assert len(diff) == 201  # 200 lines, then what was left out
    assert diff[-1].startswith("… ")
    assert diff[-1].endswith(" more lines")
    assert verify(installation, migrations.root, "--from", "0.1.0") == 1
    out = capsys.readouterr().out.splitlines()
    at = out.index("  changed: config/app.yaml (content)")
    assert out[at + 1].lstrip().startswith("--- config/app.yaml")
    assert "-log_level: info" in [line.strip() for line in out[at : at + 25]]
    trimmed = [line for line in out[at:] if line.strip().startswith("… ")]
    assert trimmed
    assert trimmed[0].strip().endswith("more lines")


def test_a_binary_file_is_changed_without_a_diff(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    (installation / "blob.bin").write_bytes(b"\x00\x01\x02")
    migrations.add(
        V1, "001_blob.py", forward="(project_root / 'blob.bin').write_bytes(b'\\x00')\nreturn True"
    )
    code, payload = verify_json(installation, migrations.root, capsys)
    assert code == 1
    [changed] = payload["differences"]["changed"]
    assert (changed["path"], changed["diff"]) == ("blob.bin", None)


# -- SQLite: FTS tables by content ----------------------------------------------------------

CONPORT_SCHEMA = """
CREATE TABLE decisions (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    timestamp TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP,
    summary TEXT NOT NULL,
    rationale TEXT,
    implementation_details TEXT,
    tags TEXT
);
CREATE VIRTUAL TABLE decisions_fts USING fts5(
    summary, rationale, implementation_details, tags,
    content='decisions', content_rowid='id'
);
CREATE TRIGGER decisions_after_insert AFTER INSERT ON decisions BEGIN
    INSERT INTO decisions_fts (rowid, summary, rationale, implementation_details, tags)
    VALUES (new.id, new.summary, new.rationale, new.implementation_details, new.tags);
END;
CREATE TRIGGER decisions_after_delete AFTER DELETE ON decisions BEGIN
    INSERT INTO decisions_fts (decisions_fts, rowid, summary, rationale,
                               implementation_details, tags)
    VALUES ('delete', old.id, old.summary, old.rationale, old.implementation_details, old.tags);
END;
CREATE TRIGGER decisions_after_update AFTER UPDATE ON decisions BEGIN
    INSERT INTO decisions_fts (decisions_fts, rowid, summary, rationale,
                               implementation_details, tags)
    VALUES ('delete', old.id, old.summary, old.rationale, old.implementation_details, old.tags);
    INSERT INTO decisions_fts (rowid, summary, rationale, implementation_details, tags)
    VALUES (new.id, new.summary, new.rationale, new.implementation_details, new.tags);
END;
CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT);
CREATE VIRTUAL TABLE notes_fts4 USING fts4(body);
"""

CONNECT = "import sqlite3\nc = sqlite3.connect(project_root / '.dopemux' / 'context.db')\n"

# A correct pair: a column added (every row touched, so the FTS triggers rewrite the index
# into new segments) and dropped again.
ADD_PRIORITY = (
    CONNECT + "with c:\n"  # noqa: S608 - a migration's source, not a query
    "    c.execute('ALTER TABLE decisions ADD COLUMN priority INTEGER')\n"
    "    c.execute('UPDATE decisions SET priority = id')\n"
    "    c.execute(\"INSERT INTO notes_fts4 VALUES ('priority added')\")\n"
    "    c.execute(\"DELETE FROM notes_fts4 WHERE body = 'priority added'\")\n"
    "c.close()\nreturn True"
)
DROP_PRIORITY = (
    CONNECT + "with c:\n"
    "    c.execute('ALTER TABLE decisions DROP COLUMN priority')\n"
    "c.close()\nreturn True"
)


def conport(root: Path) -> Path:
    db = root / ".dopemux" / "context.db"
    with closing(sqlite3.connect(db)) as conn, conn:
        conn.executescript(CONPORT_SCHEMA)
        conn.executemany(
            "INSERT INTO decisions (summary, rationale, tags) VALUES (?, ?, ?)",
            [(f"decision {i}", f"because {i}", "arch") for i in range(40)],
        )
        conn.execute("INSERT INTO notes_fts4 VALUES ('first note'), ('second note')")
    return db


def shadow_rows(db: Path) -> list[Any]:
    with closing(sqlite3.connect(db)) as conn:
        return [
            conn.execute(f"SELECT * FROM {name} ORDER BY 1").fetchall()  # noqa: S608
            for name in ("decisions_fts_data", "notes_fts4_segdir")
        ]


def test_an_fts5_external_content_table_stays_clean_through_a_correct_column_pair(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    db = conport(installation)
    migration = migrations.add(V1, "001_priority.py", forward=ADD_PRIORITY, backward=DROP_PRIORITY)
    # The pair really rewrites the FTS storage: a comparison of stored rows would fail.
    before = shadow_rows(db)
    copy = copy_installation(installation, installation.parent / "probe")
    run_forward(migration, copy)
    run_backward(migration, copy)
    after = shadow_rows(copy / ".dopemux" / "context.db")
    assert after[0] != before[0]
    assert after[1] != before[1]
    assert assert_reversible(migration, installation).ok
    code, payload = verify_json(installation, migrations.root, capsys)
    assert (code, payload["differences"]["databases"]) == (0, [])


def test_a_real_change_to_the_full_text_index_is_reported(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    conport(installation)
    ghost = (
        CONNECT + "with c:\n"  # noqa: S608 - a migration's source, not a query
        "    c.execute(\"INSERT INTO decisions_fts (rowid, summary) VALUES (7, 'ghost')\")\n"
        "    c.execute(\"INSERT INTO notes_fts4 VALUES ('third note')\")\n"
        "c.close()\nreturn True"
    )
    migrations.add(V1, "001_ghost.py", forward=ghost)
    code, payload = verify_json(installation, migrations.root, capsys)
    assert code == 1
    tables = {c["table"] for c in payload["differences"]["databases"]}
    # The external-content table shows the content table's rows: only its index changed.
    assert tables == {
        "decisions_fts (full-text index)",
        "notes_fts4",
        "notes_fts4 (full-text index)",
    }
    assert not any("_data" in t or "_seg" in t for t in tables)


def test_a_virtual_table_whose_module_is_missing_is_compared_by_its_definition(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    """A database made elsewhere (say with SpatiaLite) still rehearses: its virtual table
    cannot be read here, so its definition stands for it."""
    with closing(sqlite3.connect(installation / ".dopemux" / "geo.db")) as conn, conn:
        conn.execute("CREATE TABLE places (id INTEGER PRIMARY KEY)")
        conn.execute("PRAGMA writable_schema = ON")
        conn.execute(
            "INSERT INTO sqlite_master (type, name, tbl_name, rootpage, sql) VALUES"
            " ('table', 'shapes', 'shapes', 0, 'CREATE VIRTUAL TABLE shapes USING nosuchmod(a)')"
        )
    migrations.add(V1, "001_ok.py")
    code, payload = verify_json(installation, migrations.root, capsys)
    assert (code, payload["error"]) == (0, None)


# -- --ignore-table -------------------------------------------------------------------------

LEAVES_A_CACHE = (
    "import sqlite3\n"
    "c = sqlite3.connect(project_root / '.dopemux' / 'app.db')\n"
    "with c:\n"
    "    c.execute('CREATE TABLE IF NOT EXISTS cache (k TEXT PRIMARY KEY, v TEXT)')\n"
    "    c.execute(\"INSERT OR REPLACE INTO cache VALUES ('warm', 'yes')\")\n"
    "    c.execute('CREATE INDEX IF NOT EXISTS cache_by_value ON cache (v)')\n"
    "c.close()\nreturn True"
)


def test_ignore_table_leaves_a_named_table_out_of_the_comparison(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    with closing(sqlite3.connect(installation / ".dopemux" / "app.db")) as conn, conn:
        conn.execute("CREATE TABLE cache (k TEXT PRIMARY KEY, v TEXT)")
    migrations.add(V1, "001_cache.py", forward=LEAVES_A_CACHE)
    code, payload = verify_json(installation, migrations.root, capsys)
    assert code == 1
    tables = [c["table"] for c in payload["differences"]["databases"]]
    assert tables == ["cache", "index cache_by_value"]  # an ignored table takes its index
    for ignore in ("cache", ".dopemux/app.db:cache", "app.db:CACHE"):
        code, payload = verify_json(installation, migrations.root, capsys, "--ignore-table", ignore)
        assert code == 0, (ignore, payload)
    code, payload = verify_json(
        installation, migrations.root, capsys, "--ignore-table", "other.db:cache"
    )
    assert code == 1


def test_the_testing_helpers_take_ignore_tables(
    installation: Path, migrations: MigrationWriter
) -> None:
    with closing(sqlite3.connect(installation / ".dopemux" / "app.db")) as conn, conn:
        conn.execute("CREATE TABLE cache (k TEXT PRIMARY KEY, v TEXT)")
    migration = migrations.add(V1, "001_cache.py", forward=LEAVES_A_CACHE)
    with pytest.raises(AssertionError, match="cache: 1 row added"):
        assert_reversible(migration, installation)
    assert assert_reversible(migration, installation, ignore_tables=["app.db:cache"]).ok
    copy = copy_installation(installation, installation.parent / "copy")
    run_forward(migration, copy)
    assert not tree_differences(installation, copy).is_empty
    assert tree_differences(installation, copy, ignore_tables=["cache"]).is_empty


def test_a_malformed_ignore_table_is_a_usage_error(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add(V1, "001_ok.py")
    assert verify(installation, migrations.root, "--from", "0.1.0", "--ignore-table", "db:") == 2
    err = capsys.readouterr().err
    assert "--ignore-table 'db:': expected TABLE or DATABASE:TABLE" in err


# -- restart names --------------------------------------------------------------------------

COMPOSE = "services:\n  conport:\n    image: conport:1\n"


def test_a_restart_name_the_migrated_compose_file_lacks_is_a_finding(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    (installation / "compose.yml").write_text(COMPOSE)
    migrations.add(V1, "001_ok.py", info={"requires_restart": ["conport"]})
    migrations.add(V1, "002_typo.py", info={"requires_restart": ["leantime"]})
    code, payload = verify_json(installation, migrations.root, capsys)
    assert code == 1
    assert payload["culprits"] == [f"{V1}/002_typo"]
    assert payload["stage"] == "restarts"
    assert "'leantime'" in payload["error"]
    assert "compose.yml" in payload["error"]


def test_a_restart_name_the_forward_pass_adds_to_the_compose_file_is_fine(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    (installation / "compose.yml").write_text(COMPOSE)
    add = "(project_root / 'compose.yml').write_text({!r})\nreturn True"
    migrations.add(
        V1,
        "001_adds.py",
        forward=add.format(COMPOSE + "  leantime:\n    image: leantime:1\n"),
        backward=add.format(COMPOSE),
        info={"requires_restart": ["leantime"]},
    )
    code, payload = verify_json(installation, migrations.root, capsys)
    assert (code, payload["culprits"]) == (0, []), payload


# -- downgrades say backward ----------------------------------------------------------------


def test_a_downgrade_rehearsal_says_backward_where_it_runs_backward(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add(V1, "001_a.py")
    args = ("--from", "0.2.0", "--to", "0.1.0")
    assert verify(installation, migrations.root, *args, "--json") == 0
    calls = json.loads(capsys.readouterr().out)["calls"]
    assert [(c["stage"], c["direction"]) for c in calls] == [
        ("apply", "backward"),
        ("revert", "forward"),
        ("apply again", "backward"),
    ]
    assert verify(installation, migrations.root, *args, "--changes") == 0
    out = capsys.readouterr().out
    assert f"apply (backward)       {V1}/001_a" in out
    assert "What the downgrade 0.2.0 → 0.1.0 would change in this installation:" in out
    assert "  nothing" in out
    assert "run backward" in out.splitlines()[-1]  # no log line: verify made no state folder


# -- the operator's preview -----------------------------------------------------------------

PREVIEW = (
    "p = project_root / 'config' / 'app.yaml'\n"
    "p.write_text(p.read_text().replace('info', 'debug'))\n"
    "(project_root / 'new.txt').write_text('hello\\n')\n"
    "import sqlite3\n"
    "c = sqlite3.connect(project_root / '.dopemux' / 'app.db')\n"
    "with c:\n"
    "    c.execute('INSERT INTO t VALUES (3, \"c\")')\n"
    "    c.execute('UPDATE t SET v = \"B\" WHERE id = 2')\n"
    "    c.execute('DELETE FROM t WHERE id = 1')\n"
    "c.close()\nreturn True"
)


def preview_setup(installation: Path, migrations: MigrationWriter) -> None:
    with closing(sqlite3.connect(installation / ".dopemux" / "app.db")) as conn, conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        conn.execute("INSERT INTO t VALUES (1, 'a'), (2, 'b')")
    migrations.add(V1, "001_changes.py", forward=PREVIEW)


def check_changes(changes: dict[str, Any]) -> None:
    files = {f["path"]: f for f in changes["files"]}
    assert set(files) == {"config/app.yaml", "new.txt"}
    assert files["config/app.yaml"]["change"] == "changed"
    assert "-log_level: info" in files["config/app.yaml"]["diff"].splitlines()
    assert "+log_level: debug" in files["config/app.yaml"]["diff"].splitlines()
    assert (files["new.txt"]["change"], files["new.txt"]["what"]) == ("added", "file")
    assert "+hello" in files["new.txt"]["diff"].splitlines()
    [table] = changes["tables"]
    assert (table["path"], table["table"]) == (".dopemux/app.db", "t")
    assert (table["added"], table["removed"], table["changed"]) == (1, 1, 1)


def test_verify_changes_previews_what_the_forward_pass_would_change(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    preview_setup(installation, migrations)
    before = tree_digest(installation)
    code, payload = verify_json(installation, migrations.root, capsys, "--changes")
    assert tree_digest(installation) == before
    check_changes(payload["changes"])
    assert code == 1  # its backward leaves everything: the rehearsal itself still judges
    assert verify(installation, migrations.root, "--from", "0.1.0", "--changes") == 1
    out = capsys.readouterr().out
    assert "What the upgrade 0.1.0 → 0.2.0 would change in this installation:" in out
    assert "  .dopemux/app.db, t: 1 row added, 1 removed, 1 changed" in out
    assert tree_digest(installation) == before


def test_plan_diff_previews_the_changes_in_a_subprocess_and_touches_nothing(
    installation: Path, migrations: MigrationWriter
) -> None:
    preview_setup(installation, migrations)
    before = tree_digest(installation)
    args = ["--root", str(installation), "--migrations", str(migrations.root), "--from", "0.1.0"]
    command = [sys.executable, "-m", "dopemux_update", "plan", *args, "--diff"]
    done = subprocess.run([*command, "--json"], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    check_changes(json.loads(done.stdout)["changes"])
    assert migrations.calls_made() == [f"forward {V1}/001_changes"]  # forward only
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "+log_level: debug" in done.stdout
    assert tree_digest(installation) == before


# -- identity: owners, hard links, settings -------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="changing a file's owner needs root")
def test_owners_hard_links_and_settings_left_by_a_backward_are_reported(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    with closing(sqlite3.connect(installation / ".dopemux" / "app.db")) as conn, conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
    (installation / "copy.txt").write_text("service data\n")
    migrations.add(
        V1,
        "001_identity.py",
        forward=(
            "import os, sqlite3\n"
            "os.chown(project_root / 'secret.env', 65534, 65534)\n"
            "(project_root / 'copy.txt').unlink()\n"
            "os.link(project_root / '.dopemux' / 'data.txt', project_root / 'copy.txt')\n"
            "c = sqlite3.connect(project_root / '.dopemux' / 'app.db')\n"
            "c.execute('PRAGMA user_version = 7')\n"
            "c.close()\nreturn True"
        ),
    )
    code, payload = verify_json(installation, migrations.root, capsys)
    assert code == 1
    what = {c["path"]: c["what"] for c in payload["differences"]["changed"]}
    assert what["secret.env"] == "owner 0:0 → 65534:65534"
    assert what["copy.txt"] == "hard link none → .dopemux/data.txt"
    pragmas = [(c["table"], c["what"]) for c in payload["differences"]["databases"]]
    assert pragmas == [("PRAGMA user_version", "0 → 7")]


# -- what "identical" means ----------------------------------------------------------------


def test_the_summary_says_what_verified_identical_means() -> None:
    """A restored database is identical by content, not by its page bytes: say so."""
    result = UpdateResult(
        ok=False,
        version_from="1.0",
        version_to="1.1",
        direction=Direction.UPGRADE,
        applied=("a",),
        rolled_back=("a",),
        failed_migration="b",
        error="returned False",
        backup_id="backup-1",
        restored=True,
        verified_identical=True,
    )
    summary = build_summary(
        result, None, plan=None, undo={"a": (True, 0.01)}, restarter_used=False, log_path=None
    )
    facts = {d.label: d.value for d in summary.details}
    assert facts["Verified identical"] == (
        "yes: content, modes, owners and links as before the update"
        " (SQLite by content and settings, not page bytes)"
    )


@pytest.mark.anyio
async def test_rehearse_previews_changes_and_ignores_tables_on_either_backend(
    installation: Path, migrations: MigrationWriter
) -> None:
    preview_setup(installation, migrations)
    before = tree_digest(installation)
    report = await rehearse(
        project_root=installation,
        migrations_dir=migrations.root,
        current_version="0.1.0",
        changes=True,
        ignore_tables=[".dopemux/app.db:t"],
    )
    assert report.changes is not None
    assert report.changes.tables == ()  # the only table changed is ignored
    assert {f.path for f in report.changes.files} == {"config/app.yaml", "new.txt"}
    assert report.ignored_tables == (".dopemux/app.db:t",)
    assert report.culprits == (f"{V1}/001_changes",)
    assert report.differences.databases == ()
    assert report.differences.added == ("new.txt",)
    assert tree_digest(installation) == before
