"""The record never lies, recovery always ends, the tool's own state is protected (issue 10).

A hostile disk (a tmpfs filled up, failing writes), hostile migrations (deleting the state
folder, changing the working directory) and hostile bytes (a damaged journal or state file),
each against the real command line in a subprocess or the library in-process.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from conftest import MigrationWriter, tree_digest
from dopemux_update import OrchestrationPhase
from dopemux_update._safety._journal import _line
from dopemux_update._safety._recovery import recover
from dopemux_update._safety._state import StateStore
from support.tmpfs import mounted_tmpfs

CONFIG_AFTER = "# keep me\nlog_level: debug\n"


def cli(
    *args: str, env: dict[str, str] | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dopemux_update", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        check=False,
        timeout=120,
    )


def installed(state_dir: Path) -> str | None:
    return json.loads((state_dir / "state.json").read_text())["installed_version"]  # type: ignore[no-any-return]


def state_of(root: Path) -> Path:
    return root / ".dopemux" / "update"


def add_config_migration(
    migrations: MigrationWriter, *, backup: bool = True, name: str = "1_config.py"
) -> None:
    migrations.add(
        "v1.0_to_v1.1",
        name,
        forward=f"(project_root / 'config' / 'app.yaml').write_text({CONFIG_AFTER!r})\nreturn True",
        backward=(
            "(project_root / 'config' / 'app.yaml').write_text('# keep me\\nlog_level: info\\n')\n"
            "return True"
        ),
        info={"backup_required": backup},
    )


def post_digest(installation: Path) -> dict[str, Any]:
    """The tree after the config migration: app.yaml changed, the rest as before."""
    digest = tree_digest(installation)
    before = digest["config/app.yaml"]
    (installation / "config" / "app.yaml").write_text(CONFIG_AFTER)
    after = tree_digest(installation)
    (installation / "config" / "app.yaml").write_text("# keep me\nlog_level: info\n")
    assert after["config/app.yaml"] != before
    return after


@pytest.fixture
def small_tmpfs(tmp_path: Path) -> Iterator[Path]:
    """A 20 MiB tmpfs, a disk that can really fill up (a backup wants 16 MiB free beyond
    its size), unmounted afterwards."""
    with mounted_tmpfs(tmp_path / "small-disk", "20m") as mount:
        yield mount


# -- 1. after the commit point, only forward ----------------------------------------------


def test_a_disk_that_fills_up_after_the_commit_point_is_completed_forward_by_recover(
    installation: Path, migrations: MigrationWriter, small_tmpfs: Path
) -> None:
    """The migration itself fills the disk holding the state folder: the commit point still
    fits in the journal's last page, state.json does not. The tree must stay migrated."""
    state_dir = small_tmpfs / "state"
    filler = small_tmpfs / "filler"
    migrations.add(
        "v1.0_to_v1.1",
        "1_config_and_fill.py",
        forward=(
            f"(project_root / 'config' / 'app.yaml').write_text({CONFIG_AFTER!r})\n"
            "import os\n"
            f"fd = os.open({str(filler)!r}, os.O_WRONLY | os.O_CREAT)\n"
            "for size in (1 << 16, 4096, 1):\n"
            "    try:\n"
            "        while os.write(fd, b'x' * size) == size:\n"
            "            pass\n"
            "    except OSError:\n"
            "        pass\n"
            "os.close(fd)\n"
            "return True"
        ),
        backward=(
            "(project_root / 'config' / 'app.yaml').write_text('# keep me\\nlog_level: info\\n')\n"
            "return True"
        ),
    )
    expected = post_digest(installation)
    phase = OrchestrationPhase(
        project_root=installation,
        migrations_dir=migrations.root,
        current_version="1.0",
        target_version="1.1",
        state_dir=state_dir,
    )
    result = anyio.run(phase.execute)
    assert not result.ok
    assert result.committed
    assert result.needs_recovery
    assert "committed" in (result.error or "")
    assert "recover" in (result.error or "")
    assert result.rolled_back == ()
    assert tree_digest(installation) == expected  # not rolled back
    assert (state_dir / "journal.jsonl").exists()  # kept for recover

    filler.unlink()  # the operator frees space
    recovered = anyio.run(functools.partial(recover, installation, state_dir=state_dir))
    assert recovered.action == "committed", recovered
    assert installed(state_dir) == "1.1"
    assert tree_digest(installation) == expected
    assert not (state_dir / "journal.jsonl").exists()


