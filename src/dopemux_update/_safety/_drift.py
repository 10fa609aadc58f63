"""Drift: migration files changed (or gone) since they were applied."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

from ._state import RunRecord

__all__ = ["Drift", "applied_checksums", "find_drift"]


class Drift(NamedTuple):
    """An applied migration whose file no longer matches what ran."""

    id: str
    path: Path
    reason: str


def applied_checksums(history: Iterable[RunRecord]) -> dict[str, str]:
    """The migrations applied now (upgrades minus later downgrades), with their checksums."""
    applied: dict[str, str] = {}
    for run in history:
        if run.outcome != "applied":
            continue
        for migration in run.migrations:
            if migration.outcome != "applied":
                continue
            if migration.direction == "upgrade":
                applied[migration.id] = migration.checksum
            else:
                applied.pop(migration.id, None)
    return applied


def find_drift(history: Iterable[RunRecord], migrations_dir: Path) -> list[Drift]:
    """Applied migrations whose file changed or disappeared since they ran."""
    applied = applied_checksums(history)
    if not applied:
        return []
    import hashlib  # noqa: PLC0415 - only with migrations applied: status starts without it

    found = []
    for migration_id, checksum in sorted(applied.items()):
        path = migrations_dir / f"{migration_id}.py"
        try:
            current = hashlib.sha256(path.read_bytes()).hexdigest()
        except FileNotFoundError:
            found.append(Drift(migration_id, path, "the file is gone"))
            continue
        if checksum and current != checksum:
            found.append(Drift(migration_id, path, "the file changed since it was applied"))
    return found
