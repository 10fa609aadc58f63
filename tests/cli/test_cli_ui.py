"""What the operator sees: the plan table, live progress, plain lines in pipes, the summary."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import anyio
import pytest
from packaging.version import Version
from rich.console import Console

from conftest import MigrationWriter, tree_digest
from dopemux_update import (
    BackupProgress,
    BackupStore,
    Direction,
    OrchestrationPhase,
    RestoreFinished,
    RestoreProgress,
    RestoreStarted,
    UpdateResult,
)
from dopemux_update._backup._identical import differences
from dopemux_update._backup._tree import Scope
from dopemux_update._core import _events as ev
from dopemux_update._run._orchestration import prepare_plan
from dopemux_update.cli import main
from dopemux_update.cli._console import OutputCollector, display_mode
from dopemux_update.cli._progress import LiveDisplay, summary_renderable
from dopemux_update.cli._summary import Row, Summary, build_summary

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")
A, B, C = "v1.0_to_v1.1/1_a", "v1.0_to_v1.1/2_b", "v1.0_to_v1.1/3_c"
DOCUMENTED_KEYS = {
    "ok",
    "exit_code",
    "version_from",
    "version_to",
    "installed_version",
    "applied",
    "rolled_back",
    "failed_migration",
    "error",
    "needs_recovery",
    "backup_id",
    "restored",
    "restart_services",
    "restarted",
    "restart_failed",
    "calls",
    "output",
    "recovered",
    "abandoned",
    "log",
    "verified_identical",
}


def plain(text: str) -> str:
    return ANSI.sub("", text)


def common(root: Path, migrations: MigrationWriter) -> list[str]:
    return ["--root", str(root), "--migrations", str(migrations.root)]


def two_printing(migrations: MigrationWriter, *, fail_b: bool = False) -> None:
    migrations.add(
        "v1.0_to_v1.1",
        "1_a.py",
        forward="print('hello from a')\nprint('second line of a')\nreturn True",
        backward="print('undoing a')\nreturn True",
        info={"requires_restart": ["svc"], "estimated_duration_seconds": 3},
    )
    migrations.add(
        "v1.0_to_v1.1",
        "2_b.py",
        forward="print('hello from b')\n"
        + ("raise RuntimeError('b broke')" if fail_b else "return True"),
        info={"breaking_changes": True},
    )
    migrations.add("v1.0_to_v1.1", "3_c.py")


@pytest.fixture
def live(monkeypatch: pytest.MonkeyPatch) -> None:
    """Force the live view into the captured stdout, wide enough to keep lines whole."""
    monkeypatch.setenv("DOPEMUX_UPDATE_PROGRESS", "live")
    monkeypatch.setenv("COLUMNS", "160")


@pytest.fixture
def plain_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOPEMUX_UPDATE_PROGRESS", "plain")


# -- choosing the display -------------------------------------------------------------------


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_the_display_is_live_only_on_a_capable_terminal_without_json(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("DOPEMUX_UPDATE_PROGRESS", raising=False)
    monkeypatch.setenv("TERM", "xterm-256color")
    assert display_mode(False, Tty()) == "live"
    assert display_mode(False, io.StringIO()) == "plain"
    assert display_mode(True, Tty()) == "json"
    monkeypatch.setenv("TERM", "dumb")
    assert display_mode(False, Tty()) == "plain"
    monkeypatch.setenv("DOPEMUX_UPDATE_PROGRESS", "live")
    assert display_mode(False, io.StringIO()) == "live"
    assert display_mode(True, io.StringIO()) == "json"
    monkeypatch.setenv("DOPEMUX_UPDATE_PROGRESS", "plain")
    assert display_mode(False, Tty()) == "plain"


# -- plan -------------------------------------------------------------------------------------


def plan_fixture(migrations: MigrationWriter) -> None:
    migrations.add(
        "v1.0_to_v1.1",
        "1_a.py",
        info={"breaking_changes": True, "estimated_duration_seconds": 4, "description": "alpha"},
    )
    migrations.add(
        "v1.1_to_v1.2",
        "1_b.py",
        info={"requires_restart": ["web", "db"], "backup_required": False, "description": "beta"},
    )


def test_plan_in_a_pipe_is_a_plain_table(
    installation: Path,
    migrations: MigrationWriter,
    capsys: pytest.CaptureFixture[str],
    plain_mode: None,
) -> None:
    plan_fixture(migrations)
    code = main(["plan", "--from", "1.0", "--to", "1.2", *common(installation, migrations)])
    out = capsys.readouterr().out
    assert code == 0
    assert "\x1b[" not in out
    lines = out.splitlines()
    assert lines[0] == "Plan: upgrade 1.0 → 1.2 (2 hops: v1.0_to_v1.1, v1.1_to_v1.2)"
    assert lines[1].split() == [
        "#",
        "id",
        "estimate",
        "breaking",
        "restarts",
        "backup",
        "description",
    ]
    assert lines[2].split() == ["1", "v1.0_to_v1.1/1_a", "4s", "yes", "-", "yes", "alpha"]
    assert lines[3].split() == ["2", "v1.1_to_v1.2/1_b", "1s", "no", "web,", "db", "no", "beta"]
    assert "2 migrations, estimated 5s; backup: yes" in out
    assert "Breaking changes: v1.0_to_v1.1/1_a" in out
    assert "Services to restart afterwards: web, db" in out


def test_plan_on_a_terminal_is_a_rich_table(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str], live: None
) -> None:
    plan_fixture(migrations)
    code = main(["plan", "--from", "1.0", "--to", "1.2", *common(installation, migrations)])
    out = plain(capsys.readouterr().out)
    assert code == 0
    lines = out.splitlines()
    header = next(index for index, line in enumerate(lines) if "migration" in line)
    assert lines[header].split() == ["#", "migration", "estimate", "breaking", "backup"]
    rows = [line.split() for line in lines[header + 1 : header + 6]]
    assert rows == [
        ["1", "v1.0_to_v1.1/1_a", "4s", "yes", "yes"],
        ["alpha"],  # each description under its id
        ["2", "v1.1_to_v1.2/1_b", "1s", "no", "no"],
        ["beta"],
        ["restarts:", "web,", "db"],  # and the services it restarts under that
    ]


def test_the_plan_table_stays_readable_on_an_80_column_terminal(
    installation: Path,
    migrations: MigrationWriter,
    capsys: pytest.CaptureFixture[str],
    live: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    description = "Add the leantime MCP server to the broker config and docker-compose.yml"
    migrations.add("v1.0_to_v1.1", "1_a.py", info={"description": description})
    assert main(["plan", "--from", "1.0", *common(installation, migrations)]) == 0
    lines = plain(capsys.readouterr().out).splitlines()
    assert all(len(line) <= 80 for line in lines)
    header = next(line for line in lines if "migration" in line)
    assert header.split() == ["#", "migration", "estimate", "breaking", "backup"]
    words = " ".join(line.strip() for line in lines if line.startswith("   "))
    assert description in words  # wrapped over a few lines, not a word per line
    assert sum(1 for line in lines if line.startswith("   ")) <= 3


def test_the_longest_example_ids_fit_an_80_column_plan_with_every_column(
    example_copy: Path,
    capsys: pytest.CaptureFixture[str],
    live: None,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ids of 44 characters and two restarts: nothing is cropped, nothing breaks mid-word."""
    from conftest import EXAMPLE_MIGRATIONS

    monkeypatch.setenv("COLUMNS", "80")
    where = ["--root", str(example_copy), "--migrations", str(EXAMPLE_MIGRATIONS)]
    assert main(["plan", "--to", "0.2.0", *where]) == 0
    lines = plain(capsys.readouterr().out).splitlines()
    assert all(len(line) <= 80 for line in lines)
    text = "\n".join(lines)
    assert "restarts: mcp-broker, mcp-leantime" in text
    assert "v0.1.0_to_v0.2.0/002_upgrade_database_schema" in text
    header = next(line for line in lines if "migration" in line)
    assert header.split()[-1] == "backup"


