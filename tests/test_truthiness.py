"""Every result the library returns is its ``ok`` as a truth value.

Dopemux's UpdateManager checks ``if not success:``: a failure must never read as success.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import MigrationWriter
from dopemux_update import (
    Direction,
    OrchestrationPhase,
    PipelineResult,
    RehearsalReport,
    RestartResult,
    UpdateResult,
)


@pytest.mark.parametrize("ok", [True, False])
def test_every_result_type_is_its_ok(ok: bool) -> None:
    results = [
        UpdateResult(ok=ok, version_from="1", version_to="2", direction=Direction.UPGRADE),
        RestartResult(restarted=("a",), failed=() if ok else (("b", "boom"),)),
        RehearsalReport(ok=ok, migrations=()),
        PipelineResult(
            results=(("x", RestartResult((), () if ok else (("b", "e"),))),), skipped=()
        ),
    ]
    for result in results:
        assert result.ok is ok
        assert bool(result) is ok, type(result).__name__


@pytest.mark.anyio
async def test_a_rolled_back_run_is_falsy(installation: Path, migrations: MigrationWriter) -> None:
    migrations.add("v1.0_to_v1.1", "1_fails.py", forward="return False")
    result = await OrchestrationPhase(
        project_root=installation, migrations_dir=migrations.root, current_version="1.0"
    ).execute()
    assert not result
    assert result.rolled_back == ()
