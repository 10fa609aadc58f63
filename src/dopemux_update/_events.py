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
    "BackupStarted",
    "Event",
    "EventHandler",
    "MigrationFinished",
    "MigrationOutput",
    "MigrationStarted",
    "PlanReady",
    "RestoreFinished",
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
class RestoreFinished:
    backup_id: str
    ok: bool
    error: str | None


@dataclass(frozen=True, slots=True)
class UpdateFinished:
    result: UpdateResult


Event = (
    PlanReady
    | BackupStarted
    | BackupCreated
    | MigrationStarted
    | MigrationOutput
    | MigrationFinished
    | RollbackStarted
    | RollbackStep
    | RestoreFinished
    | UpdateFinished
)
EventHandler = Callable[[Event], None]
