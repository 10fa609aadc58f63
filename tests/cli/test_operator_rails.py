"""Issue 14: an operator's typo is refused with the next step, and never writes state.

Every test runs the real command line in a subprocess (``python -m dopemux_update``).
"""

from __future__ import annotations

import json
import os
import pty
import re
import select
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import dopemux_update
from conftest import MigrationWriter, tree_digest
from dopemux_update import OrchestrationPhase, VersionMismatchError


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    return subprocess.run(
        [sys.executable, "-m", "dopemux_update", *args],
        capture_output=True,
        text=True,
        check=False,
        input=stdin,
        env=env,
    )


def as_json(*args: str) -> tuple[int, dict[str, Any]]:
    done = cli(*args, "--json")
    return done.returncode, json.loads(done.stdout)


@pytest.fixture
def two_hops(migrations: MigrationWriter) -> MigrationWriter:
    migrations.add("v0.1.0_to_v0.2.0", "001_one.py")
    migrations.add("v0.2.0_to_v0.3.0", "001_two.py")
    return migrations


# -- 1. the root must exist; only stamp, upgrade, downgrade and backups create make state ---


@pytest.mark.parametrize(
    "command",
    [
        ["status"],
        ["plan"],
        ["upgrade"],
        ["downgrade", "--to", "0.1.0"],
        ["stamp", "0.1.0"],
        ["recover"],
        ["verify"],
        ["backups", "list"],
        ["backups", "create"],
        ["backups", "prune", "--keep", "0"],
        ["backups", "verify", "latest"],
        ["backups", "restore", "latest", "--yes"],
    ],
)
def test_every_command_refuses_a_root_that_does_not_exist(
    tmp_path: Path, command: list[str]
) -> None:
    typo = tmp_path / "TYPO"
    done = cli(*command, "--root", str(typo))
    assert done.returncode == 2, done.stderr
    assert f"{typo}: installation folder does not exist" in done.stderr
    assert "--root DIR" in done.stderr
    assert not typo.exists()


@pytest.mark.parametrize(
    "command",
    [["recover"], ["backups", "list"], ["backups", "prune", "--keep", "0"], ["status"]],
)
def test_reading_commands_create_no_state_folder_and_leave_no_lock(
    tmp_path: Path, command: list[str]
) -> None:
    root = tmp_path / "not-an-installation"
    root.mkdir()
    done = cli(*command, "--root", str(root))
    assert done.returncode == 0, done.stderr
    assert list(root.iterdir()) == []


# -- 2. --from / current_version that disagree with the record ------------------------------


def test_upgrade_from_a_version_other_than_the_recorded_one_is_refused(
    example_copy: Path,
) -> None:
    where = ["--root", str(example_copy), "--migrations", str(_examples())]
    assert cli("stamp", "0.2.0", *where).returncode == 0
    before = tree_digest(example_copy, exclude=())
    code, payload = as_json("upgrade", "--from", "0.1.0", "--no-restart", *where)
    assert code == 2
    assert "--from 0.1.0 disagrees with the recorded installed version 0.2.0" in payload["error"]
    assert "--force" in payload["error"]
    assert tree_digest(example_copy, exclude=()) == before


def test_upgrade_from_the_recorded_version_or_with_force_runs(
    tmp_path: Path, two_hops: MigrationWriter
) -> None:
    root = tmp_path / "install"
    root.mkdir()
    where = ["--root", str(root), "--migrations", str(two_hops.root)]
    assert cli("stamp", "0.2", *where).returncode == 0
    code, same = as_json("upgrade", "--from", "0.2.0", "--to", "0.2.0", *where)
    assert (code, same["ok"]) == (0, True)
    code, forced = as_json("upgrade", "--from", "0.1.0", "--to", "0.2.0", "--force", *where)
    assert (code, forced["applied"]) == (0, ["v0.1.0_to_v0.2.0/001_one"])


def test_upgrade_with_nothing_recorded_accepts_from(
    tmp_path: Path, two_hops: MigrationWriter
) -> None:
    root = tmp_path / "install"
    root.mkdir()
    where = ["--root", str(root), "--migrations", str(two_hops.root)]
    code, payload = as_json("upgrade", "--from", "0.1.0", "--to", "0.2.0", *where)
    assert (code, payload["installed_version"]) == (0, "0.2.0")


