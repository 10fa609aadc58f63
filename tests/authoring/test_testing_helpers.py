"""`dopemux_update.testing` and the `installation_copy` fixture, as migration authors use them."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import Callable
from contextlib import closing
from pathlib import Path

import pytest

from conftest import EXAMPLE_INSTALLATION, EXAMPLE_MIGRATIONS, MigrationWriter, tree_digest
from dopemux_update import MigrationValidationError
from dopemux_update.testing import (
    assert_reversible,
    assert_same_tree,
    load_migrations,
    rehearse_migrations,
    run_backward,
    run_forward,
)

V1 = "v0.1.0_to_v0.2.0"
EXAMPLE_FOLDER = EXAMPLE_MIGRATIONS / V1


def test_the_example_migrations_are_reversible_file_by_file_and_together() -> None:
    before = tree_digest(EXAMPLE_INSTALLATION)
    for path in sorted(EXAMPLE_FOLDER.glob("0*.py")):
        assert_reversible(path, EXAMPLE_INSTALLATION)
    report = assert_reversible(EXAMPLE_FOLDER, EXAMPLE_INSTALLATION)
    assert [m.rsplit("/", 1)[1] for m in report.migrations] == [
        "001_update_mcp_configs",
        "002_upgrade_database_schema",
    ]
    assert tree_digest(EXAMPLE_INSTALLATION) == before  # the fixture is only read


def test_assert_reversible_names_the_file_a_backward_leaves_behind(
    installation: Path, migrations: MigrationWriter
) -> None:
    path = migrations.add(
        V1,
        "001_leaky.py",
        forward="(project_root / 'cache.db').write_text('x')\nreturn True",
        backward="return True",
    )
    with pytest.raises(AssertionError) as caught:
        assert_reversible(path, installation)
    message = str(caught.value)
    assert f"Responsible: {V1}/001_leaky" in message
    assert "added:   cache.db" in message


def test_a_failing_forward_is_reported_with_what_it_printed(
    installation: Path, migrations: MigrationWriter
) -> None:
    path = migrations.add(V1, "001_fails.py", forward="print('  → step one')\nraise KeyError('x')")
    report = rehearse_migrations(path, installation)
    assert (report.ok, report.stage) == (False, "apply")
    assert "  | " + "  → step one" in report.describe()
    assert report.traceback is not None
    assert "KeyError" in report.traceback


def test_include_and_exclude_narrow_what_is_compared(
    installation: Path, migrations: MigrationWriter
) -> None:
    path = migrations.add(
        V1,
        "001_touches_logs.py",
        forward="(project_root / 'empty' / 'run.log').write_text('x')\nreturn True",
    )
    assert not rehearse_migrations(path, installation).ok
    assert rehearse_migrations(path, installation, exclude=["*.log"]).ok


def test_run_forward_and_backward_work_in_place_on_a_copy(
    installation_copy: Callable[[Path], Path],
) -> None:
    root = installation_copy(EXAMPLE_INSTALLATION)
    printed = run_forward(EXAMPLE_FOLDER, root)
    assert any("leantime" in line for line in printed)
    assert "leantime" in (root / "config" / "mcp" / "broker.yaml").read_text()
    with closing(sqlite3.connect(root / ".dopemux" / "conport.db")) as conn:
        columns = [row[1] for row in conn.execute("PRAGMA table_info(decisions)")]
    assert "priority_level" in columns
    run_backward(EXAMPLE_FOLDER, root)
    assert_same_tree(EXAMPLE_INSTALLATION, root)  # the database's pages differ; not its data


def test_assert_same_tree_lists_what_differs(
    installation: Path, installation_copy: Callable[[Path], Path]
) -> None:
    root = installation_copy(installation)
    assert_same_tree(installation, root)
    (root / "config" / "app.yaml").write_text("changed\n")
    (root / "extra").mkdir()
    with pytest.raises(AssertionError, match=r"added:   extra\n  changed: config/app.yaml"):
        assert_same_tree(installation, root)


def test_run_forward_raises_with_the_migration_and_its_output(
    installation: Path, migrations: MigrationWriter
) -> None:
    path = migrations.add(V1, "001_no.py", forward="print('nope')\nreturn False")
    with pytest.raises(AssertionError, match=r"001_no: migrate_forward returned False\n  \| nope"):
        run_forward(path, installation)


def test_installation_copy_gives_independent_copies_with_modes_and_links(
    installation: Path, installation_copy: Callable[[Path], Path]
) -> None:
    first, second = installation_copy(installation), installation_copy(installation)
    assert first != second
    assert tree_digest(first) == tree_digest(installation) == tree_digest(second)
    (first / "secret.env").write_text("changed")
    assert tree_digest(second) == tree_digest(installation)


def test_load_migrations_refuses_bad_names_and_folders(
    tmp_path: Path, migrations: MigrationWriter
) -> None:
    bad_name = migrations.add(V1, "first.py")
    with pytest.raises(MigrationValidationError, match=r"expected NNN_name\.py"):
        load_migrations(bad_name)
    wrong_folder = tmp_path / "not-a-transition"
    wrong_folder.mkdir()
    with pytest.raises(MigrationValidationError, match="not-a-transition"):
        load_migrations(wrong_folder)
    with pytest.raises(MigrationValidationError, match="no such migration"):
        load_migrations(tmp_path / "missing.py")


def test_the_fixture_is_available_in_an_authors_own_suite(tmp_path: Path) -> None:
    """Installed dopemux-update registers `installation_copy` with pytest (entry point)."""
    (tmp_path / "test_author.py").write_text(
        textwrap.dedent(
            f"""
            from pathlib import Path
            from dopemux_update.testing import assert_reversible, run_forward

            FOLDER = Path({str(EXAMPLE_FOLDER)!r})
            FIXTURE = Path({str(EXAMPLE_INSTALLATION)!r})

            def test_reversible():
                assert_reversible(FOLDER, FIXTURE)

            def test_forward(installation_copy):
                root = installation_copy(FIXTURE)
                run_forward(FOLDER, root)
                assert "leantime" in (root / "docker-compose.yml").read_text()
            """
        )
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_DISABLE_PLUGIN_AUTOLOAD"}
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "2 passed" in result.stdout


def test_assert_reversible_fails_a_migration_past_its_timeout(
    installation: Path, migrations: MigrationWriter
) -> None:
    path = migrations.add(V1, "001_slow.py", forward="import time\ntime.sleep(0.5)\nreturn True")
    with pytest.raises(AssertionError, match=r"001_slow: migrate_forward timed out after 0\.1s"):
        assert_reversible(path, installation, timeout=0.1)
