"""``dopemux-update backups``: every subcommand through main(), JSON and exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import stored_copy, tree_digest
from dopemux_update.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main([*argv, "--json"])
    return code, json.loads(capsys.readouterr().out)


def test_create_list_verify_restore_prune(
    installation: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = ["--root", str(installation)]
    assert main(["stamp", "1.0", *root]) == 0
    capsys.readouterr()
    code, created = run(capsys, "backups", "create", *root, "--exclude", "*.env")
    assert code == 0
    backup_id = created["backup"]["id"]
    assert created["backup"]["version_from"] == "1.0"
    code, listed = run(capsys, "backups", "list", *root)
    assert [b["id"] for b in listed["backups"]] == [backup_id]
    code, verified = run(capsys, "backups", "verify", backup_id, *root)
    assert (code, verified["ok"]) == (0, True)

    before = tree_digest(installation)
    (installation / "config" / "app.yaml").write_text("broken by hand")
    (installation / "stray").mkdir()
    code, restored = run(capsys, "backups", "restore", backup_id, "--yes", *root)
    assert code == 0
    assert restored["written"] == ["config/app.yaml"]
    assert restored["removed"] == ["stray"]
    # --exclude "*.env": a partial backup, so the record keeps its version (issue 14).
    assert (restored["installed_version"], restored["partial"]) == (None, True)
    assert tree_digest(installation) == before

    run(capsys, "backups", "create", *root)
    code, pruned = run(capsys, "backups", "prune", "--keep", "1", "--yes", *root)
    assert code == 0
    assert pruned["deleted"] == [backup_id]
    assert len(pruned["kept"]) == 1


def test_restore_without_a_terminal_needs_yes(
    installation: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = ["--root", str(installation)]
    _, created = run(capsys, "backups", "create", *root)
    (installation / "config" / "app.yaml").write_text("keep this")
    code, refused = run(capsys, "backups", "restore", created["backup"]["id"], *root)
    assert code == 2
    assert "--yes" in refused["error"]
    assert (installation / "config" / "app.yaml").read_text() == "keep this"


def test_verify_reports_a_damaged_backup_with_exit_1(
    installation: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = ["--root", str(installation)]
    _, created = run(capsys, "backups", "create", *root)
    stored = stored_copy(Path(created["backup"]["path"]), "secret.env")
    stored.write_bytes(stored.read_bytes()[:-1])
    code, result = run(capsys, "backups", "verify", created["backup"]["id"], *root)
    assert code == 1
    assert result["ok"] is False
    assert "secret.env" in result["error"]


def test_unknown_backup_is_a_usage_error(
    installation: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, result = run(capsys, "backups", "verify", "nope", "--root", str(installation))
    assert code == 2
    assert "does not exist" in result["error"]


def test_stored_backups_are_private(installation: Path) -> None:
    process = subprocess.run(
        [
            sys.executable,
            "-m",
            "dopemux_update",
            "backups",
            "create",
            "--root",
            str(installation),
            "--json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    path = Path(json.loads(process.stdout)["backup"]["path"])
    modes = {p.stat().st_mode & 0o777 for p in path.rglob("*") if not p.is_symlink()}
    assert modes <= {0o700, 0o600}
    assert (path.parent.stat().st_mode & 0o777) == 0o700
