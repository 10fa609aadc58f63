"""The names a backup is stored under, its manifest's format, and how a manifest is
authenticated: shared by the store's strict reading (``_manifest``, ``_store``) and the light
listing ``status`` uses (``_listing``), which must not pay for the store's imports."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "FORMAT",
    "KEY",
    "KEY_BYTES",
    "MANIFEST",
    "MANIFEST_MAC",
    "MANIFEST_SUM",
    "OBJECTS",
    "TREE",
    "backup_ids",
    "key_path",
    "load_key",
    "manifest_mac",
]

MANIFEST = "manifest.json"
MANIFEST_SUM = "manifest.xxh3"  # the manifest's own checksum (XXH3-128, hex)
MANIFEST_MAC = "manifest.hmac"  # HMAC-SHA256 (hex) of the manifest, keyed by KEY
KEY = "backup.key"  # beside the backups folder: <state>/backup.key
KEY_BYTES = 32
TREE = "tree"  # formats 2 and 3: each backup's files under their own paths
OBJECTS = "objects"  # format 4: stored files named by their content hash
#: 3: owners, hard links, SQLite settings; an HMAC authenticates the manifest.
#: 4: stored files are objects (``objects/<2 hex>/<hash>``), shared by every manifest naming them.
#: 5: the same, each entry written as an array of its fields in order (not an object of named
#: fields): half the bytes, read and written in a fraction of the time.
FORMAT = 5


def backup_ids(backups_dir: Path) -> list[str]:
    """Ids of complete backups (those with a manifest checksum), oldest first (ids sort by
    creation time)."""
    if not backups_dir.is_dir():
        return []
    return sorted(
        p.name
        for p in backups_dir.iterdir()
        if not p.name.startswith(".") and (p / MANIFEST_SUM).is_file()
    )


def key_path(backups_dir: Path) -> Path:
    """The installation's secret, beside the backups folder: ``<state>/backup.key``."""
    return backups_dir.parent / KEY


def load_key(backups_dir: Path) -> bytes | None:
    """The installation's secret; None when there is none yet. Raises :class:`OSError`
    when it cannot be read, :class:`ValueError` when it is not :data:`KEY_BYTES` long."""
    try:
        fd = os.open(key_path(backups_dir), os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:
        return None
    with os.fdopen(fd, "rb") as handle:
        key = handle.read(KEY_BYTES + 1)
    if len(key) != KEY_BYTES:
        raise ValueError(f"not {KEY_BYTES} bytes")
    return key


def manifest_mac(key: bytes, raw: bytes) -> bytes:
    """What ``manifest.hmac`` holds for the manifest bytes ``raw``: HMAC-SHA256, hex."""
    import hashlib  # noqa: PLC0415 - status lists backups without loading them at start
    import hmac  # noqa: PLC0415

    return hmac.new(key, raw, hashlib.sha256).hexdigest().encode()
