"""Backups of an installation: taken, verified, listed, pruned and restored.

A backup lives in ``<state>/backups/<id>/``: ``manifest.json`` (with ``manifest.xxh3``, its
own checksum, and ``manifest.hmac``, its MAC) describes every folder, file, symlink and SQLite
database in scope. The contents are *objects*: each stored file (or database copy) is an
immutable, read-only file named by the XXH3-128 hash of its content, in
``<state>/backups/objects/<first 2 hex>/<hash>``, which the manifests reference by hash. A
backup is built in a hidden ``.building-<id>`` folder, synced, and renamed into place: a backup
that is listed is whole. Folders are 0700 and objects 0400 (backups hold secrets such as
``.env``).

An object is written once: copied (and hashed as it is) under a temporary name inside the
building folder, made durable (one ``syncfs`` for all of a backup's new objects), then linked
under its final name, where it is never written again; one already there (the same content)
is kept and the copy dropped. A half-written object is never visible under its final name.

A file unchanged since the previous backup is not read at all: its entry, with its object's
hash, is carried over, so backing up an unchanged tree costs a stat walk and one manifest
written. "Unchanged" is decided on what no one can set back: the same inode, size, mtime and
ctime (``cp -p``, ``rsync -a`` and ``tar x`` restore an mtime, never a ctime), mode and owners.
One object is then shared by several backups: a damaged one damages them all, which ``verify``
reports. A *full* backup (``create(full=True)``) shares nothing: it re-reads and re-hashes
every file and keeps its objects in its own folder, ``<id>/objects/``, deleted with it.

Objects are removed by reference: ``delete``/``prune`` remove manifests first (a backup folder
is renamed away, then deleted), then every object of the shared folder that no remaining
manifest references (``collect_garbage``). A crash between the two leaves unreferenced objects
only, which the next prune removes; an object a manifest references is never removed.

Everything is captured in one pass over the data: owners, hard links (files sharing an inode
in scope are stored once: the first path in sorted order as a ``file``, the others as
``hardlink`` entries naming it) and holes (a sparse file is stored sparse, as a sparse object,
see ``_copy``) come from the walk's ``stat`` results and the copy itself.

Backups of formats 2 and 3 (each backup's files in its own ``tree/``, unchanged ones
hard-linked between backups) are still listed, verified and restored.
"""

from __future__ import annotations

import builtins
import contextlib
import json
import os
import sqlite3
import stat
import threading
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Literal, NamedTuple

import xxhash

from .._core._exceptions import BackupError
from .._core._faults import crash_point
from .._core._fsutil import fsync_dir, sync_filesystem
from .._core._log import get_logger
from . import _sqlite
from ._copy import allocated, copy_and_hash, hash_file
from ._manifest import (
    FORMAT,
    MANIFEST,
    MANIFEST_MAC,
    MANIFEST_SUM,
    OBJECTS,
    TREE,
    BackupInfo,
    DamagedBackupError,
    Entry,
    InsufficientSpaceError,
    Manifest,
    ProgressCallback,
    database_signature,
    file_signature,
    object_name,
    object_path,
    read_manifest,
    sign_manifest,
)
from ._names import backup_ids
from ._tree import Scope, TreeEntry, close_opened, decode_name, encode_name, link_leaders, walk

if TYPE_CHECKING:
    from ._restore import RestoreReport

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
_STAGING = "staging"  # in the building folder: new objects under temporary names


class _Job(NamedTuple):
    """One path a backup copies, reuses or captures."""

    rel: str
    entry: TreeEntry
    action: Literal["copy", "reuse", "sqlite"]
    previous: Entry | None = None
    number: int = 0  # names its temporary copy in the building folder


def _capture_one(
    root: Path, staging: Path, job: _Job, cancelled: threading.Event | None = None
) -> Entry:
    """Copy one file (hashing what is written) or capture one database into a temporary
    object in ``staging``; runs in a worker.

    ``cancelled`` stops a database capture waiting for a lock between its steps."""
    source, stored = root / job.rel, _staged(staging, job)
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
            stored.chmod(0o400)
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
    digest, size = copy_and_hash(source, stored, mode=0o400)
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
        settings = _sqlite.database_settings(connection)
    finally:
        connection.close()
    settings["journal_mode"] = "wal" if wal else "delete"
    return settings


def _staged(staging: Path, job: _Job) -> Path:
    return staging / f"{job.number}.tmp"