def test_plan_with_json_is_one_object_and_no_table(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str], live: None
) -> None:
    plan_fixture(migrations)
    code = main(
        ["plan", "--from", "1.0", "--to", "1.2", "--json", *common(installation, migrations)]
    )
    payload = json.loads(capsys.readouterr().out)
    assert code == 0
    assert [m["id"] for m in payload["migrations"]] == ["v1.0_to_v1.1/1_a", "v1.1_to_v1.2/1_b"]


def test_live_plan_shows_descriptions_with_brackets_as_written(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str], live: None
) -> None:
    """A description is text, not rich markup: ``[/x]`` does not crash, ``[mcp]`` stays."""
    migrations.add("v1.0_to_v1.1", "1_a.py", info={"description": "fix [/x] paths"})
    migrations.add("v1.0_to_v1.1", "2_b.py", info={"description": "Move [mcp] keys"})
    migrations.add("v1.0_to_v1.1", "3_c.py", info={"description": "[bold]loud[/bold] :smile:"})
    code = main(["plan", "--from", "1.0", *common(installation, migrations)])
    out = plain(capsys.readouterr().out)
    assert code == 0
    assert "fix [/x] paths" in out
    assert "Move [mcp] keys" in out
    assert "[bold]loud[/bold] :smile:" in out


