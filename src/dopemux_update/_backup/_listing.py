"""What ``status`` shows of the backups, read without the store: which backups there are, and
how many bytes each one copied.

The store (``_store``) and its strict manifest reading (``_manifest``) import pydantic and the
copying and restoring code. ``status`` needs two numbers of each manifest, so it reads them
here, from a manifest that its checksum and its MAC (HMAC-SHA256 keyed by the installation's
secret) show to be whole and written by this tool, which builds manifests only from entries
it has validated. Any other manifest (damaged, unauthenticated, of another format) gets
``None``: the caller leaves it to the store's reading, which says what is wrong with it.

The file names and the format are the manifest's own (``_names``).
"""

from __future__ import annotations

import json
from pathlib import Path

from ._names import FORMAT, MANIFEST, MANIFEST_MAC, MANIFEST_SUM, backup_ids, load_key, manifest_mac

__all__ = ["backup_ids", "copied_bytes"]


def _read_key(backups_dir: Path) -> bytes | None:
    try:
        return load_key(backups_dir)
    except (OSError, ValueError):  # the store's reading says what is wrong with it
        return None


def _head(raw: bytes) -> bytes:
    """The manifest ``raw`` without its entries, which this tool writes last: thousands of
    them that ``status`` has no use for. ``"entries":`` cannot occur inside a JSON string
    (its quotes would be escaped), so its first occurrence is the key; a manifest laid out
    otherwise is read whole."""
    at = raw.find(b',"entries":')
    if at < 0 or not raw.endswith(b"}}"):
        return raw
    return raw[:at] + b"}"


def copied_bytes(backups_dir: Path, backup_id: str) -> int | None:
    """The bytes backup ``backup_id`` copied, from a manifest whose checksum and MAC match
    and that is of format 4 or :data:`FORMAT`; None for any other (the store's reading
    judges it)."""
    folder = backups_dir / backup_id
    try:
        raw = (folder / MANIFEST).read_bytes()
        expected = (folder / MANIFEST_SUM).read_text().strip()
        mac = (folder / MANIFEST_MAC).read_bytes().strip()
    except (OSError, ValueError):
        return None
    key = _read_key(backups_dir)
    if key is None:
        return None
    # Imported here: an installation without backups (or status without them) needs none.
    import hmac  # noqa: PLC0415

    import xxhash  # noqa: PLC0415

    if xxhash.xxh3_128_hexdigest(raw) != expected:
        return None
    if not hmac.compare_digest(manifest_mac(key, raw), mac):
        return None
    try:
        document = json.loads(_head(raw))
    except (ValueError, RecursionError):
        return None
    if type(document) is not dict or type(document.get("format")) is not int:
        return None
    if document["format"] not in (4, FORMAT):  # the formats with ``copied_bytes``
        return None
    copied = document.get("copied_bytes")
    return copied if type(copied) is int and copied >= 0 else None
