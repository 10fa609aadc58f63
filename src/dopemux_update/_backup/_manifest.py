"""What a backup holds: its manifest, read strictly and authenticated, and its entries.

A manifest is untrusted input (anyone who can write into the backups folder can change it):
it is read against its checksum and its MAC (HMAC-SHA256 keyed by the installation's secret,
``<state>/backup.key``), parsed with no duplicate keys, and refused when it names anything a
backup could not hold. The store (``_store``) writes backups; ``_restore`` reads them back.
"""

from __future__ import annotations

import builtins
import contextlib
import hmac
import itertools
import json
import operator
import os
import re
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, cast

import xxhash

from .._core._exceptions import BackupError, PreflightError
from .._core._fsutil import fsync_dir
from . import _sqlite
from ._copy import HASH_NAME
from ._names import (
    FORMAT,
    KEY,
    KEY_BYTES,
    MANIFEST,
    MANIFEST_MAC,
    MANIFEST_SUM,
    OBJECTS,
    TREE,
    key_path,
    load_key,
    manifest_mac,
)
from ._tree import Scope, decode_name

__all__ = [
    "FORMAT",
    "MANIFEST",
    "MANIFEST_MAC",
    "MANIFEST_SUM",
    "OBJECTS",
    "TREE",
    "BackupInfo",
    "DamagedBackupError",
    "Entry",
    "InsufficientSpaceError",
    "Manifest",
    "ProgressCallback",
    "check_manifest",
    "database_signature",
    "file_signature",
    "object_name",
    "object_path",
    "read_manifest",
    "sign_manifest",
]

_FORMATS = (2, 3, 4, 5)
_OBJECT_NAME = re.compile(r"[0-9a-f]{32}")
ProgressCallback = Callable[[int, int], None]


class InsufficientSpaceError(BackupError, PreflightError):
    """The disk cannot hold the backup; nothing was written."""


class DamagedBackupError(BackupError):
    """Stored files of a backup are missing or differ from its manifest.

    ``damaged`` names them; ``affected`` lists the other backups that share one of the
    damaged stored copies (the same object; in formats 2 and 3, the same file hard-linked),
    and are damaged with it.
    """

    def __init__(
        self,
        message: str,
        *,
        backup_id: str,
        damaged: tuple[str, ...],
        affected: tuple[str, ...] = (),
    ) -> None:
        self.damaged = damaged
        self.affected = affected
        super().__init__(message, backup_id=backup_id)


EntryType = Literal["dir", "file", "symlink", "sqlite", "hardlink"]
_ENTRY_TYPES = frozenset(("dir", "file", "symlink", "sqlite", "hardlink"))


class Entry(NamedTuple):
    """One folder, file, symlink, hard link or SQLite database of a snapshot.

    ``sig`` is the live file's (inode, size, mtime, ctime) when it was captured (and, for a
    database, its ``-wal`` file's size and mtime): a restore skips what still matches it.
    ``hash`` names a file's stored copy (its object, in format 4). Immutable (a named tuple:
    a manifest holds thousands, built each time one is read).
    """

    type: EntryType
    mode: int = 0
    size: int = 0
    mtime_ns: int = 0
    hash: str = ""
    #: A symlink's target; for a ``hardlink``, the relative path (in this manifest) of the
    #: ``file`` entry it shares its inode with, which comes before it in sorted order.
    target: str = ""
    wal: bool = False
    sig: tuple[int, ...] = ()
    parent_only: bool = False
    #: Owner and group; -1 where unknown (a backup of an older format).
    uid: int = -1
    gid: int = -1
    #: A database's settings that its content does not carry: ``page_size``,
    #: ``journal_mode``, ``auto_vacuum``, ``user_version``, ``application_id``.
    sqlite: dict[str, int | str] = {}  # noqa: RUF012 - never changed in place

    def to_row(self) -> tuple[object, ...]:
        """Every field, in order (format 5): no settings is ``null``."""
        if self.sqlite:
            return self
        return (*self[:-1], None)

    def to_json(self) -> dict[str, object]:
        """The fields that differ from their defaults (the type always), formats 2 to 4."""
        out: dict[str, object] = {"type": self.type}
        for name, value, default in zip(_ENTRY_NAMES, self[1:], _ENTRY_DEFAULTS, strict=True):
            if value != default:
                out[name] = value
        return out


_ENTRY_NAMES = Entry._fields[1:]
_ENTRY_DEFAULTS = tuple(Entry._field_defaults[name] for name in _ENTRY_NAMES)