def test_a_state_write_failing_once_after_the_commit_point_is_retried(
    installation: Path, migrations: MigrationWriter
) -> None:
    add_config_migration(migrations, backup=False)
    assert cli("stamp", "1.0", "--root", str(installation)).returncode == 0
    expected = post_digest(installation)
    # Guarded writes: the journal's first record, the step's start, the commit point, then
    # state.json: the fourth.
    done = cli(
        "upgrade",
        "--root",
        str(installation),
        "--migrations",
        str(migrations.root),
        "--json",
        env={"DOPEMUX_UPDATE_FAIL_WRITE": "4"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "state.write_retry" in done.stderr
    assert installed(state_of(installation)) == "1.1"
    assert tree_digest(installation) == expected


def test_a_disk_that_stays_full_after_the_commit_point_exits_3_and_recover_goes_forward(
    installation: Path, migrations: MigrationWriter
) -> None:
    add_config_migration(migrations, backup=True)
    assert cli("stamp", "1.0", "--root", str(installation)).returncode == 0
    expected = post_digest(installation)
    args = ["--root", str(installation), "--migrations", str(migrations.root), "--json"]
    # The backup's 4 files, the journal's start, the step's start, the commit point: the
    # eighth guarded write (state.json) and every one after it fail.
    done = cli("upgrade", *args, env={"DOPEMUX_UPDATE_FAIL_WRITE": "8+"})
    assert done.returncode == 3, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["committed"] is True
    assert result["needs_recovery"] is True
    assert result["rolled_back"] == []
    assert "version record could not be written" in result["error"]
    assert "recover" in result["error"]
    assert tree_digest(installation) == expected
    assert installed(state_of(installation)) == "1.0"

    recovered = cli("recover", *args)
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert json.loads(recovered.stdout)["action"] == "committed"
    assert installed(state_of(installation)) == "1.1"
    assert tree_digest(installation) == expected


# -- 8. clear errors, right exit codes ------------------------------------------------------


def test_a_full_disk_at_the_rollback_record_still_restores_and_ends_needing_recovery(
    installation: Path, migrations: MigrationWriter
) -> None:
    add_config_migration(migrations)
    migrations.add(
        "v1.0_to_v1.1",
        "2_fails.py",
        forward="(project_root / 'secret.env').write_text('partial')\nreturn False",
    )
    assert cli("stamp", "1.0", "--root", str(installation)).returncode == 0
    before = tree_digest(installation)
    args = ["--root", str(installation), "--migrations", str(migrations.root), "--json"]
    # The backup's 4 files, the journal's start, two step starts, then the rollback's start.
    done = cli("upgrade", *args, env={"DOPEMUX_UPDATE_FAIL_WRITE": "8"})
    assert done.returncode == 3, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    result = json.loads(done.stdout)
    assert "rollback_started" in done.stderr  # the write that failed
    assert result["needs_recovery"] is True
    assert result["restored"] is True
    assert result["verified_identical"] is True
    assert "journal could not be written" in result["error"]
    assert tree_digest(installation) == before

    recovered = cli("recover", *args)
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert tree_digest(installation) == before
    assert installed(state_of(installation)) == "1.0"


def test_verify_while_an_update_runs_names_the_running_update(
    installation: Path, migrations: MigrationWriter, tmp_path: Path
) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    os.mkfifo(started)
    os.mkfifo(release)
    migrations.add(
        "v1.0_to_v1.1",
        "1_waits.py",
        forward=f"open({str(started)!r}, 'w').close()\nopen({str(release)!r}).read()\nreturn True",
    )
    assert cli("stamp", "1.0", "--root", str(installation)).returncode == 0
    args = ["--root", str(installation), "--migrations", str(migrations.root)]
    first = subprocess.Popen(
        [sys.executable, "-m", "dopemux_update", "upgrade", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        with open(started) as handle:  # the migration runs, the lock is held
            handle.read()
        verify = cli("verify", *args, "--json")
        assert verify.returncode == 4, verify.stdout + verify.stderr
        assert f"pid {first.pid}" in json.loads(verify.stdout)["error"]
    finally:
        with open(release, "w"):
            pass
        _out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err


def test_stamp_force_repairs_a_corrupt_state_file_and_keeps_it_aside(installation: Path) -> None:
    state = state_of(installation)
    state.mkdir(parents=True)
    (state / "state.json").write_text('{"installed_version": "1.0", "hist')
    refused = cli("stamp", "1.0", "--root", str(installation), "--json")
    assert refused.returncode == 2
    assert "--force" in json.loads(refused.stdout)["error"]
    forced = cli("stamp", "1.0", "--force", "--root", str(installation), "--json")
    assert forced.returncode == 0, forced.stdout + forced.stderr
    assert installed(state) == "1.0"
    kept = list(state.glob("state.json.corrupt-*"))
    assert len(kept) == 1
    assert kept[0].read_text() == '{"installed_version": "1.0", "hist'
    assert json.loads(forced.stdout)["corrupt_state_kept"] == str(kept[0])


def test_a_failed_run_without_a_backup_says_its_partial_writes_were_not_undone(
    installation: Path, migrations: MigrationWriter
) -> None:
    add_config_migration(migrations, backup=False)
    migrations.add(
        "v1.0_to_v1.1",
        "2_fails.py",
        forward="(project_root / 'secret.env').write_text('partial')\nreturn False",
        info={"backup_required": False},
    )
    assert cli("stamp", "1.0", "--root", str(installation)).returncode == 0
    args = ["--root", str(installation), "--migrations", str(migrations.root)]
    as_json = cli("upgrade", *args, "--json")
    assert as_json.returncode == 1, as_json.stdout + as_json.stderr
    result = json.loads(as_json.stdout)
    assert result["rollback"] == "backward_only_unverified"
    assert result["verified_identical"] is None
    (installation / "secret.env").write_text("TOKEN=abc\n")
    plain = cli("upgrade", *args)
    assert plain.returncode == 1
    assert "The installation was rolled back" not in plain.stdout
    assert "no backup was taken" in plain.stdout
    assert "not undone" in plain.stdout


# -- 12. recovery always ends -------------------------------------------------------------


def test_recover_reports_a_journal_it_cannot_use_instead_of_a_traceback(
    installation: Path,
) -> None:
    state = state_of(installation)
    state.mkdir(parents=True)
    # Intact (its checksum is right) but not a run record recovery can act on.
    (state / "journal.jsonl").write_bytes(
        _line({"kind": "run_started", "run_id": "x", "backup_id": "nope"})
    )
    done = cli("recover", "--root", str(installation), "--json")
    assert done.returncode == 3, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    error = json.loads(done.stdout)["error"]
    assert "stamp" in error  # says what to do next
    # ... and what it says to do works.
    stamped = cli("stamp", "1.0", "--force", "--root", str(installation), "--json")
    assert stamped.returncode == 0, stamped.stdout + stamped.stderr
    assert json.loads(stamped.stdout)["closed_interrupted_run"] is True
    again = cli("recover", "--root", str(installation), "--json")
    assert json.loads(again.stdout)["action"] == "none"


# -- 4. a migration that deletes the state folder -----------------------------------------


def _upgrade_stopped_by_state_damage(
    installation: Path,
    migrations: MigrationWriter,
    name: str,
    forward: str,
    backward: str = "return True",
) -> tuple[dict[str, Any], list[str], str]:
    """Upgrade through a config migration and ``name``, which damages the update's own state,
    then one that must never run: the run stops at ``name`` (exit 3), undoes both, and says
    the backup is lost. The result, the command's arguments and the culprit's id."""
    add_config_migration(migrations)
    migrations.add("v1.0_to_v1.1", name, forward=forward, backward=backward)
    migrations.add("v1.0_to_v1.1", "3_never_runs.py")
    assert cli("stamp", "1.0", "--root", str(installation)).returncode == 0
    args = ["--root", str(installation), "--migrations", str(migrations.root), "--json"]
    done = cli("upgrade", *args)
    assert done.returncode == 3, done.stdout + done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    culprit = "v1.0_to_v1.1/" + name.removesuffix(".py")
    assert result["failed_migration"] == culprit
    assert culprit in result["error"]
    assert result["backup_lost"] is True
    assert result["rolled_back"] == [culprit, "v1.0_to_v1.1/1_config"]
    assert "forward v1.0_to_v1.1/3_never_runs" not in migrations.calls_made()
    return result, args, culprit


def test_a_migration_deleting_the_state_folder_stops_the_run_and_recover_says_why(
    installation: Path, migrations: MigrationWriter
) -> None:
    result, args, culprit = _upgrade_stopped_by_state_damage(
        installation,
        migrations,
        "2_moves_data_out.py",
        forward=(
            "import shutil\n"
            "(project_root / 'data.txt').write_bytes("
            "(project_root / '.dopemux' / 'data.txt').read_bytes())\n"
            "shutil.rmtree(project_root / '.dopemux')\n"
            "return True"
        ),
        backward=(
            "(project_root / '.dopemux').mkdir(exist_ok=True)\n"
            "(project_root / '.dopemux' / 'data.txt').write_bytes("
            "(project_root / 'data.txt').read_bytes())\n"
            "(project_root / 'data.txt').unlink()\n"
            "return True"
        ),
    )
    assert "cannot be restored" in result["error"]

    status = cli("status", *args)
    assert json.loads(status.stdout)["needs_recovery"] is True
    recovered = cli("recover", *args)
    assert recovered.returncode == 3, recovered.stdout + recovered.stderr
    report = json.loads(recovered.stdout)
    assert report["action"] == "failed"
    assert culprit in report["error"]
    assert "cannot be restored" in report["error"]
    assert "stamp" in report["error"]


def test_a_migration_deleting_the_backups_stored_objects_stops_the_run(
    installation: Path, migrations: MigrationWriter
) -> None:
    """The objects hold every backup's files: deleting them is noticed after the migration
    returns, like deleting the backup's folder, and the run says the backup is lost."""
    result, _, _ = _upgrade_stopped_by_state_damage(
        installation,
        migrations,
        "2_cleans_up.py",
        forward=(
            "import shutil\n"
            "shutil.rmtree(project_root / '.dopemux' / 'update' / 'backups' / 'objects')\n"
            "return True"
        ),
    )
    assert "stored objects" in result["error"]
    assert installed(state_of(installation)) == "1.0"


def test_verify_flags_a_migration_that_deletes_the_state_folder(
    installation: Path, migrations: MigrationWriter
) -> None:
    migrations.add(
        "v1.0_to_v1.1",
        "1_moves_data_out.py",
        forward="import shutil\nshutil.rmtree(project_root / '.dopemux')\nreturn True",
        backward=(
            "(project_root / '.dopemux').mkdir(exist_ok=True)\n"
            "(project_root / '.dopemux' / 'data.txt').write_text('service data\\n')\n"
            "return True"
        ),
    )
    assert cli("stamp", "1.0", "--root", str(installation)).returncode == 0
    done = cli(
        "verify", "--root", str(installation), "--migrations", str(migrations.root), "--json"
    )
    assert done.returncode == 1, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["culprit"] == "v1.0_to_v1.1/1_moves_data_out"
    assert "state folder" in report["error"]


# -- 5. the working directory --------------------------------------------------------------


def test_a_migration_changing_the_working_directory_cannot_redirect_the_run(
    installation: Path, tmp_path: Path
) -> None:
    migrations = MigrationWriter(installation / "migrations", tmp_path / "calls.log")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    path = migrations.add("v1.0_to_v1.1", "1_config.py")
    path.write_text(
        "import os\nos.chdir(os.path.dirname(os.path.abspath(__file__)))\n" + path.read_text()
    )
    migrations.add(
        "v1.0_to_v1.1",
        "2_wanders.py",
        forward=(
            f"import os\nos.chdir({str(elsewhere)!r})\n"
            f"(project_root / 'config' / 'app.yaml').write_text({CONFIG_AFTER!r})\n"
            "return True"
        ),
    )
    assert cli("stamp", "1.0", cwd=installation).returncode == 0
    done = cli("upgrade", "--no-restart", "--json", cwd=installation)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "migration.changed_cwd" in done.stderr
    assert installed(state_of(installation)) == "1.1"
    assert (installation / "config" / "app.yaml").read_text() == CONFIG_AFTER
    assert not (installation / "migrations" / "v1.0_to_v1.1" / ".dopemux").exists()
    assert not (elsewhere / ".dopemux").exists()
    assert not any(state_of(installation).glob("journal*"))


# -- 6. traces that are ignored -------------------------------------------------------------


def test_an_interrupted_backups_restore_is_seen_by_status_and_finished_by_recover(
    installation: Path,
) -> None:
    (installation / "migrations").mkdir()  # status wants one
    assert cli("stamp", "1.0", "--root", str(installation)).returncode == 0
    created = cli("backups", "create", "--root", str(installation), "--json")
    backup_id = json.loads(created.stdout)["backup"]["id"]
    wanted = tree_digest(installation)
    for name in ("config/app.yaml", "secret.env", "config/nested/deep.json"):
        (installation / name).write_text("changed since\n")
    (installation / "added.txt").write_text("new\n")
    args = ["--root", str(installation), "--json"]
    killed = cli(
        "backups", "restore", backup_id, "--yes", *args,
        env={"DOPEMUX_UPDATE_CRASH_AT": "restore.file:1"},
    )  # fmt: skip
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    status = json.loads(cli("status", *args).stdout)
    assert status["needs_recovery"] is True
    assert status["interrupted"] == "restore"
    assert "interrupted restore" in cli("status", "--root", str(installation)).stdout
    recovered = cli("recover", *args)
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    report = json.loads(recovered.stdout)
    assert (report["action"], report["interrupted"]) == ("restored", "restore")
    assert tree_digest(installation) == wanted
    assert json.loads(cli("status", *args).stdout)["needs_recovery"] is False


@pytest.mark.parametrize("point", ["journal.step_begun:2", "journal.run_started"])
def test_a_damaged_first_journal_record_is_not_discarded(
    installation: Path, migrations: MigrationWriter, point: str
) -> None:
    add_config_migration(migrations)
    migrations.add(
        "v1.0_to_v1.1",
        "2_secret.py",
        forward="(project_root / 'secret.env').write_text('migrated')\nreturn True",
    )
    assert cli("stamp", "1.0", "--root", str(installation)).returncode == 0
    before = tree_digest(installation)
    args = ["--root", str(installation), "--migrations", str(migrations.root), "--json"]
    killed = cli("upgrade", *args, env={"DOPEMUX_UPDATE_CRASH_AT": point})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    journal = state_of(installation) / "journal.jsonl"
    raw = bytearray(journal.read_bytes())
    raw[10] ^= 0x20  # one flipped bit in the first line
    journal.write_bytes(bytes(raw))

    recovered = cli("recover", *args)
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    report = json.loads(recovered.stdout)
    assert report["action"] == "restored"
    assert "damaged" in report["note"]
    assert tree_digest(installation) == before
    assert installed(state_of(installation)) == "1.0"


def test_a_journal_damaged_beyond_use_is_reported_not_retired(installation: Path) -> None:
    state = state_of(installation)
    state.mkdir(parents=True)
    journal = state / "journal.jsonl"
    journal.write_bytes(b"garbage that is no record\n")
    created = cli("backups", "create", "--root", str(installation), "--json")  # manual
    backup_id = json.loads(created.stdout)["backup"]["id"]
    done = cli("recover", "--root", str(installation), "--json")
    assert done.returncode == 3, done.stdout + done.stderr
    error = json.loads(done.stdout)["error"]
    assert "damaged" in error
    assert journal.exists()
    # What it says to do works: close the journal, then put a backup back.
    assert "stamp VERSION --force" in error
    assert cli("stamp", "1.0", "--force", "--root", str(installation)).returncode == 0
    restored = cli("backups", "restore", backup_id, "--yes", "--root", str(installation))
    assert restored.returncode == 0, restored.stdout + restored.stderr


def test_a_stamp_force_closes_a_run_recover_cannot_settle(installation: Path) -> None:
    state = state_of(installation)
    state.mkdir(parents=True)
    (state / "journal.jsonl").write_bytes(b"garbage that is no record\n")
    assert cli("backups", "create", "--root", str(installation)).returncode == 0
    stamped = cli("stamp", "1.0", "--force", "--root", str(installation), "--json")
    assert stamped.returncode == 0, stamped.stdout + stamped.stderr
    assert not (state / "journal.jsonl").exists()
    assert len(list(state.glob("journal.jsonl.closed-*"))) == 1
    again = cli("recover", "--root", str(installation), "--json")
    assert json.loads(again.stdout)["action"] == "none"


def test_recover_over_a_corrupt_state_file_says_what_to_do_and_stamp_force_does_it(
    installation: Path, migrations: MigrationWriter
) -> None:
    add_config_migration(migrations)
    assert cli("stamp", "1.0", "--root", str(installation)).returncode == 0
    before = tree_digest(installation)
    args = ["--root", str(installation), "--migrations", str(migrations.root), "--json"]
    killed = cli("upgrade", *args, env={"DOPEMUX_UPDATE_CRASH_AT": "runner.call_returned"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    (state_of(installation) / "state.json").write_text("{ not json")
    done = cli("recover", *args)
    assert done.returncode == 3, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    error = json.loads(done.stdout)["error"]
    assert "state.json" in error
    assert "stamp VERSION --force" in error
    stamped = cli("stamp", "1.0", "--force", *args)
    assert stamped.returncode == 0, stamped.stdout + stamped.stderr
    assert tree_digest(installation) == before  # the interrupted run was undone first
    assert installed(state_of(installation)) == "1.0"
    assert json.loads(cli("recover", *args).stdout)["action"] == "none"


def test_an_undo_deleting_the_state_folder_is_noticed_and_recover_says_why(
    installation: Path, migrations: MigrationWriter
) -> None:
    migrations.add(
        "v1.0_to_v1.1",
        "1_undo_wipes.py",
        forward="(project_root / 'config' / 'app.yaml').write_text('x')\nreturn True",
        backward=(
            "import shutil\n"
            "(project_root / 'config' / 'app.yaml').write_text('# keep me\\nlog_level: info\\n')\n"
            "shutil.rmtree(project_root / '.dopemux')\n"
            "return True"
        ),
    )
    migrations.add("v1.0_to_v1.1", "2_fails.py", forward="return False")
    assert cli("stamp", "1.0", "--root", str(installation)).returncode == 0
    args = ["--root", str(installation), "--migrations", str(migrations.root), "--json"]
    done = cli("upgrade", *args)
    assert done.returncode == 3, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["backup_lost"] is True
    assert "v1.0_to_v1.1/1_undo_wipes (undoing it)" in result["error"]
    recovered = cli("recover", *args)
    assert recovered.returncode == 3, recovered.stdout + recovered.stderr
    error = json.loads(recovered.stdout)["error"]
    assert "v1.0_to_v1.1/1_undo_wipes" in error
    assert "cannot be restored" in error
    assert "undone by their backward functions: v1.0_to_v1.1/1_undo_wipes" in error


@pytest.mark.anyio
async def test_a_cancellation_arriving_during_the_commit_goes_forward_not_back(
    installation: Path, migrations: MigrationWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    add_config_migration(migrations)
    expected = post_digest(installation)
    entered, release = threading.Event(), threading.Event()
    real_record = StateStore.record

    def record_slowly(self: StateStore, **kwargs: Any) -> Any:
        if kwargs.get("installed_version") == "1.1":  # the commit's state write
            entered.set()
            release.wait(60)
        return real_record(self, **kwargs)

    monkeypatch.setattr(StateStore, "record", record_slowly)
    phase = OrchestrationPhase(
        project_root=installation,
        migrations_dir=migrations.root,
        current_version="1.0",
        target_version="1.1",
    )
    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(phase.execute)
            await anyio.to_thread.run_sync(entered.wait)
            scope.cancel()  # arrives while the commit's thread writes state.json
            release.set()
    assert scope.cancelled_caught
    assert phase.result is not None
    assert phase.result.ok, phase.result
    assert phase.result.rolled_back == ()
    assert tree_digest(installation) == expected
    assert installed(state_of(installation)) == "1.1"
    assert not (state_of(installation) / "journal.jsonl").exists()


def test_recover_reports_the_half_built_backup_of_a_run_killed_during_its_backup(
    installation: Path, migrations: MigrationWriter
) -> None:
    add_config_migration(migrations)
    assert cli("stamp", "1.0", "--root", str(installation)).returncode == 0
    before = tree_digest(installation)
    args = ["--root", str(installation), "--migrations", str(migrations.root), "--json"]
    killed = cli("upgrade", *args, env={"DOPEMUX_UPDATE_CRASH_AT": "backup.file:2"})
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    done = cli("recover", *args)
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads(done.stdout)
    assert report["action"] == "none"
    assert "half-built backup" in report["note"]
    assert tree_digest(installation) == before
    assert not list((state_of(installation) / "backups").iterdir())


def test_a_migration_writing_into_the_journal_is_caught_and_the_backup_still_restores(
    installation: Path, migrations: MigrationWriter
) -> None:
    add_config_migration(migrations)
    migrations.add(
        "v1.0_to_v1.1",
        "2_scribbles.py",
        forward=(
            "with open(project_root / '.dopemux/update/journal.jsonl', 'a') as f:\n"
            "    f.write('{}\\n')\n"
            "return True"
        ),
    )
    assert cli("stamp", "1.0", "--root", str(installation)).returncode == 0
    before = tree_digest(installation)
    args = ["--root", str(installation), "--migrations", str(migrations.root), "--json"]
    done = cli("upgrade", *args)
    assert done.returncode == 3, done.stdout + done.stderr
    result = json.loads(done.stdout)
    assert result["failed_migration"] == "v1.0_to_v1.1/2_scribbles"
    assert "changed the journal" in result["error"]
    assert result["backup_lost"] is False
    assert result["verified_identical"] is True
    assert tree_digest(installation) == before
    recovered = cli("recover", *args)
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    report = json.loads(recovered.stdout)
    assert report["action"] == "restored"
    assert "v1.0_to_v1.1/2_scribbles" in report["note"]
    assert tree_digest(installation) == before
    assert installed(state_of(installation)) == "1.0"