@pytest.mark.anyio
async def test_the_library_refuses_a_current_version_the_record_disagrees_with(
    tmp_path: Path, two_hops: MigrationWriter
) -> None:
    root = tmp_path / "install"
    root.mkdir()
    (root / "VERSION").write_text("0.2.0\n")
    phase = OrchestrationPhase(
        project_root=root, migrations_dir=two_hops.root, current_version="0.1.0"
    )
    with pytest.raises(VersionMismatchError, match=r"0\.1\.0 .*recorded .* 0\.2\.0"):
        await phase.execute()
    assert two_hops.calls_made() == []
    forced = OrchestrationPhase(
        project_root=root,
        migrations_dir=two_hops.root,
        current_version="0.1.0",
        target_version="0.2.0",
        force=True,
    )
    assert (await forced.execute()).ok


# -- 3. stamp below the baseline ------------------------------------------------------------


def test_stamp_below_the_baseline_is_refused_unless_forced(
    tmp_path: Path, two_hops: MigrationWriter
) -> None:
    root = tmp_path / "install"
    root.mkdir()
    where = ["--root", str(root), "--migrations", str(two_hops.root)]
    done = cli("stamp", "0.0.9", *where)
    assert done.returncode == 2
    assert "older than the baseline 0.1.0" in done.stderr
    assert "--force" in done.stderr
    assert not (root / ".dopemux").exists()
    code, payload = as_json("stamp", "0.0.9", "--force", *where)
    assert (code, payload["installed_version"]) == (0, "0.0.9")


# -- 4. partial restores keep the record; prune asks -----------------------------------------


def test_restoring_a_partial_backup_keeps_the_recorded_version(installation: Path) -> None:
    where = ["--root", str(installation)]
    assert cli("stamp", "1.0", *where).returncode == 0
    assert cli("backups", "create", "--exclude", "*.env", *where).returncode == 0
    assert cli("stamp", "2.0", *where).returncode == 0
    done = cli("backups", "restore", "latest", "--yes", *where)
    assert done.returncode == 0, done.stderr
    assert "2.0, unchanged: the backup held part of the installation only" in done.stdout
    _code, status = as_json("status", *where)
    assert status["installed_version"] == "2.0"


def test_restoring_a_whole_backup_records_its_version(installation: Path) -> None:
    where = ["--root", str(installation)]
    assert cli("stamp", "1.0", *where).returncode == 0
    assert cli("backups", "create", *where).returncode == 0
    assert cli("stamp", "2.0", *where).returncode == 0
    code, restored = as_json("backups", "restore", "latest", "--yes", *where)
    assert (code, restored["installed_version"], restored["partial"]) == (0, "1.0", False)


def test_prune_without_a_terminal_asks_for_yes_and_dry_run_deletes_nothing(
    installation: Path,
) -> None:
    where = ["--root", str(installation)]
    for _ in range(2):
        assert cli("backups", "create", *where).returncode == 0
    _, listed = as_json("backups", "list", *where)
    ids = [b["id"] for b in listed["backups"]]
    refused = cli("backups", "prune", "--keep", "0", *where)
    assert refused.returncode == 2
    assert "pruning deletes 2 backups" in refused.stderr
    assert "--yes" in refused.stderr
    dry = cli("backups", "prune", "--keep", "0", "--dry-run", *where)
    assert dry.returncode == 0
    assert dry.stdout.splitlines() == ["Would delete 2 backups; 0 kept.", *(f"  {i}" for i in ids)]
    assert as_json("backups", "list", *where)[1]["backups"] == listed["backups"]
    done = cli("backups", "prune", "--keep", "1", "--yes", *where)
    assert done.stdout == "Deleted 1 backup; 1 kept.\n"


# -- 5. short versions ----------------------------------------------------------------------


