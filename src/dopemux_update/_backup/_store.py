"""Backups of an installation: taken, verified, listed, pruned and restored.

A backup lives in ``<state>/backups/<id>/``: ``manifest.json`` (with ``manifest.xxh3``, its
own checksum) describes every folder, file, symlink and SQLite database in scope, and
``tree/`` holds the contents under their own relative paths. It is built in a hidden
``.building-<id>`` folder, synced, and renamed into place: a backup that is listed is whole.
Folders are 0700 and files 0600 (backups hold secrets such as ``.env``).

Backups are immutable, so a file unchanged since the previous backup is hard-linked to that
backup's copy: backing up an unchanged tree costs stat calls. "Unchanged" is decided on what
no one can set back: the same inode, size, mtime and ctime (``cp -p``, ``rsync -a`` and
``tar x`` restore an mtime, never a ctime), mode and owners. One stored copy is then shared by
several backups: a damaged one damages them all, which ``verify`` reports; a *full* backup
(``create(full=True)``) copies everything and shares nothing.

Everything is captured in one pass over the data: owners, hard links (files sharing an inode
in scope are stored once: the first path in sorted order as a ``file``, the others as
``hardlink`` entries naming it) and holes (a sparse file is stored sparse, see ``_copy``) come
from the walk's ``stat`` results and the copy itself.
"""

from __future__ import annotations

import builtins
import concurrent.futures
import contextlib
import os
import secrets
import shutil
import sqlite3
import stat
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import xxhash

from .._core._exceptions import BackupError
from .._core._faults import crash_point
from .._core._fsutil import atomic_write, fsync_dir, sync_filesystem
from .._core._log import get_logger
from . import _sqlite
from ._copy import allocated, copy_and_hash, hash_file
from ._manifest import (
    FORMAT,
    MANIFEST,
    MANIFEST_MAC,
    MANIFEST_SUM,
    TREE,
    BackupInfo,
    DamagedBackupError,
    Entry,
    InsufficientSpaceError,
    Manifest,
    ProgressCallback,
    database_signature,
    file_signature,
    read_manifest,
    sign_manifest,
)
from ._restore import RestoreReport, restore
from ._snapshot import database_settings, link_leaders
from ._tree import Scope, TreeEntry, close_opened, encode_name, walk

__all__ = [
    "BackupInfo",
    "BackupStore",
    "DamagedBackupError",
    "Entry",
    "InsufficientSpaceError",
    "Manifest",
    "ProgressCallback",
    "file_signature",
]


logger = get_logger()

_WORKERS = max(2, min(8, os.cpu_count() or 2))  # copying is CPU-bound: one per core
_CANCEL_POLL_SECONDS = 0.2  # how soon a cancelled backup notices, between stored files
_SPACE_MARGIN = 16 << 20  # keep this much free beyond the estimate


@dataclass
class _Job:
    rel: str
    entry: TreeEntry
    action: Literal["copy", "link", "sqlite"]
    previous: Entry | None = None


def _capture_one(
    root: Path, tree: Path, job: _Job, cancelled: threading.Event | None = None
) -> Entry:
    """Copy one file (hashing what is written) or capture one database; runs in a worker.

    ``cancelled`` stops a database capture waiting for a lock between its steps."""
    source, stored = root / job.rel, tree / job.rel
    info = job.entry.info
    mode = stat.S_IMODE(info.st_mode)
    if job.action == "sqlite":
        try:
            _sqlite.capture(source, stored, cancelled=cancelled)
        except sqlite3.DatabaseError as exc:
            if exc.sqlite_errorcode & 0xFF not in (sqlite3.SQLITE_NOTADB, sqlite3.SQLITE_CORRUPT):
                raise
            # SQLite's header on a damaged database, or on some other format: kept byte
            # for byte as a plain file, which is all that can be kept of it.
            logger.warning("backup.not_a_database", path=job.rel, error=str(exc))
            for leftover in (stored, *(Path(f"{stored}{s}") for s in _sqlite.SIDECARS)):
                leftover.unlink(missing_ok=True)
        else:
            stored.chmod(0o600)
            digest, size = hash_file(stored)
            after = source.stat(follow_symlinks=False)
            wal = _sqlite.is_wal(source)  # the live file's header: read, nothing opened
            return Entry(
                type="sqlite",
                mode=mode,
                size=size,
                mtime_ns=after.st_mtime_ns,
                hash=digest,
                wal=wal,
                sig=database_signature(source, after),
                uid=after.st_uid,
                gid=after.st_gid,
                sqlite=_settings(stored, wal=wal),
            )
    digest, size = copy_and_hash(source, stored)
    after = source.stat(follow_symlinks=False)
    if file_signature(after) != file_signature(info) or size != info.st_size:
        raise BackupError(f"{job.rel} changed while it was being backed up; try again")
    return Entry(
        type="file",
        mode=mode,
        size=size,
        mtime_ns=info.st_mtime_ns,
        hash=digest,
        sig=file_signature(info),
        uid=info.st_uid,
        gid=info.st_gid,
    )


