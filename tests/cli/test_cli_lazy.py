"""Start-up: the command line imports a command's module only when that command runs."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys

import click
import pytest

from conftest import EXAMPLE_INSTALLATION, EXAMPLE_MIGRATIONS
from dopemux_update import cli

HEAVY = ("rich", "pydantic", "anyio", "asyncio", "structlog")


def _imported_by(*args: str) -> tuple[set[str], set[str]]:
    """The package's modules and the heavy libraries that ``dopemux-update ARGS`` imports."""
    code = (
        "import sys\n"
        "from dopemux_update.cli import main\n"
        f"code = main({list(args)!r})\n"
        "print(' '.join(sorted(sys.modules)), file=sys.stderr)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = set(run.stderr.split())
    ours = {name for name in loaded if name.startswith("dopemux_update.")}
    return ours, {name for name in HEAVY if name in loaded}


def test_help_imports_no_command_and_none_of_rich_pydantic_anyio_asyncio_structlog() -> None:
    ours, heavy = _imported_by("--help")
    assert ours <= {
        "dopemux_update.cli",
        "dopemux_update.cli._exit",
        "dopemux_update._core",
        "dopemux_update._core._exceptions",
    }
    assert heavy == set()


def test_a_command_imports_its_own_module_and_not_the_others() -> None:
    ours, _ = _imported_by("history", "--help")
    assert "dopemux_update.cli._history" in ours
    assert not ours & {"dopemux_update.cli._update", "dopemux_update.cli._verify"}


@pytest.mark.parametrize("name", sorted(cli.COMMANDS))
def test_the_command_table_matches_each_command(name: str) -> None:
    module, attribute, _ = cli.COMMANDS[name]
    command = getattr(importlib.import_module(module, "dopemux_update.cli"), attribute)
    assert isinstance(command, click.Command)
    assert command.name == name
    assert not command.hidden
    for limit in (20, 45, 60, 200):
        assert cli.short_help(name, limit) == command.get_short_help_str(limit)


def test_status_at_the_default_verbosity_imports_neither_structlog_nor_rich(
    example_copy: object,
) -> None:
    """Its console lines come from a stdlib handler; structlog (and rich, through it) are
    loaded only by commands that log more than lines (a run log, -v, --json)."""
    _, heavy = _imported_by("status", "--root", str(example_copy))
    assert not heavy & {"structlog", "rich"}
    _, heavy = _imported_by("status", "-v", "--root", str(example_copy))
    assert "structlog" in heavy


@pytest.fixture(scope="module")
def upgraded(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """``--root``/``--migrations`` of an installation with something to show: a run in its
    history (drift is checked against its files), a backup, a lock file, a hop pending."""
    root = tmp_path_factory.mktemp("upgraded") / "installation"
    shutil.copytree(EXAMPLE_INSTALLATION, root, symlinks=True)
    where = ["--root", str(root), "--migrations", str(EXAMPLE_MIGRATIONS)]
    upgrade = ["--yes", "--no-restart"]
    done = subprocess.run(
        [sys.executable, "-m", "dopemux_update", "upgrade", "--to", "0.2.0", *upgrade, *where],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    state = root / ".dopemux" / "update"
    assert (state / "lock").exists()
    assert [p for p in (state / "backups").iterdir() if not p.name.startswith(".")]
    return where


@pytest.mark.parametrize(
    "argv",
    [
        pytest.param(["status"], id="status"),
        pytest.param(["status", "--json"], id="status --json"),
        pytest.param(["status", "--check"], id="status --check"),
        pytest.param(["history"], id="history"),
        pytest.param(["history", "--json"], id="history --json"),
        pytest.param(["status", "--help"], id="status --help"),
        pytest.param(["history", "--help"], id="history --help"),
    ],
)
def test_status_and_history_import_none_of_rich_pydantic_anyio_asyncio_structlog(
    upgraded: list[str], argv: list[str]
) -> None:
    """The quick, read-only commands read the state, the backups' manifests, the lock and
    the migrations folder without the libraries an update needs."""
    _, heavy = _imported_by(*argv, *upgraded)
    assert heavy == set()


def test_status_reads_the_backups_without_the_backup_store(upgraded: list[str]) -> None:
    ours, _ = _imported_by("status", *upgraded)
    assert not ours & {
        "dopemux_update._backup._store",
        "dopemux_update._backup._manifest",
        "dopemux_update._run._runner",
        "dopemux_update._run._discovery",
    }


def test_the_upgraded_installation_shows_a_run_a_backup_and_a_pending_hop(
    upgraded: list[str],
) -> None:
    """The installation the tests above use has what makes status do its work."""
    shown = subprocess.run(
        [sys.executable, "-m", "dopemux_update", "status", *upgraded],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert "Pending:           v0.2.0_to_v0.3.0" in shown
    assert "Last run:          0.1.0 → 0.2.0 applied" in shown
    assert "Backups:           1 (" in shown


def _json_log_lines(*, structlog_first: bool) -> list[str]:
    """The stderr of a ``--json`` command's warnings and errors (timestamps blanked)."""
    code = (
        ("import structlog\n" if structlog_first else "") + "import sys\n"
        "from pathlib import Path\n"
        "from dopemux_update.cli._common import configure_logging\n"
        "from dopemux_update._core._log import get_logger\n"
        "configure_logging(0, json_logs=True)\n"
        "log = get_logger().bind(backup_id='b1')\n"
        "log.info('not.shown', path='x')\n"
        "log.warning('backup.skipped', path='a \"b\"\\n', size=3, where=Path('/x'),"
        " traceback='Traceback ...', level='mine')\n"
        "log.error('state.write_failed', error='é')\n"
        "log.critical('bare')\n"
        "assert ('structlog' in sys.modules) is " + repr(structlog_first) + "\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return [
        re.sub(r'"timestamp": "[^"]+"', '"timestamp": "T"', line)
        for line in run.stderr.splitlines()
    ]


def test_json_log_lines_without_structlog_are_the_ones_structlog_writes() -> None:
    """``status --json`` does not import structlog for its console, yet a warning there is
    the same JSON line as when structlog renders it."""
    light = _json_log_lines(structlog_first=False)
    assert len(light) == 3
    assert light == _json_log_lines(structlog_first=True)
