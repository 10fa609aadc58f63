"""The drop-in phase inside a fake of Dopemux's UpdateManager that mirrors its contract:
phases built as ``Phase(manager)`` in ``__init__``, a ``run()`` that calls
``rollback.auto_rollback()`` on the first False, and a validation phase whose result the test
controls."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from conftest import FakeDocker, MigrationWriter, tree_digest
from dopemux_update._backup._snapshot import same_database
from dopemux_update._safety._state import StateStore
from dopemux_update.dopemux import PHASE_NAME, install

pytestmark = pytest.mark.anyio


@dataclass
class Config:
    dry_run: bool = False
    skip_migrations: bool = False
    timeout_minutes: int = 30


@dataclass
class VersionInfo:
    current: str
    target: str


class Progress:
    def __init__(self) -> None:
        self.steps: list[tuple[str, str, float | None]] = []

    def update_phase_progress(
        self, phase_name: str, step_description: str, percentage: float | None = None
    ) -> None:
        self.steps.append((phase_name, step_description, percentage))


class Rollback:
    def __init__(self) -> None:
        self.calls = 0

    async def auto_rollback(self) -> bool:
        self.calls += 1
        return True


class BasePhase:
    def __init__(self, manager: FakeManager) -> None:
        self.manager = manager


class OrchestrationPhase(BasePhase):
    """Dopemux's own (hard-coded restarts and all): what ``install`` replaces."""

    name = "Orchestration"

    async def execute(self) -> bool:
        raise AssertionError("the original Orchestration phase must not run")


class ValidationPhase(BasePhase):
    name = "Validation"

    async def execute(self) -> bool:
        self.manager.ran.append("Validation")
        if not self.manager.validation_ok:
            return False
        (self.manager.project_root / "VERSION").write_text(self.manager.target)
        return True


@dataclass
class FakeManager:
    project_root: Path
    current: str
    target: str
    config: Config = field(default_factory=Config)
    validation_ok: bool = True
    progress: Progress = field(default_factory=Progress)
    rollback: Rollback = field(default_factory=Rollback)
    ran: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.phases: list[Any] = [OrchestrationPhase(self), ValidationPhase(self)]

    def check_for_updates(self) -> VersionInfo:
        return VersionInfo(self.current, self.target)

    async def run(self) -> str:
        for phase in self.phases:
            if not await phase.execute():
                if not self.config.dry_run:
                    await self.rollback.auto_rollback()
                    return "ROLLED_BACK"
                return "FAILED"
        return "SUCCESS"


ORIGINAL = "# keep me\nlog_level: info\n"  # the installation fixture's config/app.yaml


@pytest.fixture
def manager_root(installation: Path, migrations: MigrationWriter) -> Path:
    (installation / "VERSION").write_text("v1.0\n")
    migrations.add(
        "v1.0_to_v1.1",
        "001_config.py",
        forward="(project_root / 'config' / 'app.yaml').write_text('level: warn')\nreturn True",
        backward=f"(project_root / 'config' / 'app.yaml').write_text({ORIGINAL!r})\nreturn True",
    )
    migrations.add(
        "v1.0_to_v1.1",
        "002_added.py",
        forward="(project_root / 'added.txt').write_text('x')\nreturn True",
        backward="(project_root / 'added.txt').unlink()\nreturn True",
    )
    os.symlink(migrations.root, installation / "migrations")
    return installation


def recorded(root: Path) -> str | None:
    return StateStore(root / ".dopemux" / "update").read().installed_version


async def test_install_replaces_the_orchestration_phase_and_a_run_succeeds(
    manager_root: Path, migrations: MigrationWriter
) -> None:
    manager = FakeManager(manager_root, "1.0", "v1.1")
    phase = install(manager, restarter=None)
    assert manager.phases[0] is phase
    assert phase.name == PHASE_NAME
    assert phase.description
    assert await manager.run() == "SUCCESS"
    assert recorded(manager_root) == "1.1"
    assert migrations.calls_made() == [
        "forward v1.0_to_v1.1/001_config",
        "forward v1.0_to_v1.1/002_added",
    ]
    assert any(name == PHASE_NAME for name, _, _ in manager.progress.steps)
    assert manager.rollback.calls == 0


async def test_a_failing_migration_rolls_back_and_the_manager_sees_a_failure(
    manager_root: Path, migrations: MigrationWriter
) -> None:
    migrations.add("v1.0_to_v1.1", "003_fails.py", forward="return False")
    before = tree_digest(manager_root)
    manager = FakeManager(manager_root, "v1.0", "v1.1")
    install(manager, restarter=None)
    assert await manager.run() == "ROLLED_BACK"
    assert manager.ran == []  # validation never ran, so it never wrote VERSION
    assert tree_digest(manager_root) == before
    assert (manager_root / "VERSION").read_text() == "v1.0\n"
    assert manager.rollback.calls == 1


