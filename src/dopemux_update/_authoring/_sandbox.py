"""Sandbox copies of an installation, to rehearse migrations on without touching the original.

A copy keeps folders, files with their permission bits, and symlinks as symlinks. A symlink
that leads (as the kernel resolves it) to a path inside the installation leads to the same
path inside the copy: it is rewritten as a relative link to it. A symlink that leads
*outside* the installation is refused, all of them listed at once: a migration writing
through it would write to the real files, not to the sandbox. SQLite databases are copied
through SQLite's online backup API, so a database that a running service holds open, with
pages still in its WAL, is copied consistently; a database in WAL mode stays in WAL mode. A
file is a database's ``-wal``/``-shm``/``-journal`` only beside a database. Fifos, sockets and
devices are left out, as in a backup.

Files are copied the cheapest way the file system has (``_copy.copy_file``): a reflink,
else ``copy_file_range`` in the kernel, else ``sendfile``; a sparse file keeps its holes.
Never a hard link: a migration writing to it would write into the installation. The plain
files are copied a few folders at a time in threads, and a sandbox is removed the same way.

A rehearsal copies with :func:`copy_sandbox`: each file is hashed as it is read back from
the copy (small text files keep their text, for diffs), so the snapshot the rehearsal
compares against costs no second pass over the tree; a database is kept aside unread until
a comparison needs it (:class:`DeferredDatabases`). The snapshots after that
(:func:`snapshot_sandbox`) read again only the paths whose standing changed: a file whose
``lstat`` (device, inode, mode, size, modification and change times) is the same as when the
last snapshot read it, and whose change time is older than a clock mark the file system gave
*after* that snapshot, still holds what that snapshot read. The change time is the kernel's:
no program can set it back (short of setting the system's clock back meanwhile), and any
write, ``chmod``, ``chown``, new hard link or ``utime`` moves it to the file system's clock,
which the mark shows has moved past it; a file renamed into place is another inode. A
file whose change time is not older than the mark (written within the same tick of a coarse
clock) is read again. A database is reused only when its ``-wal``/``-shm``/``-journal``
files stand as they did too. What else an item holds (mode, owners, hard links) is always
taken from the new ``lstat``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import posixpath
import shutil
import sqlite3
import stat
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import xxhash

from .._backup._copy import copy_file, hash_file, is_sparse
from .._backup._snapshot import (
    TEXT_LIMIT,
    TEXTS_LIMIT,
    Item,
    TreeSnapshot,
    database_digest,
    database_hash,
    file_text,
    read_item,
    tree_items,
)
from .._backup._sqlite import SIDECARS, capture, is_sqlite, is_wal
from .._backup._tree import Scope, TreeEntry, link_destination, shown, walk
from .._core._exceptions import PreflightError, UpdateError
from .._core._log import get_logger

__all__ = [
    "DeferredDatabases",
    "SandboxEscapeError",
    "SandboxSnapshot",
    "copy_sandbox",
    "copy_tree",
    "remove_tree",
    "snapshot_sandbox",
    "temporary_folder",
]

_SHOWN_LINKS = 5
_WORKERS = 4  # threads copying or removing a sandbox's files
_GROUP = 64  # files of one folder a thread copies in a row

logger = get_logger()


class SandboxEscapeError(PreflightError):
    """Symlinks in the installation lead outside it; a rehearsal could not contain them."""

    def __init__(self, root: Path, links: list[tuple[str, str]]) -> None:
        self.links = tuple(links)
        listed = ", ".join(
            f"{shown(rel)} -> {shown(target)}" for rel, target in links[:_SHOWN_LINKS]
        )
        more = f" and {len(links) - _SHOWN_LINKS} more" if len(links) > _SHOWN_LINKS else ""
        super().__init__(
            f"{root}: {len(links)} symlink(s) lead outside the installation ({listed}{more});"
            " a migration writing through them would change the real files, not the sandbox."
            " Leave them out with --exclude"
        )


def _links(root: Path, entries: list[TreeEntry]) -> dict[str, str]:
    """Where each symlink finally leads, relative to ``root``; raises if any leads outside.

    Resolved as the kernel resolves it, through every symlink on the way: a link whose text
    looks inside but climbs out through another link, or to ``/`` and back in, is outside.
    """
    destinations: dict[str, str] = {}
    escaping: list[tuple[str, str]] = []
    for entry in entries:
        if entry.kind != "symlink":
            continue
        inside = link_destination(root, root / entry.rel)
        if inside is None:
            escaping.append((entry.rel, os.readlink(root / entry.rel)))  # noqa: PTH115
        else:
            destinations[entry.rel] = inside
    if escaping:
        raise SandboxEscapeError(root, escaping)
    return destinations


def _set_wal(path: Path) -> None:
    connection = sqlite3.connect(path)
    try:
        connection.execute("PRAGMA journal_mode=WAL").fetchall()
    finally:
        connection.close()


def copy_tree(scope: Scope, destination: Path) -> int:
    """Copy what ``scope`` covers into the folder ``destination`` (created, or empty).

    Returns the number of bytes of regular files copied. Raises
    :class:`SandboxEscapeError` (before copying anything) when a symlink leads outside the
    scope's root, and :class:`~dopemux_update.UpdateError` naming the path that could not be
    read or copied.
    """
    return _copy(scope, destination, None)


def _copy(scope: Scope, destination: Path, read_back: _ReadBack | None) -> int:
    root = scope.root.resolve()
    entries = list(walk(Scope(root, scope.excluded, scope.included)))
    links = _links(root, entries)
    databases = {e.rel for e in entries if e.kind == "file" and is_sqlite(root / e.rel)}
    destination.mkdir(parents=True, exist_ok=True)
    folders: list[tuple[Path, int]] = [(destination, stat.S_IMODE(root.stat().st_mode))]
    files: dict[str, list[TreeEntry]] = {}  # the plain files, by folder
    for entry in entries:
        if entry.kind == "file" and any(
            entry.rel.endswith(s) and entry.rel[: -len(s)] in databases for s in SIDECARS
        ):
            continue  # part of its database, copied with it
        if entry.kind == "file" and entry.rel not in databases:
            files.setdefault(posixpath.dirname(entry.rel), []).append(entry)
            if read_back is not None:
                read_back.plan(entry)
            continue
        try:
            _copy_entry(root, destination, entry, links, databases, folders)
        except (OSError, sqlite3.Error) as exc:
            raise UpdateError(
                f"{shown(entry.rel)}: cannot be copied into the sandbox: {exc}"
            ) from exc
    groups = [
        group[i : i + _GROUP] for group in files.values() for i in range(0, len(group), _GROUP)
    ]
    copied = _copy_files(root, destination, groups, read_back)
    # Folder modes last: a read-only folder must still be written into while it is filled.
    for folder, mode in reversed(folders):
        folder.chmod(mode)
    return copied


def _copy_files(
    root: Path, destination: Path, groups: list[list[TreeEntry]], read_back: _ReadBack | None
) -> int:
    """Copy the plain files, a few folders at a time in threads of their own (creating
    files in different folders at once is several times faster where each creation waits
    on the disk); the bytes copied. The first failure stops the others."""
    failed = threading.Event()

    def copy_group(group: list[TreeEntry]) -> int:
        copied = 0
        for entry in group:
            if failed.is_set():
                break
            try:
                mode = stat.S_IMODE(entry.info.st_mode)
                copy_file(root / entry.rel, destination / entry.rel, mode=mode)
                if read_back is not None:
                    read_back.read(destination, entry.rel)
            except (OSError, sqlite3.Error) as exc:
                failed.set()
                raise UpdateError(
                    f"{shown(entry.rel)}: cannot be copied into the sandbox: {exc}"
                ) from exc
            copied += entry.info.st_size
        return copied

    with ThreadPoolExecutor(_WORKERS, thread_name_prefix="dopemux-update copy") as pool:
        return sum(pool.map(copy_group, groups))


def _copy_entry(  # noqa: PLR0917 - one private step of copy_tree
    root: Path,
    destination: Path,
    entry: TreeEntry,
    links: dict[str, str],
    databases: set[str],
    folders: list[tuple[Path, int]],
) -> None:
    """Copy a folder, a symlink or a database (plain files go to :func:`_copy_files`;
    fifos, sockets and devices are left out)."""
    source, target = root / entry.rel, destination / entry.rel
    mode = stat.S_IMODE(entry.info.st_mode)
    if entry.kind == "dir":
        target.mkdir(mode=0o700)
        folders.append((target, mode))
    elif entry.kind == "symlink":
        # Relative, to where the original finally leads, but inside the copy: whatever the
        # original's text (absolute, or climbing out and back in), it cannot leave the copy.
        target.symlink_to(os.path.relpath(destination / links[entry.rel], target.parent))
    elif entry.kind == "file" and entry.rel in databases:
        capture(source, target)
        if is_wal(source):
            _set_wal(target)
        for suffix in SIDECARS:
            with contextlib.suppress(FileNotFoundError):
                Path(f"{target}{suffix}").unlink()
        target.chmod(mode)


def remove_tree(path: Path) -> None:
    """Remove a sandbox, even one whose migrations left read-only folders behind.

    The files go first, a few folders at a time in threads of their own: removing files
    from different folders at once is several times faster where each removal waits on the
    disk (discard on delete, journalled metadata), and no slower elsewhere."""
    if path.is_symlink() or not path.exists():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    with contextlib.suppress(OSError):
        path.chmod(0o700)
    contents: list[tuple[str, list[str]]] = []
    for folder, names, files in os.walk(path):
        for name in names:
            child = Path(folder, name)
            if not child.is_symlink():  # never change anything outside the sandbox
                with contextlib.suppress(OSError):
                    child.chmod(0o700)
        contents.append((folder, files))
    with ThreadPoolExecutor(_WORKERS, thread_name_prefix="dopemux-update remove") as pool:
        for _ in pool.map(_remove_files, contents):
            pass
    shutil.rmtree(path)  # what is left: folders, and anything that could not be removed


def _remove_files(contents: tuple[str, list[str]]) -> None:
    """Remove the files (and symlinks) of one folder; what fails is left to ``rmtree``,
    which says why."""
    folder, files = contents
    for name in files:
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(folder, name))  # noqa: PTH108, PTH118 - thousands of them


@contextlib.contextmanager
def temporary_folder(parent: Path | None, *, keep: bool = False) -> Iterator[Path]:
    """A new private folder under ``parent`` (default: the system's temporary folder),
    removed afterwards unless ``keep``."""
    if parent is not None:
        parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="dopemux-verify-", dir=parent))
    try:
        yield folder
    finally:
        if not keep:
            try:
                remove_tree(folder)
            except OSError as exc:  # e.g. an abandoned migration thread still writing there
                logger.warning("verify.sandbox_not_removed", path=str(folder), error=str(exc))


# -- snapshots of a sandbox -----------------------------------------------------------------

#: How a path stands: device, inode, mode, size, modification and change times (ns).
Standing = tuple[int, int, int, int, int, int]
_CHANGED = 5  # where the change time is in a Standing


def _standing(info: os.stat_result) -> Standing:
    return (
        info.st_dev,
        info.st_ino,
        info.st_mode,
        info.st_size,
        info.st_mtime_ns,
        info.st_ctime_ns,
    )


@dataclass(frozen=True, slots=True)
class SandboxSnapshot:
    """A snapshot of a sandbox, with how each of its paths stood (``lstat``) when it was
    read and a clock mark the file system gave after that: the next snapshot of the same
    sandbox reads again only what changed (see the module's docstring)."""

    tree: TreeSnapshot
    standing: dict[str, Standing]
    mark: int  # ns: the change time of a file touched once the snapshot was taken

    def stands(self, rel: str, now: Mapping[str, Standing]) -> bool:
        """Whether ``rel`` stands as it did when this snapshot read it (or is absent both
        times), with a change time older than the mark: what it holds is what was read."""
        was = self.standing.get(rel)
        if was is None:
            return rel not in now
        return was[_CHANGED] < self.mark and now.get(rel) == was


class _Texts:
    """The budget of text a snapshot keeps, :data:`TEXTS_LIMIT` bytes in all."""

    def __init__(self) -> None:
        self.left = TEXTS_LIMIT

    def take(self, size: int) -> bool:
        if size > min(TEXT_LIMIT, self.left):
            return False
        self.left -= size
        return True


def _file_item(path: Path, keep_text: Callable[[int], bool]) -> tuple[Item, Standing]:
    """A plain file as ``take_snapshot`` reads it (its hash, and its text while the budget
    lasts), and how it stood when read. A small file is read once, for both."""
    with path.open("rb", buffering=0) as handle:
        info = os.fstat(handle.fileno())
        mode = stat.S_IMODE(info.st_mode)
        if is_sparse(info) or not keep_text(info.st_size):
            return Item("file", mode, hash_file(path)[0]), _standing(info)
        raw = handle.readall()
    digest = xxhash.xxh3_128(raw).hexdigest()
    return Item("file", mode, digest, text=file_text(raw)), _standing(info)


class _ReadBack:
    """The items of the files just copied into a sandbox, read back from the copy."""

    def __init__(self) -> None:
        self.items: dict[str, Item] = {}
        self.standing: dict[str, Standing] = {}
        self.texts = _Texts()
        self.keep_text: dict[str, bool] = {}

    def plan(self, entry: TreeEntry) -> None:
        """Whether to keep the text of ``entry``, decided in the walk's order."""
        self.keep_text[entry.rel] = self.texts.take(entry.info.st_size)

    def read(self, destination: Path, rel: str) -> None:
        keep = self.keep_text.get(rel, False)
        path = destination / rel
        self.items[rel], self.standing[rel] = _file_item(path, lambda _: keep)


def copy_sandbox(scope: Scope, destination: Path, clock: Path) -> SandboxSnapshot:
    """Copy what ``scope`` covers into ``destination`` (as :func:`copy_tree`), reading each
    file back from the copy right after writing it (its hash, and its text while the budget
    lasts). Returns those files' items: a partial snapshot, to pass as ``previous`` to
    :func:`snapshot_sandbox`, which then reads no copied file a second time. ``clock`` is a
    file outside the copy, on the same file system, touched for the mark."""
    read_back = _ReadBack()
    _copy(scope, destination, read_back)
    tree = TreeSnapshot(root=destination, items=read_back.items)
    return SandboxSnapshot(tree, read_back.standing, _clock_mark(clock))


def snapshot_sandbox(
    scope: Scope,
    clock: Path,
    *,
    previous: SandboxSnapshot | None = None,
    deferred: DeferredDatabases | None = None,
) -> SandboxSnapshot:
    """``take_snapshot(scope, texts=True)`` of a sandbox only this process writes to,
    reading again only the files and databases that changed since ``previous`` (a snapshot
    of it, or what :func:`copy_sandbox` read back); the others are the same items. Given
    ``deferred``, a database read for the first time is not read yet: it is kept aside, to
    be read when a comparison needs it (see :class:`DeferredDatabases`). ``clock`` is a
    file outside the sandbox, on its file system. Raises
    :class:`~dopemux_update.UpdateError` naming a path that cannot be read."""
    root = scope.root.resolve()
    entries = list(walk(Scope(root, scope.excluded, scope.included)))
    now = {entry.rel: _standing(entry.info) for entry in entries}

    def kept(entry: TreeEntry) -> Item | None:
        if previous is None or entry.kind != "file" or not previous.stands(entry.rel, now):
            return None
        item = previous.tree.items.get(entry.rel)
        if item is not None and item.kind == "sqlite":
            sidecars = (f"{entry.rel}{suffix}" for suffix in SIDECARS)
            return item if all(previous.stands(rel, now) for rel in sidecars) else None
        return item

    reused = {entry.rel: kept(entry) for entry in entries}
    databases = {
        e.rel for e in entries if e.kind == "file" and _is_database(root / e.rel, reused[e.rel])
    }
    texts = _Texts()

    def read(entry: TreeEntry) -> Item:
        item = reused[entry.rel]
        if item is None and deferred is not None and entry.rel in databases:
            item = deferred.defer(root, entry)
        if item is None:
            item = _read_item(root, entry, databases, texts)
        return item

    items = tree_items(root, entries, databases, read)
    tree = TreeSnapshot(root=scope.root, items=items)
    return SandboxSnapshot(tree, now, _clock_mark(clock))


_DEFERRED = "not read yet: "


class DeferredDatabases:
    """Databases a snapshot has not read yet, each kept aside as it was (a copy of its file,
    by the file system's cheapest copy), and read only when a comparison needs it.

    Reading a database by content is the dearest part of a snapshot (every row of every
    table); a rehearsal whose migrations leave a database alone never needs to. A database
    not read yet is an item whose digest names its copy: two such items are equal only when
    they are the very same state, and :meth:`settle` reads the ones two snapshots disagree on
    before they are compared. The copies live in ``folder``, beside the sandbox.
    """

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.copies: dict[str, Path] = {}
        self.read: dict[str, Item] = {}

    def defer(self, root: Path, entry: TreeEntry) -> Item | None:
        """The database at ``entry`` as an item not read yet (None while SQLite files beside
        it hold part of it: it is read at once then)."""
        path = root / entry.rel
        if any(Path(f"{path}{suffix}").exists() for suffix in SIDECARS):
            return None
        self.folder.mkdir(mode=0o700, exist_ok=True)
        key = f"{_DEFERRED}{len(self.copies)}"
        copy = self.folder / f"{len(self.copies)}.db"
        copy_file(path, copy)
        self.copies[key] = copy
        return Item("sqlite", stat.S_IMODE(entry.info.st_mode), key)

    def resolved(self, item: Item) -> Item:
        """``item`` read, if it is a database not read yet."""
        copy = self.copies.get(item.digest) if item.kind == "sqlite" else None
        if copy is None:
            return item
        if item.digest not in self.read:
            database = database_digest(copy)
            self.read[item.digest] = Item("sqlite", 0, database_hash(database), database)
        done = self.read[item.digest]
        return dataclasses.replace(item, digest=done.digest, database=done.database)

    def settle(
        self, before: TreeSnapshot, after: TreeSnapshot
    ) -> tuple[TreeSnapshot, TreeSnapshot]:
        """The two snapshots with each database they disagree on read (on both sides)."""
        unsettled = [
            rel
            for rel in before.items.keys() & after.items.keys()
            if before.items[rel].digest != after.items[rel].digest
            and _DEFERRED in before.items[rel].digest + after.items[rel].digest
        ]
        if not unsettled:
            return before, after
        return self._settled(before, unsettled), self._settled(after, unsettled)

    def _settled(self, snapshot: TreeSnapshot, rels: list[str]) -> TreeSnapshot:
        try:
            read = {rel: self.resolved(snapshot.items[rel]) for rel in rels}
        except (OSError, sqlite3.Error) as exc:
            raise UpdateError(f"a database kept aside cannot be read: {exc}") from exc
        return dataclasses.replace(snapshot, items={**snapshot.items, **read})


def _is_database(path: Path, known: Item | None) -> bool:
    return is_sqlite(path) if known is None else known.kind == "sqlite"


def _read_item(root: Path, entry: TreeEntry, databases: set[str], texts: _Texts) -> Item:
    """What ``take_snapshot`` records of ``entry``, keeping texts while the budget lasts."""
    return read_item(root, entry, databases, lambda path: _file_item(path, texts.take)[0])


def _clock_mark(clock: Path) -> int:
    """The file system's time now, as it would stamp a change: ``clock``'s change time
    once it is touched."""
    descriptor = os.open(clock, os.O_WRONLY | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        os.utime(descriptor)
        return os.fstat(descriptor).st_ctime_ns
    finally:
        os.close(descriptor)
