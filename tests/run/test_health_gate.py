"""The health gate, the revert after an unhealthy service, owed restarts, `restart` and
`history`, through the real command line with a fake `docker` first on PATH."""

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

from conftest import EXAMPLE_MIGRATIONS, FakeDocker, MigrationWriter, tree_digest

HEALTHY = {"state": "running", "health": "healthy"}
SAMPLE_SERVICES = {
    "mcp-broker": dict(HEALTHY),
    "serena": {"state": "running"},
    "conport": dict(HEALTHY),
    "mcp-leantime": {"state": "absent"},  # the 0.2.0 migration adds it: `up -d`
}


def cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "dopemux_update", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
        timeout=120,
    )


def run_json(*args: str, env: dict[str, str] | None = None) -> tuple[int, dict[str, Any]]:
    done = cli(*args, "--json", env=env)
    try:
        payload: dict[str, Any] = json.loads(done.stdout)
    except ValueError:
        pytest.fail(f"no JSON (exit {done.returncode}): {done.stdout}\n{done.stderr}")
    return done.returncode, payload


def sample(root: Path) -> list[str]:
    return ["--root", str(root), "--migrations", str(EXAMPLE_MIGRATIONS)]


def sample_digest(root: Path) -> dict[str, Any]:
    """The sample's tree; its database by content (SQLite may rewrite pages on DROP COLUMN)."""
    found = tree_digest(root)
    with closing(sqlite3.connect(root / ".dopemux" / "conport.db")) as conn:
        found[".dopemux/conport.db"] = "\n".join(conn.iterdump())
    return found


def state(root: Path) -> dict[str, Any]:
    return json.loads((root / ".dopemux/update/state.json").read_text())  # type: ignore[no-any-return]


def test_a_healthy_upgrade_of_the_sample_restarts_its_services_and_starts_the_new_one(
    example_copy: Path, fake_docker: FakeDocker
) -> None:
    fake_docker.set(services=SAMPLE_SERVICES)
    code, result = run_json(
        "upgrade", "--to", "0.2.0", "--health-timeout", "5", *sample(example_copy)
    )
    assert code == 0, result
    assert result["restarted"] == ["mcp-broker", "mcp-leantime", "conport"]
    assert [h["service"] for h in result["health"]] == result["restarted"]
    assert all(h["healthy"] for h in result["health"])
    assert result["reverted"] is False
    assert result["restarts_owed"] == []
    calls = fake_docker.calls()
    assert any(c.endswith("restart mcp-broker") for c in calls)
    assert any(c.endswith("up -d mcp-leantime") for c in calls)  # not running: `up -d`
    assert not any(c.endswith("restart mcp-leantime") for c in calls)
    assert all(c.startswith(f"compose -f {example_copy}") for c in calls)


def test_a_stopped_service_is_started_with_up_d(
    example_copy: Path, fake_docker: FakeDocker
) -> None:
    fake_docker.set(services={**SAMPLE_SERVICES, "conport": {"state": "exited"}})
    code, result = run_json("upgrade", "--to", "0.2.0", *sample(example_copy))
    assert code == 0, result
    calls = fake_docker.calls()
    assert any(c.endswith("up -d conport") for c in calls)
    assert not any(c.endswith("restart conport") for c in calls)


