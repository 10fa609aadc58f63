"""Scanning a migrations folder: its ``v{from}_to_v{to}`` folder names, read without
importing any migration (planning needs the whole version graph; ``status`` needs no more).

Kept apart from ``_discovery``, which imports and validates migration files, so that a
command that only reads does not pay for that module's imports.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .._core._exceptions import MigrationValidationError, PreflightError, Problem
from .._core._versions import Transition, parse_transition_name

__all__ = ["Catalog", "is_ignored", "scan_migrations"]

_IGNORED_FOLDERS = frozenset({"examples", "__pycache__"})


@dataclass(frozen=True, slots=True)
class Catalog:
    """Every transition folder found in a migrations folder, sorted by versions.

    ``exists`` is False when there is no migrations folder at all: nothing to run.
    """

    root: Path
    transitions: tuple[Transition, ...]
    exists: bool = True


def is_ignored(name: str) -> bool:
    """A name no folder or file of migrations has: hidden, private, a README."""
    return name.startswith((".", "_")) or name.lower().startswith("readme")


def scan_migrations(migrations_dir: Path) -> Catalog:
    """List the ``v{from}_to_v{to}`` folders of ``migrations_dir`` (``examples/`` never).

    A migrations folder that does not exist means there is nothing to run (most releases
    ship no migrations), not an error; a path that is not a folder is one.
    """
    if not migrations_dir.is_dir():
        if migrations_dir.exists() or migrations_dir.is_symlink():
            raise PreflightError(f"{migrations_dir}: is not a folder of migrations")
        return Catalog(migrations_dir, (), exists=False)
    problems: list[Problem] = []
    transitions: list[Transition] = []
    seen: dict[tuple[object, object], Path] = {}
    for entry in sorted(migrations_dir.iterdir()):
        if entry.name in _IGNORED_FOLDERS or is_ignored(entry.name) or not entry.is_dir():
            continue
        try:
            version_from, version_to = parse_transition_name(entry.name)
        except ValueError as exc:
            problems.append(Problem(entry, str(exc)))
            continue
        key = (version_from, version_to)
        if key in seen:
            problems.append(Problem(entry, f"same transition as {seen[key].name}"))
            continue
        seen[key] = entry
        transitions.append(Transition(entry.name, version_from, version_to, entry))
    if problems:
        raise MigrationValidationError(problems)
    transitions.sort(key=lambda t: (t.version_from, t.version_to))
    return Catalog(migrations_dir, tuple(transitions))
