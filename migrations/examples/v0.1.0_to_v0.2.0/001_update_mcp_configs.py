"""Migration: v0.1.0 to v0.2.0 - Register the leantime MCP server

Dopemux 0.2.0 ships a Leantime MCP server. This migration adds it in two places:

* ``config/mcp/broker.yaml``: a ``leantime`` entry under the top-level ``servers:`` mapping;
* ``docker-compose.yml``: an ``mcp-leantime`` service under the top-level ``services:`` mapping.

The files are edited with ``dopemux_update.edit.edit_yaml`` (ruamel.yaml's round-trip mode,
writing only the lines that change), never with ``yaml.safe_load`` + ``yaml.dump``: the
user's comments, custom values, key order, quoting and indentation are preserved, and each
file is replaced atomically, keeping its mode. The new entry is appended to its mapping with
the end-of-line comment ``# added by dopemux-update 0.2.0 ...``, which marks it as ours.

Forward is idempotent: an entry that already exists (added by this migration or by hand) is
left alone. Backward removes only entries carrying our marker, never a hand-written one;
forward then backward gives files byte-identical to the originals. Both directions check
both files before writing either, so a known problem leaves both untouched.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

from dopemux_update import edit

MIGRATION_INFO = {
    "version_from": "0.1.0",
    "version_to": "0.2.0",
    "description": "Add the leantime MCP server to the broker config and docker-compose.yml",
    "breaking_changes": False,
    "estimated_duration_seconds": 5,
    "requires_restart": ["mcp-broker", "mcp-leantime"],
    "backup_required": True,
}

_MARKER = "added by dopemux-update 0.2.0 (migration 001), removed on rollback"


# A NamedTuple rather than a dataclass: with postponed annotations, @dataclass looks the
# module up in sys.modules, which fails when a runner loads this file with importlib
# without registering it there.
class _Addition(NamedTuple):
    """One entry to add under a top-level mapping of a YAML file."""

    relpath: str
    parent_key: str
    entry: str
    # Built when needed: edit.quoted() needs ruamel.yaml, which edit_yaml checks first.
    value: Callable[[], dict[str, Any]]


_ADDITIONS = (
    _Addition(
        relpath="config/mcp/broker.yaml",
        parent_key="servers",
        entry="leantime",
        value=lambda: {
            "image": "ghcr.io/dopemux/leantime-mcp:0.2.0",
            "port": 3007,
            "enabled": True,
        },
    ),
    _Addition(
        relpath="docker-compose.yml",
        parent_key="services",
        entry="mcp-leantime",
        value=lambda: {
            "image": "ghcr.io/dopemux/leantime-mcp:0.2.0",
            "restart": "unless-stopped",
            "depends_on": ["mcp-broker"],
            "ports": [edit.quoted("3007:3007")],
            "environment": {
                "LEANTIME_API_URL": "${LEANTIME_API_URL:-http://localhost:8080/api/jsonrpc}",
            },
        },
    ),
)


class _ConfigError(Exception):
    """A known condition under which the file cannot be edited safely."""


def _parent(doc: Any, addition: _Addition) -> Mapping[str, Any] | None:
    """The top-level mapping the entry goes in (None when it is empty: ``servers:`` alone)."""
    if not isinstance(doc, Mapping) or addition.parent_key not in doc:
        raise _ConfigError(f"{addition.relpath} has no top-level '{addition.parent_key}:' mapping")
    parent = doc[addition.parent_key]
    if parent is not None and not isinstance(parent, Mapping):
        raise _ConfigError(
            f"{addition.relpath}: '{addition.parent_key}:' holds a {type(parent).__name__}, "
            "not a mapping; cannot add an entry safely"
        )
    return parent


def _add(doc: Any, addition: _Addition) -> bool:
    """Add the entry to the document; False if it is there already."""
    parent = _parent(doc, addition)
    if parent is not None and addition.entry in parent:
        print(f"  ✅ '{addition.entry}' already present in {addition.relpath}, leaving it")
        return False
    print(f"  → Adding '{addition.entry}' under '{addition.parent_key}:' in {addition.relpath}")
    key = (addition.parent_key, addition.entry)
    edit.set_in(doc, key, addition.value(), comment=_MARKER)
    return True


def migrate_forward(project_root: Path) -> bool:
    """Add the leantime server to the broker config and the compose file."""
    project_root = Path(project_root)
    added: list[str] = []
    try:
        # Every file stays open for editing until all are checked: raising inside the stack
        # writes none of them; leaving it normally writes the changed ones.
        with contextlib.ExitStack() as stack:
            for addition in _ADDITIONS:
                doc = stack.enter_context(edit.edit_yaml(project_root / addition.relpath))
                if _add(doc, addition):
                    added.append(addition.relpath)
    except (_ConfigError, edit.EditError) as exc:
        print(f"  ❌ {exc}")
        return False
    for relpath in added:
        print(f"  ✅ {relpath} updated")
    return True


def migrate_backward(project_root: Path) -> bool:
    """Remove the entries added by migrate_forward, restoring the files byte for byte."""
    project_root = Path(project_root)
    removed: list[str] = []
    try:
        with contextlib.ExitStack() as stack:
            for addition in reversed(_ADDITIONS):
                path = project_root / addition.relpath
                if not path.exists():
                    print(f"  ⚠️  {addition.relpath} not found; no '{addition.entry}' to remove")
                    continue
                doc = stack.enter_context(edit.edit_yaml(path))
                key = (addition.parent_key, addition.entry)
                if edit.get_in(doc, key) is None:
                    print(f"  ✅ no '{addition.entry}' in {addition.relpath}, nothing to remove")
                elif edit.get_comment(doc, key) != _MARKER:
                    print(
                        f"  ✅ '{addition.entry}' in {addition.relpath} was not added by this "
                        "migration (no marker comment), leaving it"
                    )
                else:
                    print(f"  → Removing '{addition.entry}' from {addition.relpath}")
                    edit.delete_in(doc, key)
                    removed.append(addition.relpath)
    except edit.EditError as exc:
        print(f"  ❌ {exc}")
        return False
    for relpath in removed:
        print(f"  ✅ {relpath} restored")
    return True