def test_a_short_target_version_is_the_folders_spelling(
    tmp_path: Path, two_hops: MigrationWriter
) -> None:
    root = tmp_path / "install"
    root.mkdir()
    where = ["--root", str(root), "--migrations", str(two_hops.root)]
    _code, stamped = as_json("stamp", "0.2", *where)
    assert stamped["installed_version"] == "0.2.0"
    done = cli("upgrade", "--to", "0.2", *where)
    assert done.stdout.startswith("Nothing to do: already at 0.2.0."), done.stdout
    _code, payload = as_json("upgrade", "--to", "0.2", *where)
    assert (payload["version_to"], payload["installed_version"]) == ("0.2.0", "0.2.0")
    assert (
        json.loads((root / ".dopemux/update/state.json").read_text())["installed_version"]
        == "0.2.0"
    )


def test_a_command_with_nothing_to_do_names_itself_in_its_json(
    tmp_path: Path, two_hops: MigrationWriter
) -> None:
    root = tmp_path / "install"
    root.mkdir()
    where = ["--root", str(root), "--migrations", str(two_hops.root), "--yes", "--no-restart"]
    as_json("stamp", "0.1.0", *where[:4])
    for command, target in (("downgrade", "0.1.0"), ("upgrade", "0.1.0")):
        code, payload = as_json(command, "--to", target, *where)
        assert (code, payload["command"], payload["applied"]) == (0, command, [])


# -- 7. messages that give the next step ----------------------------------------------------


def test_an_explicit_migrations_folder_that_does_not_exist_is_named(installation: Path) -> None:
    missing = installation / "migratons"
    done = cli("plan", "--root", str(installation), "--migrations", str(missing), "--from", "1")
    assert done.returncode == 2
    assert f"{missing}: migrations folder does not exist" in done.stderr
    assert "--migrations DIR" in done.stderr


def test_backups_verify_of_an_unknown_id_points_at_backups_list(installation: Path) -> None:
    done = cli("backups", "verify", "nope", "--root", str(installation))
    assert done.returncode == 2
    assert "`dopemux-update backups list`" in done.stderr
    assert cli("backups", "create", "--root", str(installation)).returncode == 0
    intact = cli("backups", "verify", "latest", "--root", str(installation))
    assert intact.returncode == 0
    assert "is intact: 4 files" in intact.stdout


def test_a_common_option_before_the_command_gets_a_hint(installation: Path) -> None:
    done = cli("--root", str(installation), "status")
    assert done.returncode == 2
    assert "options go after the command name: dopemux-update status --root DIR" in done.stderr
    assert "Error:" not in done.stderr
    assert "error: No such option" in done.stderr


def test_help_lists_the_exit_codes_and_names_the_values() -> None:
    text = cli("--help").stdout
    assert "Exit codes:" in text
    assert "130  interrupted" in text
    upgrade = cli("upgrade", "--help").stdout
    assert "INTEGER RANGE" not in upgrade
    assert "TEXT" not in upgrade
    assert "--keep-backups N" in upgrade
    assert "--to VERSION" in upgrade
    assert "before every downgrade" in cli("downgrade", "--help").stdout
    assert "--keep N" in cli("backups", "prune", "--help").stdout


def test_restart_command_with_no_restart_is_a_usage_error(
    tmp_path: Path, two_hops: MigrationWriter
) -> None:
    root = tmp_path / "install"
    root.mkdir()
    where = ["--root", str(root), "--migrations", str(two_hops.root), "--from", "0.1.0"]
    done = cli("upgrade", "--no-restart", "--restart-command", "true {service}", *where)
    assert done.returncode == 2
    assert "--restart-command and --no-restart" in done.stderr
    assert two_hops.calls_made() == []


# -- 10. the basics --------------------------------------------------------------------------


def test_version_is_the_package_version() -> None:
    done = cli("--version")
    assert done.returncode == 0
    assert done.stdout.strip() == f"dopemux-update, version {dopemux_update.__version__}"


def test_status_check_exit_codes_for_monitoring(tmp_path: Path, two_hops: MigrationWriter) -> None:
    root = tmp_path / "install"
    root.mkdir()
    where = ["--root", str(root), "--migrations", str(two_hops.root)]
    assert cli("status", "--check", *where).returncode == 2  # nothing recorded
    assert cli("stamp", "0.1.0", *where).returncode == 0
    assert cli("status", "--check", *where).returncode == 1  # two hops pending
    assert cli("status", *where).returncode == 0  # without --check: always 0
    assert cli("upgrade", *where).returncode == 0
    assert cli("status", "--check", *where).returncode == 0
    (root / ".dopemux/update/journal.jsonl").write_text("")
    assert cli("status", "--check", *where).returncode == 3


