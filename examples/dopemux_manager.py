"""Run the migrations inside an updater shaped like Dopemux's own UpdateManager.

    python examples/dopemux_manager.py [FOLDER] [--fail-validation]

Copies the sample installation to FOLDER (default: a new temporary folder, named at the start)
and gives it Dopemux's own version record, ``VERSION`` at 0.1.0. Then builds a small manager
with the shape of ``dopemux.update.manager.UpdateManager`` (phases built as ``Phase(manager)``
in ``__init__``, a run that calls ``rollback.auto_rollback()`` after the first phase that
returns False, a validation phase that writes ``VERSION``), and plugs this project in with
the one line a Dopemux maintainer writes::

    install(manager)

With ``--fail-validation`` the validation phase fails after the migrations committed: the
manager's auto-rollback then reverts them (backward functions in reverse, the version
records back). The example runs without Docker: it restarts nothing (``restarter=None``).
"""

from __future__ import annotations

import asyncio
import logging
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dopemux_update.dopemux import install

HERE = Path(__file__).resolve().parent
SAMPLE = HERE / "installation"
MIGRATIONS = HERE.parent / "migrations" / "examples"


@dataclass
class UpdateConfig:
    dry_run: bool = False
    skip_migrations: bool = False
    timeout_minutes: int = 30


@dataclass
class VersionInfo:
    current: str
    target: str


class ProgressTracker:
    def update_phase_progress(
        self, phase_name: str, step_description: str, percentage: float | None = None
    ) -> None:
        done = "" if percentage is None else f" ({percentage:.0f}%)"
        print(f"  [{phase_name}] {step_description}{done}")


class RollbackManager:
    async def auto_rollback(self) -> bool:
        print("  [Rollback] Dopemux's own rollback ran (after ours)")
        return True


class BasePhase:
    def __init__(self, manager: UpdateManager) -> None:
        self.manager = manager


class OrchestrationPhase(BasePhase):
    """Dopemux's own phase, with hard-coded restarts: ``install`` replaces it."""

    name = "Orchestration"
    description = "Restarting services and applying migrations"

    async def execute(self) -> bool:
        raise RuntimeError("replaced by dopemux_update")


class ValidationPhase(BasePhase):
    name = "Validation"
    description = "Verifying system health and functionality"

    async def execute(self) -> bool:
        if self.manager.fail_validation:
            print("  [Validation] health checks failed (on purpose)")
            return False
        info = self.manager.check_for_updates()
        (self.manager.project_root / "VERSION").write_text(info.target)
        print(f"  [Validation] VERSION is now {info.target}")
        return True


@dataclass
class UpdateManager:
    project_root: Path
    fail_validation: bool = False
    config: UpdateConfig = field(default_factory=UpdateConfig)
    progress: ProgressTracker = field(default_factory=ProgressTracker)
    rollback: RollbackManager = field(default_factory=RollbackManager)

    def __post_init__(self) -> None:
        self.phases: list[Any] = [OrchestrationPhase(self), ValidationPhase(self)]

    def check_for_updates(self) -> VersionInfo:
        current = (self.project_root / "VERSION").read_text().strip()
        return VersionInfo(current=current, target="v0.3.0")  # a tag, as git gives it

    async def run_update(self) -> str:
        for phase in self.phases:
            print(f"{phase.name}: {phase.description}")
            if not await phase.execute():
                await self.rollback.auto_rollback()
                return "ROLLED_BACK"
        return "SUCCESS"


def main() -> int:
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    target = Path(args[0]) if args else Path(tempfile.mkdtemp()) / "installation"
    if target.exists():
        print(f"{target} already exists; pass a new folder", file=sys.stderr)
        return 2
    shutil.copytree(SAMPLE, target, symlinks=True)
    (target / ".dopemux" / "update" / "state.json").unlink()  # Dopemux's record only
    (target / "VERSION").write_text("0.1.0\n")
    print(f"Copied the sample installation to {target}, at VERSION 0.1.0")
    logging.basicConfig(level=logging.WARNING, format="  log: %(message)s")

    manager = UpdateManager(target, fail_validation="--fail-validation" in sys.argv)
    install(manager, migrations_dir=MIGRATIONS, restarter=None)
    outcome = asyncio.run(manager.run_update())
    version = (target / "VERSION").read_text().strip()
    print(f"Update: {outcome}; VERSION: {version}")
    return 0 if outcome == "SUCCESS" or "--fail-validation" in sys.argv else 1


if __name__ == "__main__":
    sys.exit(main())
