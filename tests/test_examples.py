"""The shipped example migrations, forward and backward, on a copy of the sample installation."""

from __future__ import annotations

import difflib
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from conftest import EXAMPLE_INSTALLATION, EXAMPLE_MIGRATIONS, REPO, tree_digest
from dopemux_update import OrchestrationPhase, ServiceRestartPhase, edit, rehearse
from dopemux_update.testing import assert_reversible, run_backward, run_forward

pytestmark = pytest.mark.anyio


class RecordingRestarter:
    def __init__(self) -> None:
        self.restarted: list[str] = []

    async def restart(self, service: str) -> None:
        self.restarted.append(service)


def db_content(root: Path) -> tuple[object, ...]:
    with closing(sqlite3.connect(root / ".dopemux" / "conport.db")) as conn:
        columns = conn.execute("PRAGMA table_info(decisions)").fetchall()
        indexes = conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'index' ORDER BY name"
        ).fetchall()
        rows = conn.execute("SELECT * FROM decisions ORDER BY id").fetchall()
    return columns, indexes, rows


async def test_examples_upgrade_and_downgrade_exactly(example_copy: Path) -> None:
    before, before_db = tree_digest(example_copy), db_content(example_copy)
    app_yaml = (example_copy / "config/app.yaml").read_bytes()
    restart = ServiceRestartPhase(RecordingRestarter())
    up = await OrchestrationPhase(
        project_root=example_copy,
        migrations_dir=EXAMPLE_MIGRATIONS,
        current_version="0.1.0",
        target_version="0.2.0",
        restart_phase=restart,
    ).execute()
    assert up.ok, up.error
    assert restart.services == ("mcp-broker", "mcp-leantime", "conport")
    broker = (example_copy / "config/mcp/broker.yaml").read_text()
    compose = (example_copy / "docker-compose.yml").read_text()
    assert "leantime:" in broker
    assert "mcp-leantime:" in compose
    assert "keep this!" in broker  # the user's comment survives
    assert (example_copy / "config/app.yaml").read_bytes() == app_yaml
    columns, indexes, rows = db_content(example_copy)
    assert "priority_level" in [c[1] for c in columns]  # type: ignore[attr-defined]
    assert "idx_decisions_priority" in [i[0] for i in indexes]  # type: ignore[attr-defined]
    assert rows  # the user's decisions are all still there

    down = await OrchestrationPhase(
        project_root=example_copy,
        migrations_dir=EXAMPLE_MIGRATIONS,
        current_version="0.2.0",
        target_version="0.1.0",
    ).execute()
    assert down.ok, down.error
    after = tree_digest(example_copy)
    before.pop(".dopemux/conport.db")
    after.pop(".dopemux/conport.db")
    assert after == before
    assert db_content(example_copy) == before_db


async def test_a_late_failure_restores_001_and_002s_changes_exactly(
    example_copy: Path, tmp_path: Path
) -> None:
    migrations = tmp_path / "migrations" / "v0.1.0_to_v0.2.0"
    migrations.mkdir(parents=True)
    source = EXAMPLE_MIGRATIONS / "v0.1.0_to_v0.2.0"
    for name in ("001_update_mcp_configs.py", "002_upgrade_database_schema.py"):
        (migrations / name).write_text((source / name).read_text())
    (migrations / "003_breaks.py").write_text(
        (source / "001_update_mcp_configs.py")
        .read_text()
        .replace(
            "def migrate_forward(project_root: Path) -> bool:",
            "def migrate_forward(project_root: Path) -> bool:\n"
            "    raise RuntimeError('late failure')\n\n\n"
            "def _unused(project_root: Path) -> bool:",
        )
    )
    before, before_db = tree_digest(example_copy), db_content(example_copy)
    result = await OrchestrationPhase(
        project_root=example_copy,
        migrations_dir=migrations.parent,
        current_version="0.1.0",
    ).execute()
    assert not result.ok
    assert result.failed_migration == "v0.1.0_to_v0.2.0/003_breaks"
    assert result.rolled_back == (
        "v0.1.0_to_v0.2.0/002_upgrade_database_schema",
        "v0.1.0_to_v0.2.0/001_update_mcp_configs",
    )
    assert result.restored
    after = tree_digest(example_copy)
    # The database is put back through SQLite's backup API: same content, not same bytes.
    before.pop(".dopemux/conport.db")
    after.pop(".dopemux/conport.db")
    assert after == before
    assert db_content(example_copy) == before_db


