"""The ``dopemux-update`` command line.

Exit codes: 0 success; 1 a migration failed and the update was rolled back cleanly; 2 usage or
validation error, nothing changed; 3 needs recovery; 4 another update holds the lock;
5 the migrations were committed but a service restart failed (restarts are owed); 6 committed,
a service failed its health check, and the run was reverted; 130 interrupted.

Each command's module is imported only when that command runs (``--help`` lists the commands
from the table below), so that a quick command does not pay for the others' imports.
"""

from __future__ import annotations

import gc
import importlib
import json
import sys
from collections.abc import Sequence
from typing import Any

import click

from .._core._exceptions import LockError, PreflightError, UpdateError
from ._exit import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_LOCKED,
    EXIT_OK,
    EXIT_RECOVERY,
    EXIT_USAGE,
    CommandError,
)

__all__ = ["EXIT_FAILED", "EXIT_LOCKED", "EXIT_OK", "EXIT_RECOVERY", "EXIT_USAGE", "main"]

# -- the commands ---------------------------------------------------------------------------

# name -> (module, attribute, the first paragraph of its help: what ``--help`` lists).
# tests/test_cli_lazy.py checks this table against the commands themselves.
COMMANDS: dict[str, tuple[str, str, str]] = {
    "backups": (
        "._backups",
        "backups",
        "List, take, verify, restore and prune backups of the installation.",
    ),
    "downgrade": ("._update", "downgrade", "Run the migrations backward to an older version."),
    "history": ("._history", "history_command", "List the recorded runs, newest first."),
    "new": ("._update", "new", "Create migrations/vFROM_to_vTO/NNN_NAME.py, ready to edit."),
    "plan": (
        "._update",
        "plan",
        "Validate every migration between two versions and show the plan.",
    ),
    "recover": (
        "._recover",
        "recover_command",
        "Finish or undo an interrupted run (exit 0 when there is nothing to do).",
    ),
    "restart": (
        "._restart",
        "restart_command",
        "Restart (and health-check) the services an earlier run still owes.",
    ),
    "stamp": (
        "._update",
        "stamp",
        "Record VERSION as installed, without running any migration.",
    ),
    "status": ("._status", "status", "Show the installed version and what is pending."),
    "upgrade": ("._update", "upgrade", "Run the migrations up to a newer version."),
    "verify": (
        "._verify",
        "verify_command",
        "Rehearse the plan on a sandbox copy: run it, undo it (the copy must come back"
        " identical), run it again. The installation is never changed. Exit 0 when clean.",
    ),
}


class LazyGroup(click.Group):
    """A group whose commands are imported from :data:`COMMANDS` when first asked for."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted({*COMMANDS, *self.commands})

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in self.commands and cmd_name in COMMANDS:
            module, attribute, _ = COMMANDS[cmd_name]
            command = getattr(_import_command(module), attribute)
            self.add_command(command, cmd_name)
        return self.commands.get(cmd_name)

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        """As click lists them, but from the table: listing imports no command's module."""
        names = self.list_commands(ctx)
        if not names:
            return
        limit = formatter.width - 6 - max(len(name) for name in names)
        rows = [(name, short_help(name, limit)) for name in names]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


def _import_command(module: str) -> Any:
    """Import a command's module with the garbage collector paused, then frozen: what an
    import makes (modules, classes, functions) lives as long as the command, and tens of
    collections walking it while the modules load cost an upgrade several milliseconds.
    (``main`` unfreezes it for a caller in the same process.)"""
    enabled = gc.isenabled()
    gc.disable()
    try:
        return importlib.import_module(module, __package__)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def short_help(name: str, limit: int) -> str:
    """The line ``--help`` shows for command ``name``, as click would make it."""
    if name in COMMANDS:
        return click.Command(name, help=COMMANDS[name][2]).get_short_help_str(limit)
    return ""


_EXIT_CODES = """\b
Exit codes:
  0    success
  1    a migration failed; the update was rolled back
  2    usage or validation error; nothing was changed
  3    the installation needs recovery (`dopemux-update recover`)
  4    another update holds the lock
  5    migrations committed, but a service restart failed
  130  interrupted

\b
Options such as --root and --json go after the command's name:
  dopemux-update status --root DIR"""


@click.group(
    cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]}, epilog=_EXIT_CODES
)
@click.version_option(package_name="dopemux-update", prog_name="dopemux-update")
def cli() -> None:
    """Run Dopemux update migrations: validated first, backed up, rolled back exactly."""


# -- entry point ----------------------------------------------------------------------------


