"""The orchestration phase: order, failure kinds, exact rollback, restart handoff, threads."""

from __future__ import annotations

import json
import threading
import types
from pathlib import Path

import anyio
import anyio.lowlevel
import anyio.to_thread
import pytest
from structlog.testing import capture_logs

from conftest import MigrationWriter, tree_digest
from dopemux_update import (
    MigrationOutput,
    MigrationValidationError,
    OrchestrationPhase,
    PlanError,
    PreflightError,
    ServiceRestartPhase,
    StateError,
    UpdateError,
    UpdatePipeline,
    recover,
)

pytestmark = pytest.mark.anyio


class RecordingRestarter:
    def __init__(self) -> None:
        self.restarted: list[str] = []

    async def restart(self, service: str) -> None:
        self.restarted.append(service)


def phase(
    root: Path, migrations: MigrationWriter, current: str, target: str | None = None, **kw: object
) -> OrchestrationPhase:
    return OrchestrationPhase(
        project_root=root,
        migrations_dir=migrations.root,
        current_version=current,
        target_version=target,
        **kw,  # type: ignore[arg-type]
    )


def installed(root: Path) -> str | None:
    state = root / ".dopemux" / "update" / "state.json"
    if not state.exists():
        return None
    return json.loads(state.read_text())["installed_version"]  # type: ignore[no-any-return]


async def test_migrations_run_in_version_then_numeric_order_across_hops(
    installation: Path, migrations: MigrationWriter
) -> None:
    migrations.add("v0.10.0_to_v0.11.0", "1_last.py")
    migrations.add("v0.9.0_to_v0.10.0", "10_third.py")
    migrations.add("v0.9.0_to_v0.10.0", "2_second.py")
    migrations.add("v0.9.0_to_v0.10.0", "1_first.py")
    result = await phase(installation, migrations, "0.9.0").execute()
    assert result.ok
    expected = [
        "v0.9.0_to_v0.10.0/1_first",
        "v0.9.0_to_v0.10.0/2_second",
        "v0.9.0_to_v0.10.0/10_third",
        "v0.10.0_to_v0.11.0/1_last",
    ]
    assert list(result.applied) == expected
    assert migrations.calls_made() == [f"forward {i}" for i in expected]
    assert installed(installation) == "0.11.0"


async def test_downgrade_runs_backward_in_exact_reverse_order(
    installation: Path, migrations: MigrationWriter
) -> None:
    for name in ("1_a.py", "2_b.py"):
        migrations.add("v1.0_to_v1.1", name)
        migrations.add("v1.1_to_v1.2", name)
    result = await phase(installation, migrations, "1.2", "1.0").execute()
    assert result.ok
    assert migrations.calls_made() == [
        "backward v1.1_to_v1.2/2_b",
        "backward v1.1_to_v1.2/1_a",
        "backward v1.0_to_v1.1/2_b",
        "backward v1.0_to_v1.1/1_a",
    ]
    assert installed(installation) == "1.0"


FAILURES = {
    "returns False": "return False",
    "raises": "raise ValueError('disk on fire')",
    "returns None": "return None",
    "returns a truthy non-bool": "return 'yes'",
    "calls sys.exit": "import sys; sys.exit(3)",
}


