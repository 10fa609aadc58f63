"""The command line: exit codes, JSON, and the examples through a real subprocess."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from conftest import EXAMPLE_MIGRATIONS, FakeDocker, MigrationWriter, tree_digest
from dopemux_update.cli import main


def run_json(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, Any]]:
    code = main([*argv, "--json"])
    out = capsys.readouterr().out
    return code, json.loads(out)


def hold_the_lock(state_dir: Path) -> subprocess.Popen[str]:
    """Another process holding the update lock until its stdin closes."""
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; from pathlib import Path\n"
            "from dopemux_update._safety._lock import holding_lock\n"
            f"with holding_lock(Path({str(state_dir)!r})):\n"
            "    print('held', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "held"
    return holder


def common(root: Path, migrations: MigrationWriter) -> list[str]:
    return ["--root", str(root), "--migrations", str(migrations.root)]


def test_stamp_then_status_reports_the_installed_version(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py")
    assert main(["stamp", "1.0", *common(installation, migrations)]) == 0
    capsys.readouterr()
    code, status = run_json(capsys, "status", *common(installation, migrations))
    assert code == 0
    assert status["installed_version"] == "1.0"
    assert status["latest_version"] == "1.1"
    assert status["hops"] == ["v1.0_to_v1.1"]


def test_upgrade_success_exits_0_and_lists_ids_in_order(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add("v1.0_to_v1.1", "2_b.py", forward="print('hello from b')\nreturn True")
    migrations.add("v1.0_to_v1.1", "1_a.py", info={"requires_restart": ["svc"]})
    main(["stamp", "1.0", *common(installation, migrations)])
    capsys.readouterr()
    code, result = run_json(capsys, "upgrade", "--no-restart", *common(installation, migrations))
    assert code == 0
    assert result["ok"] is True
    assert result["applied"] == ["v1.0_to_v1.1/1_a", "v1.0_to_v1.1/2_b"]
    assert result["installed_version"] == "1.1"
    assert result["restart_services"] == ["svc"]
    assert result["output"] == [
        {"id": "v1.0_to_v1.1/2_b", "stream": "stdout", "line": "hello from b"}
    ]
    code, again = run_json(capsys, "upgrade", "--no-restart", *common(installation, migrations))
    assert code == 0
    assert again["applied"] == []


def test_failed_and_rolled_back_exits_1(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add(
        "v1.0_to_v1.1", "1_a.py", forward="(project_root / 'a').write_text('a')\nreturn True"
    )
    migrations.add("v1.0_to_v1.1", "2_b.py", forward="raise RuntimeError('nope')")
    before = tree_digest(installation)
    code, result = run_json(capsys, "upgrade", "--from", "1.0", *common(installation, migrations))
    assert code == 1
    assert result["failed_migration"] == "v1.0_to_v1.1/2_b"
    assert "RuntimeError: nope" in str(result["error"])
    assert result["rolled_back"] == ["v1.0_to_v1.1/1_a"]
    assert tree_digest(installation) == before


def test_needs_recovery_exits_3(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py", backward="raise OSError('stuck')")
    migrations.add("v1.0_to_v1.1", "2_b.py", forward="return False")
    code, result = run_json(capsys, "upgrade", "--from", "1.0", *common(installation, migrations))
    assert code == 3
    assert result["needs_recovery"] is True


def test_validation_error_exits_2_naming_the_file_and_changes_nothing(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = migrations.add("v1.0_to_v1.1", "1_a.py", info={"requires_restarts": ["x"]})
    before = tree_digest(installation, exclude=())
    code = main(["upgrade", "--from", "1.0", *common(installation, migrations)])
    err = capsys.readouterr().err
    assert code == 2
    assert str(bad) in err
    assert "requires_restarts" in err
    assert "Nothing was changed" in err
    assert tree_digest(installation, exclude=()) == before


def test_usage_errors_exit_2(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py")
    assert main(["upgrade", *common(installation, migrations)]) == 2
    assert "no installed version is recorded" in capsys.readouterr().err
    assert main(["upgrade", "--from", "banana", *common(installation, migrations)]) == 2
    assert main(["upgrade", "--bogus-option"]) == 2
    assert main(["stamp", "not-a-version", *common(installation, migrations)]) == 2
    assert (
        main(["downgrade", "--to", "1.1", "--from", "1.0", *common(installation, migrations)]) == 2
    )
    assert "use `dopemux-update upgrade`" in capsys.readouterr().err


def test_downgrade_without_a_terminal_needs_yes(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py")
    main(["stamp", "1.1", *common(installation, migrations)])
    capsys.readouterr()
    code, refused = run_json(capsys, "downgrade", "--to", "1.0", *common(installation, migrations))
    assert code == 2
    assert "--yes" in str(refused["error"])
    code, result = run_json(
        capsys, "downgrade", "--to", "1.0", "--yes", *common(installation, migrations)
    )
    assert code == 0
    assert result["applied"] == ["v1.0_to_v1.1/1_a"]
    assert result["installed_version"] == "1.0"


class TerminalInput(io.StringIO):
    """Typed answers, on what looks like a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.mark.parametrize("case", [("n\n", 2), ("y\n", 0)], ids=["no", "yes"])
