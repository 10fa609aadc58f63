"""Typed usage of the public API, checked by mypy --strict: the API contract in code."""

from __future__ import annotations

from pathlib import Path

import anyio

from dopemux_update import (
    CommandRestarter,
    Event,
    MigrationOutput,
    OrchestrationPhase,
    ServiceRestartPhase,
    UpdatePipeline,
    UpdateResult,
)


def on_event(event: Event) -> None:
    if isinstance(event, MigrationOutput):
        _line: str = event.line


async def update(root: Path) -> UpdateResult:
    restart = ServiceRestartPhase(CommandRestarter("docker compose restart {service}"))
    phase = OrchestrationPhase(
        project_root=root,
        migrations_dir=root / "migrations",
        current_version="0.1.0",
        target_version="0.2.0",
        restart_phase=restart,
        on_event=on_event,
    )
    pipeline = await UpdatePipeline([phase, restart]).run()
    _ok: bool = pipeline.ok
    outcome: UpdateResult = await OrchestrationPhase(
        project_root=root, current_version="0.2.0", target_version="0.1.0"
    ).execute()
    _applied: tuple[str, ...] = outcome.applied
    _rolled_back: tuple[str, ...] = outcome.rolled_back
    _services: tuple[str, ...] = outcome.restart_services
    _recovery: bool = outcome.needs_recovery
    return outcome


if __name__ == "__main__":
    anyio.run(update, Path())
