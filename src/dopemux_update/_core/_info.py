"""``MIGRATION_INFO``, validated: the one model that needs pydantic (strict types, unknown
keys refused), kept apart from ``_models`` so that reading commands need not import it, and
imported by a run only for a ``MIGRATION_INFO`` that ``_declared.accept`` does not plainly
accept, or when ``Migration.info`` is read."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictBool, StrictStr

from ._declared import validate_service_name
from ._versions import cached_version

__all__ = ["MigrationInfo"]


def _version_string(value: str) -> str:
    cached_version(value)  # raises InvalidVersion (a ValueError), which pydantic reports
    return value


ServiceName = Annotated[StrictStr, AfterValidator(validate_service_name)]
VersionString = Annotated[StrictStr, AfterValidator(_version_string)]


class MigrationInfo(BaseModel):
    """The ``MIGRATION_INFO`` dict of a migration file, validated.

    Exactly the seed's keys: an unknown key (say ``requires_restarts``) is an error.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    version_from: VersionString
    version_to: VersionString
    description: Annotated[StrictStr, Field(min_length=1)]
    breaking_changes: StrictBool
    estimated_duration_seconds: Annotated[float, Field(ge=0, strict=True)]
    requires_restart: tuple[ServiceName, ...]
    backup_required: StrictBool = True
