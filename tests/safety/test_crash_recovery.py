"""Fault injection: kill the updater at every named point, recover in a fresh process, and
check that the tree is exactly the pre-update or the post-update tree, with the installed
version to match. Also: failing writes (ENOSPC), two updaters, interrupts."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
from contextlib import closing
from pathlib import Path
from typing import Any

import pytest

from conftest import MigrationWriter, tree_digest

EXCLUDE = (".dopemux/update", ".dopemux/app.db-wal", ".dopemux/app.db-shm")


def digest(root: Path) -> dict[str, Any]:
    """The tree, with the database compared by content (a restore rewrites its pages)."""
    found = tree_digest(root, exclude=EXCLUDE)
    db = root / ".dopemux" / "app.db"
    with closing(sqlite3.connect(db)) as conn:
        dump = "\n".join(conn.iterdump())
    found[".dopemux/app.db"] = ("db", hashlib.sha256(dump.encode()).hexdigest())
    return found


def add_partial_failure(migrations: MigrationWriter, ending: str) -> None:
    """A last migration that rewrites four files, then fails (``ending``)."""
    migrations.add(
        "v1.1_to_v1.2",
        "2_fails.py",
        forward=(
            "for i in range(4):\n"
            "    (project_root / 'data' / f'f{i}.txt').write_text('partial')\n" + ending
        ),
    )


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dopemux_update", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
        timeout=120,
    )


def installed(root: Path) -> str:
    return json.loads((root / ".dopemux/update/state.json").read_text())["installed_version"]  # type: ignore[no-any-return]


@pytest.fixture
def setup(installation: Path, migrations: MigrationWriter, tmp_path: Path) -> dict[str, Any]:
    """An installation at 1.0 with a database, three migrations over two hops, and the digests
    of the tree before and after a clean upgrade."""
    with closing(sqlite3.connect(installation / ".dopemux" / "app.db")) as conn:
        conn.execute("CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT)")
        conn.executemany("INSERT INTO notes (body) VALUES (?)", [("a",), ("b",)])
        conn.commit()
    (installation / "data").mkdir()
    for i in range(6):
        (installation / "data" / f"f{i}.txt").write_text(f"file {i}\n" * 50)
    migrations.add(
        "v1.0_to_v1.1",
        "1_config.py",
        forward=(
            "(project_root / 'config' / 'app.yaml').write_text('# keep me\\nlog_level: debug\\n')\n"
            "(project_root / 'config' / 'new.yaml').write_text('new: true\\n')\n"
            "return True"
        ),
        backward=(
            "(project_root / 'config' / 'app.yaml').write_text('# keep me\\nlog_level: info\\n')\n"
            "(project_root / 'config' / 'new.yaml').unlink(missing_ok=True)\n"
            "return True"
        ),
    )
    migrations.add(
        "v1.0_to_v1.1",
        "2_database.py",
        forward=(
            "import sqlite3\n"
            "conn = sqlite3.connect(project_root / '.dopemux' / 'app.db')\n"
            "conn.execute('ALTER TABLE notes ADD COLUMN prio INTEGER DEFAULT 3')\n"
            "conn.execute(\"INSERT INTO notes (body) VALUES ('c')\")\n"
            "conn.commit(); conn.close()\n"
            "return True"
        ),
        backward=(
            "import sqlite3\n"
            "conn = sqlite3.connect(project_root / '.dopemux' / 'app.db')\n"
            "conn.execute(\"DELETE FROM notes WHERE body = 'c'\")\n"
            "conn.execute('ALTER TABLE notes DROP COLUMN prio')\n"
            "conn.commit(); conn.close()\n"
            "return True"
        ),
    )
    migrations.add(
        "v1.1_to_v1.2",
        "1_files.py",
        forward=(
            "import shutil\n"
            "for i in range(6):\n"
            "    p = project_root / 'data' / f'f{i}.txt'\n"
            "    p.write_text(p.read_text().upper())\n"
            "(project_root / 'empty').rmdir()\n"
            "(project_root / 'secret.env').chmod(0o640)\n"
            "return True"
        ),
        backward=(
            "for i in range(6):\n"
            "    p = project_root / 'data' / f'f{i}.txt'\n"
            "    p.write_text(p.read_text().lower())\n"
            "(project_root / 'empty').mkdir(exist_ok=True)\n"
            "(project_root / 'secret.env').chmod(0o600)\n"
            "return True"
        ),
    )
    assert cli("stamp", "1.0", "--root", str(installation)).returncode == 0
    pre = digest(installation)
    clean = tmp_path / "clean"
    shutil.copytree(installation, clean, symlinks=True)
    done = cli(
        "upgrade", "--root", str(clean), "--migrations", str(migrations.root), "--no-restart"
    )
    assert done.returncode == 0, done.stderr
    post = digest(clean)
    assert post != pre
    return {"root": installation, "migrations": migrations.root, "pre": pre, "post": post}


CRASH_POINTS = [
    ("backup.file:3", "pre"),
    ("backup.before_rename", "pre"),
    ("journal.run_started", "pre"),
    ("journal.step_begun:1", "pre"),
    ("journal.step_begun:2", "pre"),
    ("runner.call_returned:2", "pre"),
    ("journal.step_done:2", "pre"),
    ("journal.step_begun:3", "pre"),
    ("journal.committed", "post"),
    ("commit.state_written", "post"),
]


@pytest.mark.parametrize(("point", "expected"), CRASH_POINTS, ids=[p for p, _ in CRASH_POINTS])
def test_a_crash_at_each_point_recovers_to_before_or_after(
    setup: dict[str, Any], point: str, expected: str
) -> None:
    root, migrations = setup["root"], setup["migrations"]
    args = ["upgrade", "--root", str(root), "--migrations", str(migrations), "--no-restart"]
    crashed = cli(*args, env={"DOPEMUX_UPDATE_CRASH_AT": point})
    assert crashed.returncode == -signal.SIGKILL, (crashed.returncode, crashed.stderr)

    recovered = cli("recover", "--root", str(root), "--json")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert digest(root) == setup[expected]
    assert installed(root) == ("1.0" if expected == "pre" else "1.2")
    again = cli("recover", "--root", str(root), "--json")
    assert json.loads(again.stdout)["action"] == "none"
    assert digest(root) == setup[expected]


ROLLBACK_POINTS = [
    "journal.rollback_started",
    "rollback.step:1",
    "journal.rollback_step:2",
    "restore.file:2",
]


@pytest.mark.parametrize("point", ROLLBACK_POINTS)
def test_a_crash_during_a_rollback_recovers_to_before(
    setup: dict[str, Any], migrations: MigrationWriter, point: str
) -> None:
    # It fails half-way through its own writes: only the restore can undo those.
    add_partial_failure(migrations, "raise RuntimeError('late failure')")
    root = setup["root"]
    args = ["upgrade", "--root", str(root), "--migrations", str(migrations.root), "--no-restart"]
    crashed = cli(*args, env={"DOPEMUX_UPDATE_CRASH_AT": point})
    assert crashed.returncode == -signal.SIGKILL, (crashed.returncode, crashed.stderr)
    recovered = cli("recover", "--root", str(root))
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert digest(root) == setup["pre"]
    assert installed(root) == "1.0"


def test_a_migration_that_kills_its_process_mid_write_is_undone(
    setup: dict[str, Any], migrations: MigrationWriter
) -> None:
    migrations.add(
        "v1.1_to_v1.2",
        "2_dies.py",
        forward=(
            "import os, signal\n"
            "(project_root / 'data' / 'f0.txt').write_text('half written')\n"
            "os.kill(os.getpid(), signal.SIGKILL)"
        ),
    )
    root = setup["root"]
    args = ["upgrade", "--root", str(root), "--migrations", str(migrations.root), "--no-restart"]
    assert cli(*args).returncode == -signal.SIGKILL
    # Any command that changes things recovers first; status only reads.
    stamped = cli("stamp", "1.0", "--root", str(root))
    assert stamped.returncode == 0, stamped.stderr
    assert "restored from backup" in stamped.stdout
    assert digest(root) == setup["pre"]


@pytest.mark.parametrize("point", ["recovery.restored", "recovery.before_clear", "restore.file:1"])
def test_a_crash_during_recovery_is_itself_recoverable(setup: dict[str, Any], point: str) -> None:
    root, migrations = setup["root"], setup["migrations"]
    args = ["upgrade", "--root", str(root), "--migrations", str(migrations), "--no-restart"]
    assert cli(*args, env={"DOPEMUX_UPDATE_CRASH_AT": "journal.step_begun:3"}).returncode == -9
    first = cli("recover", "--root", str(root), env={"DOPEMUX_UPDATE_CRASH_AT": point})
    assert first.returncode == -signal.SIGKILL
    second = cli("recover", "--root", str(root))
    assert second.returncode == 0, second.stderr
    assert digest(root) == setup["pre"]
    assert installed(root) == "1.0"


@pytest.mark.parametrize("nth", [1, 3, 8])
def test_a_write_failing_with_enospc_during_the_backup_changes_nothing(
    setup: dict[str, Any], nth: int
) -> None:
    root, migrations = setup["root"], setup["migrations"]
    args = ["upgrade", "--root", str(root), "--migrations", str(migrations), "--no-restart"]
    failed = cli(*args, "--json", env={"DOPEMUX_UPDATE_FAIL_WRITE": str(nth)})
    assert failed.returncode == 2, failed.stdout + failed.stderr
    assert "No space left on device" in json.loads(failed.stdout)["error"]
    assert digest(root) == setup["pre"]
    backups = root / ".dopemux" / "update" / "backups"
    assert not backups.exists() or not any(backups.iterdir())
    assert cli("recover", "--root", str(root)).returncode == 0


def test_a_write_failing_during_the_restore_needs_recovery_then_recovers(
    setup: dict[str, Any], migrations: MigrationWriter
) -> None:
    add_partial_failure(migrations, "return False")
    root = setup["root"]
    args = ["upgrade", "--root", str(root), "--migrations", str(migrations.root), "--no-restart"]
    # Guarded writes, in order: 10 files into the backup, the journal's first record, 4 step
    # records, the rollback's start and its 3 steps; then the restore: fail its second write.
    failed = cli(*args, "--json", env={"DOPEMUX_UPDATE_FAIL_WRITE": "21"})
    result = json.loads(failed.stdout)
    assert failed.returncode == 3, failed.stdout
    assert "restore" in failed.stderr
    assert result["needs_recovery"] is True
    assert Path(root / ".dopemux/update/backups" / result["backup_id"]).is_dir()
    status = cli("upgrade", *args[1:], "--json")
    assert status.returncode in (0, 1)  # recovers first, then runs (and fails at 2_fails again)
    assert json.loads(status.stdout)["recovered"]["action"] == "restored"
    assert digest(root) == setup["pre"]


def test_a_second_updater_fails_at_once_and_names_the_holder(
    setup: dict[str, Any], migrations: MigrationWriter, tmp_path: Path
) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    os.mkfifo(started)
    os.mkfifo(release)
    migrations.add(
        "v1.1_to_v1.2",
        "2_waits.py",
        forward=(
            f"open({str(started)!r}, 'w').close()\nopen({str(release)!r}).read()\nreturn True"
        ),
    )
    root = setup["root"]
    args = ["upgrade", "--root", str(root), "--migrations", str(migrations.root), "--no-restart"]
    first = subprocess.Popen(
        [sys.executable, "-m", "dopemux_update", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with open(started) as handle:  # blocks until the migration runs, lock held
            handle.read()
        second = cli(*args, "--json")
        assert second.returncode == 4
        error = json.loads(second.stdout)["error"]
        assert f"pid {first.pid}" in error
        assert "dopemux_update" in error or "dopemux-update" in error
    finally:
        with open(release, "w"):
            pass
        _out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert installed(root) == "1.2"


def test_a_symlink_at_the_lock_path_is_refused(setup: dict[str, Any], tmp_path: Path) -> None:
    root, migrations = setup["root"], setup["migrations"]
    state = root / ".dopemux" / "update"
    state.mkdir(parents=True, exist_ok=True)
    (state / "lock").unlink(missing_ok=True)
    (state / "lock").symlink_to(tmp_path / "elsewhere")
    args = ["upgrade", "--root", str(root), "--migrations", str(migrations), "--no-restart"]
    refused = cli(*args, "--json")
    assert refused.returncode == 4
    assert "symlink" in json.loads(refused.stdout)["error"]
    assert not (tmp_path / "elsewhere").exists()
    assert digest(root) == setup["pre"]
