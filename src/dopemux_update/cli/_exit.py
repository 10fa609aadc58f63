"""The command line's exit codes and its user-facing error: what :mod:`.cli` needs before it
knows which command runs, kept free of the heavier modules (see DESIGN.md for the codes)."""

from __future__ import annotations

import click

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_RECOVERY = 3
EXIT_LOCKED = 4
EXIT_RESTART_FAILED = 5
EXIT_UNHEALTHY = 6  # committed, a service failed its health check, the run was reverted
EXIT_INTERRUPTED = 130


class CommandError(click.ClickException):
    """A user-facing error that ends the command with ``exit_code``."""

    def __init__(self, message: str, code: int = EXIT_USAGE) -> None:
        super().__init__(message)
        self.code = code