# -- live progress through main() ---------------------------------------------------------------


def test_live_upgrade_shows_each_migration_with_its_output_then_a_summary_table(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str], live: None
) -> None:
    two_printing(migrations)
    code = main(
        ["upgrade", "--from", "1.0", "--yes", "--no-restart", *common(installation, migrations)]
    )
    out = plain(capsys.readouterr().out)
    assert code == 0
    lines = out.splitlines()
    done_a = next(i for i, line in enumerate(lines) if line.startswith(f"✓ [1/3] {A}"))
    done_b = next(i for i, line in enumerate(lines) if line.startswith(f"✓ [2/3] {B}"))
    # What a migration printed is shown under its own line, not under another's.
    assert lines[done_a + 1 : done_a + 3] == ["      | hello from a", "      | second line of a"]
    assert lines[done_b + 1] == "      | hello from b"
    assert "/ ~3s" in lines[done_a]
    assert any(line.startswith("✓ Backup ") and "verified" in line for line in lines)
    summary = out[out.index("Upgraded 1.0 → 1.1: 3 migrations applied.") :]
    rows = [line.split()[:2] for line in summary.splitlines() if line.startswith("v1.0_to_v1.1/")]
    assert rows == [[A, "applied"], [B, "applied"], [C, "applied"]]
    assert re.search(r"^Backup: +\S+", summary, re.MULTILINE)
    assert "To restart: svc (not restarted)" in summary
    assert re.search(r"^Log: +\S+\.jsonl", summary, re.MULTILINE)


def test_live_failure_summary_names_the_failure_the_rollback_and_the_verification(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str], live: None
) -> None:
    two_printing(migrations, fail_b=True)
    before = tree_digest(installation)
    code = main(["upgrade", "--from", "1.0", "--yes", *common(installation, migrations)])
    out = plain(capsys.readouterr().out)
    assert code == 1
    assert tree_digest(installation) == before
    lines = out.splitlines()
    failed = next(i for i, line in enumerate(lines) if line.startswith(f"✗ [2/3] {B}"))
    assert "RuntimeError: b broke" in lines[failed]
    assert lines[failed + 1] == "      | hello from b"
    undone = next(i for i, line in enumerate(lines) if line.startswith(f"↶ {A} undone"))
    assert lines[undone + 1] == "      | undoing a"
    assert any("restored from backup" in line and "verified identical" in line for line in lines)
    summary = out[out.index(f"Update FAILED at {B}") :]
    rows = {
        line.split()[0]: line.split()[1:3]
        for line in summary.splitlines()
        if line.startswith("v1.0")
    }
    assert rows[A][:2] == ["rolled", "back"]
    assert rows[B][0] == "failed"
    assert rows[C][:2] == ["not", "run"]
    assert re.search(rf"^Failed migration: +{B}$", summary, re.MULTILINE)
    assert re.search(r"^Error: +raised RuntimeError: b broke", summary, re.MULTILINE)
    assert re.search(rf"^Rolled back: +{A}$", summary, re.MULTILINE)
    assert re.search(r"^Verified identical: +yes", summary, re.MULTILINE)
    assert "it is still at 1.0" in summary


