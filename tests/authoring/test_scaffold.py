"""``dopemux-update new``: scaffolded migrations are valid, numbered, and never overwrite."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dopemux_update import load_transitions, scan_migrations
from dopemux_update.cli import main


def new(capsys: pytest.CaptureFixture[str], migrations: Path, *args: str) -> tuple[int, str]:
    code = main(["new", *args, "--migrations", str(migrations), "--json"])
    return code, capsys.readouterr().out


def test_new_files_take_the_next_number_and_pass_validation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations = tmp_path / "migrations"
    code, out = new(capsys, migrations, "--from", "0.2.0", "--to", "0.3.0", "add_leantime")
    assert code == 0
    assert json.loads(out)["id"] == "v0.2.0_to_v0.3.0/001_add_leantime"
    folder = migrations / "v0.2.0_to_v0.3.0"
    (folder / "009_manual.py").write_text((folder / "001_add_leantime.py").read_text())
    code, out = new(capsys, migrations, "--from", "0.2.0", "--to", "0.3.0", "drop_old_table")
    assert json.loads(out)["id"] == "v0.2.0_to_v0.3.0/010_drop_old_table"
    loaded = load_transitions(scan_migrations(migrations).transitions)["v0.2.0_to_v0.3.0"]
    assert [m.id for m in loaded][-1] == "v0.2.0_to_v0.3.0/010_drop_old_table"
    assert loaded[0].info.version_to == "0.3.0"
    assert loaded[0].forward(tmp_path) is True


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        (("--from", "0.2.0", "--to", "0.3.0", "Bad-Name"), "invalid migration name"),
        (("--from", "0.3.0", "--to", "0.2.0", "x"), "must be above"),
        (("--from", "banana", "--to", "0.2.0", "x"), "invalid version"),
    ],
)
def test_bad_input_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], args: tuple[str, ...], reason: str
) -> None:
    code, out = new(capsys, tmp_path / "migrations", *args)
    assert code == 2
    assert reason in json.loads(out)["error"]
    assert not (tmp_path / "migrations").exists()


def test_an_existing_name_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    migrations = tmp_path / "migrations"
    new(capsys, migrations, "--from", "1.0", "--to", "1.1", "same")
    code, out = new(capsys, migrations, "--from", "1.0", "--to", "1.1", "same")
    assert code == 2
    assert "already exists" in json.loads(out)["error"]
