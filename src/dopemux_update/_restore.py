"""Restore: make the tree in a backup's scope identical to the backup, rewriting only what differs.

Changed or deleted files come back, added files and folders go, modes and mtimes are fixed,
symlinks are recreated, and SQLite databases are written back through SQLite's backup API.
Every stored copy the restore will use is verified first: a damaged backup changes nothing.
The live tree is never written through a symlink (one in the way is removed, then the real
thing recreated) and nothing outside the root is touched.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from . import _sqlite
from ._backup import TREE, BackupStore, Entry, ProgressCallback, database_signature, file_signature
from ._copy import copy_file, hash_file
from ._faults import check_write, crash_point
from ._fsutil import sync_filesystem
from ._log import get_logger
from ._tree import Scope, TreeEntry, walk

__all__ = ["RestoreReport", "restore"]

logger = get_logger()


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


@dataclass
class _Plan:
    remove: list[str] = field(default_factory=list)
    mkdir: list[str] = field(default_factory=list)
    write: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)
    databases: list[str] = field(default_factory=list)
    metadata: list[str] = field(default_factory=list)


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


def _plan(root: Path, wanted: dict[str, Entry], live: dict[str, TreeEntry]) -> _Plan:
    plan = _Plan(remove=_removals(wanted, live))
    gone = set(plan.remove)
    for rel in sorted(wanted):
        entry, path = wanted[rel], root / rel
        item = None if rel in gone else live.get(rel)
        if item is None:
            missing = {"dir": plan.mkdir, "symlink": plan.links, "sqlite": plan.databases}
            missing.get(entry.type, plan.write).append(rel)
        elif entry.type == "symlink":
            if str(path.readlink()) != entry.target:
                plan.links.append(rel)
        elif entry.type == "sqlite":
            if database_signature(path, item.info) != entry.sig:
                plan.databases.append(rel)
        elif entry.type == "file" and file_signature(item.info) != entry.sig:
            if item.info.st_size != entry.size or hash_file(path)[0] != entry.hash:
                plan.write.append(rel)
            else:
                plan.metadata.append(rel)
    return plan


def _put_file(source: Path, destination: Path, entry: Entry) -> None:
    """Copy ``source`` over ``destination`` atomically; a symlink there is replaced."""
    tmp = destination.with_name(f".{destination.name}.restore-{secrets.token_hex(4)}")
    try:
        check_write()
        copy_file(source, tmp, mode=0o600)
        os.chmod(tmp, entry.mode)  # noqa: PTH101 - a fresh private file, not the live path
        os.utime(tmp, ns=(entry.mtime_ns, entry.mtime_ns))
        tmp.replace(destination)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


def _remove(path: Path, item: TreeEntry) -> None:
    if item.kind == "dir":
        path.rmdir()  # its children were removed before it
    else:
        path.unlink()


def _open_parents(root: Path, paths: list[str]) -> None:
    """Let the owner write into the folders the restore changes (a migration, or the
    snapshot itself, may have made them read-only); their modes are put back at the end."""
    parents = {os.path.dirname(rel) for rel in paths}  # noqa: PTH120 - relative strings
    for parent in sorted(parents):
        folder = root / parent if parent else root
        with contextlib.suppress(FileNotFoundError):
            info = folder.stat(follow_symlinks=False)
            if stat.S_ISDIR(info.st_mode) and not info.st_mode & stat.S_IWUSR:
                folder.chmod(stat.S_IMODE(info.st_mode) | stat.S_IRWXU, follow_symlinks=False)


def _apply(  # noqa: PLR0917 - one private helper of restore()
    plan: _Plan,
    root: Path,
    tree: Path,
    wanted: dict[str, Entry],
    live: dict[str, TreeEntry],
    progress: Callable[[str], None],
) -> None:
    _open_parents(root, [*plan.remove, *plan.mkdir, *plan.links, *plan.write, *plan.databases])
    for rel in plan.remove:
        _remove(root / rel, live[rel])
    for rel in plan.mkdir:
        (root / rel).mkdir(mode=0o700)
    for rel in plan.links:
        path = root / rel
        if rel in live and rel not in plan.remove:
            path.unlink()
        path.symlink_to(wanted[rel].target)
    for rel in plan.write:
        _put_file(tree / rel, root / rel, wanted[rel])
        crash_point("restore.file")
        progress(rel)
    for rel in plan.databases:
        entry, path = wanted[rel], root / rel
        if path.is_file() and not path.is_symlink() and _sqlite.is_sqlite(path):
            _sqlite.put_back(tree / rel, path)
            path.chmod(entry.mode, follow_symlinks=False)
        else:
            _sqlite.replace_file(tree / rel, path, wal=entry.wal, mode=entry.mode)
        progress(rel)
    for rel in plan.metadata:
        entry, path = wanted[rel], root / rel
        path.chmod(entry.mode, follow_symlinks=False)
        os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)


def restore(
    store: BackupStore,
    backup_id: str,
    root: Path,
    *,
    on_progress: ProgressCallback | None = None,
) -> RestoreReport:
    """Make the scope under ``root`` identical to backup ``backup_id``.

    Raises :class:`BackupError`, with nothing changed, when the stored copies the restore
    needs fail verification.
    """
    manifest = store.read_manifest(backup_id)
    wanted = manifest.decoded()
    scope = Scope(root.resolve(), manifest.excluded, manifest.included)
    live = {item.rel: item for item in walk(scope)}
    plan = _plan(scope.root, wanted, live)
    store.verify(backup_id, only=plan.write + plan.databases, manifest=manifest, entries=wanted)
    tree = store.path_of(backup_id) / TREE
    total = sum(wanted[rel].size for rel in plan.write + plan.databases)
    done = 0

    def progress(rel: str) -> None:
        nonlocal done
        done += wanted[rel].size
        if on_progress is not None:
            on_progress(done, total)

    _apply(plan, scope.root, tree, wanted, live, progress)
    fixed = list(plan.metadata)
    # Folder modes last, deepest first, so a read-only folder is filled before it closes.
    for rel in sorted(wanted, reverse=True):
        entry = wanted[rel]
        if entry.type == "dir":
            path = scope.root / rel
            if stat.S_IMODE(path.stat(follow_symlinks=False).st_mode) != entry.mode:
                path.chmod(entry.mode, follow_symlinks=False)
                if rel not in plan.mkdir:
                    fixed.append(rel)
    if plan.remove or plan.mkdir or plan.links or plan.write or plan.databases or fixed:
        sync_filesystem(scope.root)
    report = RestoreReport(
        backup_id,
        written=tuple(plan.mkdir + plan.links + plan.write),
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