def test_live_output_errors_and_summary_show_brackets_as_written(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str], live: None
) -> None:
    """Printed lines and error messages are text, not rich markup, in every part of the view."""
    migrations.add(
        "v1.0_to_v1.1",
        "1_a.py",
        forward="print('[bold]x[/bold] and [/x]')\nreturn True",
        backward="print('undo [/y] [red]r[/red]')\nreturn True",
    )
    migrations.add(
        "v1.0_to_v1.1",
        "2_b.py",
        forward="raise RuntimeError('bad [/x] [red]thing[/red] [mcp]')",
    )
    code = main(["upgrade", "--from", "1.0", "--yes", *common(installation, migrations)])
    out = plain(capsys.readouterr().out)
    assert code == 1
    lines = out.splitlines()
    done_a = next(i for i, line in enumerate(lines) if line.startswith(f"✓ [1/2] {A}"))
    assert lines[done_a + 1] == "      | [bold]x[/bold] and [/x]"
    failed = next(i for i, line in enumerate(lines) if line.startswith(f"✗ [2/2] {B}"))
    assert "RuntimeError: bad [/x] [red]thing[/red] [mcp]" in lines[failed]
    undone = next(i for i, line in enumerate(lines) if line.startswith(f"↶ {A} undone"))
    assert lines[undone + 1] == "      | undo [/y] [red]r[/red]"
    summary = out[out.index(f"Update FAILED at {B}") :]
    assert summary.splitlines()[0].endswith("bad [/x] [red]thing[/red] [mcp]")
    assert re.search(
        r"^Error: +raised RuntimeError: bad \[/x\] \[red\]thing\[/red\] \[mcp\]$",
        summary,
        re.MULTILINE,
    )


def test_the_summary_table_shows_ids_and_durations_as_written() -> None:
    """The rows of the summary's table are text, not rich markup."""
    summary = Summary(
        ok=False,
        headline="Update FAILED at [/x]: [bold]no[/bold]",
        rows=(Row("v1.0_to_v1.1/[/x]", "failed", 1.0), Row("v1.0_to_v1.1/[b]y[/b]", "not run")),
        details=(),
        closing=("see [/x]",),
    )
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    console.print(summary_renderable(summary))
    assert isinstance(console.file, io.StringIO)
    shown = plain(console.file.getvalue())
    assert "Update FAILED at [/x]: [bold]no[/bold]" in shown
    assert "v1.0_to_v1.1/[/x]" in shown
    assert "v1.0_to_v1.1/[b]y[/b]" in shown
    assert "see [/x]" in shown


def test_the_live_region_shows_the_running_migrations_last_lines_and_the_byte_bars(
    migrations: MigrationWriter,
) -> None:
    """Rendered as rich's thread would: spinner line, elapsed against estimate, dim tail."""
    migrations.add("v1.0_to_v1.1", "1_a.py", info={"estimated_duration_seconds": 5})
    migrations.add("v1.0_to_v1.1", "2_b.py", info={"estimated_duration_seconds": 20})
    console = Console(file=io.StringIO(), force_terminal=True, width=120)
    display = LiveDisplay(OutputCollector(), console=console)
    display(ev.PlanReady(prepare_plan(migrations.root, Version("1.0"), None)))
    display._flush(force=True)
    display(ev.BackupStarted("/x"))
    display(BackupProgress(512, 2048))
    console.print(display._render())
    display(ev.BackupCreated("b1", 3, 2048))
    display(ev.MigrationStarted(A, Direction.UPGRADE, 1, 2, 5.0))
    for n in range(7):
        display(ev.MigrationOutput(A, f"line {n}", "stdout"))
    display(ev.MigrationOutput(B, "not mine", "stdout"))
    console.print(display._render())
    assert isinstance(console.file, io.StringIO)
    shown = plain(console.file.getvalue()).splitlines()
    assert any(line.split()[1:2] == ["Backup"] and "512 B / 2.0 KB" in line for line in shown)
    running = next(i for i, line in enumerate(shown) if f"[1/2] {A}" in line)
    assert "/ ~5s" in shown[running]
    assert shown[running + 1 : running + 5] == [f"      | line {n}" for n in range(3, 7)]
    assert "not mine" not in "\n".join(shown[running:])
    assert "Overall" in shown[-1]
    assert "0/2 migrations" in shown[-1]
    assert re.search(r"ETA ~2\d\.\ds", shown[-1])  # 20s to come, and about 5s of the first