def test_on_a_terminal_the_plan_is_shown_before_asking_and_only_once(
    installation: Path,
    migrations: MigrationWriter,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    case: tuple[str, int],
) -> None:
    answer, code = case
    migrations.add("v1.0_to_v1.1", "1_a.py", info={"breaking_changes": True})
    main(["stamp", "1.0", *common(installation, migrations)])
    capsys.readouterr()
    monkeypatch.setenv("DOPEMUX_UPDATE_PROGRESS", "plain")
    monkeypatch.setattr(sys, "stdin", TerminalInput(answer))
    assert main(["upgrade", "--no-restart", *common(installation, migrations)]) == code
    captured = capsys.readouterr()
    assert captured.out.count("Plan: upgrade 1.0 → 1.1") == 1  # before the question
    assert "Continue?" in captured.err
    assert ("applied" in captured.out) is (code == 0)
    assert ("cancelled; nothing was changed" in captured.err) is (code == 2)


def test_plan_shows_the_plan_as_json(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add(
        "v1.0_to_v1.1", "1_a.py", info={"breaking_changes": True, "estimated_duration_seconds": 4}
    )
    migrations.add("v1.1_to_v1.2", "1_b.py", info={"estimated_duration_seconds": 6})
    code, plan = run_json(
        capsys, "plan", "--from", "1.0", "--to", "1.2", *common(installation, migrations)
    )
    assert code == 0
    assert [m["id"] for m in plan["migrations"]] == ["v1.0_to_v1.1/1_a", "v1.1_to_v1.2/1_b"]  # type: ignore[attr-defined]
    assert plan["breaking_migrations"] == ["v1.0_to_v1.1/1_a"]
    assert plan["estimated_duration_seconds"] == 10


def upgrade_restarting(
    capsys: pytest.CaptureFixture[str],
    installation: Path,
    migrations: MigrationWriter,
    template: str,
) -> tuple[int, dict[str, Any]]:
    return run_json(
        capsys,
        "upgrade",
        "--from",
        "1.0",
        "--restart-command",
        template,
        *common(installation, migrations),
    )


def test_restart_command_runs_per_service_after_success(
    installation: Path,
    migrations: MigrationWriter,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py", info={"requires_restart": ["alpha", "beta"]})
    log = tmp_path / "restarts.log"
    script = f"import sys; open({str(log)!r}, 'a').write(sys.argv[1] + '\\n')"
    template = f'{sys.executable} -c "{script}" {{service}}'
    code, result = upgrade_restarting(capsys, installation, migrations, template)
    assert code == 0
    assert result["restarted"] == ["alpha", "beta"]
    assert log.read_text() == "alpha\nbeta\n"


def test_a_failing_restart_exits_5_after_the_commit(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py", info={"requires_restart": ["alpha"]})
    script = "import sys; print('cannot restart', sys.argv[1]); sys.exit(7)"
    template = f'{sys.executable} -c "{script}" {{service}}'
    code, result = upgrade_restarting(capsys, installation, migrations, template)
    assert code == 5
    assert result["installed_version"] == "1.1"
    failed = result["restart_failed"]
    assert isinstance(failed, list)
    assert failed[0]["service"] == "alpha"
    assert "cannot restart alpha" in failed[0]["error"]


def test_examples_through_a_real_subprocess(example_copy: Path) -> None:
    """The shipped examples upgrade the sample to 0.2.0 and back, exactly, via the command."""
    before = tree_digest(example_copy)
    base = [sys.executable, "-m", "dopemux_update"]
    args = ["--root", str(example_copy), "--migrations", str(EXAMPLE_MIGRATIONS), "--json"]
    up = subprocess.run(
        [*base, "upgrade", "--to", "0.2.0", "--no-restart", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert up.returncode == 0, up.stderr
    result = json.loads(up.stdout)
    assert result["applied"] == [
        "v0.1.0_to_v0.2.0/001_update_mcp_configs",
        "v0.1.0_to_v0.2.0/002_upgrade_database_schema",
    ]
    assert result["restart_services"] == ["mcp-broker", "mcp-leantime", "conport"]
    assert "leantime" in (example_copy / "config/mcp/broker.yaml").read_text()
    down = subprocess.run(
        [*base, "downgrade", "--to", "0.1.0", "--yes", "--no-restart", *args],
        capture_output=True,
        text=True,
        check=False,
    )
    assert down.returncode == 0, down.stderr
    assert json.loads(down.stdout)["applied"] == [
        "v0.1.0_to_v0.2.0/002_upgrade_database_schema",
        "v0.1.0_to_v0.2.0/001_update_mcp_configs",
    ]
    after = tree_digest(example_copy)
    # SQLite may rewrite pages on DROP COLUMN: compare the database by content, the rest by bytes.
    before.pop(".dopemux/conport.db")
    after.pop(".dopemux/conport.db")
    assert after == before
    status = subprocess.run([*base, "status", *args], capture_output=True, text=True, check=False)
    assert json.loads(status.stdout)["installed_version"] == "0.1.0"


def test_json_stays_one_object_when_migrations_print_at_import_and_run(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    path = migrations.add("v1.0_to_v1.1", "1_a.py", forward="print('running')\nreturn True")
    path.write_text("print('importing')\n" + path.read_text())
    code, result = run_json(capsys, "upgrade", "--from", "1.0", *common(installation, migrations))
    assert code == 0
    assert result["output"] == [{"id": "v1.0_to_v1.1/1_a", "stream": "stdout", "line": "running"}]


def test_status_warns_when_an_applied_migration_file_changed(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    changed = migrations.add("v1.0_to_v1.1", "1_a.py")
    gone = migrations.add("v1.0_to_v1.1", "2_b.py")
    assert (
        main(["upgrade", "--from", "1.0", "--no-restart", *common(installation, migrations)]) == 0
    )
    capsys.readouterr()
    _, clean = run_json(capsys, "status", *common(installation, migrations))
    assert clean["drift"] == []
    changed.write_text(changed.read_text() + "\n# edited after release\n")
    gone.unlink()
    _, status = run_json(capsys, "status", *common(installation, migrations))
    assert [(d["id"], d["reason"]) for d in status["drift"]] == [
        ("v1.0_to_v1.1/1_a", "the file changed since it was applied"),
        ("v1.0_to_v1.1/2_b", "the file is gone"),
    ]
    assert main(["status", *common(installation, migrations)]) == 0
    assert "WARNING: v1.0_to_v1.1/1_a was applied but the file changed" in capsys.readouterr().out


def test_each_run_writes_a_json_lines_log_named_in_the_result(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py", forward="print('hello from a')\nreturn True")
    migrations.add("v1.0_to_v1.1", "2_b.py", forward="raise ValueError('broken b')")
    code, result = run_json(capsys, "upgrade", "--from", "1.0", *common(installation, migrations))
    assert code == 1
    log = Path(str(result["log"]))
    assert log.parent == installation / ".dopemux" / "update" / "logs"
    events = [json.loads(line) for line in log.read_text().splitlines()]
    kinds = {e["event"] for e in events}
    assert {"migration.started", "migration.output", "migration.failed", "rollback.step"} <= kinds
    output = next(e for e in events if e["event"] == "migration.output")
    assert (output["migration_id"], output["line"]) == ("v1.0_to_v1.1/1_a", "hello from a")
    failed = next(e for e in events if e["event"] == "migration.failed")
    assert "ValueError: broken b" in failed["traceback"]


def test_a_refused_run_leaves_no_log(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py", info={"requires_restarts": []})
    code, _ = run_json(capsys, "upgrade", "--from", "1.0", *common(installation, migrations))
    assert code == 2
    assert not (installation / ".dopemux" / "update").exists()


def test_a_traceback_goes_to_the_run_log_and_to_the_console_only_with_v(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add("v1.0_to_v1.1", "1_boom.py", forward="raise KeyError('boom')")
    args = ["upgrade", "--from", "1.0", "--no-restart", "--json", *common(installation, migrations)]
    assert main(args) == 1
    captured = capsys.readouterr()
    log_path = json.loads(captured.out)["log"]
    log = Path(log_path).read_text()
    assert "raised KeyError: 'boom'" in captured.err
    assert "Traceback" not in captured.err
    assert log_path in captured.err  # where the traceback is
    assert "Traceback (most recent call last)" in log
    assert main([*args, "-v"]) == 1
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_a_restart_command_that_does_not_exist_is_refused_before_any_migration(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py", info={"requires_restart": ["alpha"]})
    args = ["upgrade", "--from", "1.0", "--restart-command", "no-such-program-xyz {service}"]
    assert main([*args, *common(installation, migrations)]) == 2
    assert "'no-such-program-xyz' is not an executable program" in capsys.readouterr().err
    assert migrations.calls_made() == []


def test_the_compose_restarter_works_with_a_relative_root(
    installation: Path, migrations: MigrationWriter, fake_docker: FakeDocker
) -> None:
    """docker compose runs in the root: its -f path must not be relative to elsewhere."""
    (installation / "docker-compose.yml").write_text("services:\n  alpha:\n    image: x\n")
    migrations.add("v1.0_to_v1.1", "1_a.py", info={"requires_restart": ["alpha"]})
    fake_docker.set(services={"alpha": {"state": "running"}})
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "dopemux_update",
            "upgrade",
            "--from",
            "1.0",
            "--json",
            "--root",
            installation.name,
            "--migrations",
            str(migrations.root),
        ],
        cwd=installation.parent,
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert json.loads(result.stdout)["restarted"] == ["alpha"]
    compose = f"compose -f {installation.resolve() / 'docker-compose.yml'}"
    assert fake_docker.calls_with_cwd() == [
        (str(installation.resolve()), f"{compose} ps --all --format json"),
        (str(installation.resolve()), f"{compose} restart alpha"),
        (str(installation.resolve()), f"{compose} ps --all --format json"),
    ]


def test_status_tells_a_running_update_from_one_that_needs_recovery(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py")
    main(["stamp", "1.0", *common(installation, migrations)])
    state_dir = installation / ".dopemux" / "update"
    (state_dir / "journal.jsonl").write_text("{}\n")  # a run in progress, or interrupted
    holder = hold_the_lock(state_dir)
    capsys.readouterr()
    code, running = run_json(capsys, "status", *common(installation, migrations))
    assert (code, running["needs_recovery"]) == (0, False)
    assert f"pid {holder.pid}" in running["running"]
    holder.communicate("")
    code, stuck = run_json(capsys, "status", *common(installation, migrations))
    assert (stuck["needs_recovery"], stuck["running"]) == (True, None)


def test_status_of_a_missing_installation_is_an_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--root", str(tmp_path / "nowhere")]) == 2
    assert "installation folder does not exist" in capsys.readouterr().err


def test_an_update_refused_by_the_lock_leaves_no_log(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py")
    state_dir = installation / ".dopemux" / "update"
    holder = hold_the_lock(state_dir)
    try:
        code = main(["upgrade", "--from", "1.0", "--no-restart", *common(installation, migrations)])
    finally:
        holder.communicate("")
    assert code == 4
    assert "Log:" not in capsys.readouterr().err
    logs = state_dir / "logs"
    assert not logs.exists() or list(logs.iterdir()) == []