def test_an_unhealthy_service_reverts_the_update_exactly_and_restarts_again(
    example_copy: Path, fake_docker: FakeDocker
) -> None:
    before = sample_digest(example_copy)
    broken = {**HEALTHY, "on_restart": {"state": "running", "health": "unhealthy"}}
    fake_docker.set(services={**SAMPLE_SERVICES, "mcp-broker": broken})
    code, result = run_json(
        "upgrade", "--to", "0.2.0", "--health-timeout", "0", *sample(example_copy)
    )
    assert code == 6, result
    assert result["reverted"] is True
    assert result["installed_version"] == "0.2.0"  # what the update committed ...
    assert state(example_copy)["installed_version"] == "0.1.0"  # ... and the revert undid
    assert sample_digest(example_copy) == before
    broker = next(h for h in result["health"] if h["service"] == "mcp-broker")
    assert broker == {
        "service": "mcp-broker",
        "healthy": False,
        "detail": "running, health unhealthy",
    }
    assert result["revert"]["ok"] is True
    assert result["revert"]["restarted"] == ["conport", "mcp-broker"]  # leantime is gone
    calls = fake_docker.calls()
    assert sum(c.endswith("restart mcp-broker") for c in calls) == 2
    assert sum(c.endswith("restart conport") for c in calls) == 2
    history = state(example_copy)["history"]
    assert history[-1]["outcome"] == "reverted"
    assert history[-1]["reverts"] == history[-2]["run_id"]
    assert history[-1]["reason"] == "health check"
    code, listed = run_json("history", *sample(example_copy))
    assert code == 0
    newest, older = listed["runs"][:2]
    assert newest["command"] == "revert"
    assert newest["outcome_text"].startswith("reverted after health check")
    assert older["outcome_text"].startswith("applied, then reverted after health check")
    assert older["migrations"] == [
        "v0.1.0_to_v0.2.0/001_update_mcp_configs",
        "v0.1.0_to_v0.2.0/002_upgrade_database_schema",
    ]
    assert older["backup_id"] is not None
    code, limited = run_json("history", "--limit", "1", *sample(example_copy))
    assert [r["run_id"] for r in limited["runs"]] == [newest["run_id"]]
    text = cli("upgrade", "--to", "0.2.0", "--health-timeout", "0", *sample(example_copy))
    assert text.returncode == 6
    assert "REVERTED: mcp-broker did not become healthy" in text.stdout
    assert "back at 0.1.0" in text.stdout


def test_a_health_command_decides_failing_then_passing(
    example_copy: Path, fake_docker: FakeDocker, tmp_path: Path
) -> None:
    fake_docker.set(services=SAMPLE_SERVICES)
    counter = tmp_path / "asked"
    script = (
        "import sys, pathlib; p = pathlib.Path(sys.argv[1]); n = len(p.read_text()) if"
        " p.exists() else 0; p.write_text('x' * (n + 1)); sys.exit(0 if n else 3)"
    )
    template = f'{sys.executable} -c "{script}" {counter}-{{service}}'
    code, result = run_json(
        "upgrade",
        "--to",
        "0.2.0",
        "--health-command",
        template,
        "--health-timeout",
        "20",
        *sample(example_copy),
    )
    assert code == 0, result
    assert all(h["healthy"] for h in result["health"])
    assert (tmp_path / "asked-conport").read_text() == "xx"  # failed once, then passed
    assert not any(" ps " in f" {c} " for c in fake_docker.calls()[-1:])


def test_a_health_command_that_keeps_failing_reverts(
    example_copy: Path, fake_docker: FakeDocker
) -> None:
    before = sample_digest(example_copy)
    fake_docker.set(services=SAMPLE_SERVICES)
    template = f"{sys.executable} -c \"import sys; print('down'); sys.exit(1)\" {{service}}"
    code, result = run_json(
        "upgrade",
        "--to",
        "0.2.0",
        "--health-command",
        template,
        "--health-timeout",
        "0",
        *sample(example_copy),
    )
    assert code == 6, result
    assert result["reverted"] is True
    assert "exited with 1: down" in result["health"][0]["detail"]
    assert sample_digest(example_copy) == before


def test_no_health_check_restarts_without_waiting(
    example_copy: Path, fake_docker: FakeDocker
) -> None:
    broken = {**HEALTHY, "on_restart": {"state": "running", "health": "unhealthy"}}
    fake_docker.set(services={**SAMPLE_SERVICES, "mcp-broker": broken})
    code, result = run_json("upgrade", "--to", "0.2.0", "--no-health-check", *sample(example_copy))
    assert code == 0, result
    assert result["health"] == []
    assert result["health_not_checked"] == "not checked (--no-health-check)"
    assert result["reverted"] is False
    assert state(example_copy)["installed_version"] == "0.2.0"