@pytest.mark.parametrize("kind", sorted(FAILURES))
async def test_each_failure_kind_rolls_back_in_reverse_and_restores_the_tree(
    installation: Path, migrations: MigrationWriter, kind: str
) -> None:
    writes = (
        "(project_root / 'config' / 'app.yaml').write_text('changed')\n"
        "(project_root / 'added').mkdir()\n"
        "(project_root / 'added' / 'f.txt').write_text('x')\n"
        "(project_root / 'secret.env').chmod(0o644)\n"
        "(project_root / 'link-to-app').unlink()\n"
        "(project_root / 'link-to-app').write_text('not a link')\n"
        "return True"
    )
    migrations.add("v1.0_to_v1.1", "1_ok.py", forward=writes)
    migrations.add(
        "v1.0_to_v1.1", "2_ok.py", forward="(project_root / 'x').write_text('x')\nreturn True"
    )
    migrations.add(
        "v1.1_to_v1.2",
        "1_fails.py",
        forward="(project_root / 'empty').rmdir()\n" + FAILURES[kind],
    )
    migrations.add("v1.1_to_v1.2", "2_never.py")
    before = tree_digest(installation)
    restart = ServiceRestartPhase(RecordingRestarter())
    with capture_logs() as logs:
        result = await phase(installation, migrations, "1.0", restart_phase=restart).execute()
    assert not result.ok
    assert not result.needs_recovery
    assert result.failed_migration == "v1.1_to_v1.2/1_fails"
    assert result.error
    assert list(result.applied) == ["v1.0_to_v1.1/1_ok", "v1.0_to_v1.1/2_ok"]
    assert list(result.rolled_back) == ["v1.0_to_v1.1/2_ok", "v1.0_to_v1.1/1_ok"]
    assert migrations.calls_made() == [
        "forward v1.0_to_v1.1/1_ok",
        "forward v1.0_to_v1.1/2_ok",
        "forward v1.1_to_v1.2/1_fails",
        "backward v1.0_to_v1.1/2_ok",
        "backward v1.0_to_v1.1/1_ok",
    ]
    assert tree_digest(installation) == before
    assert restart.services == ()
    assert result.restart_services == ()
    assert installed(installation) is None
    failed = [e for e in logs if e["event"] == "migration.failed"]
    assert failed[0]["migration_id"] == "v1.1_to_v1.2/1_fails"
    if kind == "raises":
        assert "ValueError: disk on fire" in failed[0]["traceback"]


