"""Snapshots of an installation, and putting the tree back exactly as a snapshot saw it.

A backup lives in ``<state>/backups/<id>/``: ``manifest.json`` describes every folder, file and
symlink in scope; ``tree/`` holds the file contents. It is built under a temporary name and
renamed into place once complete, so a backup that exists is whole.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import structlog
from pydantic import BaseModel, ConfigDict, ValidationError

from ._exceptions import BackupError
from ._fsutil import atomic_write, fsync_dir

__all__ = ["BackupInfo", "BackupStore", "Entry", "RestoreReport", "Scope"]

logger = structlog.get_logger("dopemux_update")

_CHUNK = 1 << 20
_MANIFEST = "manifest.json"
_TREE = "tree"
_FORMAT = 1


@dataclass(frozen=True, slots=True)
class Scope:
    """What a backup covers: everything under ``root`` but the ``excluded`` relative paths."""

    root: Path
    excluded: frozenset[str]

    @classmethod
    def for_installation(
        cls, root: Path, *, state_dir: Path, migrations_dir: Path | None = None
    ) -> Scope:
        """The default scope: the root minus the state folder, ``.git`` and the migrations."""
        root = root.resolve()
        excluded = {".git"}
        for inner in (state_dir, migrations_dir):
            if inner is None:
                continue
            with contextlib.suppress(ValueError):
                relative = inner.resolve().relative_to(root)
                if relative.parts:
                    excluded.add(relative.as_posix())
        return cls(root, frozenset(excluded))


class Entry(BaseModel):
    """One folder, regular file or symlink in a snapshot."""

    model_config = ConfigDict(frozen=True)

    type: Literal["dir", "file", "symlink"]
    mode: int = 0
    size: int = 0
    mtime_ns: int = 0
    sha256: str = ""
    target: str = ""


class Manifest(BaseModel):
    model_config = ConfigDict(frozen=True)

    format: int
    id: str
    created_at: str
    root: str
    excluded: tuple[str, ...]
    version_from: str | None = None
    version_to: str | None = None
    entries: dict[str, Entry]


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """A complete backup on disk."""

    id: str
    path: Path
    created_at: str
    files: int
    bytes: int
    version_from: str | None
    version_to: str | None


@dataclass(frozen=True, slots=True)
class RestoreReport:
    """What a restore changed to make the tree equal to the snapshot."""

    backup_id: str
    written: tuple[str, ...]
    removed: tuple[str, ...]
    fixed: tuple[str, ...]


_RAW_NAME = "\x00b64:"  # a NUL never occurs in a file name, so this prefix is unambiguous


def _encode_name(name: str) -> str:
    """A JSON-safe form of a path or link target that may not be valid UTF-8."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return _RAW_NAME + base64.b64encode(os.fsencode(name)).decode("ascii")
    return name


def _decode_name(stored: str) -> str:
    if stored.startswith(_RAW_NAME):
        return os.fsdecode(base64.b64decode(stored[len(_RAW_NAME) :]))
    return stored