def test_status_without_a_migrations_folder_names_the_path(installation: Path) -> None:
    (installation / "VERSION").write_text("0.4.0\n")
    done = cli("status", "--root", str(installation))
    assert "Installed version: 0.4.0" in done.stdout
    assert f"none (no folder at {installation / 'migrations'})" in done.stdout


def _examples() -> Path:
    return Path(__file__).resolve().parents[2] / "migrations" / "examples"


# -- 6, 7, 8. the console: the UI only, the migration's own reason, 80 columns ---------------


@pytest.fixture
def failing(tmp_path: Path, migrations: MigrationWriter) -> list[str]:
    root = tmp_path / "install"
    root.mkdir()
    (root / "data.txt").write_text("data\n")
    migrations.add("v0.1.0_to_v0.2.0", "001_add_the_broker_table.py")
    migrations.add(
        "v0.1.0_to_v0.2.0",
        "002_fail.py",
        forward="print(\"the config has no 'broker' section: add one\")\nreturn False",
    )
    where = ["--root", str(root), "--migrations", str(migrations.root)]
    assert cli("stamp", "0.1.0", *where).returncode == 0
    return where


def test_a_failure_in_a_pipe_shows_the_ui_only_with_the_migrations_reason(
    failing: list[str],
) -> None:
    done = cli("upgrade", "--no-restart", *failing)
    assert done.returncode == 1
    assert "Its last output:    the config has no 'broker' section: add one" in done.stdout
    assert "{" not in done.stderr  # no raw JSON log lines
    assert "migration.failed" not in done.stderr + done.stdout
    assert "rollback.started" not in done.stderr + done.stdout
    verbose = cli("upgrade", "--no-restart", "-v", *failing)
    assert "rollback.started" in verbose.stderr
    assert "{" not in verbose.stderr.split("rollback.started")[0].splitlines()[-1]


def test_quiet_prints_only_the_final_line_and_errors(failing: list[str]) -> None:
    done = cli("upgrade", "--no-restart", "-q", *failing)
    assert done.returncode == 1
    assert done.stdout == "Update FAILED at v0.1.0_to_v0.2.0/002_fail: returned False\n"
    assert done.stderr == ""


def test_the_live_view_at_80_columns_keeps_ids_whole_and_indents_wrapped_lines(
    failing: list[str],
) -> None:
    env = {**os.environ, "COLUMNS": "80", "DOPEMUX_UPDATE_PROGRESS": "live", "NO_COLOR": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "dopemux_update", "upgrade", "--no-restart", *failing],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    out = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", done.stdout)
    lines = out.splitlines()
    log = next(i for i, line in enumerate(lines) if line.startswith("Log:"))
    path = lines[log].split()[-1]
    assert path.endswith(".jsonl")  # printed whole, for the terminal to wrap and to copy
    assert Path(path).is_file()
    assert all(len(line.rstrip()) <= 80 for line in lines if path not in line)
    assert sum("v0.1.0_to_v0.2.0/001_add_the_broker_table" in line for line in lines) >= 3
    assert "`dopemux-update" not in out or all(
        line.count("`") % 2 == 0 for line in lines
    )  # a command is never split