class Manifest(NamedTuple):
    """Everything a backup holds, and the scope it was taken with (a named tuple: every
    backup command builds the class at start-up, and a frozen dataclass costs ten times
    as much to build)."""

    format: int
    id: str
    created_at: str
    root: str
    excluded: tuple[str, ...]
    entries: dict[str, Entry]
    included: tuple[str, ...] = ()
    hash: str = HASH_NAME
    version_from: str | None = None
    version_to: str | None = None
    previous: str | None = None
    copied_bytes: int = 0
    skipped: tuple[tuple[str, str], ...] = ()
    #: Format 4: the objects are in the backup's own ``objects/`` folder (a *full* backup,
    #: sharing nothing), not in the store's, which every other backup shares.
    own_objects: bool = False

    def decoded(self) -> dict[str, Entry]:
        """Entries under their real (possibly non-UTF-8) names and link targets."""
        targets = (e.target for e in self.entries.values() if e.type in ("symlink", "hardlink"))
        if "\x00" not in "".join(self.entries) and "\x00" not in "".join(targets):
            return dict(self.entries)  # no encoded name (each starts with a NUL): as stored
        out = {}
        for stored, entry in self.entries.items():
            real = entry
            if entry.type in ("symlink", "hardlink"):
                real = entry._replace(target=decode_name(entry.target))
            out[decode_name(stored)] = real
        return out

    def to_json(self) -> bytes:
        document: dict[str, object] = {
            "format": self.format,
            "id": self.id,
            "created_at": self.created_at,
            "root": self.root,
            "excluded": self.excluded,
            "included": self.included,
            "hash": self.hash,
            "version_from": self.version_from,
            "version_to": self.version_to,
            "previous": self.previous,
            "copied_bytes": self.copied_bytes,
            "own_objects": self.own_objects,
            "skipped": self.skipped,
            "entries": (
                {rel: entry.to_row() for rel, entry in self.entries.items()}
                if self.format >= _ROWS
                else {rel: entry.to_json() for rel, entry in self.entries.items()}
            ),
        }
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode()


def object_name(digest: str) -> str:
    """The object of content hash ``digest``, relative to its object folder: in a fan-out
    folder named by the hash's first two hex digits."""
    return f"{digest[:2]}/{digest}"


def object_path(objects: Path, digest: str) -> Path:
    """Where the object of content hash ``digest`` lives in the object folder ``objects``."""
    return objects / object_name(digest)


# -- strict reading: every field of the type it must have, nothing else --------------------


def _is_int(value: object) -> bool:
    return type(value) is int


def _is_str(value: object) -> bool:
    return type(value) is str


def _is_bool(value: object) -> bool:
    return type(value) is bool


def _is_sig(value: object) -> bool:
    return type(value) is list and all(type(v) is int for v in value)


def _is_settings(value: object) -> bool:
    return type(value) is dict and all(type(v) in (int, str) for v in value.values())


def _is_strings(value: object) -> bool:
    return type(value) is list and all(type(v) is str for v in value)


def _is_optional_str(value: object) -> bool:
    return value is None or type(value) is str


def _is_skipped(value: object) -> bool:
    return type(value) is list and all(
        type(v) is list and len(v) == 2 and all(type(x) is str for x in v) for v in value
    )


_ENTRY_FIELDS: dict[str, Callable[[object], bool]] = {
    "type": lambda v: type(v) is str and v in _ENTRY_TYPES,
    "mode": _is_int,
    "size": _is_int,
    "mtime_ns": _is_int,
    "hash": _is_str,
    "target": _is_str,
    "wal": _is_bool,
    "sig": _is_sig,
    "parent_only": _is_bool,
    "uid": _is_int,
    "gid": _is_int,
    "sqlite": _is_settings,
}
_MANIFEST_FIELDS: dict[str, Callable[[object], bool]] = {
    "format": _is_int,
    "id": _is_str,
    "created_at": _is_str,
    "root": _is_str,
    "excluded": _is_strings,
    "included": _is_strings,
    "hash": _is_str,
    "version_from": _is_optional_str,
    "version_to": _is_optional_str,
    "previous": _is_optional_str,
    "copied_bytes": _is_int,
    "entries": lambda v: type(v) is dict,
    "skipped": _is_skipped,
    "own_objects": _is_bool,
}
_MANIFEST_REQUIRED = ("format", "id", "created_at", "root", "excluded", "entries")


