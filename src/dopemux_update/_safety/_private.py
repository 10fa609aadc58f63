"""The tool's own state is private: created 0700/0600 whatever the umask, refused when others
could change it.

Root's ``recover`` acts on the journal and the backups it finds in the state folder. Another
local user who can write there could plant a forged journal and backup, so a state folder
(or its parent, or the lock, journal or state file in it) that is writable by other users,
or that belongs to a user other than the one running, is refused with
:class:`~dopemux_update.UnsafeStateError` before anything in it is read or written. Folders
and files the tool creates get their modes set explicitly, so that a permissive umask
(``umask 000``) cannot open them up.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
from pathlib import Path

from .._core._exceptions import UnsafeStateError

__all__ = [
    "JOURNAL",
    "PRIVATE_DIR",
    "PRIVATE_FILE",
    "check_state_dir",
    "make_private_dirs",
    "open_private",
    "tighten",
]

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600
#: The journal's name in the state folder (here, so that finding one needs no journal code).
JOURNAL = "journal.jsonl"
# The files whose content decides what a command does: lock holder, interrupted run, version.
_CHECKED_FILES = ("lock", JOURNAL, "state.json")
_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH


def make_private_dirs(path: Path) -> None:
    """Create ``path`` and its missing parents, each 0700 whatever the umask.

    Folders that already exist are left as they are (:func:`check_state_dir` judges them).
    """
    missing: list[Path] = []
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for folder in reversed(missing):
        try:
            folder.mkdir(PRIVATE_DIR)
        except FileExistsError:
            continue  # made meanwhile by someone else: not ours to change
        folder.chmod(PRIVATE_DIR)  # the umask may have taken bits away (umask 0200)


def tighten(state_dir: Path) -> None:
    """Make an existing state folder of this user 0700 (one an older version, a copy or a
    checkout left readable by others): what it holds, backups and ``.env`` copies included,
    is the owner's alone. Call after :func:`check_state_dir` accepted it."""
    with contextlib.suppress(FileNotFoundError):
        info = state_dir.stat()
        if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) != PRIVATE_DIR:
            state_dir.chmod(PRIVATE_DIR)


def open_private(path: Path, flags: int) -> int:
    """``os.open`` a file in the state folder, never through a symlink; a file of this user
    ends up 0600 whatever the umask (one that an older version left 0644 too)."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        if os.fstat(fd).st_uid == os.geteuid():
            os.fchmod(fd, PRIVATE_FILE)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _user(uid: int) -> str:
    try:
        return f"uid {uid} ({pwd.getpwuid(uid).pw_name})"
    except KeyError:
        return f"uid {uid}"


def _refuse_writable(
    path: Path, info: os.stat_result, what: str, *, bits: int = _OTHERS_WRITE
) -> None:
    if stat.S_ISDIR(info.st_mode) and info.st_mode & stat.S_ISVTX:
        return  # sticky, like /tmp: others cannot rename or remove what is not theirs
    if info.st_mode & bits:
        import shlex  # noqa: PLC0415 - only to word a refusal

        fix = "chmod 700" if stat.S_ISDIR(info.st_mode) else "chmod 600"
        raise UnsafeStateError(
            f"{what} is writable by other users (mode {stat.S_IMODE(info.st_mode):04o}):"
            " another user could plant a forged journal or backup there. Make it private"
            f" (`{fix} {shlex.quote(str(path))}`) after checking its content, then try again",
            path=path,
        )


def _refuse_foreign(path: Path, info: os.stat_result, what: str) -> None:
    me = os.geteuid()
    if info.st_uid != me:
        import shlex  # noqa: PLC0415 - only to word a refusal

        raise UnsafeStateError(
            f"{what} belongs to {_user(info.st_uid)}, not to the user running this command"
            f" ({_user(me)}): that user could plant a forged journal or backup there. Run the"
            f" command as {_user(info.st_uid)}, or take the folder over"
            f" (`chown -R {me} {shlex.quote(str(path))}`) after checking its content",
            path=path,
        )


def check_state_dir(state_dir: Path) -> None:
    """Refuse a state folder that another user could change; nothing if there is none yet.

    The folder must belong to this process's user and be writable by nobody else; its
    parent (``.dopemux``) must not be writable by all users (unless sticky, like ``/tmp``);
    its lock, journal and state file, where present, must be regular files of this user
    that nobody else may write.
    """
    try:
        info = state_dir.stat()
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UnsafeStateError(
            f"the update state folder cannot be checked: {exc.strerror}", path=state_dir
        ) from exc
    if not stat.S_ISDIR(info.st_mode):
        raise UnsafeStateError("the update state folder is not a folder", path=state_dir)
    parent = state_dir.parent
    try:
        # Group-writable is let be here: Dopemux's own .dopemux may be shared with a group
        # (umask 002); the state folder itself, checked below, may not be.
        _refuse_writable(
            parent, parent.stat(), "the folder holding the update state", bits=stat.S_IWOTH
        )
    except OSError as exc:
        raise UnsafeStateError(f"cannot be checked: {exc.strerror}", path=parent) from exc
    _refuse_foreign(state_dir, info, "the update state folder")
    _refuse_writable(state_dir, info, "the update state folder")
    for name in _CHECKED_FILES:
        path = state_dir / name
        try:
            found = path.lstat()
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise UnsafeStateError(f"cannot be checked: {exc.strerror}", path=path) from exc
        if stat.S_ISLNK(found.st_mode) and name == "lock":
            continue  # the lock refuses to open it (a LockError, exit 4)
        if not stat.S_ISREG(found.st_mode):
            raise UnsafeStateError(
                "is not a regular file (a symlink?); refusing to use it as update state",
                path=path,
            )
        _refuse_foreign(path, found, "this update state file")
        _refuse_writable(path, found, "this update state file")
