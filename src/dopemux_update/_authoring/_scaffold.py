"""``dopemux-update new``: a new migration file in the seed's format, ready to edit."""

from __future__ import annotations

import re
from pathlib import Path

from .._core._exceptions import PreflightError
from .._core._versions import parse_transition_name, parse_version
from .._run._discovery import FILE_NAME

__all__ = ["new_migration"]

_NAME = re.compile(r"^[a-z][a-z0-9_]{0,62}$")

TEMPLATE = '''"""
Migration: v{version_from} to v{version_to} - {title}

Describe what this migration changes, and what migrate_backward undoes.
"""

from pathlib import Path


def migrate_forward(project_root: Path) -> bool:
    """Apply: {version_from} → {version_to}. Return True on success, False on a known failure."""
    print("  → {title}")
    # ... change the installation under project_root ...
    print("  ✅ Done")
    return True


def migrate_backward(project_root: Path) -> bool:
    """Undo exactly what migrate_forward did: {version_to} → {version_from}."""
    print("  → Undoing: {title}")
    # ... undo it ...
    print("  ✅ Undone")
    return True


MIGRATION_INFO = {{
    "version_from": "{version_from}",
    "version_to": "{version_to}",
    "description": "{title}",
    "breaking_changes": False,
    "estimated_duration_seconds": 5,
    "requires_restart": [],
    "backup_required": True,
}}
'''


def new_migration(migrations_dir: Path, version_from: str, version_to: str, name: str) -> Path:
    """Create ``migrations_dir/v{from}_to_v{to}/NNN_{name}.py`` with the next free number."""
    if not _NAME.fullmatch(name):
        raise PreflightError(
            f"invalid migration name {name!r}: use lower-case letters, digits and '_',"
            " starting with a letter (e.g. add_leantime_server)"
        )
    low = parse_version(version_from, where="--from")
    high = parse_version(version_to, where="--to")
    if high <= low:
        raise PreflightError(f"--to {version_to} must be above --from {version_from}")
    folder = migrations_dir / f"v{version_from}_to_v{version_to}"
    if migrations_dir.is_dir():
        for existing in migrations_dir.iterdir():  # the same transition spelt another way
            try:
                if existing.is_dir() and parse_transition_name(existing.name) == (low, high):
                    folder = existing
            except ValueError:
                continue
    numbers = [0]
    if folder.is_dir():
        for path in folder.iterdir():
            match = FILE_NAME.match(path.name)
            if match:
                numbers.append(int(match["number"]))
                if match["name"] == name:
                    raise PreflightError(f"{path}: a migration with this name already exists")
    path = folder / f"{max(numbers) + 1:03d}_{name}.py"
    title = name.replace("_", " ").capitalize()
    source = TEMPLATE.format(version_from=version_from, version_to=version_to, title=title)
    folder.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("x", encoding="utf-8") as handle:
            handle.write(source)
    except FileExistsError as exc:
        raise PreflightError(f"{path} already exists") from exc
    return path
