"""Start-up: the command line imports a command's module only when that command runs."""

from __future__ import annotations

import importlib
import subprocess
import sys

import click
import pytest

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
