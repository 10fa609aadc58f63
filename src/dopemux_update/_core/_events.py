"""Progress events an :class:`~dopemux_update.OrchestrationPhase` reports while it runs.

Observers receive them in the event loop's thread, in order. The command line draws its
progress from them; the library itself only logs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ._models import Direction, Plan, UpdateResult

__all__ = [
    "BackupCreated",
    "BackupProgress",
    "BackupStarted",
    "Event",
    "EventHandler",
    "MigrationFinished",
    "MigrationOutput",
    "MigrationStarted",
    "PlanReady",
    "RestoreFinished",
    "RestoreProgress",
    "RestoreStarted",
    "RollbackStarted",
    "RollbackStep",
    "UpdateFinished",
]


@dataclass(frozen=True, slots=True)
class PlanReady:
    plan: Plan


@dataclass(frozen=True, slots=True)
class BackupStarted:
    root: str


@dataclass(frozen=True, slots=True)
class BackupProgress:
    """Bytes copied into the backup so far, of ``total_bytes`` to copy (at most ~10 a second).

    Files unchanged since the previous backup are hard-linked, not copied, and count for
    nothing: ``total_bytes`` may be 0.
    """

    done_bytes: int
    total_bytes: int


@dataclass(frozen=True, slots=True)
class BackupCreated:
    backup_id: str
    files: int
    bytes: int


@dataclass(frozen=True, slots=True)
class MigrationStarted:
    id: str
    direction: Direction
    index: int
    total: int
    estimated_seconds: float


@dataclass(frozen=True, slots=True)
class MigrationOutput:
    """One line a migration function printed (``stream`` is ``stdout`` or ``stderr``)."""

    id: str
    line: str
    stream: str


@dataclass(frozen=True, slots=True)
class MigrationFinished:
    id: str
    direction: Direction
    ok: bool
    seconds: float
    error: str | None


@dataclass(frozen=True, slots=True)
class RollbackStarted:
    failed_id: str
    steps: int


@dataclass(frozen=True, slots=True)
class RollbackStep:
    id: str
    ok: bool
    seconds: float
    error: str | None


@dataclass(frozen=True, slots=True)
class RestoreStarted:
    backup_id: str


@dataclass(frozen=True, slots=True)
class RestoreProgress:
    """Bytes written back so far, of ``total_bytes`` that differ (at most ~10 a second)."""

    backup_id: str
    done_bytes: int
    total_bytes: int


@dataclass(frozen=True, slots=True)
class RestoreFinished:
    """The restore after a rollback ended.

    ``verified`` means what ``UpdateResult.verified_identical`` means.
    """

    backup_id: str
    ok: bool
    error: str | None
    verified: bool | None = None


@dataclass(frozen=True, slots=True)
class UpdateFinished:
    result: UpdateResult


Event = (
    PlanReady
    | BackupStarted
    | BackupProgress
    | BackupCreated
    | MigrationStarted
    | MigrationOutput
    | MigrationFinished
    | RollbackStarted
    | RollbackStep
    | RestoreStarted
    | RestoreProgress
    | RestoreFinished
    | UpdateFinished
)
EventHandler = Callable[[Event], None]
