"""The data that crosses module boundaries: migrations, plans and results.

Plain dataclasses, so that a command that only reads (``status``) does not import pydantic;
``MIGRATION_INFO``'s validated model, which needs it, lives in ``_info``, and a migration
carries its values as a plain ``Declared`` record (``_declared``), building the model only
when its ``info`` is read. ``Transition`` and ``Direction`` are defined in ``_versions``
(what ``status`` needs, without the rest) and found here too.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from packaging.version import Version

from ._declared import Declared
from ._versions import Direction as Direction  # noqa: PLC0414 - defined there, for status
from ._versions import Transition as Transition  # noqa: PLC0414 - as Direction

if TYPE_CHECKING:
    from ._info import MigrationInfo

__all__ = [
    "Direction",
    "Migration",
    "MigrationFunction",
    "Plan",
    "Step",
    "Transition",
    "UpdateResult",
]

MigrationFunction = Callable[[Path], object]


@dataclass(frozen=True, slots=True, eq=False, init=False)
class Migration:
    """One imported and validated migration file.

    ``info`` is its ``MIGRATION_INFO`` as a :class:`~dopemux_update.MigrationInfo`; built on
    first use, from ``declared``, the same values as a plain record, which is what a run
    reads (so that a run need not import pydantic). Either may be given as ``info``.
    """

    id: str
    number: int
    name: str
    path: Path
    transition: Transition
    declared: Declared = field(repr=False)
    forward: MigrationFunction = field(repr=False)
    backward: MigrationFunction = field(repr=False)
    checksum: str = ""
    _model: MigrationInfo | None = field(default=None, repr=False)

    def __init__(  # noqa: PLR0917 - the fields in order, as the generated __init__ took them
        self,
        id: str,
        number: int,
        name: str,
        path: Path,
        transition: Transition,
        info: MigrationInfo | Declared,
        forward: MigrationFunction,
        backward: MigrationFunction,
        checksum: str = "",
    ) -> None:
        put = object.__setattr__  # frozen: as the generated __init__ does
        put(self, "id", id)
        put(self, "number", number)
        put(self, "name", name)
        put(self, "path", path)
        put(self, "transition", transition)
        put(self, "declared", info if isinstance(info, Declared) else Declared.of(info))
        put(self, "forward", forward)
        put(self, "backward", backward)
        put(self, "checksum", checksum)
        put(self, "_model", None if isinstance(info, Declared) else info)

    @property
    def info(self) -> MigrationInfo:
        """The validated ``MIGRATION_INFO`` (imports pydantic the first time)."""
        model = self._model
        if model is None:
            from ._info import MigrationInfo  # noqa: PLC0415 - pydantic: only when asked for

            model = MigrationInfo.model_validate(self.declared.as_dict())
            object.__setattr__(self, "_model", model)
        return model


@dataclass(frozen=True, slots=True)
class Step:
    """One migration function to run: ``migration.forward`` or ``migration.backward``."""

    migration: Migration
    direction: Direction

    @property
    def id(self) -> str:
        return self.migration.id

    @property
    def function(self) -> MigrationFunction:
        if self.direction is Direction.UPGRADE:
            return self.migration.forward
        return self.migration.backward

    @property
    def undo(self) -> MigrationFunction:
        """The function that reverts this step during a rollback."""
        if self.direction is Direction.UPGRADE:
            return self.migration.backward
        return self.migration.forward


@dataclass(frozen=True, slots=True)
class Plan:
    """The ordered steps that move an installation from one version to another."""

    current: Version
    target: Version
    direction: Direction
    hops: tuple[Transition, ...]
    steps: tuple[Step, ...]
    #: Stretches of the way no migration folder covers (no-op releases), in order.
    noop: tuple[tuple[Version, Version], ...] = ()

    @property
    def is_empty(self) -> bool:
        """Nothing to run (the version record may still move: see ``moves``)."""
        return not self.steps and not self.hops

    @property
    def moves(self) -> bool:
        """Whether the plan changes the installed version (even with nothing to run)."""
        return self.current != self.target or str(self.current) != str(self.target)

    @property
    def restart_services(self) -> tuple[str, ...]:
        """The union of ``requires_restart``, in order of first appearance."""
        seen: dict[str, None] = {}
        for step in self.steps:
            for service in step.migration.declared.requires_restart:
                seen.setdefault(service, None)
        return tuple(seen)

    @property
    def breaking_changes(self) -> tuple[str, ...]:
        """Ids of the migrations that declare breaking changes."""
        return tuple(step.id for step in self.steps if step.migration.declared.breaking_changes)

    @property
    def estimated_seconds(self) -> float:
        return sum(step.migration.declared.estimated_duration_seconds for step in self.steps)

    @property
    def backup_required(self) -> bool:
        return any(step.migration.declared.backup_required for step in self.steps)


@dataclass(frozen=True, slots=True)
class UpdateResult:
    """What an :class:`~dopemux_update.OrchestrationPhase` run did.

    ``applied`` lists the migrations whose step succeeded, in the order they ran;
    ``rolled_back`` those undone after a failure, in the order their undo ran.

    ``verified_identical`` says whether, after a failed run's restore, the tree was checked
    and found identical to the backup taken before the run: True when a second walk of the
    backup's scope found every path it holds, and nothing else, with the same kind, mode,
    symlink target, file size, mtime and content (files the restore did not touch are
    recognised, as the restore itself does, by inode, size, mtime and ctime; every other file
    is re-hashed; a database that changed is compared by its SQL content). False when a
    restore was attempted and that could not be confirmed (the restore failed, the check
    found a difference or could not run). None when there was nothing to check: the run
    succeeded, no backup was taken, or the rollback stopped before restoring.
    """

    ok: bool
    version_from: str
    version_to: str
    direction: Direction
    applied: tuple[str, ...] = ()
    rolled_back: tuple[str, ...] = ()
    restart_services: tuple[str, ...] = ()
    needs_recovery: bool = False
    failed_migration: str | None = None
    error: str | None = None
    backup_id: str | None = None
    restored: bool = False
    installed_version: str | None = None
    durations: tuple[tuple[str, float], ...] = ()
    abandoned: bool = False
    verified_identical: bool | None = None
    #: The journal holds the run's commit point: the tree is at ``version_to``. With ``ok``
    #: False the new version could not be recorded; ``recover`` completes the commit.
    committed: bool = False
    #: A migration deleted or changed the run's backup: the tree could not be restored.
    backup_lost: bool = False

    def __bool__(self) -> bool:
        """A result is its ``ok``: ``if not await phase.execute():`` is safe."""
        return self.ok