def test_after_ctrl_c_the_running_migrations_output_stays_on_the_terminal(
    tmp_path: Path, migrations: MigrationWriter
) -> None:
    """On a pty: a migration that does not stop within --grace keeps its line and its output
    on the screen, below the "Interrupted" notice (the live region used to take them along)."""
    root = tmp_path / "install"
    root.mkdir()
    (root / "data.txt").write_text("data\n")
    migrations.add(
        "v0.1.0_to_v0.2.0",
        "001_slow.py",
        forward="import time\nprint('step one done', flush=True)\nprint('READY', flush=True)\n"
        "for _ in range(400):\n    time.sleep(0.05)\nreturn True",
    )
    where = ["--root", str(root), "--migrations", str(migrations.root)]
    assert cli("stamp", "0.1.0", *where).returncode == 0
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.environ.update(COLUMNS="80", NO_COLOR="1")
        argv = [sys.executable, "-m", "dopemux_update", "upgrade", "--no-restart", *where]
        os.execv(sys.executable, [*argv, "--grace", "0.3"])  # noqa: S606 - no shell wanted
    seen = b""
    interrupted = False
    while True:
        ready, _, _ = select.select([fd], [], [], 30)
        assert ready, seen.decode(errors="replace")
        try:
            data = os.read(fd, 65536)
        except OSError:  # the child closed the pty
            break
        if not data:
            break
        seen += data
        if not interrupted and b"READY" in seen:
            os.kill(pid, signal.SIGINT)
            interrupted = True
    os.waitpid(pid, 0)
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", seen.decode(errors="replace"))
    after_notice = text.split("Interrupted: stopping after the running migration")[-1]
    kept = after_notice.split("did not finish")
    assert len(kept) == 2, text
    assert "| step one done" in kept[1].split("Update FAILED")[0]


def test_the_live_backup_line_is_green_and_status_says_rolled_back_in_words(
    failing: list[str],
) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "TERM")}
    env.update(COLUMNS="80", DOPEMUX_UPDATE_PROGRESS="live", TERM="xterm-256color")
    done = subprocess.run(
        [sys.executable, "-m", "dopemux_update", "upgrade", "--no-restart", *failing],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    backup = next(line for line in done.stdout.splitlines() if "Backup 20" in line)
    assert "\x1b[1;31m" not in backup
    assert "\x1b[32m" in backup
    assert "Rolling back 1 completed migration in reverse order" in done.stdout
    status = cli("status", *failing).stdout
    assert "rolled back at" in status
    assert "rolled_back" not in status


def test_a_usage_error_with_json_still_prints_one_json_object(installation: Path) -> None:
    done = cli("status", "--root", str(installation), "--json", "--bogus")
    assert done.returncode == 2
    assert json.loads(done.stdout)["ok"] is False
    assert "error: No such option" in done.stderr


def test_the_documented_shell_completion_completes_commands() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert "_DOPEMUX_UPDATE_COMPLETE=bash_source dopemux-update" in readme
    assert "NO_COLOR" in readme
    env = {
        **os.environ,
        "COMP_WORDS": "dopemux-update back",
        "COMP_CWORD": "1",
        "_DOPEMUX_UPDATE_COMPLETE": "bash_complete",
    }
    done = subprocess.run(
        [sys.executable, "-m", "dopemux_update"],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )
    assert "backups" in done.stdout


def test_a_warning_no_line_tells_is_one_short_ui_line(installation: Path) -> None:
    os.mkfifo(installation / "a-fifo")
    done = cli("backups", "create", "--root", str(installation))
    assert done.returncode == 0
    assert done.stderr == "warning: backup.skipped: path=a-fifo, kind=fifo\n"
    quiet = cli("backups", "create", "--root", str(installation), "-q")
    assert quiet.stderr == ""


def test_verify_and_plan_diff_create_no_state_folder(
    tmp_path: Path, migrations: MigrationWriter
) -> None:
    """Only stamp, upgrade, downgrade and backups create make .dopemux/update."""
    root = tmp_path / "fresh"
    root.mkdir()
    (root / "a.txt").write_text("a\n")
    migrations.add(
        "v1.0_to_v1.1",
        "1_a.py",
        forward="(project_root / 'b').write_text('b')\nreturn True",
        backward="(project_root / 'b').unlink()\nreturn True",
    )
    where = ["--root", str(root), "--migrations", str(migrations.root)]
    done = cli("verify", "--from", "1.0", *where)
    assert done.returncode == 0, done.stdout + done.stderr
    done = cli("plan", "--from", "1.0", "--diff", *where)
    assert done.returncode == 0, done.stdout + done.stderr
    assert sorted(p.name for p in root.iterdir()) == ["a.txt"]


@pytest.mark.parametrize("argv", [[], ["backups"]])
def test_no_command_shows_the_help_once_not_as_an_error(argv: list[str]) -> None:
    done = cli(*argv)
    assert done.returncode == 2  # click's convention for a missing command
    assert done.stdout.startswith("Usage: dopemux-update")
    assert "Commands:" in done.stdout
    assert "error:" not in done.stdout + done.stderr