async def test_a_failed_validation_after_our_commit_reverts_exactly(
    manager_root: Path, migrations: MigrationWriter
) -> None:
    before = tree_digest(manager_root, exclude=(".dopemux/update", "VERSION"))
    manager = FakeManager(manager_root, "1.0", "v1.1", validation_ok=False)
    install(manager, restarter=None)
    assert await manager.run() == "ROLLED_BACK"
    assert manager.rollback.calls == 1  # Dopemux's own rollback still ran, after ours
    assert migrations.calls_made()[-2:] == [
        "backward v1.0_to_v1.1/002_added",
        "backward v1.0_to_v1.1/001_config",
    ]
    assert tree_digest(manager_root, exclude=(".dopemux/update", "VERSION")) == before
    assert recorded(manager_root) == "1.0"
    assert (manager_root / "VERSION").read_text() == "v1.0\n"
    last = StateStore(manager_root / ".dopemux" / "update").read().history[-1]
    assert (last.outcome, last.reason) == ("reverted", "a later phase of the update failed")


async def test_a_dry_run_plans_and_changes_nothing(manager_root: Path) -> None:
    before = tree_digest(manager_root, exclude=())
    manager = FakeManager(manager_root, "1.0", "1.1", config=Config(dry_run=True))
    phase = install(manager, restarter=None)
    assert await phase.execute()
    assert tree_digest(manager_root, exclude=()) == before
    assert "Dry run" in manager.progress.steps[-1][1]


async def test_skip_migrations_skips(manager_root: Path, migrations: MigrationWriter) -> None:
    manager = FakeManager(manager_root, "1.0", "1.1", config=Config(skip_migrations=True))
    assert await install(manager).execute()
    assert migrations.calls_made() == []


async def test_no_migrations_folder_is_a_release_without_migrations(installation: Path) -> None:
    (installation / "VERSION").write_text("0.1.0\n")
    manager = FakeManager(installation, "0.1.0", "v0.2.1")
    assert await install(manager, restarter=None).execute()
    assert recorded(installation) == "0.2.1"
    assert (installation / "VERSION").read_text() == "0.2.1\n"


async def test_a_no_op_release_after_the_last_folder_runs_the_hop_and_records_the_target(
    manager_root: Path,
) -> None:
    manager = FakeManager(manager_root, "v1.0", "v1.2.1")
    install(manager, restarter=None)
    assert await manager.run() == "SUCCESS"
    assert recorded(manager_root) == "1.2.1"


async def test_an_unhealthy_service_reverts_the_run_and_the_phase_fails(
    manager_root: Path, migrations: MigrationWriter, fake_docker: FakeDocker
) -> None:
    migrations.add("v1.0_to_v1.1", "004_restart.py", info={"requires_restart": ["web"]})
    (manager_root / "compose.yaml").write_text("services:\n  web:\n    image: x\n")
    fake_docker.set(
        services={
            "web": {"state": "running", "on_restart": {"state": "running", "health": "unhealthy"}}
        }
    )
    before = tree_digest(manager_root, exclude=(".dopemux/update", "VERSION"))
    manager = FakeManager(manager_root, "1.0", "1.1")
    phase = install(manager, health_timeout=0.2)
    assert await manager.run() == "ROLLED_BACK"
    assert phase.restart_result is not None
    assert phase.restart_result.unhealthy == ("web",)
    assert phase.revert_result is not None
    assert phase.revert_result.ok
    assert tree_digest(manager_root, exclude=(".dopemux/update", "VERSION")) == before
    assert recorded(manager_root) == "1.0"
    restarts = [c for c in fake_docker.calls() if c.endswith("restart web")]
    assert len(restarts) == 2  # after the update, and again after the revert
    last = StateStore(manager_root / ".dopemux" / "update").read().history[-1]
    assert (last.outcome, last.reason) == ("reverted", "health check")
    assert manager.rollback.calls == 1


@pytest.mark.parametrize("fail", [False, True])
def test_the_example_manager_script_runs_on_the_sample(tmp_path: Path, fail: bool) -> None:
    import subprocess
    import sys

    from conftest import EXAMPLE_INSTALLATION, REPO

    target = tmp_path / "installation"
    args = [sys.executable, str(REPO / "examples" / "dopemux_manager.py"), str(target)]
    done = subprocess.run(
        [*args, *(["--fail-validation"] if fail else [])],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stderr == ""
    exclude = (".dopemux/update", "VERSION", ".dopemux/conport.db")
    if fail:  # reverted by backward functions: the database's content is back, not its bytes
        assert "Update: ROLLED_BACK; VERSION: 0.1.0" in done.stdout
        assert tree_digest(target, exclude=exclude) == tree_digest(
            EXAMPLE_INSTALLATION, exclude=exclude
        )
        database = Path(".dopemux") / "conport.db"
        assert same_database(EXAMPLE_INSTALLATION / database, target / database)
    else:
        assert "Update: SUCCESS; VERSION: v0.3.0" in done.stdout
        assert recorded(target) == "0.3.0"