def _bad_fields(
    document: object, fields: dict[str, Callable[[object], bool]], required: tuple[str, ...]
) -> str:
    """Why ``document`` is not an object with these fields ("" if it is)."""
    if type(document) is not dict:
        return "not a JSON object"
    document = cast("dict[str, object]", document)
    for name in required:
        if name not in document:
            return f"field {name!r} is missing"
    for name, value in document.items():
        check = fields.get(name)
        if check is None:
            return f"unknown field {name!r}"
        if not check(value):
            return f"field {name!r} has a wrong type or value: {value!r}"
    return ""


_ENTRY_KINDS = {
    "type": str,
    "mode": int,
    "size": int,
    "mtime_ns": int,
    "hash": str,
    "target": str,
    "wal": bool,
    "sig": list,
    "parent_only": bool,
    "uid": int,
    "gid": int,
    "sqlite": dict,
}
_INT = frozenset((int,))
_SETTING = frozenset((int, str))


def _entry(raw: object) -> Entry | None:
    """The entry ``raw`` describes, or None when it is not one (``_bad_fields`` says why).

    The fast path of the same checks, for the thousands of entries of a manifest."""
    if type(raw) is not dict or raw.get("type") not in _ENTRY_TYPES:
        return None
    if tuple(map(type, raw.values())) != tuple(map(_ENTRY_KINDS.get, raw)):
        return None  # an unknown field, or one of another type
    sig = raw.get("sig")
    if sig is not None:
        if not set(map(type, sig)) <= _INT:
            return None
        raw = {**raw, "sig": tuple(sig)}
    settings = raw.get("sqlite")
    if settings and not set(map(type, settings.values())) <= _SETTING:
        return None
    return Entry(**raw)


#: From format 5 on, an entry is the array of its fields, in ``Entry``'s order.
_ROWS = 5
_ROW = tuple(_ENTRY_KINDS[name] for name in Entry._fields[:-1])
_ROW_KINDS = frozenset(((*_ROW, type(None)), (*_ROW, dict)))  # without settings, a database
_NO_SETTINGS = Entry._field_defaults["sqlite"]


def _row_entry(row: Any) -> Entry | None:
    """The entry the array ``row`` describes (format 5), or None when it is not one
    (``_bad_row`` says why): every field of its type, nothing more or less.

    Changes ``row`` (a list just decoded) into the entry's fields, for speed: a manifest
    holds thousands."""
    if type(row) is not list or tuple(map(type, row)) not in _ROW_KINDS:
        return None
    sig, settings = row[7], row[11]
    if row[0] not in _ENTRY_TYPES or (sig and not set(map(type, sig)) <= _INT):
        return None
    if settings is not None and not set(map(type, settings.values())) <= _SETTING:
        return None
    row[7] = tuple(sig)
    if settings is None:
        row[11] = _NO_SETTINGS
    return Entry._make(row)


def _bad_row(row: object) -> str:
    """Why ``row`` is not a format-5 entry."""
    if type(row) is not list:
        return "not a JSON array"
    if len(row) != len(Entry._fields):
        return f"{len(row)} fields, expected {len(Entry._fields)} ({', '.join(Entry._fields)})"
    for name, value in zip(Entry._fields, row, strict=True):
        check = _ENTRY_FIELDS[name]
        if not (check(value) or (name == "sqlite" and value is None)):
            return f"field {name!r} has a wrong type or value: {value!r}"
    return "a field has a wrong type or value"


def _parse_manifest(document: dict[str, Any], backup_id: str) -> Manifest:
    """A manifest from its JSON document, every field checked by hand."""
    problem = _bad_fields(document, _MANIFEST_FIELDS, _MANIFEST_REQUIRED)
    if problem:
        raise BackupError(f"manifest is unreadable: {problem}", backup_id=backup_id)
    rows = document["format"] >= _ROWS
    entries = {}
    for rel, raw in document["entries"].items():
        entry = _row_entry(raw) if rows else _entry(raw)
        if entry is None:
            problem = _bad_row(raw) if rows else _bad_fields(raw, _ENTRY_FIELDS, ("type",))
            raise BackupError(
                f"manifest is unreadable: entry {rel!r}: {problem}", backup_id=backup_id
            )
        entries[rel] = entry
    fields = {**document, "entries": entries}
    for name in ("excluded", "included"):
        if name in fields:
            fields[name] = tuple(fields[name])
    if "skipped" in fields:
        fields["skipped"] = tuple((kind, rel) for kind, rel in fields["skipped"])
    return Manifest(**fields)


