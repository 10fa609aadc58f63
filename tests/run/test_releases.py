"""Versions as real releases use them: Dopemux's VERSION file, releases without migrations,
no migrations folder at all, and a baseline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import MigrationWriter, tree_digest
from dopemux_update import OrchestrationPhase, PlanError
from dopemux_update._safety._state import StateStore


def cli(root: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    done = subprocess.run(
        [sys.executable, "-m", "dopemux_update", *args, "--json", "--root", str(root)],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    return done.returncode, json.loads(done.stdout or "{}")


def recorded(root: Path) -> str | None:
    return StateStore(root / ".dopemux" / "update").read().installed_version


@pytest.fixture
def dopemux_root(installation: Path, migrations: MigrationWriter) -> Path:
    """An installation Dopemux set up: a VERSION file, no state of ours, migrations in it."""
    (installation / "VERSION").write_text("v1.0\n")
    migrations.add(
        "v1.0_to_v1.1", "1_a.py", forward="(project_root / 'a').write_text('a')\nreturn True"
    )
    os.symlink(migrations.root, installation / "migrations")
    return installation


def test_status_reads_dopemuxs_version_file_when_nothing_is_recorded(dopemux_root: Path) -> None:
    code, status = cli(dopemux_root, "status")
    assert code == 0
    assert status["installed_version"] == "1.0"
    assert status["hops"] == ["v1.0_to_v1.1"]


def test_an_upgrade_keeps_the_version_file_in_step_in_its_own_style(dopemux_root: Path) -> None:
    code, result = cli(dopemux_root, "upgrade", "--no-restart")
    assert code == 0, result
    assert (dopemux_root / "VERSION").read_text() == "v1.1\n"
    assert recorded(dopemux_root) == "1.1"
    _, status = cli(dopemux_root, "status")
    assert status["version_file"] is None


def test_a_failed_upgrade_leaves_the_version_file_as_it_was(
    dopemux_root: Path, migrations: MigrationWriter
) -> None:
    migrations.add("v1.0_to_v1.1", "2_fails.py", forward="return False")
    code, _ = cli(dopemux_root, "upgrade", "--no-restart")
    assert code == 1
    assert (dopemux_root / "VERSION").read_text() == "v1.0\n"


def test_a_crash_after_the_commit_point_completes_the_version_file_on_recover(
    dopemux_root: Path,
) -> None:
    code, _ = cli(
        dopemux_root,
        "upgrade",
        "--no-restart",
        env={"DOPEMUX_UPDATE_CRASH_AT": "journal.committed"},
    )
    assert code == -9
    assert (dopemux_root / "VERSION").read_text() == "v1.0\n"
    code, result = cli(dopemux_root, "recover")
    assert code == 0, result
    assert (dopemux_root / "VERSION").read_text() == "v1.1\n"
    assert recorded(dopemux_root) == "1.1"


def test_status_shows_when_the_two_records_disagree(dopemux_root: Path) -> None:
    assert cli(dopemux_root, "stamp", "1.0")[0] == 0
    (dopemux_root / "VERSION").write_text("1.1\n")  # someone else moved Dopemux's record
    code, status = cli(dopemux_root, "status")
    assert code == 0
    assert status["installed_version"] == "1.0"
    assert status["version_file"] == "1.1"


def test_stamp_sets_both_records(dopemux_root: Path) -> None:
    assert cli(dopemux_root, "stamp", "1.1")[0] == 0
    assert (dopemux_root / "VERSION").read_text() == "v1.1\n"
    assert recorded(dopemux_root) == "1.1"


def test_a_release_without_migrations_records_its_version_and_runs_nothing(
    dopemux_root: Path, migrations: MigrationWriter
) -> None:
    assert cli(dopemux_root, "upgrade", "--no-restart")[0] == 0
    before = tree_digest(dopemux_root, exclude=(".dopemux/update", "VERSION"))
    code, plan = cli(dopemux_root, "plan", "--to", "1.1.1")
    assert code == 0
    assert plan["hops"] == []
    assert plan["no_op"] == [{"version_from": "1.1", "version_to": "1.1.1"}]
    code, result = cli(dopemux_root, "upgrade", "--to", "v1.1.1", "--no-restart")
    assert code == 0, result
    assert result["applied"] == []
    assert result["installed_version"] == "1.1.1"
    assert recorded(dopemux_root) == "1.1.1"
    assert (dopemux_root / "VERSION").read_text() == "v1.1.1\n"
    assert tree_digest(dopemux_root, exclude=(".dopemux/update", "VERSION")) == before
    history = StateStore(dopemux_root / ".dopemux" / "update").read().history
    assert (history[-1].version_from, history[-1].version_to) == ("1.1", "1.1.1")
    assert migrations.calls_made() == ["forward v1.0_to_v1.1/1_a"]


def test_an_upgrade_across_a_no_op_release_runs_the_hop_and_records_the_target(
    dopemux_root: Path,
) -> None:
    code, result = cli(dopemux_root, "upgrade", "--to", "1.2.0", "--no-restart")
    assert code == 0, result
    assert result["applied"] == ["v1.0_to_v1.1/1_a"]
    assert recorded(dopemux_root) == "1.2.0"


def test_a_version_written_short_is_recorded_in_the_folders_spelling(
    installation: Path, migrations: MigrationWriter
) -> None:
    migrations.add("v1.0.0_to_v1.1.0", "1_a.py")
    code, result = cli(
        installation,
        "upgrade",
        "--from",
        "1.0",
        "--to",
        "1.1",
        "--no-restart",
        "--migrations",
        str(migrations.root),
    )
    assert code == 0, result
    assert (result["version_from"], result["installed_version"]) == ("1.0.0", "1.1.0")
    assert recorded(installation) == "1.1.0"


@pytest.mark.anyio
async def test_no_migrations_folder_at_all_means_nothing_to_run(
    installation: Path, tmp_path: Path
) -> None:
    before = tree_digest(installation)
    phase = OrchestrationPhase(
        project_root=installation,
        migrations_dir=tmp_path / "no-such-folder",
        current_version="0.1.0",
        target_version="v0.2.1",
    )
    result = await phase.execute()
    assert result
    assert result.applied == ()
    assert result.installed_version == "0.2.1"
    assert recorded(installation) == "0.2.1"
    assert tree_digest(installation) == before


@pytest.mark.anyio
async def test_a_version_older_than_the_baseline_is_refused_before_anything_changes(
    installation: Path, migrations: MigrationWriter
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py")
    before = tree_digest(installation, exclude=())
    phase = OrchestrationPhase(
        project_root=installation, migrations_dir=migrations.root, current_version="0.9"
    )
    with pytest.raises(PlanError, match=r"older than the baseline 1\.0"):
        await phase.execute()
    assert tree_digest(installation, exclude=()) == before