def test_the_walkthrough_of_the_readmes_first_command_runs_end_to_end(tmp_path: Path) -> None:
    """`examples/walkthrough.py`: status, plan, verify, upgrade, on a copy; the sample unchanged."""
    before = tree_digest(EXAMPLE_INSTALLATION)
    result = subprocess.run(
        [sys.executable, str(REPO / "examples" / "walkthrough.py"), str(tmp_path / "copy")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Rehearsal clean: 4 migrations" in result.stdout
    assert "Update FAILED at v0.2.0_to_v0.3.0/999_fails_on_purpose" in result.stdout
    assert "Verified identical: yes" in result.stdout
    assert "exactly as before the failed upgrade" in result.stdout
    assert f"The upgraded copy of the sample is in {tmp_path / 'copy'}" in result.stdout
    assert "Upgraded 0.1.0 → 0.3.0: 4 migrations applied." in result.stdout
    assert "config/app.yaml: unchanged (user comments and all)" in result.stdout
    assert "Installed version: 0.3.0" in result.stdout
    assert tree_digest(EXAMPLE_INSTALLATION) == before


# --------------------------------------------------------------------------- v0.2.0 -> v0.3.0

V3 = EXAMPLE_MIGRATIONS / "v0.2.0_to_v0.3.0"


def test_the_pal_example_set_is_reversible_alone_and_together() -> None:
    before = tree_digest(EXAMPLE_INSTALLATION)
    for path in sorted(V3.glob("0*.py")):
        assert_reversible(path, EXAMPLE_INSTALLATION)
    report = assert_reversible(V3, EXAMPLE_INSTALLATION)
    assert report.ok
    assert tree_digest(EXAMPLE_INSTALLATION) == before


async def test_the_whole_example_chain_rehearses_clean(example_copy: Path) -> None:
    report = await rehearse(
        project_root=example_copy, migrations_dir=EXAMPLE_MIGRATIONS, current_version="0.1.0"
    )
    assert report.ok, "\n".join(report.describe())
    assert "Rehearsal clean: 4 migrations" in report.describe()[0]


def fts_state(root: Path) -> tuple[object, ...]:
    with closing(sqlite3.connect(root / ".dopemux" / "conport.db")) as conn:
        shadow = conn.execute("SELECT id, block FROM decisions_fts_data ORDER BY id").fetchall()
        found = conn.execute(
            "SELECT rowid FROM decisions_fts WHERE decisions_fts MATCH 'broker'"
        ).fetchall()
    return shadow, found


def test_the_pal_example_changes_only_its_own_lines_and_leaves_search_alone(
    installation_copy: Callable[[Path], Path],
) -> None:
    root = installation_copy(EXAMPLE_INSTALLATION)
    texts = {name: (root / name).read_text() for name in ("docker-compose.yml", ".env")}
    search = fts_state(root)
    printed = run_forward(V3, root)
    assert "  → Adding PAL_API_KEY= to .env: fill it in before starting mcp-pal" in printed
    compose = (root / "docker-compose.yml").read_text()
    removed = [
        line
        for line in difflib.ndiff(texts["docker-compose.yml"].splitlines(), compose.splitlines())
        if line.startswith("- ")
    ]
    assert removed == []  # only additions: the flow healthchecks and labels are untouched
    assert compose.count('test: [ "CMD') == 2
    assert "      PAL_URL: http://mcp-pal:3008\n" in compose  # map form
    assert "      - CONPORT_PAL_ENABLED=true\n" in compose  # list form
    assert (root / ".env").read_text() == texts[".env"] + "PAL_API_KEY=\n"
    assert fts_state(root) == search
    with closing(sqlite3.connect(root / ".dopemux" / "conport.db")) as conn:
        indexes = conn.execute("PRAGMA index_list(pal_threads)").fetchall()
    assert [row[1] for row in indexes] == ["idx_pal_threads_decision"]

    with edit.edit_env(root / ".env") as env:
        env["PAL_API_KEY"] = "filled-in-by-the-operator"
    run_backward(V3, root)
    assert "PAL_API_KEY=filled-in-by-the-operator" in (root / ".env").read_text()  # kept
    assert (root / "docker-compose.yml").read_text() == texts["docker-compose.yml"]