@dataclass(frozen=True, slots=True)
class BackupInfo:
    """A complete backup on disk."""

    id: str
    path: Path
    created_at: str
    files: int
    bytes: int
    copied_bytes: int
    version_from: str | None
    version_to: str | None


def file_signature(info: os.stat_result) -> tuple[int, ...]:
    """What changes whenever a file's content or metadata is written (ctime can't be set)."""
    return (info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns)


def database_signature(path: Path, info: os.stat_result) -> tuple[int, ...]:
    try:
        wal = Path(f"{path}-wal").stat()
    except FileNotFoundError:
        return (*file_signature(info), -1, -1)
    return (*file_signature(info), wal.st_size, wal.st_mtime_ns)


def _check_relative(rel: str, backup_id: str) -> None:
    """A manifest path must be relative, with no empty, ``.`` or ``..`` part and no NUL."""
    wrapped = f"/{rel}/"
    if "\x00" in rel or "//" in wrapped or "/./" in wrapped or "/../" in wrapped:
        raise BackupError(
            f"manifest names a path outside the installation: {rel!r}", backup_id=backup_id
        )


def _no_duplicate_keys(pairs: builtins.list[tuple[str, object]]) -> dict[str, object]:
    document = dict(pairs)
    if len(document) != len(pairs):
        names = [key for key, _ in pairs]
        twice = next(key for key in document if names.count(key) > 1)
        raise ValueError(f"{twice!r} appears twice")
    return document


def _check_entry(
    rel: str, entry: Entry, entries: dict[str, Entry], earlier: set[str], *, objects: bool
) -> str:
    """Why ``entry`` at ``rel`` is not something a backup can hold ("" if it is)."""
    problem = ""
    if objects and entry.type in ("file", "sqlite") and not _OBJECT_NAME.fullmatch(entry.hash):
        problem = f"hash {entry.hash!r} names no object"
    elif not 0 <= entry.mode <= 0o7777:
        problem = f"mode {entry.mode} is not a permission mode"
    elif entry.size < 0:
        problem = f"size {entry.size} is negative"
    elif entry.uid < -1 or entry.gid < -1:
        problem = "owner ids below -1"
    elif entry.type != "sqlite" and entry.sqlite:
        problem = "SQLite settings on something that is no database"
    elif entry.type == "symlink" and (not entry.target or "\x00" in entry.target):
        problem = "a symlink with an empty or NUL-bearing target"
    elif entry.type == "hardlink":
        target = entries.get(entry.target)
        if target is None or target.type != "file" or entry.target not in earlier:
            problem = f"a hard link to {entry.target!r}, which is no earlier file of the backup"
    if problem or not entry.sqlite:
        return problem
    try:
        _sqlite.check_settings(entry.sqlite)
    except ValueError as exc:
        return str(exc)
    return ""


def _check_each(
    manifest: Manifest, entries: dict[str, Entry], backup_id: str, *, objects: bool
) -> None:
    """Check every entry of ``manifest`` (``entries``: decoded) one by one, in the order a
    backup writes them, and name the first that a backup could not hold."""
    earlier: set[str] = set()  # in the order a backup writes them: sorted by stored name
    for stored in sorted(manifest.entries):
        rel = decode_name(stored)
        _check_relative(rel, backup_id)
        problem = _check_entry(rel, entries[rel], entries, earlier, objects=objects)
        if problem:
            raise BackupError(
                f"manifest is unreadable: entry {rel!r}: {problem}", backup_id=backup_id
            )
        earlier.add(rel)


_STORED = frozenset(("file", "sqlite"))  # the entries whose content is an object
_OBJECT_NAMES = re.compile(r"(?:[0-9a-f]{32}\n)*[0-9a-f]{32}")
_TYPE, _MODE, _SIZE, _HASH, _UID, _GID, _SETTINGS = (
    operator.itemgetter(Entry._fields.index(name))
    for name in ("type", "mode", "size", "hash", "uid", "gid", "sqlite")
)