def _hash_and_copy(source: Path, destination: Path | None) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with contextlib.ExitStack() as stack:
        reader = stack.enter_context(source.open("rb"))
        writer = None
        if destination is not None:
            fd = os.open(destination, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            writer = stack.enter_context(os.fdopen(fd, "wb"))
        while chunk := reader.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
            if writer is not None:
                writer.write(chunk)
        if writer is not None:
            writer.flush()
            os.fsync(writer.fileno())
    return digest.hexdigest(), size


def _walk(scope: Scope) -> Iterator[tuple[str, os.stat_result]]:
    """Every path in scope (relative, ``/``-separated), parents first; symlinks not followed."""
    stack = [""]
    while stack:
        relative = stack.pop()
        folder = scope.root / relative if relative else scope.root
        with os.scandir(folder) as entries:
            children = sorted(entries, key=lambda e: e.name, reverse=True)
        for child in children:
            rel = f"{relative}/{child.name}" if relative else child.name
            if rel in scope.excluded:
                continue
            info = child.stat(follow_symlinks=False)
            yield rel, info
            if stat.S_ISDIR(info.st_mode):
                stack.append(rel)


def _kind(mode: int) -> str | None:
    if stat.S_ISDIR(mode):
        return "dir"
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISLNK(mode):
        return "symlink"
    return None


class BackupStore:
    """The backups of one installation, in ``backups_dir``."""

    def __init__(self, backups_dir: Path) -> None:
        self.backups_dir = backups_dir

    # -- creating ---------------------------------------------------------------------------

    def create(
        self,
        scope: Scope,
        *,
        version_from: str | None = None,
        version_to: str | None = None,
    ) -> BackupInfo:
        """Snapshot ``scope`` into a new backup, verify it and return it."""
        self.backups_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        now = datetime.now(UTC)
        backup_id = f"{now:%Y%m%dT%H%M%S}{now.microsecond // 1000:03d}Z-{secrets.token_hex(3)}"
        self.backups_dir.chmod(0o700)
        building = self.backups_dir / f".building-{backup_id}"
        tree = building / _TREE
        building.mkdir(mode=0o700)
        tree.mkdir(mode=0o700)
        logger.info("backup.started", backup_id=backup_id, root=str(scope.root))
        entries: dict[str, Entry] = {}
        total = 0
        try:
            for rel, info in _walk(scope):
                kind = _kind(info.st_mode)
                mode = stat.S_IMODE(info.st_mode)
                source = scope.root / rel
                if kind == "dir":
                    entries[_encode_name(rel)] = Entry(type="dir", mode=mode)
                    (tree / rel).mkdir(mode=0o700)
                elif kind == "symlink":
                    target = _encode_name(str(source.readlink()))
                    entries[_encode_name(rel)] = Entry(type="symlink", target=target)
                elif kind == "file":
                    digest, size = _hash_and_copy(source, tree / rel)
                    total += size
                    entries[_encode_name(rel)] = Entry(
                        type="file", mode=mode, size=size, mtime_ns=info.st_mtime_ns, sha256=digest
                    )
                else:
                    logger.warning(
                        "backup.skipped", path=rel, reason="not a file, folder or symlink"
                    )
            manifest = Manifest(
                format=_FORMAT,
                id=backup_id,
                created_at=now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
                root=str(scope.root),
                excluded=tuple(sorted(scope.excluded)),
                version_from=version_from,
                version_to=version_to,
                entries=entries,
            )
            atomic_write(building / _MANIFEST, manifest.model_dump_json().encode(), mode=0o600)
            final = self.backups_dir / backup_id
            building.rename(final)
            fsync_dir(self.backups_dir)
        except OSError as exc:
            shutil.rmtree(building, ignore_errors=True)
            raise BackupError(f"could not be written: {exc}", backup_id=backup_id) from exc
        self.verify(backup_id)
        logger.info("backup.created", backup_id=backup_id, files=len(entries), bytes=total)
        return self._info(manifest, final)

    # -- reading ----------------------------------------------------------------------------

    def _info(self, manifest: Manifest, path: Path) -> BackupInfo:
        files = [e for e in manifest.entries.values() if e.type == "file"]
        return BackupInfo(
            id=manifest.id,
            path=path,
            created_at=manifest.created_at,
            files=len(files),
            bytes=sum(e.size for e in files),
            version_from=manifest.version_from,
            version_to=manifest.version_to,
        )

    def _path(self, backup_id: str) -> Path:
        if not backup_id or "/" in backup_id or backup_id.startswith("."):
            raise BackupError("is not a valid backup id", backup_id=backup_id)
        return self.backups_dir / backup_id

    def read_manifest(self, backup_id: str) -> Manifest:
        path = self._path(backup_id) / _MANIFEST
        try:
            return Manifest.model_validate(json.loads(path.read_bytes()))
        except FileNotFoundError as exc:
            raise BackupError("does not exist", backup_id=backup_id) from exc
        except (OSError, ValueError, ValidationError) as exc:
            raise BackupError(f"manifest is unreadable: {exc}", backup_id=backup_id) from exc

    def list(self) -> list[BackupInfo]:
        """Every complete backup, oldest first."""
        if not self.backups_dir.is_dir():
            return []
        found = []
        for path in sorted(self.backups_dir.iterdir()):
            if path.name.startswith(".") or not (path / _MANIFEST).is_file():
                continue
            found.append(self._info(self.read_manifest(path.name), path))
        return found

    def verify(self, backup_id: str) -> None:
        """Check every stored file against its size and hash; raise :class:`BackupError` if not."""
        manifest = self.read_manifest(backup_id)
        tree = self._path(backup_id) / _TREE
        bad = []
        for rel, entry in _entries(manifest).items():
            if entry.type != "file":
                continue
            try:
                digest, size = _hash_and_copy(tree / rel, None)
            except OSError as exc:
                bad.append(f"{rel} ({exc.strerror or exc})")
                continue
            if size != entry.size or digest != entry.sha256:
                bad.append(f"{rel} (content differs from the manifest)")
        if bad:
            raise BackupError(f"failed verification: {', '.join(bad)}", backup_id=backup_id)
        logger.info("backup.verified", backup_id=backup_id)

    # -- restoring --------------------------------------------------------------------------

    def restore(self, backup_id: str, root: Path) -> RestoreReport:
        """Make the scope under ``root`` identical to the backup; rewrite only what differs."""
        manifest = self.read_manifest(backup_id)
        self.verify(backup_id)
        scope = Scope(root.resolve(), frozenset(manifest.excluded))
        live = dict(_walk(scope))
        wanted = _entries(manifest)
        removed = _remove_extras(scope.root, live, wanted)
        tree = self._path(backup_id) / _TREE
        written, fixed = _put_back(scope.root, tree, live, wanted)
        fixed += _fix_folder_modes(scope.root, wanted)
        report = RestoreReport(backup_id, tuple(written), tuple(removed), tuple(fixed))
        logger.info(
            "backup.restored",
            backup_id=backup_id,
            written=len(written),
            removed=len(removed),
            fixed=len(fixed),
        )
        return report


def _entries(manifest: Manifest) -> dict[str, Entry]:
    """The manifest's entries with their real (possibly non-UTF-8) names and link targets."""
    decoded = {}
    for stored, entry in manifest.entries.items():
        real = entry
        if entry.type == "symlink":
            real = entry.model_copy(update={"target": _decode_name(entry.target)})
        decoded[_decode_name(stored)] = real
    return decoded


def _remove_extras(
    root: Path, live: dict[str, os.stat_result], wanted: dict[str, Entry]
) -> list[str]:
    """Remove what the snapshot lacks or has as another kind, children before parents."""
    removed = []
    for rel in sorted(live, reverse=True):
        entry = wanted.get(rel)
        if entry is not None and entry.type == _kind(live[rel].st_mode):
            continue
        path = root / rel
        if stat.S_ISDIR(live[rel].st_mode):
            path.rmdir()  # its children were removed before it
        else:
            path.unlink()
        del live[rel]
        removed.append(rel)
    return removed


def _put_back(
    root: Path, tree: Path, live: dict[str, os.stat_result], wanted: dict[str, Entry]
) -> tuple[list[str], list[str]]:
    """Create folders, files and symlinks, parents first; fix file modes and times."""
    written: list[str] = []
    fixed: list[str] = []
    for rel in sorted(wanted):
        entry, path, current = wanted[rel], root / rel, live.get(rel)
        if entry.type == "dir":
            if current is None:
                path.mkdir(mode=0o700)
                written.append(rel)
            continue
        if entry.type == "symlink":
            if current is None or str(path.readlink()) != entry.target:
                if current is not None:
                    path.unlink()
                path.symlink_to(entry.target)
                written.append(rel)
            continue
        if current is None or not _same_content(path, current, entry):
            _put_file(tree / rel, path)
            written.append(rel)
        after = path.stat(follow_symlinks=False)
        if stat.S_IMODE(after.st_mode) != entry.mode or after.st_mtime_ns != entry.mtime_ns:
            path.chmod(entry.mode, follow_symlinks=False)
            os.utime(path, ns=(entry.mtime_ns, entry.mtime_ns), follow_symlinks=False)
            if not written or written[-1] != rel:
                fixed.append(rel)
    return written, fixed


def _fix_folder_modes(root: Path, wanted: dict[str, Entry]) -> list[str]:
    """Folder modes last, deepest first, so a read-only folder is filled before it closes."""
    fixed = []
    for rel in sorted(wanted, reverse=True):
        entry = wanted[rel]
        if entry.type == "dir":
            path = root / rel
            if stat.S_IMODE(path.stat(follow_symlinks=False).st_mode) != entry.mode:
                path.chmod(entry.mode, follow_symlinks=False)
                fixed.append(rel)
    return fixed


def _same_content(path: Path, current: os.stat_result, entry: Entry) -> bool:
    if current.st_size != entry.size:
        return False
    digest, _ = _hash_and_copy(path, None)
    return digest == entry.sha256


def _put_file(source: Path, destination: Path) -> None:
    """Copy ``source`` over ``destination`` atomically; a symlink there is replaced."""
    tmp = destination.with_name(f".{destination.name}.restore-{secrets.token_hex(4)}")
    try:
        _hash_and_copy(source, tmp)
        tmp.replace(destination)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
