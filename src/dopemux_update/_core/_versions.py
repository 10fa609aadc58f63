"""PEP 440 versions, the ``v{from}_to_v{to}`` folders that hold migrations, and which way
a plan moves between versions.

``Transition`` and ``Direction`` live here, not with the other models in ``_models``, so that
what only reads the version graph (``status``, planning a route) need not import those.
"""

from __future__ import annotations

import enum
import functools
from dataclasses import dataclass
from pathlib import Path

from packaging.version import InvalidVersion, Version

from ._exceptions import VersionError

__all__ = [
    "Direction",
    "Transition",
    "cached_version",
    "parse_transition_name",
    "parse_version",
]

_SEPARATOR = "_to_v"


@dataclass(frozen=True, slots=True)
class Transition:
    """A folder ``v{from}_to_v{to}`` of migrations."""

    name: str
    version_from: Version
    version_to: Version
    path: Path


class Direction(enum.Enum):
    """Which way a plan moves the installation."""

    UPGRADE = "upgrade"
    DOWNGRADE = "downgrade"


@functools.lru_cache(maxsize=4096)
def cached_version(value: str) -> Version:
    """``Version(value)``, memoised: a thousand migrations name the same few versions."""
    return Version(value)


def parse_version(value: str | Version, *, where: str | None = None) -> Version:
    """Parse ``value`` as a PEP 440 version (``0.10.0`` sorts after ``0.9.0``)."""
    if isinstance(value, Version):
        return value
    try:
        return cached_version(value)
    except (InvalidVersion, TypeError) as exc:
        raise VersionError(str(value), where=where) from exc


def parse_transition_name(name: str) -> tuple[Version, Version]:
    """Split a folder name such as ``v0.1.0_to_v0.2.0`` into its two versions.

    Raises :class:`ValueError` with a reason fit for an error message.
    """
    if not name.startswith("v") or name.count(_SEPARATOR) != 1:
        raise ValueError("folder name is not of the form v{from}_to_v{to}, e.g. v0.1.0_to_v0.2.0")
    left, right = name[1:].split(_SEPARATOR)
    try:
        version_from, version_to = cached_version(left), cached_version(right)
    except InvalidVersion as exc:
        raise ValueError(f"folder name holds an invalid version: {exc}") from exc
    if version_to <= version_from:
        raise ValueError(
            f"a transition must go up: {version_from} to {version_to} does not"
            " (downgrades run the same folder backward)"
        )
    return version_from, version_to