def _plainly_valid(manifest: Manifest, entries: dict[str, Entry], *, objects: bool) -> bool:
    """Whether every entry is plainly something a backup holds, checked across all of them
    at once (a manifest holds thousands): what ``_check_each`` accepts, and stricter (no
    hard link, whose target must be an earlier file). False is no verdict: ``_check_each``
    then looks at each entry and names the one at fault, if one is. Keep the two in step
    (the hostile manifests of ``tests/backup/test_hostile_restore.py`` try both)."""
    # Each name between slashes, as ``_check_relative`` looks at it, the names apart by NULs:
    # "//", "/./" or "/../" can only be found inside one (no name holds a NUL: counted).
    names = "/" + "/\x00/".join(entries) + "/"
    if len(entries) != len(manifest.entries) or names.count("\x00") != len(entries) - 1:
        return False  # a NUL in a name
    if "//" in names or "/./" in names or "/../" in names:
        return False
    return _plain_fields(list(entries.values()), objects=objects)


def _plain_fields(values: list[Entry], *, objects: bool) -> bool:
    """The fields part of :func:`_plainly_valid`, one field of every entry at a time."""
    kinds = list(map(_TYPE, values))
    types = set(kinds)
    if "hardlink" in types or not values:
        return False
    if min(map(_MODE, values)) < 0 or max(map(_MODE, values)) > 0o7777:
        return False
    if min(map(_SIZE, values)) < 0 or min(map(_UID, values)) < -1 or min(map(_GID, values)) < -1:
        return False
    for entry in itertools.compress(values, map(_SETTINGS, values)):
        if entry.type != "sqlite" or not _plain_settings(entry.sqlite):
            return False
    links = itertools.compress(values, map("symlink".__eq__, kinds))
    if not all(e.target and "\x00" not in e.target for e in links):
        return False
    if not objects:
        return True
    hashes = list(map(_HASH, itertools.compress(values, map(_STORED.__contains__, kinds))))
    joined = "\n".join(hashes)
    # Each exactly 32 hex digits: the length rules out a hash holding a newline.
    return not hashes or (
        len(joined) == 33 * len(hashes) - 1 and _OBJECT_NAMES.fullmatch(joined) is not None
    )


def _plain_settings(settings: dict[str, int | str]) -> bool:
    try:
        _sqlite.check_settings(settings)
    except ValueError:
        return False
    return True


def _under_a_non_folder(entries: dict[str, Entry]) -> tuple[str, str] | None:
    """The first entry (in sorted order) that sits under one that is no folder (a symlink,
    a file), and that one. Each entry's nearest ancestor in the manifest is looked up: a
    folder's own ancestors are checked with it."""
    for rel in sorted(entries):
        parent = rel
        while "/" in parent:
            parent = parent.rpartition("/")[0]
            above = entries.get(parent)
            if above is not None:
                if above.type != "dir":
                    return rel, parent
                break
    return None


def _check_manifest_entries(manifest: Manifest, backup_id: str) -> None:
    """Refuse anything in a manifest that a backup this tool took could not hold."""
    try:
        entries = manifest.decoded()
    except ValueError as exc:
        raise BackupError(
            f"manifest is unreadable: a name is badly encoded ({exc})", backup_id=backup_id
        ) from exc
    if len(entries) != len(manifest.entries):
        raise BackupError("manifest is unreadable: a path appears twice", backup_id=backup_id)
    try:
        Scope(Path(manifest.root), manifest.excluded, manifest.included).matchers()
    except ValueError as exc:
        raise BackupError(f"manifest is unreadable: {exc}", backup_id=backup_id) from exc
    if manifest.format >= 4 and manifest.hash != HASH_NAME:
        raise BackupError(
            f"manifest is unreadable: unknown hash {manifest.hash!r}", backup_id=backup_id
        )
    if manifest.own_objects and manifest.format < 4:
        raise BackupError(
            "manifest is unreadable: own objects before format 4", backup_id=backup_id
        )
    objects = manifest.format >= 4
    if not _plainly_valid(manifest, entries, objects=objects):
        _check_each(manifest, entries, backup_id, objects=objects)
    found = _under_a_non_folder(entries)
    if found is not None:
        rel, above = found
        raise BackupError(
            f"manifest is unreadable: entry {rel!r}: it sits under {above!r}, which is a"
            f" {entries[above].type}",
            backup_id=backup_id,
        )


def _read_key(backups_dir: Path) -> bytes | None:
    path = key_path(backups_dir)
    try:
        return load_key(backups_dir)
    except OSError as exc:
        raise BackupError(f"the backup key {path} is unreadable: {exc.strerror}") from exc
    except ValueError as exc:
        raise BackupError(f"the backup key {path} is damaged ({exc})") from exc


