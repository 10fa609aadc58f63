"""Reverting a committed run: exact, journaled like any run, refused when it can't be exact."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import MigrationWriter, tree_digest
from dopemux_update import OrchestrationPhase, RevertError, RunRecord, UpdateError, revert_run
from dopemux_update.cli._history import describe_outcome

pytestmark = pytest.mark.anyio


def two_hops(migrations: MigrationWriter) -> None:
    migrations.add(
        "v1.0_to_v1.1",
        "1_config.py",
        forward="(project_root / 'config' / 'app.yaml').write_text('level: debug\\n')\nreturn True",
        backward=(
            "(project_root / 'config' / 'app.yaml').write_text('# keep me\\nlog_level: info\\n')"
            "\nreturn True"
        ),
        info={"requires_restart": ["broker"]},
    )
    migrations.add(
        "v1.1_to_v1.2",
        "1_new_file.py",
        forward="(project_root / 'new.txt').write_text('new')\nreturn True",
        backward="(project_root / 'new.txt').unlink()\nreturn True",
    )


def phase(root: Path, migrations: MigrationWriter, current: str, target: str) -> OrchestrationPhase:
    return OrchestrationPhase(
        project_root=root,
        migrations_dir=migrations.root,
        current_version=current,
        target_version=target,
    )


def state(root: Path) -> dict[str, object]:
    return json.loads((root / ".dopemux/update/state.json").read_text())  # type: ignore[no-any-return]


async def test_phase_revert_undoes_its_committed_run_exactly_and_records_it(
    installation: Path, migrations: MigrationWriter
) -> None:
    (installation / "VERSION").write_text("v1.0\n")
    two_hops(migrations)
    before = tree_digest(installation, exclude=(".dopemux/update", "VERSION"))
    update = phase(installation, migrations, "1.0", "1.2")
    assert await update.execute()
    result = await update.revert()
    assert result.ok, result.error
    assert result.version_from == "1.2"
    assert result.version_to == "1.0"
    assert result.backup_id is not None  # backed up first, like any run
    assert tree_digest(installation, exclude=(".dopemux/update", "VERSION")) == before
    assert (installation / "VERSION").read_text() == "v1.0\n"
    recorded = state(installation)
    assert recorded["installed_version"] == "1.0"
    applied, reverted = recorded["history"][-2:]  # type: ignore[index]
    assert reverted["outcome"] == "reverted"
    assert reverted["command"] == "revert"
    assert reverted["reverts"] == applied["run_id"]
    assert applied["command"] == "upgrade"
    assert [c.split()[0] for c in migrations.calls_made()][-2:] == ["backward", "backward"]
    assert migrations.calls_made()[-2:] == [
        "backward v1.1_to_v1.2/1_new_file",
        "backward v1.0_to_v1.1/1_config",
    ]
    with pytest.raises(RevertError, match="itself the revert"):
        await revert_run(project_root=installation, migrations_dir=migrations.root)
    with pytest.raises(RevertError, match="already reverted"):
        await update.revert()


async def test_a_phase_that_committed_nothing_cannot_revert(
    installation: Path, migrations: MigrationWriter
) -> None:
    two_hops(migrations)
    migrations.add("v1.1_to_v1.2", "2_fails.py", forward="raise RuntimeError('no')")
    update = phase(installation, migrations, "1.0", "1.2")
    assert not await update.execute()
    with pytest.raises(RevertError, match="not committed"):
        await update.revert()


async def test_a_changed_migration_file_refuses_the_revert_and_changes_nothing(
    installation: Path, migrations: MigrationWriter
) -> None:
    two_hops(migrations)
    assert await phase(installation, migrations, "1.0", "1.2").execute()
    after = tree_digest(installation)
    path = migrations.root / "v1.1_to_v1.2" / "1_new_file.py"
    path.write_text(path.read_text() + "\n# edited\n")
    with pytest.raises(RevertError, match=r"1_new_file\.py"):
        await revert_run(project_root=installation, migrations_dir=migrations.root)
    assert tree_digest(installation) == after
    assert isinstance(RevertError("x"), UpdateError)


async def test_an_installation_that_moved_on_is_not_reverted(
    installation: Path, migrations: MigrationWriter
) -> None:
    two_hops(migrations)
    assert await phase(installation, migrations, "1.0", "1.1").execute()
    assert await phase(installation, migrations, "1.1", "1.2").execute()
    first = state(installation)["history"][0]["run_id"]  # type: ignore[index]
    with pytest.raises(RevertError, match=r"now at 1\.2"):
        await revert_run(project_root=installation, migrations_dir=migrations.root, run_id=first)


async def test_a_failing_backward_function_leaves_the_post_update_state(
    installation: Path, migrations: MigrationWriter
) -> None:
    two_hops(migrations)
    migrations.add(
        "v1.1_to_v1.2",
        "2_cannot_undo.py",
        forward="(project_root / 'other.txt').write_text('x')\nreturn True",
        backward="raise RuntimeError('cannot undo')",
    )
    assert await phase(installation, migrations, "1.0", "1.2").execute()
    after = tree_digest(installation)
    result = await revert_run(project_root=installation, migrations_dir=migrations.root)
    assert not result.ok
    assert not result.needs_recovery
    assert tree_digest(installation) == after
    assert state(installation)["installed_version"] == "1.2"


def test_history_names_each_outcome_in_plain_words() -> None:
    def run(outcome: str, **kw: str | None) -> RunRecord:
        fields = {"started_at": "t", "finished_at": "t", "version_from": "1.0"}
        return RunRecord(**fields, version_to="1.1", direction="upgrade", outcome=outcome, **kw)  # type: ignore[arg-type]

    revert = run("reverted", run_id="b", reverts="a", reason="health check", command="revert")
    assert describe_outcome(run("applied", run_id="a"), None) == "applied"
    assert describe_outcome(run("applied", run_id="a"), revert) == (
        "applied, then reverted after health check (by run b)"
    )
    assert describe_outcome(revert, None) == "reverted after health check (undid run a)"
    assert describe_outcome(run("rolled_back", error="boom"), None) == "rolled back"
    assert describe_outcome(run("rolled_back"), None) == "interrupted, rolled back by recover"
    assert describe_outcome(run("rolled_back", error="the update was cancelled"), None) == (
        "interrupted, rolled back"
    )
    assert describe_outcome(run("needs_recovery", error="x"), None) == "needs recovery"