def _settings(stored: Path, *, wal: bool) -> dict[str, int | str]:
    """A captured database's settings: read from the stored copy, which the backup API gave
    the live database's pages (page size, auto-vacuum and the header's numbers), except the
    journal mode, which the copy does not keep (it is stored in rollback-journal mode)."""
    connection = _sqlite.open_for_reading(stored)
    try:
        settings = database_settings(connection)
    finally:
        connection.close()
    settings["journal_mode"] = "wal" if wal else "delete"
    return settings


def _capture_all(
    root: Path,
    tree: Path,
    copies: Sequence[_Job],
    total: int,
    on_progress: ProgressCallback | None,
) -> dict[str, Entry]:
    """Copy or capture every job in a pool of threads; the caller's thread reports progress
    and watches for a cancellation, which it passes on to the pool."""
    entries: dict[str, Entry] = {}
    done = 0
    cancelled = threading.Event()
    with concurrent.futures.ThreadPoolExecutor(_WORKERS) as pool:
        futures = {pool.submit(_capture_one, root, tree, job, cancelled): job for job in copies}
        pending = set(futures)
        try:
            while pending:
                # The pool's threads are no anyio workers: this one learns of a
                # cancellation (Ctrl-C) and tells them through ``cancelled``.
                _sqlite.check_cancelled()
                finished, pending = concurrent.futures.wait(
                    pending, timeout=_CANCEL_POLL_SECONDS, return_when="FIRST_COMPLETED"
                )
                for future in finished:
                    job = futures[future]
                    entries[encode_name(job.rel)] = future.result()
                    crash_point("backup.file")
                    done += allocated(job.entry.info)
                    if on_progress is not None:
                        on_progress(done, total)
        except BaseException:
            cancelled.set()
            for future in futures:
                future.cancel()
            raise
    return entries


def _new_id() -> str:
    now = datetime.now(UTC)
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"


def _unchanged(old: Entry, info: os.stat_result) -> bool:
    """Nothing written to the file since ``old`` recorded it: the same inode, size, mtime and
    ctime (no one can set a ctime back), mode and owners. Its stored copy can be shared."""
    return (
        old.sig == file_signature(info)
        and old.mode == stat.S_IMODE(info.st_mode)
        and (old.uid, old.gid) == (info.st_uid, info.st_gid)
    )