def test_a_restart_command_without_a_health_command_says_there_is_no_gate(
    installation: Path, migrations: MigrationWriter
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py", info={"requires_restart": ["alpha"]})
    template = f"{sys.executable} -c pass {{service}}"
    args = ["--from", "1.0", "--root", str(installation), "--migrations", str(migrations.root)]
    code, result = run_json("upgrade", "--restart-command", template, *args)
    assert code == 0, result
    assert result["health_not_checked"] == (
        "not checked (--restart-command without --health-command)"
    )


@pytest.mark.parametrize(
    "options",
    [
        ["--no-restart", "--health-command", "true {service}"],
        ["--no-restart", "--no-health-check"],
        ["--no-restart", "--health-timeout", "5"],
        ["--no-health-check", "--health-command", "true {service}"],
        ["--health-command", "true"],
    ],
)
def test_health_options_that_do_not_fit_are_usage_errors(
    example_copy: Path, options: list[str]
) -> None:
    before = tree_digest(example_copy, exclude=())
    code, result = run_json("upgrade", "--to", "0.2.0", *options, *sample(example_copy))
    assert code == 2, result
    assert tree_digest(example_copy, exclude=()) == before


def test_a_failed_restart_is_owed_until_restart_does_it(
    example_copy: Path, fake_docker: FakeDocker
) -> None:
    fake_docker.set(services=SAMPLE_SERVICES, fail=["conport"])
    code, result = run_json("upgrade", "--to", "0.2.0", *sample(example_copy))
    assert code == 5, result
    assert result["restarts_owed"] == ["conport"]
    code, status = run_json("status", *sample(example_copy))
    assert status["restarts_owed"] == ["conport"]
    assert "Restarts owed:     conport" in cli("status", *sample(example_copy)).stdout
    code, again = run_json("restart", *sample(example_copy))
    assert code == 5, again  # still failing: still owed
    assert again["restarts_owed"] == ["conport"]
    fake_docker.set(services=SAMPLE_SERVICES)
    code, again = run_json("restart", *sample(example_copy))
    assert code == 0, again
    assert again["restarted"] == ["conport"]
    assert again["health"] == [
        {"service": "conport", "healthy": True, "detail": "running, healthy"}
    ]
    assert state(example_copy)["restarts_owed"] == []
    code, nothing = run_json("restart", *sample(example_copy))
    assert code == 0
    assert nothing["restarted"] == []


def test_no_restart_owes_every_restart_in_first_appearance_order(
    example_copy: Path, fake_docker: FakeDocker
) -> None:
    fake_docker.set(services=SAMPLE_SERVICES)
    code, result = run_json("upgrade", "--to", "0.2.0", "--no-restart", *sample(example_copy))
    assert code == 0, result
    assert result["restarts_owed"] == ["mcp-broker", "mcp-leantime", "conport"]
    code, result = run_json("upgrade", "--to", "0.3.0", "--no-restart", *sample(example_copy))
    assert code == 0, result
    assert result["restarts_owed"] == ["mcp-broker", "mcp-leantime", "conport", "mcp-pal"]
    assert fake_docker.calls() == []
    fake_docker.set(services={**SAMPLE_SERVICES, "mcp-pal": {"state": "absent"}})
    code, done = run_json("restart", *sample(example_copy))
    assert code == 0, done
    assert state(example_copy)["restarts_owed"] == []


def test_a_run_recover_completes_after_a_crash_at_the_commit_owes_its_restarts(
    example_copy: Path, fake_docker: FakeDocker
) -> None:
    fake_docker.set(services=SAMPLE_SERVICES)
    crash = {"DOPEMUX_UPDATE_CRASH_AT": "journal.committed"}
    assert cli("upgrade", "--to", "0.2.0", *sample(example_copy), env=crash).returncode == -9
    code, recovered = run_json("recover", *sample(example_copy))
    assert code == 0, recovered
    assert recovered["action"] == "committed"
    assert state(example_copy)["restarts_owed"] == ["mcp-broker", "mcp-leantime", "conport"]
    code, status = run_json("status", *sample(example_copy))
    assert status["restarts_owed"] == ["mcp-broker", "mcp-leantime", "conport"]
    assert fake_docker.calls() == []  # nothing was restarted by the crashed run or recover
    code, done = run_json("restart", *sample(example_copy))
    assert code == 0, done
    assert state(example_copy)["restarts_owed"] == []


def test_a_restart_name_the_compose_file_does_not_define_fails_the_run(
    installation: Path, migrations: MigrationWriter, fake_docker: FakeDocker
) -> None:
    (installation / "compose.yaml").write_text("services:\n  web:\n    image: x\n")
    before = tree_digest(installation)
    migrations.add(
        "v1.0_to_v1.1",
        "1_a.py",
        forward="(project_root / 'new.txt').write_text('x')\nreturn True",
        info={"requires_restart": ["web", "nope"]},
    )
    args = ["--from", "1.0", "--root", str(installation), "--migrations", str(migrations.root)]
    code, result = run_json("upgrade", *args)
    assert code == 1, result
    assert "nope (requires_restart of v1.0_to_v1.1/1_a)" in result["error"]
    assert str(installation / "compose.yaml") in result["error"]
    assert tree_digest(installation) == before
    assert fake_docker.calls() == []


def test_every_example_names_only_services_its_compose_file_defines(
    example_copy: Path, fake_docker: FakeDocker
) -> None:
    fake_docker.set(services={**SAMPLE_SERVICES, "mcp-pal": {"state": "absent"}})
    code, result = run_json("upgrade", "--to", "0.3.0", *sample(example_copy))
    assert code == 0, result
    assert set(result["restarted"]) == {"mcp-broker", "mcp-leantime", "conport", "mcp-pal"}
    code, result = run_json("downgrade", "--to", "0.1.0", "--yes", *sample(example_copy))
    assert code == 0, result
    assert set(result["restarted"]) == {"mcp-broker", "conport"}  # the others were removed


# -- the revert under kill -9 ---------------------------------------------------------------


@pytest.fixture
def gated(
    installation: Path, migrations: MigrationWriter, fake_docker: FakeDocker
) -> dict[str, Any]:
    """An installation at 1.0 with a compose file and two migrations; its `web` service turns
    unhealthy when restarted, so an upgrade is reverted. The digests before and after."""
    (installation / "compose.yaml").write_text("services:\n  web:\n    image: x\n")
    for name in ("1_a.py", "2_b.py"):
        migrations.add(
            "v1.0_to_v1.1",
            name,
            forward=(
                f"(project_root / 'config' / 'app.yaml').write_text('{name}')\n"
                f"(project_root / '{name}.txt').write_text('x' * 1000)\nreturn True"
            ),
            backward=(
                "(project_root / 'config' / 'app.yaml').write_text("
                "'# keep me\\nlog_level: info\\n')\n"
                f"(project_root / '{name}.txt').unlink()\nreturn True"
            ),
            info={"requires_restart": ["web"]},
        )
    args = ["--root", str(installation), "--migrations", str(migrations.root)]
    (installation / ".dopemux/update").mkdir(parents=True)
    (installation / ".dopemux/update/state.json").write_text('{"installed_version": "1.0"}')
    before = tree_digest(installation)
    app = installation / "config" / "app.yaml"
    for name in ("1_a.py", "2_b.py"):  # what the forward functions make of it
        app.write_text(name)
        (installation / f"{name}.txt").write_text("x" * 1000)
    after = tree_digest(installation)
    for name in ("1_a.py", "2_b.py"):
        (installation / f"{name}.txt").unlink()
    app.write_text("# keep me\nlog_level: info\n")
    assert tree_digest(installation) == before
    unhealthy = {**HEALTHY, "on_restart": {"state": "running", "health": "unhealthy"}}
    fake_docker.set(services={"web": unhealthy})
    return {"root": installation, "args": args, "before": before, "after": after}


REVERT_POINTS = [  # where the revert dies, and the state `recover` must then give
    ("backup.before_rename:2", "after"),  # the revert's backup, not yet complete
    ("journal.run_started:2", "after"),
    ("journal.step_begun:3", "after"),  # the revert's first backward function
    ("journal.step_done:3", "after"),
    ("journal.step_done:4", "before"),  # written in one append with the commit point
    ("journal.committed:2", "before"),  # the revert's commit point: it completes
    ("commit.state_written:2", "before"),
]


@pytest.mark.parametrize(("point", "expected"), REVERT_POINTS, ids=[p for p, _ in REVERT_POINTS])
def test_a_kill_during_the_revert_recovers_to_before_or_after_it(
    gated: dict[str, Any], point: str, expected: str
) -> None:
    root, args = gated["root"], gated["args"]
    crashed = cli("upgrade", "--health-timeout", "0", *args, env={"DOPEMUX_UPDATE_CRASH_AT": point})
    assert crashed.returncode == -9, crashed.stderr
    recovered = cli("recover", *args)
    assert recovered.returncode == 0, recovered.stderr
    assert tree_digest(root) == gated[expected]
    assert state(root)["installed_version"] == ("1.0" if expected == "before" else "1.1")
    assert not (root / ".dopemux/update/journal.jsonl").exists()


def test_an_uninterrupted_revert_gives_the_tree_before_the_update(gated: dict[str, Any]) -> None:
    done = cli("upgrade", "--health-timeout", "0", *gated["args"])
    assert done.returncode == 6, done.stdout + done.stderr
    assert tree_digest(gated["root"]) == gated["before"]


def test_a_revert_that_fails_exits_3_and_keeps_the_backup(
    installation: Path, migrations: MigrationWriter, fake_docker: FakeDocker
) -> None:
    (installation / "compose.yaml").write_text("services:\n  web:\n    image: x\n")
    migrations.add(
        "v1.0_to_v1.1",
        "1_a.py",
        forward="(project_root / 'new.txt').write_text('x')\nreturn True",
        backward="raise RuntimeError('cannot undo')",
        info={"requires_restart": ["web"]},
    )
    unhealthy = {**HEALTHY, "on_restart": {"state": "running", "health": "starting"}}
    fake_docker.set(services={"web": unhealthy})
    args = ["--from", "1.0", "--root", str(installation), "--migrations", str(migrations.root)]
    code, result = run_json("upgrade", "--health-timeout", "0", *args)
    assert code == 3, result
    assert result["reverted"] is False
    assert result["revert"]["ok"] is False
    assert "cannot undo" in result["revert"]["error"]
    assert state(installation)["installed_version"] == "1.1"  # the revert was rolled back
    assert (installation / "new.txt").exists()
    backups = [p.name for p in (installation / ".dopemux/update/backups").iterdir()]
    assert result["backup_id"] in backups
    text = cli("history", "--root", str(installation))
    assert "revert 1.1 → 1.0: rolled back" in text.stdout


def test_an_owed_restart_of_a_service_a_downgrade_removed_is_dropped(
    example_copy: Path, fake_docker: FakeDocker
) -> None:
    fake_docker.set(services=SAMPLE_SERVICES)
    where = sample(example_copy)
    assert run_json("upgrade", "--to", "0.2.0", "--no-restart", *where)[0] == 0
    code, down = run_json("downgrade", "--to", "0.1.0", "--yes", "--no-restart", *where)
    assert code == 0, down
    assert down["restarts_owed"] == ["mcp-broker", "mcp-leantime", "conport"]
    code, done = run_json("restart", *where)
    assert code == 0, done
    assert done["removed_services"] == ["mcp-leantime"]
    assert done["restarted"] == ["mcp-broker", "conport"]
    assert done["restarts_owed"] == []