def _capture_all(
    root: Path,
    staging: Path,
    copies: Sequence[_Job],
    total: int,
    on_progress: ProgressCallback | None,
) -> dict[str, Entry]:
    """Copy or capture every job in a pool of threads, the largest first (so that no big
    file is left to copy alone at the end); the caller's thread reports progress as each
    finishes and watches for a cancellation, which it passes on to the pool."""
    if not copies:
        return {}
    # Imported here: an unchanged tree's backup, and a restore, copy nothing this way.
    import concurrent.futures  # noqa: PLC0415
    import queue  # noqa: PLC0415

    entries: dict[str, Entry] = {}
    done = 0
    cancelled = threading.Event()
    finished: queue.SimpleQueue[concurrent.futures.Future[Entry]] = queue.SimpleQueue()
    order = sorted(copies, key=lambda job: job.entry.info.st_size, reverse=True)
    with concurrent.futures.ThreadPoolExecutor(_WORKERS) as pool:
        futures = {}
        for job in order:
            future = pool.submit(_capture_one, root, staging, job, cancelled)
            futures[future] = job
            future.add_done_callback(finished.put)
        try:
            for _ in range(len(futures)):
                while True:
                    # The pool's threads are no anyio workers: this one learns of a
                    # cancellation (Ctrl-C) and tells them through ``cancelled``.
                    _sqlite.check_cancelled()
                    try:
                        future = finished.get(timeout=_CANCEL_POLL_SECONDS)
                    except queue.Empty:
                        continue
                    break
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
    return f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{os.urandom(3).hex()}"


def _databases(root: Path, found: Sequence[TreeEntry], same: set[str]) -> set[str]:
    """The SQLite databases among the files ``found``, by their headers (a plain file that
    is the ``same`` as in the previous backup cannot have become a database)."""
    return {
        item.rel
        for item in found
        if item.kind == "file"
        and item.rel not in same
        and _sqlite.is_sqlite(Path(f"{root}/{item.rel}"))
    }


def _same_files(found: Sequence[TreeEntry], before: dict[str, Entry]) -> set[str]:
    """The files ``found`` that were plain files in the previous backup (``before``) and
    have not been written since (see ``_unchanged``)."""
    same = set()
    for item in found:
        old = before.get(item.rel)
        if old is not None and old.type == item.kind == "file" and _unchanged(old, item.info):
            same.add(item.rel)
    return same


def _free_space(path: Path) -> int:
    """The bytes free for this user on ``path``'s file system (``shutil.disk_usage``'s
    ``free``, without importing shutil)."""
    found = os.statvfs(path)
    return found.f_bavail * found.f_frsize


def _rmtree(path: Path, *, ignore_errors: bool = False) -> None:
    """``shutil.rmtree``, imported when something is deleted (shutil pulls in the archive
    modules: a backup that deletes nothing need not load them)."""
    import shutil  # noqa: PLC0415 - see above

    shutil.rmtree(path, ignore_errors=ignore_errors)


