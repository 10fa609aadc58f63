"""The names a backup is stored under, and its manifest's format: shared by the store's strict
reading (``_manifest``) and the light listing ``status`` uses (``_listing``)."""

from __future__ import annotations

__all__ = [
    "FORMAT",
    "KEY",
    "KEY_BYTES",
    "MANIFEST",
    "MANIFEST_MAC",
    "MANIFEST_SUM",
    "OBJECTS",
    "TREE",
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
FORMAT = 4
