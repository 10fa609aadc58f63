"""Typed usage of the public API, checked by mypy --strict: the API contract in code."""

from __future__ import annotations

from pathlib import Path

import anyio

from dopemux_update import (
    CommandRestarter,
    EditError,
    Event,
    MigrationOutput,
    OrchestrationPhase,
    RehearsalReport,
    ServiceRestartPhase,
    TreeDiff,
    UpdatePipeline,
    UpdateResult,
    edit,
    rehearse,
)
from dopemux_update.testing import assert_reversible, assert_same_tree, run_forward


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


async def rehearsal(root: Path) -> bool:
    report: RehearsalReport = await rehearse(
        project_root=root, migrations_dir=root / "migrations", current_version="0.1.0"
    )
    _culprit: str | None = report.culprit
    _culprits: tuple[str, ...] = report.culprits
    _differences: TreeDiff = report.differences
    _found: list[str] = [f.error for f in report.findings]
    _lines: list[str] = report.describe()
    return report.ok


def a_migration(project_root: Path) -> bool:
    try:
        with edit.edit_yaml(project_root / "config" / "app.yaml") as doc:
            edit.set_in(doc, "broker.timeout_seconds", 30, comment="added by 0.2.0")
        with edit.edit_json(project_root / "settings.json") as settings:
            settings["theme"] = "dark"
        edit.write_text(project_root / "NOTES.txt", "upgraded\n")
        added: bool = edit.add_column(
            project_root / ".dopemux" / "conport.db", "decisions", "priority", "INTEGER"
        )
    except EditError as exc:
        print(exc.path, exc.reason)
        return False
    return added


def the_helpers_of_issue_15(project_root: Path) -> bool:
    db = project_root / ".dopemux" / "conport.db"
    with edit.edit_yaml(project_root / "compose.yml") as doc:
        renamed: bool = edit.rename_key(doc, ("services", "mcp-old"), "mcp-new")
        environment = edit.compose_env(doc, "mcp-new")
        environment["LOG_LEVEL"] = "info"
        _token: str | None = environment.get("TOKEN")
        del environment["LOG_LEVEL"]
    with edit.edit_env(project_root / ".env") as env:
        env["ZEN_API_KEY"] = ""
        _value: str = env["ZEN_API_KEY"]
        env_file: edit.EnvFile = env
        _text: str = env_file.text()
    moved: bool = edit.move(
        project_root / "a.yaml", project_root / "b" / "a.yaml", root=project_root
    )
    indexed: bool = edit.add_index(db, "decisions", "idx_tag", ["tag"], unique=False)
    _exists: bool = edit.index_exists(db, "idx_tag")
    dropped: bool = edit.drop_index(db, "idx_tag")
    return renamed and moved and indexed and dropped


def an_authors_test(fixture: Path, copy: Path) -> None:
    report: RehearsalReport = assert_reversible(
        "migrations/v0.1.0_to_v0.2.0", fixture, ignore_tables=["conport.db:search_cache"]
    )
    _ok: bool = report.ok
    printed: list[str] = run_forward("migrations/v0.1.0_to_v0.2.0/001_x.py", copy)
    _first: str = printed[0]
    assert_same_tree(fixture, copy)


if __name__ == "__main__":
    anyio.run(update, Path())