def _write_synced(path: Path, data: bytes) -> None:
    """A new file ``path`` (0600) holding ``data``, flushed to disk."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _publish(written: Sequence[tuple[Path, str]], objects: Path) -> None:
    """Give each durable temporary object (staged copy, hash) its final name in ``objects``,
    unless an object of that name (the same content) is there already: an object is never
    written twice. One of the wrong size there (damaged) is replaced, whole, by a rename.
    Backups are taken under the state folder's lock: no one else writes objects meanwhile.

    Names are resolved from open folders (a couple of components each, not a dozen): a first
    backup publishes thousands."""
    objects.mkdir(mode=0o700, exist_ok=True)
    fans = {path.name for path in objects.iterdir()}
    folders: dict[Path, int] = {}
    target = os.open(objects, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for staged, digest in written:
            source = folders.get(staged.parent)
            if source is None:
                source = os.open(staged.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
                folders[staged.parent] = source
            final = object_name(digest)
            fan = final.partition("/")[0]
            if fan not in fans:
                with contextlib.suppress(FileExistsError):
                    os.mkdir(fan, 0o700, dir_fd=target)
                fans.add(fan)
            try:
                size = os.stat(final, dir_fd=target).st_size
            except FileNotFoundError:
                os.rename(staged.name, final, src_dir_fd=source, dst_dir_fd=target)
                continue
            if size != os.stat(staged.name, dir_fd=source).st_size:  # damaged: the right one wins
                os.rename(staged.name, final, src_dir_fd=source, dst_dir_fd=target)
            else:
                os.unlink(staged.name, dir_fd=source)
    finally:
        for fd in (target, *folders.values()):
            os.close(fd)


def _unchanged(old: Entry, info: os.stat_result) -> bool:
    """Nothing written to the file since ``old`` recorded it: the same inode, size, mtime and
    ctime (no one can set a ctime back), mode and owners. Its stored copy can be shared."""
    return (
        old.sig == (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)  # its sig
        and old.mode == info.st_mode & 0o7777
        and old.uid == info.st_uid
        and old.gid == info.st_gid
    )


class _ObjectSizes:
    """Whether the shared object of an entry is stored with its size: looked up relative to
    the object folder (two path components, not ten), for the thousands of a backup."""

    def __init__(self, objects: Path) -> None:
        try:
            self._folder = os.open(objects, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            self._folder = -1  # no object folder yet: nothing is stored

    def __enter__(self) -> Callable[[Entry], bool]:
        return self.stored

    def __exit__(self, *exc: object) -> None:
        if self._folder >= 0:
            os.close(self._folder)

    def stored(self, entry: Entry) -> bool:
        try:
            size = os.stat(object_name(entry.hash), dir_fd=self._folder).st_size
        except OSError:
            return False
        return size == entry.size


class BackupStore:
    """The backups of one installation, in ``backups_dir``."""

    def __init__(self, backups_dir: Path) -> None:
        self.backups_dir = backups_dir
        #: The objects each backup references, while its manifest stays the same file
        #: (inode, size, mtime, ctime): ``backups list`` counts shared files of each backup
        #: against all the others without reading every manifest again for each.
        self._known: dict[str, tuple[tuple[int, ...], set[str]]] = {}

    # -- reading ----------------------------------------------------------------------------

    def path_of(self, backup_id: str) -> Path:
        if not backup_id or "/" in backup_id or backup_id.startswith(".") or "\x00" in backup_id:
            raise BackupError("is not a valid backup id", backup_id=backup_id)
        return self.backups_dir / backup_id

    def read_manifest(self, backup_id: str) -> Manifest:
        """The backup's manifest, checked against its checksum and MAC and read strictly."""
        self.path_of(backup_id)  # refuses an id that is not a plain name
        return read_manifest(self.backups_dir, backup_id)

    def objects_of(self, manifest: Manifest) -> Path:
        """The object folder holding a format-4 backup's stored files."""
        if manifest.own_objects:
            return self.path_of(manifest.id) / OBJECTS
        return self.backups_dir / OBJECTS

    def stored_file(self, manifest: Manifest, rel: str, entry: Entry) -> Path:
        """Where the stored copy of the file or database ``rel`` (decoded) of a backup is:
        its object, or (formats 2 and 3) its path under the backup's ``tree/``."""
        if manifest.format >= 4:
            return object_path(self.objects_of(manifest), entry.hash)
        return self.path_of(manifest.id) / TREE / rel

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
        return backup_ids(self.backups_dir)

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
        the damaged copies (objects: every other backup whose manifest references one).
        """
        if manifest is None:
            manifest = self.read_manifest(backup_id)
        if entries is None:
            entries = manifest.decoded()
        names = list(entries) if only is None else list(only)
        stored = [rel for rel in names if entries[rel].type in ("file", "sqlite")]
        paths = {rel: self.stored_file(manifest, rel, entries[rel]) for rel in stored}

        def check(path: Path) -> tuple[str, int] | str:
            try:
                return hash_file(path)
            except FileNotFoundError:
                return "missing"
            except OSError as exc:
                return str(exc.strerror or exc)

        unique = sorted(set(paths.values()))  # an object several files share is read once
        if len(unique) < _WORKERS * 2:  # a few (a restore of what changed): no pool to start
            found = {path: check(path) for path in unique}
        else:
            import concurrent.futures  # noqa: PLC0415 - see above

            with concurrent.futures.ThreadPoolExecutor(_WORKERS) as pool:
                found = dict(zip(unique, pool.map(check, unique), strict=True))
        bad = []
        for rel in stored:
            entry, result = entries[rel], found[paths[rel]]
            if isinstance(result, str):
                bad.append((rel, f"{rel} ({result})"))
            elif result[1] != entry.size and (entry.type == "file" or manifest.format >= 4):
                bad.append(
                    (rel, f"{rel} (truncated or resized: {result[1]} bytes, expected {entry.size})")
                )
            elif result[0] != entry.hash:
                bad.append((rel, f"{rel} (content differs from the manifest)"))
        if bad:
            damaged = tuple(rel for rel, _ in bad)
            affected = self._sharing(manifest, {rel: entries[rel] for rel in damaged})
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

    def _sharing(self, manifest: Manifest, damaged: dict[str, Entry]) -> builtins.list[str]:
        """The other backups holding one of the ``damaged`` files of ``manifest`` as the same
        stored copy: referencing the same shared object (format 4), or hard-linked to the same
        file (formats 2 and 3: unchanged files share one copy, always under the same path)."""
        if manifest.format >= 4:
            if manifest.own_objects:
                return []
            hashes = {entry.hash for entry in damaged.values()}
            return [
                other
                for other in self.ids()
                if other != manifest.id and self._references(other) & hashes
            ]
        tree = os.fspath(self.path_of(manifest.id) / TREE)
        inodes = {}
        for rel in damaged:
            with contextlib.suppress(OSError):
                info = os.stat(f"{tree}/{rel}", follow_symlinks=False)  # noqa: PTH116
                if info.st_nlink > 1:
                    inodes[rel] = (info.st_dev, info.st_ino)
        affected = []
        for other in self.ids():
            if other == manifest.id or not inodes:
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

    def _references(self, backup_id: str) -> set[str]:
        """The shared objects backup ``backup_id`` references (none for an older format or a
        full backup), read from its authenticated manifest; an unreadable one yields the
        hashes its JSON names, if any can be read."""
        try:
            info = (self.backups_dir / backup_id / MANIFEST).stat()
        except OSError:
            return set()
        identity = (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)
        known = self._known.get(backup_id)
        if known is not None and known[0] == identity:
            return known[1]
        try:
            manifest = self.read_manifest(backup_id)
        except BackupError:
            return self._hashes_named(backup_id) or set()
        found: set[str] = set()
        if manifest.format >= 4 and not manifest.own_objects:
            found = {e.hash for e in manifest.entries.values() if e.type in ("file", "sqlite")}
        self._known[backup_id] = (identity, found)
        return found

    def _hashes_named(self, backup_id: str) -> set[str] | None:
        """Every hash a damaged or unauthenticated manifest names, read leniently; None when
        its JSON cannot be read at all."""
        try:
            document = json.loads((self.backups_dir / backup_id / MANIFEST).read_bytes())
            hashes = (
                e[4] if isinstance(e, list) else e.get("hash")  # format 5: fields in order
                for e in document["entries"].values()
            )
            return {digest for digest in hashes if isinstance(digest, str) and digest}
        except (OSError, ValueError, TypeError, KeyError, IndexError, AttributeError):
            return None

    def shared_files(self, backup_id: str) -> int:
        """How many of the backup's stored files are shared with other backups (the same
        object, or formats 2 and 3, hard-linked, because they had not changed): damage to one
        of them damages every backup holding it."""
        manifest = self.read_manifest(backup_id)
        entries = manifest.decoded()
        stored = {rel: e for rel, e in entries.items() if e.type in ("file", "sqlite")}
        if manifest.format >= 4:
            if manifest.own_objects:
                return 0
            others: set[str] = set()
            for other in self.ids():
                if other != backup_id:
                    others |= self._references(other)
            return sum(entry.hash in others for entry in stored.values())
        tree = os.fspath(self.path_of(backup_id) / TREE)
        shared = 0
        for rel in stored:
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

        Files unchanged since the previous backup are not read: the new manifest references
        their objects. With ``full``, every file is read, hashed and stored again, as objects
        in the new backup's own folder: it shares no stored file with another backup, and
        deleting it frees them. Raises :class:`InsufficientSpaceError` before writing
        anything when the disk cannot hold what would be copied. Folders their owner made
        unreadable are opened for the owner while the backup reads them, and get their modes
        back afterwards.
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
        needed = sum(allocated(j.entry.info) for j in jobs if j.action != "reuse")
        self._check_space(needed)

        backup_id = _new_id()
        self.backups_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        self.backups_dir.chmod(0o700)
        building = self.backups_dir / f".building-{backup_id}"
        building.mkdir(mode=0o700)
        objects = building / OBJECTS if full else self.backups_dir / OBJECTS
        logger.info("backup.started", backup_id=backup_id, root=str(scope.root), bytes=needed)
        try:
            staging = building / _STAGING
            staging.mkdir(mode=0o700)
            entries, written = self._write(
                scope,
                staging,
                found=found,
                jobs=jobs,
                links=links,
                total=needed,
                on_progress=on_progress,
            )
            if written:
                # The new objects' data is durable before any of them gets its final name.
                sync_filesystem(building)
                _publish(written, objects)
            try:
                staging.rmdir()  # empty, but for what a database capture may leave
            except OSError:
                _rmtree(staging)
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
                own_objects=full,
            )
            raw = manifest.to_json()
            checksum = xxhash.xxh3_128_hexdigest(raw).encode()
            mac = sign_manifest(self.backups_dir, raw)
            for name, data in ((MANIFEST, raw), (MANIFEST_SUM, checksum), (MANIFEST_MAC, mac)):
                _write_synced(building / name, data)
            if written:
                sync_filesystem(building)  # the objects' names, before a manifest names them
            else:
                fsync_dir(building)
            crash_point("backup.before_rename")
            final = self.backups_dir / backup_id
            building.rename(final)
            fsync_dir(self.backups_dir)
        except BaseException as exc:
            _rmtree(building, ignore_errors=True)
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
        self._check_written(manifest, raw, [digest for _, digest in written])
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
        """The newest readable backup whose objects a new one may reference: format 4,
        in the shared object folder."""
        for backup_id in reversed(self.ids()):
            with contextlib.suppress(BackupError):
                manifest = self.read_manifest(backup_id)
                if manifest.format >= 4 and not manifest.own_objects:
                    return manifest
        return None

    def _plan(
        self, scope: Scope, found: Sequence[TreeEntry], previous: Manifest | None
    ) -> tuple[builtins.list[_Job], dict[str, str], builtins.list[tuple[str, str]]]:
        """What to copy, capture or reuse (an unchanged file's object, if it is still there
        with its size); the hard links (a file's other names, each mapped to its first name);
        what is skipped."""
        before = previous.decoded() if previous else {}
        jobs: builtins.list[_Job] = []
        skipped: builtins.list[tuple[str, str]] = []
        same = _same_files(found, before)
        databases = _databases(scope.root, found, same)
        sidecars = {db + suffix for db in databases for suffix in _sqlite.SIDECARS}
        links = link_leaders(
            item for item in found if item.rel not in databases and item.rel not in sidecars
        )

        with _ObjectSizes(self.backups_dir / OBJECTS) as stored:
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
                        and stored(old)
                    ):
                        jobs.append(_Job(item.rel, item, "reuse", old))
                    else:
                        jobs.append(_Job(item.rel, item, "sqlite", number=len(jobs)))
                    continue
                if old is not None and item.rel in same and stored(old):
                    jobs.append(_Job(item.rel, item, "reuse", old))
                else:
                    jobs.append(_Job(item.rel, item, "copy", number=len(jobs)))
        return jobs, links, skipped

    def _check_space(self, needed: int) -> None:
        probe = self.backups_dir
        while not probe.exists():
            probe = probe.parent
        free = _free_space(probe)
        if needed + _SPACE_MARGIN > free:
            raise InsufficientSpaceError(
                f"not enough free space in {probe} for a backup: it needs about"
                f" {needed + _SPACE_MARGIN:,} bytes and {free:,} are free; free some space"
                " or prune old backups (`dopemux-update backups prune --keep N`)"
            )

    def _write(
        self,
        scope: Scope,
        staging: Path,
        *,
        found: Sequence[TreeEntry],
        jobs: Sequence[_Job],
        links: dict[str, str],
        total: int,
        on_progress: ProgressCallback | None,
    ) -> tuple[dict[str, Entry], builtins.list[tuple[Path, str]]]:
        """The manifest's entries, and the new objects: (temporary copy, hash) each."""
        entries: dict[str, Entry] = {}
        holders: set[str] = set()  # folders holding something in scope
        if scope.included:
            for rel in [j.rel for j in jobs] + [i.rel for i in found if i.kind == "symlink"]:
                parts = rel.split("/")
                holders.update("/".join(parts[:n]) for n in range(1, len(parts)))
        for item in found:  # folders and symlinks: in the manifest alone
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
            elif item.kind == "symlink":
                target = encode_name(str((scope.root / item.rel).readlink()))
                entries[encode_name(item.rel)] = Entry(
                    type="symlink", target=target, uid=info.st_uid, gid=info.st_gid
                )
        for job in jobs:  # unchanged: the same object, no data read or written
            if job.action == "reuse":
                old = job.previous
                assert old is not None  # noqa: S101 - a reuse job carries the previous entry
                entries[encode_name(job.rel)] = old  # its signature is the live file's too
        copies = [j for j in jobs if j.action != "reuse"]
        captured = _capture_all(scope.root, staging, copies, total, on_progress)
        entries.update(captured)
        written = [(_staged(staging, job), captured[encode_name(job.rel)].hash) for job in copies]
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
        return dict(sorted(entries.items())), written

    def _check_written(self, manifest: Manifest, raw: bytes, new: Sequence[str]) -> None:
        """Read the new backup back: the manifest as written, and every new object's size
        (the objects it reuses were found with theirs when the backup was planned)."""
        folder = self.path_of(manifest.id)
        try:
            intact = (folder / MANIFEST).read_bytes() == raw
        except OSError:
            intact = False
        if not intact:
            raise BackupError("failed verification: manifest.json", backup_id=manifest.id)
        fresh = set(new)
        missing = []
        with _ObjectSizes(self.objects_of(manifest)) as stored_whole:
            for stored, entry in manifest.entries.items():
                if entry.type not in ("file", "sqlite") or entry.hash not in fresh:
                    continue
                if not stored_whole(entry):
                    missing.append(decode_name(stored))
        if missing:
            raise BackupError(f"failed verification: {', '.join(missing)}", backup_id=manifest.id)
        logger.info("backup.verified", backup_id=manifest.id, files=len(manifest.entries))

    def restore(
        self, backup_id: str, root: Path, *, on_progress: ProgressCallback | None = None
    ) -> RestoreReport:
        """Make the backed-up scope under ``root`` identical to this backup (see ``_restore``).

        ``_restore`` is imported here: taking a backup does not pay for loading it."""
        from ._restore import restore  # noqa: PLC0415 - see above

        return restore(self, backup_id, root, on_progress=on_progress)

    # -- removing ---------------------------------------------------------------------------

    def delete(self, backup_id: str) -> None:
        """Delete a backup, then the objects no remaining backup references."""
        self._remove(backup_id)
        crash_point("backup.before_collect")
        self.collect_garbage()

    def _remove(self, backup_id: str) -> None:
        path = self.path_of(backup_id)
        if not path.is_dir():
            raise BackupError("does not exist", backup_id=backup_id)
        trash = self.backups_dir / f".deleting-{backup_id}"
        path.rename(trash)  # no longer listed from here on, even if the removal is interrupted
        _rmtree(trash)
        logger.info("backup.deleted", backup_id=backup_id)

    def prune(self, keep: int, *, protect: Iterable[str] = ()) -> builtins.list[str]:
        """Delete all but the newest ``keep`` backups, never one in ``protect``; then the
        objects no remaining backup references."""
        if keep < 0:
            raise ValueError("keep must be >= 0")
        protected = set(protect)
        ids = self.ids()
        doomed = [b for b in ids[: max(0, len(ids) - keep)] if b not in protected]
        for backup_id in doomed:
            self._remove(backup_id)
        if self.backups_dir.is_dir():
            for leftover in self.backups_dir.glob(".deleting-*"):
                _rmtree(leftover)
        crash_point("backup.before_collect")
        self.collect_garbage()
        if doomed:
            logger.info("backup.pruned", deleted=doomed, kept=len(ids) - len(doomed))
        return doomed

    def collect_garbage(self) -> int:
        """Remove the shared objects no backup references; how many were removed.

        Removes nothing when a backup's manifest cannot be read at all (what it references
        is then unknown): an object a manifest references is never removed. It must not run
        while a backup is being taken (its new objects are not referenced yet): the state
        folder's lock keeps them apart, as it does every command and run.
        """
        objects = self.backups_dir / OBJECTS
        if not objects.is_dir():
            return 0
        referenced: set[str] = set()
        for backup_id in self.ids():
            try:
                manifest = self.read_manifest(backup_id)
            except BackupError as exc:
                named = self._hashes_named(backup_id)
                if named is None:
                    logger.warning("backup.collect_skipped", backup_id=backup_id, error=str(exc))
                    return 0
                referenced |= named
                continue
            if manifest.format >= 4 and not manifest.own_objects:
                referenced.update(
                    e.hash for e in manifest.entries.values() if e.type in ("file", "sqlite")
                )
        removed = 0
        with os.scandir(objects) as fans:
            folders = [fan.path for fan in fans if fan.is_dir(follow_symlinks=False)]
        for folder in folders:
            with os.scandir(folder) as found:
                doomed = [entry.path for entry in found if entry.name not in referenced]
            for path in doomed:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)  # noqa: PTH108
                    removed += 1
        if removed:
            logger.info("backup.objects_removed", removed=removed)
        return removed
