"""Restore: make the tree in a backup's scope identical to the backup, rewriting only what differs.

Changed or deleted files come back (sparse ones with their holes), added files and folders
go, modes, owners and mtimes are fixed, hard links are linked again, symlinks are recreated,
and SQLite databases are written back through SQLite's backup API with their settings (or,
where that API cannot write into the live file, replaced as a whole). Every stored copy the
restore will use is verified first: a damaged backup changes nothing.

Nothing a manifest says can make the restore write outside the root or through a symlink:
every folder is opened relative to the root one component at a time without following links
(``O_NOFOLLOW``), every change is made relative to such an open folder (``dir_fd``), and
symlinks are created last. Temporary files get short names (``.dmx-restore-<hex>``), so a
file name of up to NAME_MAX bytes can be restored.

A folder the backup does not hold is removed with everything in it, including names the
scope excludes (``.git`` of a repository a failed migration cloned there): it was made after
the backup. Only a folder that is, or holds, a path the scope excludes by its exact name (the
state folder, the migrations folder, the installation's own ``.git``) is kept, with a warning.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import sqlite3
import stat
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, Protocol

from .._core._exceptions import BackupError
from .._core._faults import check_write, crash_point
from .._core._fsutil import sync_filesystem
from .._core._log import get_logger
from . import _sqlite
from ._copy import hash_file
from ._manifest import Entry, Manifest, ProgressCallback, database_signature, file_signature
from ._sparse import copy_sparse
from ._tree import Scope, TreeEntry, may_set_owner, shown, walk

__all__ = ["RestoreReport", "restore"]

logger = get_logger()

_OPEN_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_HELD_FOLDERS = 256
_GLOB = re.compile(r"\[([*?\[])\]|([*?\[])")


class StoredBackups(Protocol):
    """What a restore needs of the backup store (``_backup.BackupStore``, which restores
    through this module: the store builds on the restore, never the other way round)."""

    def read_manifest(self, backup_id: str) -> Manifest: ...

    def path_of(self, backup_id: str) -> Path: ...

    def stored_file(self, manifest: Manifest, rel: str, entry: Entry) -> Path: ...

    def verify(
        self,
        backup_id: str,
        *,
        only: Iterable[str] | None = None,
        manifest: Manifest | None = None,
        entries: dict[str, Entry] | None = None,
    ) -> Manifest: ...


@dataclass(frozen=True, slots=True)
class RestoreReport:
    """What a restore changed to make the tree equal to the snapshot."""

    backup_id: str
    written: tuple[str, ...]
    removed: tuple[str, ...]
    fixed: tuple[str, ...]
    databases: tuple[str, ...]

    @property
    def changed(self) -> bool:
        return bool(self.written or self.removed or self.fixed or self.databases)


class _Plan:
    """What a restore changes, by kind of change (rel paths)."""

    __slots__ = (
        "databases",
        "hardlinks",
        "links",
        "metadata",
        "mkdir",
        "remove",
        "same",
        "write",
    )

    def __init__(self, remove: list[str]) -> None:
        self.remove = remove
        self.mkdir: list[str] = []
        self.write: list[str] = []
        self.hardlinks: list[str] = []
        self.links: list[str] = []
        self.databases: list[str] = []
        self.metadata: list[str] = []
        #: Files whose signature is the backup's: neither their content nor their owner,
        #: mode or mtime can differ (a change of any would have changed their ctime).
        self.same: set[str] = set()

    def touched(self) -> set[str]:
        return {*self.remove, *self.mkdir, *self.write, *self.hardlinks, *self.links}


def _matches(entry: Entry, item: TreeEntry) -> bool:
    if entry.type in ("file", "sqlite", "hardlink"):
        return item.kind == "file"
    return entry.type == item.kind


def _removals(wanted: dict[str, Entry], live: dict[str, TreeEntry]) -> list[str]:
    """Live paths the snapshot lacks, or has as another kind; children before parents.

    Sidecars of databases belong to SQLite, and special files (sockets, fifos, devices) that
    the backup did not hold are left alone.
    """
    owned_by_sqlite = {
        rel + suffix
        for rel, entry in wanted.items()
        if entry.type == "sqlite"
        for suffix in _sqlite.SIDECARS
    }
    remove = []
    for rel in sorted(live, reverse=True):
        item, entry = live[rel], wanted.get(rel)
        if rel in owned_by_sqlite:
            continue
        if entry is None:
            if item.in_scope and item.kind not in ("fifo", "socket", "device"):
                remove.append(rel)
        elif not _matches(entry, item):
            remove.append(rel)
    return remove


def _same_content(path: Path, entry: Entry) -> bool:
    try:
        return hash_file(path)[0] == entry.hash
    except OSError:  # e.g. made unreadable: write it back
        return False


def _relinks(
    links: list[str],
    wanted: dict[str, Entry],
    live: dict[str, TreeEntry],
    gone: set[str],
    rewritten: set[str],
) -> list[str]:
    """The hard links of ``links`` that are not (or will no longer be) the same file as
    their target."""
    relink = []
    for rel in links:
        entry = wanted[rel]
        item, target = live.get(rel), live.get(entry.target)
        if (
            item is None
            or rel in gone
            or target is None
            or entry.target in rewritten
            or (item.info.st_dev, item.info.st_ino) != (target.info.st_dev, target.info.st_ino)
        ):
            relink.append(rel)
    return relink


def _plan(root: Path, wanted: dict[str, Entry], live: dict[str, TreeEntry]) -> _Plan:
    """What differs. A file is taken as unchanged only on its (inode, size, mtime, ctime)
    signature, which no edit can keep (ctime can't be set); else its content is hashed."""
    plan = _Plan(remove=_removals(wanted, live))
    gone = set(plan.remove)
    links = []
    for rel in sorted(wanted):
        entry = wanted[rel]
        item = None if rel in gone else live.get(rel)
        if entry.type == "hardlink":
            links.append(rel)  # below, once the files they link to are known
            continue
        if item is None:
            missing = {"dir": plan.mkdir, "symlink": plan.links, "sqlite": plan.databases}
            missing.get(entry.type, plan.write).append(rel)
        elif entry.type == "symlink":
            if str((root / rel).readlink()) != entry.target:
                plan.links.append(rel)
        elif entry.type == "sqlite":
            if database_signature(root / rel, item.info) != entry.sig:
                plan.databases.append(rel)
        elif entry.type == "file":
            if file_signature(item.info) == entry.sig:
                plan.same.add(rel)
            elif item.info.st_size != entry.size or not _same_content(root / rel, entry):
                plan.write.append(rel)
            else:
                plan.metadata.append(rel)
    plan.hardlinks = _relinks(links, wanted, live, gone, set(plan.write))
    return plan


def _split(rel: str) -> tuple[str, str]:
    parent, _, name = rel.rpartition("/")
    return parent, name


def _literal_exclusions(excluded: tuple[str, ...]) -> list[str]:
    """The excluded patterns that name one exact path (no wildcard), unescaped."""
    literal = []
    for pattern in excluded:
        parts = _GLOB.findall(pattern.strip().strip("/"))
        if all(escaped for escaped, _ in parts):
            literal.append(_GLOB.sub(lambda m: m.group(1) or "", pattern.strip().strip("/")))
    return literal


class _Folders:
    """The root's folders, opened relative to it one component at a time, never through a
    symlink; every change the restore makes goes through one of these descriptors.

    When not root, a folder its owner made unwritable or unreadable is opened up for the
    owner (``u+rwx``); its mode is put back by the restore's last pass, or by :meth:`close`.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.widened: dict[str, int] = {}
        self._root_user = os.geteuid() == 0
        try:
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except PermissionError:
            mode = stat.S_IMODE(root.stat().st_mode)
            root.chmod(mode | stat.S_IRWXU)
            self.widened[""] = mode
            fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        self.fds = {"": fd}

    def close(self) -> None:
        for rel, mode in sorted(self.widened.items(), reverse=True):
            with contextlib.suppress(OSError, BackupError):
                if rel:
                    parent, name = self.parent(rel, widen=False)
                    os.chmod(name, mode, dir_fd=parent, follow_symlinks=False)
                else:
                    os.fchmod(self.fds[""], mode)
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()

    def _widen(self, rel: str) -> None:
        """Give the owner rwx on folder ``rel`` (not root: root needs no permission bits)."""
        if self._root_user or rel in self.widened:
            return
        if rel:
            parent, name = self.parent(rel, widen=False)
            info = os.stat(name, dir_fd=parent, follow_symlinks=False)
        else:
            info = os.fstat(self.fds[""])
        mode = stat.S_IMODE(info.st_mode)
        if not stat.S_ISDIR(info.st_mode) or mode & stat.S_IRWXU == stat.S_IRWXU:
            return
        if rel:
            os.chmod(name, mode | stat.S_IRWXU, dir_fd=parent, follow_symlinks=False)
        else:
            os.fchmod(self.fds[""], mode | stat.S_IRWXU)
        self.widened[rel] = mode

    def fd(self, rel: str) -> int:
        """The open folder ``rel`` ("" is the root)."""
        found = self.fds.get(rel)
        if found is not None:
            return found
        parent_rel, name = _split(rel)
        parent = self.fd(parent_rel)
        try:
            fd = os.open(name, _OPEN_DIR, dir_fd=parent)
        except PermissionError:  # made unreadable, or its parent unsearchable, by its owner
            self._widen(parent_rel)
            self._widen(rel)
            fd = os.open(name, _OPEN_DIR, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise BackupError(
                    f"{shown(rel)} is not a folder (a symlink or file is in its place);"
                    " the restore never writes through one"
                ) from exc
            raise
        self.fds[rel] = fd
        return fd

    def parent(self, rel: str, *, widen: bool = True) -> tuple[int, str]:
        """The open folder holding ``rel``, made writable, and ``rel``'s name in it."""
        parent_rel, name = _split(rel)
        fd = self.fd(parent_rel)
        if widen:
            self._widen(parent_rel)
        return fd, name

    def trim(self) -> None:
        """Close the folders held open but the root, when there are many (a deep or wide
        tree must not run out of descriptors); they are opened again when needed."""
        if len(self.fds) > _HELD_FOLDERS:
            for rel in [r for r in self.fds if r]:
                os.close(self.fds.pop(rel))

    def forget(self, rel: str) -> None:
        """Close ``rel`` and what is under it: that folder is about to go."""
        for held in [r for r in self.fds if r == rel or r.startswith(rel + "/")]:
            os.close(self.fds.pop(held))
            self.widened.pop(held, None)


def _purge(parent: int, name: str) -> None:
    """Remove the folder ``name`` in ``parent`` with everything in it, never following a link."""
    try:
        fd = os.open(name, _OPEN_DIR, dir_fd=parent)
    except PermissionError:
        os.chmod(name, stat.S_IRWXU, dir_fd=parent, follow_symlinks=False)
        fd = os.open(name, _OPEN_DIR, dir_fd=parent)
    except OSError as exc:
        if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
            raise
        os.unlink(name, dir_fd=parent)
        return
    try:
        if os.geteuid() != 0:
            os.fchmod(fd, stat.S_IRWXU)
        with os.scandir(fd) as entries:
            children = [(e.name, e.is_dir(follow_symlinks=False)) for e in entries]
        for child, is_dir in children:
            if is_dir:
                _purge(fd, child)
            else:
                os.unlink(child, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=parent)


def _tmp_name() -> str:
    return f".dmx-restore-{os.urandom(6).hex()}"


def _rename_into(folder: int, tmp: str, name: str) -> None:
    """Rename ``tmp`` over ``name`` in ``folder``; a folder in the way (out of the backup's
    scope, since the restore removed those in it) is removed first."""
    try:
        os.rename(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)
    except OSError as exc:
        if exc.errno not in (errno.EISDIR, errno.ENOTEMPTY, errno.EEXIST):
            raise
        _purge(folder, name)
        os.rename(tmp, name, src_dir_fd=folder, dst_dir_fd=folder)


def _may_own(uid: int, gid: int) -> bool:
    """Whether this process may give a file this owner and group (-1: left as it is): the
    one rule of :func:`~dopemux_update._backup._tree.may_set_owner`, which also decides where
    owners are compared."""
    return may_set_owner(os.geteuid() if uid == -1 else uid, os.getegid() if gid == -1 else gid)


def _owner(entry: Entry, info: os.stat_result) -> tuple[int, int] | None:
    """The owner to set (unknown parts kept), or None when it is right or may not be set."""
    uid = info.st_uid if entry.uid == -1 else entry.uid
    gid = info.st_gid if entry.gid == -1 else entry.gid
    if (uid, gid) == (info.st_uid, info.st_gid):
        return None
    if not _may_own(uid if uid != info.st_uid else -1, gid if gid != info.st_gid else -1):
        logger.debug("restore.owner_skipped", uid=uid, gid=gid)
        return None
    return uid, gid


def _differs(entry: Entry, info: os.stat_result) -> bool:
    """Whether the owner, mode or (for a file) mtime differ from what ``entry`` says."""
    uid = info.st_uid if entry.uid == -1 else entry.uid
    gid = info.st_gid if entry.gid == -1 else entry.gid
    return (
        (uid, gid) != (info.st_uid, info.st_gid)
        or (entry.type != "symlink" and stat.S_IMODE(info.st_mode) != entry.mode)
        or (entry.type == "file" and info.st_mtime_ns != entry.mtime_ns)
    )


def _put_file(source: Path, folder: int, name: str, entry: Entry) -> None:
    """Copy ``source`` over ``name`` in ``folder`` atomically, holes and all, with its mode,
    owner and mtime; a symlink there is replaced, never followed."""
    tmp = _tmp_name()
    src = os.open(source, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        dst = os.open(
            tmp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
            0o600,
            dir_fd=folder,
        )
        try:
            check_write()
            copy_sparse(src, dst, os.fstat(src).st_size)
            owner = _owner(entry, os.fstat(dst))
            if owner is not None:
                os.fchown(dst, *owner)
            os.fchmod(dst, entry.mode)  # after the owner: a chown clears set-id bits
            os.utime(dst, ns=(entry.mtime_ns, entry.mtime_ns))
        finally:
            os.close(dst)
        _rename_into(folder, tmp, name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=folder)
        raise
    finally:
        os.close(src)


def _put_link(folder: int, name: str, make: Callable[[str], None]) -> None:
    """Make a link under a temporary name with ``make(tmp)``, then rename it over ``name``."""
    tmp = _tmp_name()
    make(tmp)
    try:
        _rename_into(folder, tmp, name)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp, dir_fd=folder)
        raise


def _make_dir(folder: int, name: str) -> None:
    """A new folder ``name``; what is in its place (a symlink or file the scope did not
    cover, e.g. with ``--include``) is removed first."""
    try:
        os.mkdir(name, 0o700, dir_fd=folder)
    except FileExistsError:
        info = os.stat(name, dir_fd=folder, follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode):
            return
        os.unlink(name, dir_fd=folder)
        os.mkdir(name, 0o700, dir_fd=folder)


class _Restorer(NamedTuple):
    """The changes of one restore, each made through ``folders``."""

    folders: _Folders
    stored: Callable[[str], Path]  # a file's stored copy (its object)
    wanted: dict[str, Entry]
    live: dict[str, TreeEntry]
    protected: list[str]
    backup_id: str

    @contextlib.contextmanager
    def at(self, rel: str) -> Iterator[None]:
        """Name the path in any OS or SQLite error."""
        try:
            yield
            self.folders.trim()
        except (OSError, sqlite3.Error) as exc:
            reason = (exc.strerror if isinstance(exc, OSError) else None) or str(exc)
            raise BackupError(
                f"could not restore {shown(rel)}: {reason}", backup_id=self.backup_id
            ) from exc

    def remove(self, rel: str) -> None:
        folder, name = self.folders.parent(rel)
        if self.live[rel].kind != "dir":
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=folder)
            return
        self.folders.forget(rel)
        try:
            os.rmdir(name, dir_fd=folder)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
            if any(p == rel or p.startswith(rel + "/") for p in self.protected):
                logger.warning("restore.folder_kept", path=shown(rel), reason="holds an exclusion")
                return
            _purge(folder, name)  # made after the backup, with excluded names in it

    def hardlink(self, rel: str) -> None:
        """``rel`` as another name of the file its entry's target names."""
        source, source_name = self.folders.parent(self.wanted[rel].target, widen=False)
        folder, name = self.folders.parent(rel)

        def make(tmp: str) -> None:
            os.link(source_name, tmp, src_dir_fd=source, dst_dir_fd=folder, follow_symlinks=False)

        _put_link(folder, name, make)

    def symlink(self, rel: str) -> None:
        folder, name = self.folders.parent(rel)
        target = self.wanted[rel].target
        _put_link(folder, name, lambda tmp: os.symlink(target, tmp, dir_fd=folder))

    def database(self, rel: str) -> None:
        entry = self.wanted[rel]
        folder, name = self.folders.parent(rel)
        path = self.folders.root / rel
        # SQLite opens paths: check that this one leads to the folder opened without links.
        held, named = os.fstat(folder), path.parent.stat()
        if (held.st_dev, held.st_ino) != (named.st_dev, named.st_ino):
            raise BackupError(f"{shown(rel)}: its folder changed during the restore")
        try:
            info = os.stat(name, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            info = None
        stored = self.stored(rel)
        if (
            info is not None
            and stat.S_ISREG(info.st_mode)
            and _sqlite.is_sqlite(path)
            and _sqlite.put_back(stored, path, settings=entry.sqlite)
        ):
            os.chmod(name, entry.mode, dir_fd=folder, follow_symlinks=False)
            return
        _sqlite.replace_file(stored, path, wal=entry.wal, mode=entry.mode, settings=entry.sqlite)

    def fix_metadata(self, rel: str, touched: bool) -> bool:
        """Owner, mode and (for files) mtime as the entry says; whether any changed."""
        entry = self.wanted[rel]
        if entry.type == "hardlink":
            return False  # the file it links to carries them
        item = self.live.get(rel)
        opened = self.folders.widened.pop(rel, None)  # its mode before the restore opened it
        fresh = touched or item is None or opened is not None
        if not fresh and item is not None and not _differs(entry, item.info):
            return False
        folder, name = self.folders.parent(rel, widen=False)
        if fresh or item is None:
            info = os.stat(name, dir_fd=folder, follow_symlinks=False)
        else:
            info = item.info
        mode = stat.S_IMODE(info.st_mode)
        changed = False
        owner = _owner(entry, info)
        if owner is not None:
            os.chown(name, *owner, dir_fd=folder, follow_symlinks=False)
            changed = True
        if entry.type != "symlink" and (changed or mode != entry.mode):
            os.chmod(name, entry.mode, dir_fd=folder, follow_symlinks=False)
            changed = changed or (mode if opened is None else opened) != entry.mode
        if entry.type == "file" and info.st_mtime_ns != entry.mtime_ns:
            os.utime(
                name, ns=(entry.mtime_ns, entry.mtime_ns), dir_fd=folder, follow_symlinks=False
            )
            changed = True
        return changed


def _apply(restorer: _Restorer, plan: _Plan, progress: Callable[[str], None]) -> list[str]:
    """Carry out ``plan``; the paths whose metadata alone was fixed."""
    folders, wanted = restorer.folders, restorer.wanted
    for rel in plan.remove:
        with restorer.at(rel):
            restorer.remove(rel)
    for rel in plan.mkdir:
        with restorer.at(rel):
            _make_dir(*folders.parent(rel))
    for rel in plan.write:
        with restorer.at(rel):
            _put_file(restorer.stored(rel), *folders.parent(rel), wanted[rel])
        crash_point("restore.file")
        progress(rel)
    for rel in plan.hardlinks:
        with restorer.at(rel):
            restorer.hardlink(rel)
    for rel in plan.databases:
        with restorer.at(rel):
            restorer.database(rel)
        progress(rel)
    for rel in plan.links:  # last: no later step can meet a link the restore made
        with restorer.at(rel):
            restorer.symlink(rel)
    touched = plan.touched() | set(plan.databases) | set(plan.metadata)
    created = {*plan.mkdir, *plan.write, *plan.links, *plan.databases, *plan.hardlinks}
    fixed = []
    rel = ""
    try:  # one handler for the thousands of paths, as ``at`` would name the path
        # Deepest first, so that a read-only folder is filled before it closes. A file the
        # plan found the same has nothing to fix: thousands of them in a usual restore.
        for rel in sorted(wanted.keys() - plan.same, reverse=True):
            if restorer.fix_metadata(rel, rel in touched) and rel not in created:
                fixed.append(rel)
            restorer.folders.trim()
    except (OSError, sqlite3.Error):
        with restorer.at(rel):
            raise
    return fixed


def restore(
    store: StoredBackups,
    backup_id: str,
    root: Path,
    *,
    on_progress: ProgressCallback | None = None,
) -> RestoreReport:
    """Make the scope under ``root`` identical to backup ``backup_id``.

    Raises :class:`BackupError`, with nothing changed, when the stored copies the restore
    needs fail verification; and naming the path, when a change fails part way.
    """
    manifest = store.read_manifest(backup_id)
    wanted = manifest.decoded()
    scope = Scope(root.resolve(), manifest.excluded, manifest.included)
    try:
        live = {item.rel: item for item in walk(scope)}
    except OSError as exc:
        raise BackupError(
            f"could not read {exc.filename}: {exc.strerror or exc}", backup_id=backup_id
        ) from exc
    plan = _plan(scope.root, wanted, live)
    store.verify(backup_id, only=plan.write + plan.databases, manifest=manifest, entries=wanted)

    def stored(rel: str) -> Path:
        return store.stored_file(manifest, rel, wanted[rel])

    total = sum(wanted[rel].size for rel in plan.write + plan.databases)
    done = 0

    def progress(rel: str) -> None:
        nonlocal done
        done += wanted[rel].size
        if on_progress is not None:
            on_progress(done, total)

    try:
        folders = _Folders(scope.root)
    except OSError as exc:
        raise BackupError(
            f"could not open {scope.root}: {exc.strerror or exc}", backup_id=backup_id
        ) from exc
    try:
        restorer = _Restorer(
            folders,
            stored,
            wanted,
            live,
            protected=_literal_exclusions(manifest.excluded),
            backup_id=backup_id,
        )
        fixed = _apply(restorer, plan, progress)
    finally:
        folders.close()
    if plan.touched() or plan.databases or fixed:
        sync_filesystem(scope.root)
    report = RestoreReport(
        backup_id,
        written=tuple(plan.mkdir + plan.links + plan.write + plan.hardlinks),
        removed=tuple(plan.remove),
        fixed=tuple(fixed),
        databases=tuple(plan.databases),
    )
    logger.info(
        "backup.restored",
        backup_id=backup_id,
        written=len(report.written),
        removed=len(report.removed),
        fixed=len(report.fixed),
        databases=len(report.databases),
    )
    return report
