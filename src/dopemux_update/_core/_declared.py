"""What a ``MIGRATION_INFO`` declares, as a plain record, and the quick acceptance of the
plainly valid ones, so that a run of valid migrations never imports pydantic.

:class:`~dopemux_update.MigrationInfo` (pydantic, in ``_info``) stays the judge: ``accept``
takes only a dict that is valid beyond doubt (exactly the model's keys, each value of
exactly a type the model takes as it is) and returns None for anything else, which then goes
to the model, so that a refusal and its message are always the model's. A test holds the
two to the same answers, and to equal values where both accept.
"""

from __future__ import annotations

import math
import re
from typing import TYPE_CHECKING, NamedTuple

from packaging.version import InvalidVersion

from ._versions import cached_version

if TYPE_CHECKING:  # a Protocol class costs start-up: for the type checker only
    from typing import Protocol

    class _Info(Protocol):
        """What :class:`~dopemux_update.MigrationInfo` offers, read without importing it."""

        @property
        def version_from(self) -> str: ...
        @property
        def version_to(self) -> str: ...
        @property
        def description(self) -> str: ...
        @property
        def breaking_changes(self) -> bool: ...
        @property
        def estimated_duration_seconds(self) -> float: ...
        @property
        def requires_restart(self) -> tuple[str, ...]: ...
        @property
        def backup_required(self) -> bool: ...


__all__ = ["Declared", "accept", "validate_service_name"]

_SERVICE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

#: Ints up to 2**53 become floats exactly: larger ones are left to the model.
_EXACT_INT = 2**53


def validate_service_name(name: str) -> str:
    """Return ``name`` if it is a safe service name (letters, digits, ``_.-``), else raise."""
    if not _SERVICE_NAME.fullmatch(name):
        raise ValueError(
            f"invalid service name {name!r}: use letters, digits, '_', '.' and '-',"
            " starting with a letter or digit"
        )
    return name


class Declared(NamedTuple):
    """A valid ``MIGRATION_INFO``'s values: those of its ``MigrationInfo``, without pydantic."""

    version_from: str
    version_to: str
    description: str
    breaking_changes: bool
    estimated_duration_seconds: float
    requires_restart: tuple[str, ...]
    backup_required: bool = True

    @classmethod
    def of(cls, info: _Info) -> Declared:
        """The values of a validated ``MigrationInfo``."""
        return cls(*(getattr(info, name) for name in _FIELDS))

    def as_dict(self) -> dict[str, object]:
        """The values as ``MIGRATION_INFO`` keys (``MigrationInfo.model_validate`` takes it)."""
        return {name: getattr(self, name) for name in _FIELDS}


#: ``MIGRATION_INFO``'s keys, in order: those without a default are required.
_FIELDS = Declared._fields
_ALL = frozenset(_FIELDS)
_REQUIRED = _ALL - Declared._field_defaults.keys()


def accept(raw: dict[object, object]) -> Declared | None:
    """``raw``'s values if it is plainly valid; None when ``MigrationInfo`` must judge it.

    None is no verdict: a dict this refuses may still be valid (a ``set`` of services, a
    ``str`` subclass, a huge int...), and the model then says so, or says why not.
    """
    if type(raw) is not dict or len(raw) not in (6, 7):
        return None
    for key in raw:
        if type(key) is not str or key not in _ALL:
            return None
    if not _REQUIRED.issubset(raw):
        return None
    version_from = raw["version_from"]
    version_to = raw["version_to"]
    description = raw["description"]
    breaking = raw["breaking_changes"]
    seconds = raw["estimated_duration_seconds"]
    services = raw["requires_restart"]
    backup = raw.get("backup_required", True)
    if (
        type(version_from) is not str
        or type(version_to) is not str
        or type(description) is not str
        or not description
        or type(breaking) is not bool
        or type(backup) is not bool
    ):
        return None
    if type(seconds) is int:
        if not 0 <= seconds <= _EXACT_INT:
            return None
        seconds = float(seconds)
    elif type(seconds) is not float or not (math.isfinite(seconds) and seconds >= 0):
        return None
    if type(services) is not list and type(services) is not tuple:
        return None
    for service in services:
        if type(service) is not str or not _SERVICE_NAME.fullmatch(service):
            return None
    try:
        cached_version(version_from)
        cached_version(version_to)
    except InvalidVersion:
        return None
    return Declared(
        version_from,
        version_to,
        description,
        breaking,
        seconds,
        tuple(services),
        backup,
    )
