"""Timeouts (a migration that never ends is abandoned, never raced) and Ctrl-C."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from conftest import MigrationWriter, tree_digest
from dopemux_update import OrchestrationPhase
from support.readme_json import documented

pytestmark = pytest.mark.anyio


def wait_for_line(process: subprocess.Popen[str], text: str) -> str:
    """Read the command's stderr until a line containing ``text``; return what was read."""
    assert process.stderr is not None
    seen = ""
    for line in process.stderr:
        seen += line
        if text in line:
            return seen
    raise AssertionError(f"{text!r} never appeared in:\n{seen}")


def popen(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "dopemux_update", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


async def test_a_migration_past_its_timeout_fails_and_is_rolled_back(
    installation: Path, migrations: MigrationWriter
) -> None:
    migrations.add(
        "v1.0_to_v1.1", "1_a.py", forward="(project_root / 'a').write_text('a')\nreturn True"
    )
    migrations.add(
        "v1.0_to_v1.1",
        "2_slow.py",
        forward="import time\n(project_root / 'b').write_text('b')\ntime.sleep(0.5)\nreturn True",
    )
    before = tree_digest(installation)
    result = await OrchestrationPhase(
        project_root=installation,
        migrations_dir=migrations.root,
        current_version="1.0",
        timeout=0.1,
        grace=5,
    ).execute()
    assert not result.ok
    assert not result.needs_recovery
    assert result.failed_migration == "v1.0_to_v1.1/2_slow"
    assert result.error == "timed out after 0.1s"
    assert tree_digest(installation) == before


async def test_a_migration_running_past_three_times_its_estimate_is_reported(
    installation: Path, migrations: MigrationWriter
) -> None:
    migrations.add(
        "v1.0_to_v1.1",
        "1_slow.py",
        forward="import time\ntime.sleep(0.2)\nreturn True",
        info={"estimated_duration_seconds": 0.01},
    )
    with capture_logs() as logs:
        result = await OrchestrationPhase(
            project_root=installation, migrations_dir=migrations.root, current_version="1.0"
        ).execute()
    assert result.ok
    slow = [e for e in logs if e["event"] == "migration.slow"]
    assert slow[0]["migration_id"] == "v1.0_to_v1.1/1_slow"


def test_a_migration_that_never_ends_leaves_the_run_for_recover(
    installation: Path, migrations: MigrationWriter, tmp_path: Path
) -> None:
    never = tmp_path / "never"
    os.mkfifo(never)
    migrations.add(
        "v1.0_to_v1.1",
        "1_hangs.py",
        forward=(
            f"(project_root / 'partial').write_text('x')\nopen({str(never)!r}).read()\nreturn True"
        ),
    )
    before = tree_digest(installation)
    root = ["--root", str(installation), "--migrations", str(migrations.root)]
    args = ["--timeout", "0.2", "--grace", "0.3", "--no-restart", "--json"]
    process = popen("upgrade", "--from", "1.0", *args, *root)
    # The command must come back without waiting for the thread, which never ends.
    out, err = process.communicate(timeout=60)
    assert process.returncode == 3, err
    result = json.loads(out)
    assert result["needs_recovery"] is True
    assert result["abandoned"] is True
    assert (installation / "partial").exists()  # untouched: the thread might still write
    recovered = subprocess.run(
        [sys.executable, "-m", "dopemux_update", "recover", "--json", *root],
        capture_output=True,
        text=True,
        check=False,
    )
    assert recovered.returncode == 0, recovered.stderr
    assert json.loads(recovered.stdout)["action"] == "restored"
    assert tree_digest(installation) == before


def test_ctrl_c_rolls_back_and_a_second_one_does_not_cut_the_rollback_short(
    installation: Path, migrations: MigrationWriter, tmp_path: Path
) -> None:
    started, release = tmp_path / "started", tmp_path / "release"
    undo_started, undo_release = tmp_path / "undo-started", tmp_path / "undo-release"
    for fifo in (started, release, undo_started, undo_release):
        os.mkfifo(fifo)
    migrations.add(
        "v1.0_to_v1.1",
        "1_waits.py",
        forward=(
            "(project_root / 'a').write_text('a')\n"
            f"open({str(started)!r}, 'w').close()\n"
            f"open({str(release)!r}).read()\n"
            "return True"
        ),
        backward=(
            f"open({str(undo_started)!r}, 'w').close()\n"
            f"open({str(undo_release)!r}).read()\n"
            "(project_root / 'a').unlink()\n"
            "return True"
        ),
    )
    migrations.add("v1.0_to_v1.1", "2_never.py")
    before = tree_digest(installation)
    root = ["--root", str(installation), "--migrations", str(migrations.root)]
    process = popen("upgrade", "--from", "1.0", "--no-restart", "--json", *root)
    with open(started) as handle:
        handle.read()
    process.send_signal(signal.SIGINT)  # the migration finishes; then the rollback starts
    seen = wait_for_line(process, "Interrupted: stopping after the running migration")
    with open(release, "w"):
        pass
    with open(undo_started) as handle:
        handle.read()
    process.send_signal(signal.SIGINT)  # during the rollback: reported, not obeyed
    seen += wait_for_line(process, "the rollback will not be cut short")
    with open(undo_release, "w"):
        pass
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, seen + err
    assert json.loads(out)["interrupted"] is True
    assert tree_digest(installation) == before
    assert "forward v1.0_to_v1.1/2_never" not in migrations.calls_made()


def test_ctrl_c_with_a_hung_migration_leaves_it_after_the_grace_period_for_recover(
    installation: Path, migrations: MigrationWriter, tmp_path: Path
) -> None:
    """The tree is never touched while the thread may write; `recover` then restores it."""
    started, never = tmp_path / "started", tmp_path / "never"
    for fifo in (started, never):
        os.mkfifo(fifo)
    migrations.add(
        "v1.0_to_v1.1",
        "1_hangs.py",
        forward=(
            "(project_root / 'a').write_text('a')\n"
            f"open({str(started)!r}, 'w').close()\n"
            f"with open({str(never)!r}) as f:\n"
            "    f.read()\n"
            "return True"
        ),
    )
    before = tree_digest(installation)
    root = ["--root", str(installation), "--migrations", str(migrations.root)]
    process = popen("upgrade", "--from", "1.0", "--no-restart", "--grace", "0.5", "--json", *root)
    with open(started) as handle:
        handle.read()
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 3, err
    payload = json.loads(out)
    assert set(payload) >= documented()["upgrade"]
    assert (payload["interrupted"], payload["abandoned"], payload["needs_recovery"]) == (
        True,
        True,
        True,
    )
    assert payload["failed_migration"] == "v1.0_to_v1.1/1_hangs"
    assert "interrupted and still running 0.5s later" in payload["error"]
    assert (installation / "a").exists()  # left as it was: the thread might still write
    recovered = subprocess.run(
        [sys.executable, "-m", "dopemux_update", "recover", *root],
        capture_output=True,
        text=True,
        check=False,
    )
    assert recovered.returncode == 0, recovered.stderr
    assert tree_digest(installation) == before