# -- plain lines and JSON -----------------------------------------------------------------------


def test_plain_summary_lines_with_json_mode_untouched(
    installation: Path,
    migrations: MigrationWriter,
    capsys: pytest.CaptureFixture[str],
    plain_mode: None,
) -> None:
    two_printing(migrations, fail_b=True)
    code = main(["upgrade", "--from", "1.0", "--yes", *common(installation, migrations)])
    out = capsys.readouterr().out
    assert code == 1
    assert "\x1b[" not in out
    lines = out.splitlines()
    start = lines.index(f"Update FAILED at {B}: raised RuntimeError: b broke")
    assert [line.split()[0] for line in lines[start + 1 : start + 4]] == ["rolled", "failed", "not"]
    assert lines[start + 1].endswith(A)
    assert lines[start + 3].endswith(C)
    assert any(re.fullmatch(r"Verified identical: +yes: .*", line) for line in lines)
    assert (
        lines[-1]
        == "The installation was rolled back and restored from its backup; it is still at 1.0."
    )


def test_json_reports_whether_the_rollback_was_verified_identical(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str], live: None
) -> None:
    two_printing(migrations, fail_b=True)
    code = main(["upgrade", "--from", "1.0", "--yes", "--json", *common(installation, migrations)])
    payload = json.loads(capsys.readouterr().out)
    assert code == 1
    assert set(payload) >= DOCUMENTED_KEYS
    assert payload["verified_identical"] is True
    assert payload["rolled_back"] == [A]


# -- through a real subprocess (stdout is a pipe) -------------------------------------------


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "DOPEMUX_UPDATE_PROGRESS"}
    return subprocess.run(
        [sys.executable, "-m", "dopemux_update", *args],
        capture_output=True,
        text=True,
        check=False,
        env=env,
    )


def test_subprocess_in_a_pipe_prints_plain_lines_attributed_to_their_migration(
    installation: Path, migrations: MigrationWriter
) -> None:
    two_printing(migrations)
    done = cli(
        "upgrade", "--from", "1.0", "--no-restart", "--yes", *common(installation, migrations)
    )
    assert done.returncode == 0, done.stderr
    assert "\x1b" not in done.stdout
    lines = done.stdout.splitlines()
    a, b = lines.index(f"[1/3] {A} (forward)"), lines.index(f"[2/3] {B} (forward)")
    assert lines[a + 1 : a + 3] == ["      | hello from a", "      | second line of a"]
    assert lines[b + 1] == "      | hello from b"
    assert "Upgraded 1.0 → 1.1: 3 migrations applied." in lines
    assert any(line.split()[:3] == ["applied", line.split()[1], A] for line in lines)