class BackupStore:
    """The backups of one installation, in ``backups_dir``."""

    def __init__(self, backups_dir: Path) -> None:
        self.backups_dir = backups_dir

    # -- reading ----------------------------------------------------------------------------

    def path_of(self, backup_id: str) -> Path:
        if not backup_id or "/" in backup_id or backup_id.startswith(".") or "\x00" in backup_id:
            raise BackupError("is not a valid backup id", backup_id=backup_id)
        return self.backups_dir / backup_id

    def read_manifest(self, backup_id: str) -> Manifest:
        """The backup's manifest, checked against its checksum and MAC and read strictly."""
        self.path_of(backup_id)  # refuses an id that is not a plain name
        return read_manifest(self.backups_dir, backup_id)

    def info(self, manifest: Manifest) -> BackupInfo:
        files = [e for e in manifest.entries.values() if e.type in ("file", "sqlite")]
        return BackupInfo(
            id=manifest.id,
            path=self.backups_dir / manifest.id,
            created_at=manifest.created_at,
            files=len(files),
            bytes=sum(e.size for e in files),
            copied_bytes=manifest.copied_bytes,
            version_from=manifest.version_from,
            version_to=manifest.version_to,
        )

    def ids(self) -> builtins.list[str]:
        """Ids of complete backups, oldest first (ids sort by creation time)."""
        if not self.backups_dir.is_dir():
            return []
        return sorted(
            p.name
            for p in self.backups_dir.iterdir()
            if not p.name.startswith(".") and (p / MANIFEST_SUM).is_file()
        )

    def list(self) -> builtins.list[BackupInfo]:
        """Every complete backup, oldest first."""
        return [self.info(self.read_manifest(backup_id)) for backup_id in self.ids()]

    def verify(
        self,
        backup_id: str,
        *,
        only: Iterable[str] | None = None,
        manifest: Manifest | None = None,
        entries: dict[str, Entry] | None = None,
    ) -> Manifest:
        """Check stored files against the manifest's sizes and hashes (all, or ``only``).

        ``manifest`` and its ``entries`` (decoded), when the caller already read them, save
        reading and checking the manifest again. Raises :class:`DamagedBackupError` naming
        every flipped, truncated or missing file, and every other backup that shares one of
        the damaged copies.
        """
        if manifest is None:
            manifest = self.read_manifest(backup_id)
        if entries is None:
            entries = manifest.decoded()
        tree = self.path_of(backup_id) / TREE
        names = list(entries) if only is None else list(only)
        stored = [rel for rel in names if entries[rel].type in ("file", "sqlite")]

        def check(rel: str) -> tuple[str, str] | None:
            entry = entries[rel]
            try:
                digest, size = hash_file(tree / rel)
            except FileNotFoundError:
                return rel, f"{rel} (missing)"
            except OSError as exc:
                return rel, f"{rel} ({exc.strerror or exc})"
            if size != entry.size and entry.type == "file":
                return rel, f"{rel} (truncated or resized: {size} bytes, expected {entry.size})"
            if digest != entry.hash:
                return rel, f"{rel} (content differs from the manifest)"
            return None

        with concurrent.futures.ThreadPoolExecutor(_WORKERS) as pool:
            bad = [problem for problem in pool.map(check, stored) if problem]
        if bad:
            damaged = tuple(rel for rel, _ in bad)
            affected = self._sharing(backup_id, damaged)
            message = f"failed verification: {', '.join(problem for _, problem in bad)}"
            if affected:
                message += (
                    f"; the damaged copies are shared with backup(s) {', '.join(affected)},"
                    " which are damaged too"
                )
            logger.error(
                "backup.damaged", backup_id=backup_id, damaged=list(damaged), affected=affected
            )
            raise DamagedBackupError(
                message, backup_id=backup_id, damaged=damaged, affected=tuple(affected)
            )
        logger.info("backup.verified", backup_id=backup_id, files=len(stored))
        return manifest

    def _sharing(self, backup_id: str, rels: Iterable[str]) -> builtins.list[str]:
        """The other backups holding one of ``rels`` of ``backup_id`` as the same stored file
        (hard-linked: unchanged files share one copy, always under the same path)."""
        tree = os.fspath(self.path_of(backup_id) / TREE)
        inodes = {}
        for rel in rels:
            with contextlib.suppress(OSError):
                info = os.stat(f"{tree}/{rel}", follow_symlinks=False)  # noqa: PTH116
                if info.st_nlink > 1:
                    inodes[rel] = (info.st_dev, info.st_ino)
        affected = []
        for other in self.ids():
            if other == backup_id or not inodes:
                continue
            other_tree = os.fspath(self.backups_dir / other / TREE)
            for rel, inode in inodes.items():
                try:
                    info = os.stat(f"{other_tree}/{rel}", follow_symlinks=False)  # noqa: PTH116
                except OSError:
                    continue
                if (info.st_dev, info.st_ino) == inode:
                    affected.append(other)
                    break
        return affected

    def shared_files(self, backup_id: str) -> int:
        """How many of the backup's stored files are shared with other backups (hard-linked
        because they had not changed): damage to one of them damages every backup holding it."""
        tree = os.fspath(self.path_of(backup_id) / TREE)
        shared = 0
        for rel, entry in self.read_manifest(backup_id).decoded().items():
            if entry.type in ("file", "sqlite"):
                with contextlib.suppress(OSError):
                    shared += os.stat(f"{tree}/{rel}").st_nlink > 1  # noqa: PTH116 - hot loop
        return shared

    # -- creating ---------------------------------------------------------------------------

    def create(
        self,
        scope: Scope,
        *,
        version_from: str | None = None,
        version_to: str | None = None,
        on_progress: ProgressCallback | None = None,
        full: bool = False,
    ) -> BackupInfo:
        """Snapshot ``scope`` into a new, verified backup and return it.

        Files unchanged since the previous backup are hard-linked to its copies, unless
        ``full``: then everything is copied, and the new backup shares no stored file with
        another. Raises :class:`InsufficientSpaceError` before writing anything when the disk
        cannot hold what would be copied. Folders their owner made unreadable are opened for
        the owner while the backup reads them, and get their modes back afterwards.
        """
        opened: builtins.list[tuple[Path, int]] = []
        try:
            return self._create(
                scope,
                opened,
                version_from=version_from,
                version_to=version_to,
                on_progress=on_progress,
                full=full,
            )
        finally:
            close_opened(opened)

    def _create(
        self,
        scope: Scope,
        opened: builtins.list[tuple[Path, int]],
        *,
        version_from: str | None,
        version_to: str | None,
        on_progress: ProgressCallback | None,
        full: bool,
    ) -> BackupInfo:
        try:
            found = list(walk(scope, opened=opened))
        except OSError as exc:  # a folder this user may not read: name it, take nothing
            raise BackupError(
                f"{exc.filename}: cannot be read ({exc.strerror}); no backup was taken"
            ) from exc
        previous = None if full else self._previous()
        jobs, links, skipped = self._plan(scope, found, previous)
        needed = sum(allocated(j.entry.info) for j in jobs if j.action != "link")
        self._check_space(needed)

        backup_id = _new_id()
        self.backups_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.backups_dir.chmod(0o700)
        building = self.backups_dir / f".building-{backup_id}"
        tree = building / TREE
        building.mkdir(mode=0o700)
        tree.mkdir(mode=0o700)
        logger.info("backup.started", backup_id=backup_id, root=str(scope.root), bytes=needed)
        try:
            entries = self._write(
                scope,
                tree,
                found=found,
                jobs=jobs,
                links=links,
                previous=previous,
                total=needed,
                on_progress=on_progress,
            )
            manifest = Manifest(
                format=FORMAT,
                id=backup_id,
                created_at=datetime.now(UTC)
                .isoformat(timespec="milliseconds")
                .replace("+00:00", "Z"),
                root=str(scope.root),
                excluded=scope.excluded,
                included=scope.included,
                version_from=version_from,
                version_to=version_to,
                previous=previous.id if previous else None,
                copied_bytes=needed,
                entries=entries,
                skipped=tuple(skipped),
            )
            raw = manifest.model_dump_json().encode()
            atomic_write(building / MANIFEST, raw, mode=0o600)
            atomic_write(
                building / MANIFEST_SUM, xxhash.xxh3_128_hexdigest(raw).encode(), mode=0o600
            )
            atomic_write(building / MANIFEST_MAC, sign_manifest(self.backups_dir, raw), mode=0o600)
            sync_filesystem(building)
            crash_point("backup.before_rename")
            final = self.backups_dir / backup_id
            building.rename(final)
            fsync_dir(self.backups_dir)
        except BaseException as exc:
            shutil.rmtree(building, ignore_errors=True)
            if isinstance(exc, OSError):
                source = Path(exc.filename) if isinstance(exc.filename, str) else None
                if (
                    source is not None
                    and source.is_relative_to(scope.root)
                    and not source.is_relative_to(self.backups_dir)
                ):  # the installation's file failed, not the backup's
                    raise BackupError(
                        f"{source}: cannot be read ({exc.strerror}); no backup was taken",
                        backup_id=backup_id,
                    ) from exc
                raise BackupError(f"could not be written: {exc}", backup_id=backup_id) from exc
            raise
        self._check_written(manifest)
        info = self.info(manifest)
        logger.info(
            "backup.created",
            backup_id=backup_id,
            files=info.files,
            bytes=info.bytes,
            copied_bytes=needed,
            previous=manifest.previous,
        )
        return info

    def _previous(self) -> Manifest | None:
        for backup_id in reversed(self.ids()):
            with contextlib.suppress(BackupError):
                return self.read_manifest(backup_id)
        return None

    def _plan(
        self, scope: Scope, found: Sequence[TreeEntry], previous: Manifest | None
    ) -> tuple[builtins.list[_Job], dict[str, str], builtins.list[tuple[str, str]]]:
        """What to copy, link or capture; the hard links (a file's other names, each mapped
        to its first name); what is skipped."""
        before = previous.decoded() if previous else {}
        jobs: builtins.list[_Job] = []
        skipped: builtins.list[tuple[str, str]] = []
        databases: set[str] = set()
        root = os.fspath(scope.root)
        for item in found:
            if item.kind != "file":
                continue
            old = before.get(item.rel)
            if old is not None and old.type == "file" and _unchanged(old, item.info):
                continue  # a plain file that has not changed cannot have become a database
            if _sqlite.is_sqlite(Path(f"{root}/{item.rel}")):
                databases.add(item.rel)
        sidecars = {db + suffix for db in databases for suffix in _sqlite.SIDECARS}
        links = link_leaders(
            item for item in found if item.rel not in databases and item.rel not in sidecars
        )
        for item in found:
            if item.kind in ("dir", "symlink") or item.rel in sidecars or item.rel in links:
                continue
            if item.kind != "file":
                skipped.append((encode_name(item.rel), item.kind))
                logger.warning("backup.skipped", path=item.rel, kind=item.kind)
                continue
            old = before.get(item.rel)
            info = item.info
            if item.rel in databases:
                path = scope.root / item.rel
                if (
                    old is not None
                    and old.type == "sqlite"
                    and old.sig == database_signature(path, info)
                    and old.mode == stat.S_IMODE(info.st_mode)
                    and (old.uid, old.gid) == (info.st_uid, info.st_gid)
                    and old.sqlite  # an older backup's entry lacks the settings
                ):
                    jobs.append(_Job(item.rel, item, "link", old))
                else:
                    jobs.append(_Job(item.rel, item, "sqlite"))
                continue
            if old is not None and old.type == "file" and _unchanged(old, info):
                jobs.append(_Job(item.rel, item, "link", old))
            else:
                jobs.append(_Job(item.rel, item, "copy"))
        return jobs, links, skipped

    def _check_space(self, needed: int) -> None:
        probe = self.backups_dir
        while not probe.exists():
            probe = probe.parent
        free = shutil.disk_usage(probe).free
        if needed + _SPACE_MARGIN > free:
            raise InsufficientSpaceError(
                f"not enough free space in {probe} for a backup: it needs about"
                f" {needed + _SPACE_MARGIN:,} bytes and {free:,} are free; free some space"
                " or prune old backups (`dopemux-update backups prune --keep N`)"
            )

    def _write(
        self,
        scope: Scope,
        tree: Path,
        *,
        found: Sequence[TreeEntry],
        jobs: Sequence[_Job],
        links: dict[str, str],
        previous: Manifest | None,
        total: int,
        on_progress: ProgressCallback | None,
    ) -> dict[str, Entry]:
        entries: dict[str, Entry] = {}
        holders: set[str] = set()  # folders holding something in scope
        if scope.included:
            for rel in [j.rel for j in jobs] + [i.rel for i in found if i.kind == "symlink"]:
                parts = rel.split("/")
                holders.update("/".join(parts[:n]) for n in range(1, len(parts)))
        for item in found:  # folders and symlinks first, parents before children
            info = item.info
            mode = stat.S_IMODE(info.st_mode)
            if item.kind == "dir":
                if not item.in_scope and item.rel not in holders:
                    continue
                entries[encode_name(item.rel)] = Entry(
                    type="dir",
                    mode=mode,
                    parent_only=not item.in_scope,
                    uid=info.st_uid,
                    gid=info.st_gid,
                )
                (tree / item.rel).mkdir(mode=0o700)
            elif item.kind == "symlink":
                target = encode_name(str((scope.root / item.rel).readlink()))
                entries[encode_name(item.rel)] = Entry(
                    type="symlink", target=target, uid=info.st_uid, gid=info.st_gid
                )
        if previous is not None:
            entries.update(
                self._link_unchanged(tree, previous, [j for j in jobs if j.action == "link"])
            )
        copies = [j for j in jobs if j.action != "link"]
        entries.update(_capture_all(scope.root, tree, copies, total, on_progress))
        by_name = {item.rel: item for item in found if item.rel in links}
        for rel, first in links.items():
            info = by_name[rel].info
            entries[encode_name(rel)] = Entry(
                type="hardlink",
                target=encode_name(first),
                mode=stat.S_IMODE(info.st_mode),
                size=info.st_size,
                mtime_ns=info.st_mtime_ns,
                hash=entries[encode_name(first)].hash,
                sig=file_signature(info),
                uid=info.st_uid,
                gid=info.st_gid,
            )
        return dict(sorted(entries.items()))

    def _link_unchanged(
        self, tree: Path, previous: Manifest, jobs: Sequence[_Job]
    ) -> dict[str, Entry]:
        """Hard-link files unchanged since ``previous`` to its immutable copies: no data moves.

        Done inline, not in the pool: a link is one system call, cheaper than a hand-off.
        """
        source_tree = os.fspath(self.backups_dir / previous.id / TREE)
        target_tree = os.fspath(tree)
        entries = {}
        for job in jobs:
            old = job.previous
            assert old is not None  # noqa: S101 - a link job carries the previous entry
            os.link(f"{source_tree}/{job.rel}", f"{target_tree}/{job.rel}", follow_symlinks=False)
            if old.type == "file":
                old = old.model_copy(update={"sig": file_signature(job.entry.info)})
            entries[encode_name(job.rel)] = old
        return entries

    def _check_written(self, manifest: Manifest) -> None:
        """Read the new backup back: manifest checksum, and every stored file's size."""
        written = self.read_manifest(manifest.id)
        tree = os.fspath(self.path_of(manifest.id) / TREE)
        missing = []
        for rel, entry in written.decoded().items():
            if entry.type in ("file", "sqlite"):
                try:
                    size = os.stat(f"{tree}/{rel}").st_size  # noqa: PTH116 - hot loop
                except OSError:
                    size = -1
                if size != entry.size:
                    missing.append(rel)
        if missing:
            raise BackupError(f"failed verification: {', '.join(missing)}", backup_id=manifest.id)
        logger.info("backup.verified", backup_id=manifest.id, files=len(written.entries))

    def restore(
        self, backup_id: str, root: Path, *, on_progress: ProgressCallback | None = None
    ) -> RestoreReport:
        """Make the backed-up scope under ``root`` identical to this backup (see ``_restore``)."""
        return restore(self, backup_id, root, on_progress=on_progress)

    # -- removing ---------------------------------------------------------------------------

    def delete(self, backup_id: str) -> None:
        path = self.path_of(backup_id)
        if not path.is_dir():
            raise BackupError("does not exist", backup_id=backup_id)
        trash = self.backups_dir / f".deleting-{backup_id}"
        path.rename(trash)  # no longer listed from here on, even if the removal is interrupted
        shutil.rmtree(trash)
        logger.info("backup.deleted", backup_id=backup_id)

    def prune(self, keep: int, *, protect: Iterable[str] = ()) -> builtins.list[str]:
        """Delete all but the newest ``keep`` backups, never one in ``protect``."""
        if keep < 0:
            raise ValueError("keep must be >= 0")
        protected = set(protect)
        ids = self.ids()
        doomed = [b for b in ids[: max(0, len(ids) - keep)] if b not in protected]
        for backup_id in doomed:
            self.delete(backup_id)
        for leftover in self.backups_dir.glob(".deleting-*"):
            shutil.rmtree(leftover, ignore_errors=True)
        if doomed:
            logger.info("backup.pruned", deleted=doomed, kept=len(ids) - len(doomed))
        return doomed