_NOTHING_CHANGED = "\nNothing was changed."


def _command_name(argv: Sequence[str]) -> str | None:
    """The command ``argv`` names (``backups list`` for a group), as JSON objects name it."""
    words = [arg for arg in argv if not arg.startswith("-")]
    if not words or words[0] not in cli.list_commands(click.Context(cli)):
        return None
    command = cli.get_command(click.Context(cli), words[0])
    if isinstance(command, click.Group) and len(words) > 1 and words[1] in command.commands:
        return f"{words[0]} {words[1]}"
    return words[0]


def error_payload(message: str, code: int, argv: Sequence[str]) -> dict[str, Any]:
    """The JSON object of a command that failed before producing its own result."""
    return {
        "command": _command_name(argv),
        "ok": False,
        "exit_code": code,
        "error": message.removesuffix(_NOTHING_CHANGED),
        "nothing_changed": code in (EXIT_USAGE, EXIT_LOCKED),
    }


def _error(message: str, code: int, argv: Sequence[str]) -> int:
    if "--json" in argv:
        click.echo(json.dumps(error_payload(message, code, argv), indent=2))
    click.echo(f"error: {message}", err=True)
    return code


_COMMON_OPTIONS = ("--root", "--migrations", "--json", "-v", "--verbose", "-q", "--quiet")


def _usage_error(exc: click.UsageError, args: Sequence[str]) -> None:
    """click's usage and hint, then the error in the one ``error:`` style; an option that
    every command takes, placed before the command, gets a hint where it goes. No command
    at all gets the help itself, as ``--help`` shows it (exit 2, as click has it)."""
    if isinstance(exc, click.exceptions.NoArgsIsHelpError) and exc.ctx is not None:
        click.echo(exc.ctx.get_help())
        return
    if exc.ctx is not None:
        click.echo(exc.ctx.get_usage(), err=True)
        if exc.ctx.command.get_help_option(exc.ctx) is not None:
            click.echo(f"Try '{exc.ctx.command_path} --help' for help.", err=True)
    message = exc.format_message()
    option = getattr(exc, "option_name", None)
    if (
        isinstance(exc, click.NoSuchOption)
        and option in _COMMON_OPTIONS
        and exc.ctx is not None
        and exc.ctx.parent is None  # given to dopemux-update itself, not to a command
    ):
        message += f"\noptions go after the command name: dopemux-update status {option}" + (
            " DIR" if option in ("--root", "--migrations") else ""
        )
    if "--json" in args:
        click.echo(json.dumps(error_payload(message, EXIT_USAGE, args), indent=2))
    click.echo(f"error: {message}", err=True)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line with ``argv`` (default: ``sys.argv[1:]``); return the exit code.

    The command configures structlog for its console and run log; the configuration found
    before is put back afterwards, so that a caller in the same process (a test, a host)
    does not go on logging into a closed run log.
    """
    before = sys.modules.get("structlog")  # not imported: nobody configured it
    configured = before is not None and before.is_configured()
    saved = before.get_config() if before is not None else None
    try:
        return _main(argv)
    finally:
        common = sys.modules.get("dopemux_update.cli._common")
        if common is not None:
            common.reset_console_logging()
        structlog = sys.modules.get("structlog")
        if structlog is not None:
            if configured and saved is not None:
                structlog.configure(**saved)
            else:
                structlog.reset_defaults()
        if argv is not None:  # a caller in this process: its collector as it was (see _update)
            gc.unfreeze()
        else:  # the process ends: its last collection need not walk every object it made
            gc.freeze()


def _main(argv: Sequence[str] | None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        value = cli.main(args=args, prog_name="dopemux-update", standalone_mode=False)
    except CommandError as exc:
        return _error(exc.format_message(), exc.code, args)
    except click.exceptions.Exit as exc:
        return exc.exit_code
    except click.exceptions.Abort:
        return _error("aborted", EXIT_INTERRUPTED, args)
    except click.UsageError as exc:
        _usage_error(exc, args)
        return EXIT_USAGE
    except click.ClickException as exc:
        return _error(exc.format_message(), EXIT_USAGE, args)
    except LockError as exc:
        return _error(str(exc), EXIT_LOCKED, args)
    except PreflightError as exc:
        return _error(f"{exc}{_NOTHING_CHANGED}", EXIT_USAGE, args)
    except UpdateError as exc:
        return _error(str(exc), EXIT_USAGE, args)
    except KeyboardInterrupt:
        return _error("interrupted", EXIT_INTERRUPTED, args)
    return value if isinstance(value, int) else EXIT_OK