def _installation_key(backups_dir: Path) -> bytes:
    """The installation's secret for authenticating manifests, created (0600) if missing."""
    key = _read_key(backups_dir)
    if key is not None:
        return key
    path = key_path(backups_dir)
    tmp = path.with_name(f".{KEY}.tmp-{os.urandom(4).hex()}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(os.urandom(KEY_BYTES))  # what secrets.token_bytes reads
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileExistsError):  # another process made one first: use it
            os.link(tmp, path)
    finally:
        tmp.unlink()
    fsync_dir(path.parent)
    key = _read_key(backups_dir)
    assert key is not None  # noqa: S101 - just linked into place
    return key


def sign_manifest(backups_dir: Path, raw: bytes) -> bytes:
    """The MAC to store as ``manifest.hmac`` beside the manifest bytes ``raw``: HMAC-SHA256
    keyed by the installation's secret (``<state>/backup.key``, created on first use)."""
    key = _installation_key(backups_dir)
    return manifest_mac(key, raw)


def check_manifest(backups_dir: Path, raw: bytes, mac: bytes | None, *, backup_id: str) -> None:
    """Raise :class:`BackupError` unless ``mac`` authenticates the manifest bytes ``raw``:
    whoever can write into the backups folder but cannot read the key cannot forge one."""
    key = _read_key(backups_dir)
    if key is None:
        reason = f"the installation's key {key_path(backups_dir)} is missing"
    elif mac is None:
        reason = f"{MANIFEST_MAC} is missing"
    elif hmac.compare_digest(manifest_mac(key, raw), mac.strip()):
        return
    else:
        reason = "its MAC does not match"
    raise BackupError(
        f"failed verification: manifest is not authentic ({reason})", backup_id=backup_id
    )


def read_manifest(backups_dir: Path, backup_id: str) -> Manifest:
    """The backup's manifest, after checking it against its checksum and its MAC, and
    refusing anything in it that a backup could not hold (it is untrusted input).

    A format 2 manifest (before MACs) is read with its checksum alone.
    """
    folder = backups_dir / backup_id
    try:
        raw = (folder / MANIFEST).read_bytes()
        expected = (folder / MANIFEST_SUM).read_text().strip()
    except FileNotFoundError as exc:
        if not folder.is_dir():
            raise BackupError("does not exist", backup_id=backup_id) from exc
        raise BackupError(f"is incomplete: {exc.filename} is missing", backup_id=backup_id) from exc
    except OSError as exc:
        raise BackupError(f"manifest is unreadable: {exc}", backup_id=backup_id) from exc
    if xxhash.xxh3_128_hexdigest(raw) != expected:
        raise BackupError("failed verification: manifest.json is damaged", backup_id=backup_id)
    cached = _read.get(folder)
    if cached is not None and cached[0] == raw:  # the same bytes: read and checked already
        _check_mac(backups_dir, folder, raw, cached[1].format, backup_id)
        return cached[1]
    try:
        document = json.loads(raw, object_pairs_hook=_no_duplicate_keys)
    except ValueError as exc:
        raise BackupError(f"manifest is unreadable: {exc}", backup_id=backup_id) from exc
    version = document.get("format") if isinstance(document, dict) else None
    if type(version) is not int or version not in _FORMATS:
        raise BackupError(
            f"manifest is unreadable: unknown format {version!r}", backup_id=backup_id
        )
    _check_mac(backups_dir, folder, raw, version, backup_id)
    manifest = _parse_manifest(document, backup_id)
    _check_manifest_entries(manifest, backup_id)
    with _read_lock:
        if len(_read) >= _READ_KEPT:
            _read.pop(next(iter(_read)))
        _read[folder] = (raw, manifest)
    return manifest


#: The manifests read last, with their bytes: a command that reads one several times (a
#: restore: to ask, to journal, to restore) parses and checks it once. Each read still reads
#: the bytes, their checksum and MAC, and parses again unless the bytes are the same.
_read: dict[Path, tuple[bytes, Manifest]] = {}
_READ_KEPT = 4
_read_lock = threading.Lock()


def _check_mac(backups_dir: Path, folder: Path, raw: bytes, version: int, backup_id: str) -> None:
    """From format 3 on, the manifest ``raw`` must be authenticated by its MAC."""
    if version < 3:
        return
    try:
        mac: bytes | None = (folder / MANIFEST_MAC).read_bytes()
    except FileNotFoundError:
        mac = None
    except OSError as exc:
        raise BackupError(f"{MANIFEST_MAC} is unreadable: {exc}", backup_id=backup_id) from exc
    check_manifest(backups_dir, raw, mac, backup_id=backup_id)