def test_subprocess_exit_codes_and_one_json_object(
    installation: Path, migrations: MigrationWriter
) -> None:
    two_printing(migrations, fail_b=True)
    failed = cli("upgrade", "--from", "1.0", "--yes", "--json", *common(installation, migrations))
    assert failed.returncode == 1, failed.stderr
    payload: dict[str, Any] = json.loads(failed.stdout)  # the whole of stdout: one object
    assert set(payload) >= DOCUMENTED_KEYS
    assert payload["exit_code"] == 1
    assert payload["failed_migration"] == B
    assert payload["verified_identical"] is True
    assert payload["output"] == [
        {"id": A, "stream": "stdout", "line": "hello from a"},
        {"id": A, "stream": "stdout", "line": "second line of a"},
        {"id": B, "stream": "stdout", "line": "hello from b"},
        {"id": A, "stream": "stdout", "line": "undoing a"},
    ]
    usage = cli("upgrade", "--from", "banana", *common(installation, migrations))
    assert usage.returncode == 2
    assert usage.stdout == ""
    assert "error:" in usage.stderr


# -- the library pieces behind it ------------------------------------------------------------


@pytest.mark.anyio
async def test_backup_and_restore_report_bytes_and_the_restore_is_verified(
    installation: Path, migrations: MigrationWriter
) -> None:
    (installation / "big.bin").write_bytes(b"x" * 300_000)
    migrations.add(
        "v1.0_to_v1.1",
        "1_a.py",
        forward="(project_root / 'big.bin').write_bytes(b'y')\nreturn True",
    )
    migrations.add("v1.0_to_v1.1", "2_b.py", forward="return False")
    events: list[object] = []
    phase = OrchestrationPhase(
        project_root=installation,
        migrations_dir=migrations.root,
        current_version="1.0",
        on_event=events.append,
    )
    result = await phase.execute()
    assert not result.ok
    assert result.verified_identical is True
    backup = [e for e in events if isinstance(e, BackupProgress)]
    assert backup
    assert backup[-1].done_bytes == backup[-1].total_bytes > 300_000
    kinds = [type(e) for e in events]
    assert kinds.index(RestoreStarted) < kinds.index(RestoreFinished)
    restore = [e for e in events if isinstance(e, RestoreProgress)]
    assert restore[-1].done_bytes == restore[-1].total_bytes == 300_000
    finished = next(e for e in events if isinstance(e, RestoreFinished))
    assert finished.ok
    assert finished.verified is True


def test_differences_finds_what_a_restore_must_undo(installation: Path, tmp_path: Path) -> None:
    store = BackupStore(tmp_path / "backups")
    scope = Scope.for_installation(installation, state_dir=installation / ".dopemux/update")
    info = store.create(scope)
    assert differences(store, info.id, installation) == []
    (installation / "config" / "app.yaml").write_text("# keep me\nlog_level: warn\n")
    deep = installation / "config" / "nested" / "deep.json"
    mtime = deep.stat().st_mtime_ns
    deep.write_text('{"a": 2}\n')  # same size, and the old mtime put back: only the hash tells
    os.utime(deep, ns=(mtime, mtime))
    (installation / "added.txt").write_text("new")
    (installation / "secret.env").chmod(0o644)
    (installation / "link-to-app").unlink()
    found = differences(store, info.id, installation)
    assert sorted(found) == [
        "added.txt: not in the backup",
        "config/app.yaml: modification time differs",
        "config/nested/deep.json: content differs",
        "link-to-app: missing",
        "secret.env: mode 644, not 600",
    ]
    store.restore(info.id, installation)
    assert differences(store, info.id, installation) == []


def test_a_long_run_summary_keeps_the_failed_row() -> None:
    rows = tuple(Row(f"m{i:03d}", "rolled back", 0.1, 0.1) for i in range(60))
    rows = (*rows[:30], Row("m030", "failed", 0.2), *(Row(f"n{i}", "not run") for i in range(29)))
    summary = Summary(ok=False, headline="x", rows=rows, details=())
    shown = summary.visible_rows()
    assert Row("m030", "failed", 0.2) in shown
    hidden = sum(item for item in shown if isinstance(item, int))
    assert hidden + sum(1 for item in shown if isinstance(item, Row)) == len(rows)


