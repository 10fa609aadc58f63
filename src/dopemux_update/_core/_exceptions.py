"""Exceptions raised by dopemux-update.

Every exception the library raises derives from :class:`UpdateError`::

    UpdateError
    ├── PreflightError             nothing was changed; the update cannot start
    │   ├── MigrationValidationError   bad folders, files, functions or MIGRATION_INFO
    │   ├── PlanError                  no path, or competing paths, between two versions
    │   ├── VersionError               a version string that is not PEP 440
    │   ├── VersionMismatchError       the version to start from is not the recorded one
    │   ├── RecoveryNeededError        an earlier run was interrupted: recover first
    │   ├── LockError                  another updater holds the installation's lock
    │   └── UnsafeStateError           the state folder is writable by, or belongs to, others
    ├── StateError                 the recorded state under .dopemux/update/ is unreadable
    ├── BackupError                taking, reading or restoring a backup failed
    ├── RestartError               a service restart failed (after a committed update)
    ├── RevertError                a committed run cannot be reverted exactly (nothing changed)
    └── EditError                  a dopemux_update.edit helper could not change a file safely
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


class UpdateError(Exception):
    """Root of every error raised by dopemux-update."""


class PreflightError(UpdateError):
    """The update cannot start; the installation was not touched."""


class VersionError(PreflightError, ValueError):
    """A version string could not be parsed as a PEP 440 version."""

    def __init__(self, value: str, *, where: str | None = None) -> None:
        self.value = value
        self.where = where
        place = f" in {where}" if where else ""
        super().__init__(f"invalid version {value!r}{place}: not a PEP 440 version")


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with one file or folder of the migrations."""

    path: Path
    reason: str

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


class MigrationValidationError(PreflightError):
    """One or more migration files or folders are invalid. ``problems`` lists them all."""

    def __init__(self, problems: list[Problem] | tuple[Problem, ...]) -> None:
        self.problems = tuple(problems)
        count = len(self.problems)
        header = f"{count} problem{'s' if count != 1 else ''} found in the migrations"
        lines = "\n".join(f"  - {problem}" for problem in self.problems)
        super().__init__(f"{header}:\n{lines}")


class PlanError(PreflightError):
    """No single chain of transitions leads from the current to the target version."""

    def __init__(self, message: str, *, available: tuple[str, ...] = ()) -> None:
        self.available = available
        listing = ", ".join(available) if available else "none"
        super().__init__(f"{message}; available transitions: {listing}")


class VersionMismatchError(PreflightError):
    """The version an update was told to start from is not the one recorded as installed
    (pass ``force=True``, ``--force`` on the command line, to start from it anyway)."""

    def __init__(self, given: str, recorded: str, *, where: str = "current_version") -> None:
        self.given = given
        self.recorded = recorded
        super().__init__(
            f"{where} {given} disagrees with the recorded installed version {recorded}:"
            f" running from {given} would repeat or skip migrations; to run from {given}"
            " anyway, force it (`--force`, or force=True)"
        )


class LockError(PreflightError):
    """Another update holds the installation's lock (or the lock cannot be used)."""


class UnsafeStateError(PreflightError):
    """The state folder (or a file in it) could be changed by another user: refused.

    Another user who can write there could plant a forged journal or backup for this
    process (often root) to act on. ``path`` is the folder or file concerned.
    """

    def __init__(self, message: str, *, path: Path) -> None:
        self.path = path
        super().__init__(f"{path}: {message}")


class RecoveryNeededError(PreflightError):
    """An earlier run was interrupted; ``dopemux-update recover`` must run first."""


class StateError(UpdateError):
    """The update state of an installation could not be read or written."""

    def __init__(self, message: str, *, path: Path | None = None) -> None:
        self.path = path
        super().__init__(f"{path}: {message}" if path else message)


class BackupError(UpdateError):
    """A backup could not be taken, read, verified or restored."""

    def __init__(self, message: str, *, backup_id: str | None = None) -> None:
        self.backup_id = backup_id
        super().__init__(f"backup {backup_id}: {message}" if backup_id else message)


class RestartError(UpdateError):
    """A service could not be restarted."""

    def __init__(self, service: str, message: str, *, output: str = "") -> None:
        self.service = service
        self.output = output
        super().__init__(f"restarting {service!r} failed: {message}")


class EditError(UpdateError):
    """A helper of :mod:`dopemux_update.edit` could not change a file or database safely.

    ``path`` is the file or database concerned (None for an in-memory document edit) and
    ``reason`` says what went wrong; the OS, parser or SQLite error is the ``__cause__``.
    """

    def __init__(self, reason: str, *, path: Path | None = None) -> None:
        self.path = path
        self.reason = reason
        super().__init__(f"{path}: {reason}" if path is not None else reason)


class RevertError(UpdateError):
    """A committed run cannot be reverted exactly: no such run, the installation has moved on
    since, or its migration files changed. Nothing was changed."""