async def test_a_failing_backward_marks_needs_recovery_and_keeps_the_backup(
    installation: Path, migrations: MigrationWriter
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py", backward="return False")
    migrations.add("v1.0_to_v1.1", "2_b.py", forward="return False")
    result = await phase(installation, migrations, "1.0").execute()
    assert not result.ok
    assert result.needs_recovery
    assert result.rolled_back == ()
    assert result.backup_id is not None
    assert (installation / ".dopemux/update/backups" / result.backup_id / "manifest.json").exists()


async def test_success_hands_the_union_of_restarts_in_first_appearance_order(
    installation: Path, migrations: MigrationWriter
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py", info={"requires_restart": ["mcp-servers", "redis"]})
    migrations.add("v1.0_to_v1.1", "2_b.py", info={"requires_restart": ["conport", "redis"]})
    migrations.add("v1.1_to_v1.2", "1_c.py", info={"requires_restart": ["mcp-servers", "serena"]})
    restarter = RecordingRestarter()
    restart = ServiceRestartPhase(restarter)
    orchestration = phase(installation, migrations, "1.0", restart_phase=restart)
    pipeline = await UpdatePipeline([orchestration, restart]).run()
    assert pipeline.ok
    expected = ["mcp-servers", "redis", "conport", "serena"]
    assert list(restart.services) == expected
    assert restarter.restarted == expected


async def test_pipeline_skips_the_restart_phase_after_a_failure(
    installation: Path, migrations: MigrationWriter
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py", info={"requires_restart": ["svc"]})
    migrations.add("v1.0_to_v1.1", "2_b.py", forward="return False")
    restarter = RecordingRestarter()
    restart = ServiceRestartPhase(restarter)
    orchestration = phase(installation, migrations, "1.0", restart_phase=restart)
    pipeline = await UpdatePipeline([orchestration, restart]).run()
    assert not pipeline.ok
    assert pipeline.skipped == ("service-restart",)
    assert restarter.restarted == []


BROKEN_SOURCES = {
    "syntax": "def migrate_forward(:\n",
    "typo key": None,
    "no path": "NO PATH",
}


@pytest.mark.parametrize("kind", sorted(BROKEN_SOURCES))
async def test_preflight_errors_leave_the_tree_and_state_untouched(
    installation: Path, migrations: MigrationWriter, kind: str
) -> None:
    migrations.add(
        "v1.0_to_v1.1", "1_good.py", forward="(project_root / 'x').write_text('x')\nreturn True"
    )
    target = "1.2"
    if kind == "syntax":
        migrations.add("v1.1_to_v1.2", "1_bad.py", source=BROKEN_SOURCES[kind])
    elif kind == "typo key":
        migrations.add("v1.1_to_v1.2", "1_bad.py", info={"backup_requried": True})
    else:  # a gap in the chain of folders: 1.1 -> 1.5 is covered by no folder
        migrations.add("v1.5_to_v1.6", "1_later.py")
        target = "1.6"
    before = tree_digest(installation, exclude=())
    with pytest.raises(MigrationValidationError if kind != "no path" else PlanError):
        await phase(installation, migrations, "1.0", target).execute()
    assert tree_digest(installation, exclude=()) == before
    assert migrations.calls_made() == []


async def test_a_missing_installation_is_a_preflight_error(
    tmp_path: Path, migrations: MigrationWriter
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py")
    with pytest.raises(PreflightError, match="installation folder does not exist"):
        await phase(tmp_path / "nope", migrations, "1.0").execute()


async def test_nothing_pending_is_success_without_a_backup(
    installation: Path, migrations: MigrationWriter
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py")
    result = await phase(installation, migrations, "1.1").execute()
    assert result.ok
    assert result.applied == ()
    assert not (installation / ".dopemux/update").exists()


async def test_no_backup_when_no_migration_asks_for_one(
    installation: Path, migrations: MigrationWriter
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py", info={"backup_required": False})
    result = await phase(installation, migrations, "1.0").execute()
    assert result.ok
    assert result.backup_id is None
    assert not (installation / ".dopemux/update/backups").exists()


async def test_the_event_loop_stays_responsive_while_a_migration_runs(
    installation: Path, migrations: MigrationWriter, gate: types.SimpleNamespace
) -> None:
    migrations.add(
        "v1.0_to_v1.1",
        "1_slow.py",
        forward="import dopemux_test_gate as g\ng.started.set()\nreturn g.release.wait(10)",
    )
    ticks = 0
    migration_thread: list[int] = []

    async def ticker() -> None:
        nonlocal ticks
        await anyio.to_thread.run_sync(gate.started.wait, 10)
        for _ in range(50):
            ticks += 1
            await anyio.lowlevel.checkpoint()
        gate.release.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(ticker)
        result = await phase(installation, migrations, "1.0").execute()
    assert result.ok
    assert ticks == 50
    assert threading.get_ident() not in migration_thread


async def test_migration_output_is_attributed_to_its_migration(
    installation: Path, migrations: MigrationWriter, capsys: pytest.CaptureFixture[str]
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py", forward="print('  → step of a')\nreturn True")
    migrations.add(
        "v1.0_to_v1.1",
        "2_b.py",
        forward="import sys\nprint('step of b')\nprint('warn of b', file=sys.stderr)\nreturn True",
    )
    events: list[MigrationOutput] = []

    def collect(event: object) -> None:
        if isinstance(event, MigrationOutput):
            events.append(event)

    with capture_logs() as logs:
        result = await phase(installation, migrations, "1.0", on_event=collect).execute()
    assert result.ok
    assert [(e.id, e.stream, e.line) for e in events] == [
        ("v1.0_to_v1.1/1_a", "stdout", "  → step of a"),
        ("v1.0_to_v1.1/2_b", "stdout", "step of b"),
        ("v1.0_to_v1.1/2_b", "stderr", "warn of b"),
    ]
    logged = [(e["migration_id"], e["line"]) for e in logs if e["event"] == "migration.output"]
    assert logged[0] == ("v1.0_to_v1.1/1_a", "  → step of a")
    captured = capsys.readouterr()
    assert "step of" not in captured.out
    assert "warn of b" not in captured.err


async def test_cancellation_rolls_back_then_reraises(
    installation: Path, migrations: MigrationWriter, gate: types.SimpleNamespace
) -> None:
    migrations.add(
        "v1.0_to_v1.1", "1_a.py", forward="(project_root / 'a').write_text('a')\nreturn True"
    )
    migrations.add(
        "v1.0_to_v1.1",
        "2_slow.py",
        forward=(
            "(project_root / 'b').write_text('b')\n"
            "import dopemux_test_gate as g\ng.started.set()\ng.release.wait(10)\nreturn True"
        ),
    )
    migrations.add("v1.0_to_v1.1", "3_never.py")
    before = tree_digest(installation)
    orchestration = phase(installation, migrations, "1.0")

    async def cancel_when_started(scope: anyio.CancelScope) -> None:
        await anyio.to_thread.run_sync(gate.started.wait, 10)
        scope.cancel()
        gate.release.set()

    with anyio.CancelScope() as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(cancel_when_started, scope)
            await orchestration.execute()
        pytest.fail("execute() returned although it was cancelled")  # pragma: no cover
    assert scope.cancelled_caught
    assert tree_digest(installation) == before
    # The migration running when the scope was cancelled finished (a thread is never
    # abandoned), so it counts as completed and is undone; the run stops after it (a
    # cancellation reaches the thread between two migrations, so at most the next one may
    # have started too) and everything that ran is undone in reverse.
    calls = migrations.calls_made()
    forwards = [c.split()[1] for c in calls if c.startswith("forward")]
    backwards = [c.split()[1] for c in calls if c.startswith("backward")]
    assert forwards[:2] == ["v1.0_to_v1.1/1_a", "v1.0_to_v1.1/2_slow"]
    assert backwards == list(reversed(forwards))
    assert installed(installation) is None


async def test_a_failing_event_handler_does_not_break_the_update(
    installation: Path, migrations: MigrationWriter
) -> None:
    migrations.add("v1.0_to_v1.1", "1_a.py", forward="print('x')\nreturn True")

    def broken(event: object) -> None:
        raise RuntimeError("display bug")

    with capture_logs() as logs:
        result = await phase(installation, migrations, "1.0", on_event=broken).execute()
    assert result.ok
    assert any(e["event"] == "event.handler_failed" for e in logs)


class Boom(BaseException):
    """Stands for an unexpected error escaping from inside the run."""


async def test_an_unexpected_error_mid_run_rolls_back_then_propagates(
    installation: Path, migrations: MigrationWriter
) -> None:
    migrations.add(
        "v1.0_to_v1.1", "1_a.py", forward="(project_root / 'a').write_text('a')\nreturn True"
    )
    migrations.add("v1.0_to_v1.1", "2_b.py")
    before = tree_digest(installation)

    def explode(event: object) -> None:
        if isinstance(event, MigrationOutput) or type(event).__name__ != "MigrationFinished":
            return
        raise Boom

    with pytest.raises(Boom):
        await phase(installation, migrations, "1.0", on_event=explode).execute()
    assert tree_digest(installation) == before
    # Whatever had run when the error surfaced is undone, in reverse.
    calls = migrations.calls_made()
    forwards = [c.split()[1] for c in calls if c.startswith("forward")]
    backwards = [c.split()[1] for c in calls if c.startswith("backward")]
    assert forwards[0] == "v1.0_to_v1.1/1_a"
    assert backwards == list(reversed(forwards))


async def test_a_phase_runs_once_and_imports_each_file_once(
    installation: Path, migrations: MigrationWriter, tmp_path: Path
) -> None:
    counter = tmp_path / "imports"
    path = migrations.add("v1.0_to_v1.1", "1_a.py")
    count = f"with open({str(counter)!r}, 'a') as f:\n    f.write('i')\n"
    path.write_text(count + path.read_text())
    orchestration = phase(installation, migrations, "1.0")
    await orchestration.plan()
    assert (await orchestration.execute()).ok
    assert counter.read_text() == "i"
    with pytest.raises(UpdateError, match="already run"):
        await orchestration.execute()


@pytest.mark.parametrize(
    "moment", ["BackupCreated", "MigrationStarted", "MigrationFinished", "MigrationOutput"]
)
async def test_cancellation_at_several_moments_leaves_the_tree_as_before(
    installation: Path, migrations: MigrationWriter, moment: str
) -> None:
    migrations.add(
        "v1.0_to_v1.1",
        "1_a.py",
        forward="print('one')\n(project_root / 'a').write_text('a')\nreturn True",
    )
    migrations.add(
        "v1.0_to_v1.1",
        "2_b.py",
        forward="print('two')\n(project_root / 'config' / 'app.yaml').write_text('b')\nreturn True",
    )
    before = tree_digest(installation)
    with anyio.CancelScope() as scope:

        def cancel_at(event: object) -> None:
            if type(event).__name__ == moment:
                scope.cancel()

        await phase(installation, migrations, "1.0", on_event=cancel_at).execute()
    assert scope.cancelled_caught
    assert tree_digest(installation) == before
    assert installed(installation) is None
    assert not (installation / ".dopemux/update/journal.jsonl").exists()


async def test_recover_on_a_missing_installation_creates_nothing(tmp_path: Path) -> None:
    with pytest.raises(StateError, match="does not exist"):
        await recover(tmp_path / "nowhere")
    assert not (tmp_path / "nowhere").exists()