def test_summary_without_a_backup_does_not_claim_verification() -> None:
    result = UpdateResult(
        ok=False,
        version_from="1.0",
        version_to="1.1",
        direction=Direction.UPGRADE,
        applied=(A,),
        rolled_back=(A,),
        failed_migration=B,
        error="returned False",
        durations=((A, 0.1), (B, 0.2)),
    )
    summary = build_summary(
        result, None, plan=None, undo={A: (True, 0.01)}, restarter_used=False, log_path=None
    )
    facts = {d.label: d for d in summary.details}
    assert facts["Verified identical"].value.startswith("not checked: no backup was taken")
    assert facts["Verified identical"].bad
    assert [(r.id, r.status) for r in summary.rows] == [(A, "rolled back"), (B, "failed")]


def test_differences_compares_a_changed_database_by_content(
    installation: Path, tmp_path: Path
) -> None:
    database = installation / "data.db"

    def run(sql: str) -> None:
        with contextlib.closing(sqlite3.connect(database)) as db, db:
            db.execute(sql)

    run("CREATE TABLE t (x)")
    run("INSERT INTO t VALUES (1)")
    store = BackupStore(tmp_path / "backups")
    scope = Scope.for_installation(installation, state_dir=installation / ".dopemux/update")
    info = store.create(scope)
    run("INSERT INTO t VALUES (2)")
    assert differences(store, info.id, installation) == ["data.db: database content differs"]
    store.restore(info.id, installation)
    assert differences(store, info.id, installation) == []


def test_plain_summary_of_a_downgrade_and_of_a_failed_restart(
    installation: Path,
    migrations: MigrationWriter,
    capsys: pytest.CaptureFixture[str],
    plain_mode: None,
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py", info={"requires_restart": ["alpha"]})
    args = common(installation, migrations)
    failing = f'{sys.executable} -c "import sys; sys.exit(7)" {{service}}'
    assert main(["upgrade", "--from", "1.0", "--restart-command", failing, *args]) == 5
    out = capsys.readouterr().out.splitlines()
    assert any(re.fullmatch(r"RESTART FAILED: +alpha: .+", line) for line in out)
    assert main(["downgrade", "--to", "1.0", "--yes", "--no-restart", *args]) == 0
    out = capsys.readouterr().out.splitlines()
    assert "Downgraded 1.1 → 1.0: 1 migration reverted." in out
    assert any(line.split()[::2] == ["reverted", A] for line in out)


@pytest.mark.anyio
async def test_cancelled_during_the_backup_changes_nothing(
    installation: Path, migrations: MigrationWriter
) -> None:
    (installation / "big.bin").write_bytes(b"x" * 200_000)
    migrations.add("v1.0_to_v1.1", "1_a.py", forward="(project_root / 'a').write_text('a')")
    before = tree_digest(installation)
    with anyio.CancelScope() as scope:

        def cancel_on_progress(event: object) -> None:
            if isinstance(event, BackupProgress):
                scope.cancel()

        await OrchestrationPhase(
            project_root=installation,
            migrations_dir=migrations.root,
            current_version="1.0",
            on_event=cancel_on_progress,
        ).execute()
    assert scope.cancelled_caught
    assert tree_digest(installation) == before
    assert migrations.calls_made() == []


def test_the_interrupt_notice_goes_above_the_live_region_not_through_it() -> None:
    """Written as text to the current stderr, which the live view redirects above itself."""
    from rich.live import Live

    from dopemux_update.cli._recover import _tell

    console = Console(file=io.StringIO(), force_terminal=True, width=60)
    with Live("spinner", console=console, redirect_stderr=True, transient=True):
        _tell("Interrupted: stopping")
    assert isinstance(console.file, io.StringIO)
    drawn = console.file.getvalue()
    assert "\x1b[2KInterrupted: stopping\n" in drawn  # printed on a cleared line, above


def test_a_wrapped_output_line_continues_in_its_column_not_at_the_margin() -> None:
    from rich.console import Console

    from dopemux_update.cli._progress import _output_line

    console = Console(width=40, record=True, color_system=None)
    console.print(_output_line("→ Added column decisions.priority_level (existing decisions)"))
    lines = console.export_text().splitlines()
    assert len(lines) > 1
    assert lines[0].startswith("      | → Added")
    assert all(line.startswith(" " * 8) and line.strip() for line in lines[1:])
