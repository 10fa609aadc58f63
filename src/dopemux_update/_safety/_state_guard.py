"""Protect a run from its own migrations: its state folder and the working directory.

A migration is arbitrary code. One that deletes ``.dopemux/`` (a "move the database out"
restructure) takes the run's journal and backup with it; one that calls ``os.chdir`` would
send every relative path elsewhere. The run resolves its paths once, before any migration is
imported, and after each migration call checks, with a few ``stat`` calls, that the state
folder, the journal and the backup (its folder, its manifest, and the object store its
files live in) are the very files it made, and that the working directory is where it was.
Removing single stored objects is left to the verification every restore makes first.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from .._backup._names import MANIFEST, MANIFEST_SUM, OBJECTS
from .._core._exceptions import UpdateError
from .._core._log import get_logger

__all__ = ["StateGuard", "StateTamperedError", "absolute", "restore_cwd"]

logger = get_logger()

_Identity = tuple[int, ...]


class StateTamperedError(UpdateError):
    """A migration deleted or replaced the run's state folder, journal or backup."""

    def __init__(self, migration_id: str, what: str) -> None:
        self.migration_id = migration_id
        self.what = what
        super().__init__(f"{migration_id} {what}")


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _identity_of(info: os.stat_result | None, *, content: bool = False) -> _Identity | None:
    if info is None:
        return None
    if content:
        return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns
    return info.st_dev, info.st_ino


def _identity(path: Path, *, content: bool = False) -> _Identity | None:
    # os.lstat, not Path.lstat: checked after every migration, a thousand times a run.
    return _identity_of(_lstat(path), content=content)


class StateGuard:
    """What the state folder held when the run began its migrations (taken when made)."""

    __slots__ = (
        "_ids",
        "_watched",
        "backup",
        "backup_files",
        "journal",
        "journal_size",
        "objects",
        "state_dir",
    )

    def __init__(
        self,
        state_dir: Path,
        journal: Path,
        backup: Path | None,
        journal_size: Callable[[], int | None] | None = None,
    ) -> None:
        """What is there now; ``journal_size`` tells how long the run made its journal."""
        self.state_dir = state_dir
        self.journal = journal
        self.backup = backup
        self.journal_size = journal_size
        self.backup_files: tuple[Path, ...] = ()
        self.objects: Path | None = None
        ids = {state_dir: _identity(state_dir), journal: _identity(journal)}
        if backup is not None:
            self.backup_files = (backup / MANIFEST, backup / MANIFEST_SUM)
            ids[backup] = _identity(backup)
            # The shared objects (format 4); a full backup keeps its own, inside its folder.
            shared = backup.parent / OBJECTS
            ids[shared] = _identity(shared)
            if ids[shared] is not None:
                self.objects = shared
        ids.update({path: _identity(path, content=True) for path in self.backup_files})
        self._ids = ids
        #: The paths ``_unchanged`` looks at, as text, with what they were.
        self._watched: tuple[tuple[tuple[str, _Identity | None], ...], ...] | None = None

    def problems(self) -> list[str]:
        """What is no longer as it was: ``["it deleted or replaced the journal ...", ...]``."""
        if _identity(self.state_dir) != self._ids[self.state_dir]:
            return [
                f"it deleted or replaced the state folder {self.state_dir}, journal and backups"
            ]
        found = []
        journal = _lstat(self.journal)  # one call for its identity and its length
        if _identity_of(journal) != self._ids[self.journal]:
            found.append(f"it deleted or replaced the journal {self.journal}")
        elif self.journal_size is not None and self.journal_size() not in (
            None,
            None if journal is None else journal.st_size,
        ):
            found.append(f"it changed the journal {self.journal}")
        if self.backup is not None:
            if _identity(self.backup) != self._ids[self.backup]:
                found.append(f"it deleted or replaced the backup {self.backup}")
            elif any(_identity(f, content=True) != self._ids[f] for f in self.backup_files):
                found.append(f"it changed the backup {self.backup}")
            if self.objects is not None and _identity(self.objects) != self._ids[self.objects]:
                found.append(f"it deleted or replaced the backups' stored objects {self.objects}")
        return found

    def backup_usable(self) -> bool:
        """The backup's folder and manifest are still the ones the run wrote."""
        if self.backup is None:
            return False
        objects_kept = self.objects is None or _identity(self.objects) == self._ids[self.objects]
        return (
            objects_kept
            and _identity(self.backup) == self._ids[self.backup]
            and all(_identity(f, content=True) == self._ids[f] for f in self.backup_files)
        )

    def _unchanged(self) -> bool:
        """Whether every guarded path is as captured, in one pass of ``lstat`` calls: what
        :meth:`problems` looks at, without its details (True means it would find nothing;
        False, that it must look)."""
        if self._watched is None:
            folders = [self.state_dir, self.journal]
            if self.backup is not None:
                folders.append(self.backup)
                if self.objects is not None:
                    folders.append(self.objects)
            self._watched = (
                tuple((str(path), self._ids[path]) for path in folders),
                tuple((str(path), self._ids[path]) for path in self.backup_files),
            )
        identities, contents = self._watched
        journal_length = -1
        try:
            for index, (path, expected) in enumerate(identities):
                info = os.lstat(path)
                if (info.st_dev, info.st_ino) != expected:
                    return False
                if index == 1:  # the journal (after the state folder)
                    journal_length = info.st_size
            for path, expected in contents:
                info = os.lstat(path)
                if (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns) != expected:
                    return False
        except OSError:
            return False
        size = None if self.journal_size is None else self.journal_size()
        return size is None or size == journal_length

    def check(self, migration_id: str) -> None:
        """Raise :class:`StateTamperedError` naming ``migration_id`` if anything changed."""
        if self._unchanged():  # after every migration: the usual answer, quickly
            return
        found = self.problems()
        if found:
            what = "touched the update's own state folder: " + "; ".join(found)
            logger.error("migration.touched_state", migration_id=migration_id, problems=found)
            raise StateTamperedError(migration_id, what)


def absolute(path: Path | str) -> Path:
    """``path`` made absolute against the working directory now (links are not followed)."""
    return Path(path).absolute()


def restore_cwd(expected: str, migration_id: str) -> str | None:
    """If the working directory is no longer ``expected``, log it and go back there.

    Returns where it had gone (None when it had not moved). A folder that was removed under
    the process reads as ``"(deleted)"``.
    """
    try:
        now = os.getcwd()  # noqa: PTH109 - after every migration: no Path to build
    except OSError:
        now = "(deleted)"
    if now == expected:
        return None
    logger.warning("migration.changed_cwd", migration_id=migration_id, cwd=now, restored=expected)
    try:
        os.chdir(expected)
    except OSError as exc:
        logger.error("migration.cwd_not_restored", cwd=expected, error=str(exc))
    return now
