"""dopemux-update: validated, backed-up, exactly reversible update migrations for Dopemux.

The names below are imported from their modules when first used (PEP 562), so that
``import dopemux_update`` (and so the command line) does not pay for every module at start-up.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from ._authoring._rehearsal import RehearsalCall as RehearsalCall
    from ._authoring._rehearsal import RehearsalFinding as RehearsalFinding
    from ._authoring._rehearsal import RehearsalReport as RehearsalReport
    from ._authoring._rehearsal import RehearsalStopped as RehearsalStopped
    from ._authoring._rehearsal import rehearse as rehearse
    from ._authoring._sandbox import SandboxEscapeError as SandboxEscapeError
    from ._backup._manifest import BackupInfo as BackupInfo
    from ._backup._manifest import InsufficientSpaceError as InsufficientSpaceError
    from ._backup._restore import RestoreReport as RestoreReport
    from ._backup._snapshot import TreeChanges as TreeChanges
    from ._backup._snapshot import TreeDiff as TreeDiff
    from ._backup._store import BackupStore as BackupStore
    from ._backup._tree import Scope as Scope
    from ._core._events import BackupCreated as BackupCreated
    from ._core._events import BackupProgress as BackupProgress
    from ._core._events import BackupStarted as BackupStarted
    from ._core._events import Event as Event
    from ._core._events import EventHandler as EventHandler
    from ._core._events import MigrationFinished as MigrationFinished
    from ._core._events import MigrationOutput as MigrationOutput
    from ._core._events import MigrationStarted as MigrationStarted
    from ._core._events import PlanReady as PlanReady
    from ._core._events import RestoreFinished as RestoreFinished
    from ._core._events import RestoreProgress as RestoreProgress
    from ._core._events import RestoreStarted as RestoreStarted
    from ._core._events import RollbackStarted as RollbackStarted
    from ._core._events import RollbackStep as RollbackStep
    from ._core._events import UpdateFinished as UpdateFinished
    from ._core._exceptions import BackupError as BackupError
    from ._core._exceptions import EditError as EditError
    from ._core._exceptions import LockError as LockError
    from ._core._exceptions import MigrationValidationError as MigrationValidationError
    from ._core._exceptions import PlanError as PlanError
    from ._core._exceptions import PreflightError as PreflightError
    from ._core._exceptions import Problem as Problem
    from ._core._exceptions import RecoveryNeededError as RecoveryNeededError
    from ._core._exceptions import RestartError as RestartError
    from ._core._exceptions import RevertError as RevertError
    from ._core._exceptions import StateError as StateError
    from ._core._exceptions import UnsafeStateError as UnsafeStateError
    from ._core._exceptions import UpdateError as UpdateError
    from ._core._exceptions import VersionError as VersionError
    from ._core._exceptions import VersionMismatchError as VersionMismatchError
    from ._core._info import MigrationInfo as MigrationInfo
    from ._core._models import Direction as Direction
    from ._core._models import Migration as Migration
    from ._core._models import Plan as Plan
    from ._core._models import Step as Step
    from ._core._models import Transition as Transition
    from ._core._models import UpdateResult as UpdateResult
    from ._run._discovery import Catalog as Catalog
    from ._run._discovery import load_transitions as load_transitions
    from ._run._discovery import scan_migrations as scan_migrations
    from ._run._orchestration import OrchestrationPhase as OrchestrationPhase
    from ._run._orchestration import revert_run as revert_run
    from ._run._pipeline import PhaseResult as PhaseResult
    from ._run._pipeline import PipelineResult as PipelineResult
    from ._run._pipeline import RestartReceiver as RestartReceiver
    from ._run._pipeline import UpdatePhase as UpdatePhase
    from ._run._pipeline import UpdatePipeline as UpdatePipeline
    from ._run._planning import Route as Route
    from ._run._planning import build_plan as build_plan
    from ._run._planning import find_route as find_route
    from ._run._planning import newest_reachable as newest_reachable
    from ._run._restart import CommandRestarter as CommandRestarter
    from ._run._restart import DockerComposeRestarter as DockerComposeRestarter
    from ._run._restart import Restarter as Restarter
    from ._run._restart import RestartResult as RestartResult
    from ._run._restart import ServiceRestartPhase as ServiceRestartPhase
    from ._safety._recovery import RecoveryResult as RecoveryResult
    from ._safety._recovery import recover as recover
    from ._safety._state import RunRecord as RunRecord
    from ._safety._state import State as State
    from ._safety._state import StateStore as StateStore

__all__ = [
    "BackupCreated",
    "BackupError",
    "BackupInfo",
    "BackupProgress",
    "BackupStarted",
    "BackupStore",
    "Catalog",
    "CommandRestarter",
    "Direction",
    "DockerComposeRestarter",
    "EditError",
    "Event",
    "EventHandler",
    "InsufficientSpaceError",
    "LockError",
    "Migration",
    "MigrationFinished",
    "MigrationInfo",
    "MigrationOutput",
    "MigrationStarted",
    "MigrationValidationError",
    "OrchestrationPhase",
    "PhaseResult",
    "PipelineResult",
    "Plan",
    "PlanError",
    "PlanReady",
    "PreflightError",
    "Problem",
    "RecoveryNeededError",
    "RecoveryResult",
    "RehearsalCall",
    "RehearsalFinding",
    "RehearsalReport",
    "RehearsalStopped",
    "RestartError",
    "RestartReceiver",
    "RestartResult",
    "Restarter",
    "RestoreFinished",
    "RestoreProgress",
    "RestoreReport",
    "RestoreStarted",
    "RevertError",
    "RollbackStarted",
    "RollbackStep",
    "Route",
    "RunRecord",
    "SandboxEscapeError",
    "Scope",
    "ServiceRestartPhase",
    "State",
    "StateError",
    "StateStore",
    "Step",
    "Transition",
    "TreeChanges",
    "TreeDiff",
    "UnsafeStateError",
    "UpdateError",
    "UpdateFinished",
    "UpdatePhase",
    "UpdatePipeline",
    "UpdateResult",
    "VersionError",
    "VersionMismatchError",
    "build_plan",
    "find_route",
    "load_transitions",
    "newest_reachable",
    "recover",
    "rehearse",
    "revert_run",
    "scan_migrations",
]

# Where each public name lives: imported from there on first use.
_WHERE: dict[str, str] = {
    "BackupInfo": "._backup._manifest",
    "BackupStore": "._backup._store",
    "InsufficientSpaceError": "._backup._manifest",
    "Catalog": "._run._discovery",
    "load_transitions": "._run._discovery",
    "scan_migrations": "._run._discovery",
    "BackupCreated": "._core._events",
    "BackupProgress": "._core._events",
    "BackupStarted": "._core._events",
    "Event": "._core._events",
    "EventHandler": "._core._events",
    "MigrationFinished": "._core._events",
    "MigrationOutput": "._core._events",
    "MigrationStarted": "._core._events",
    "PlanReady": "._core._events",
    "RestoreFinished": "._core._events",
    "RestoreProgress": "._core._events",
    "RestoreStarted": "._core._events",
    "RollbackStarted": "._core._events",
    "RollbackStep": "._core._events",
    "UpdateFinished": "._core._events",
    "BackupError": "._core._exceptions",
    "EditError": "._core._exceptions",
    "LockError": "._core._exceptions",
    "MigrationValidationError": "._core._exceptions",
    "PlanError": "._core._exceptions",
    "PreflightError": "._core._exceptions",
    "Problem": "._core._exceptions",
    "RecoveryNeededError": "._core._exceptions",
    "RestartError": "._core._exceptions",
    "RevertError": "._core._exceptions",
    "StateError": "._core._exceptions",
    "UnsafeStateError": "._core._exceptions",
    "UpdateError": "._core._exceptions",
    "VersionError": "._core._exceptions",
    "VersionMismatchError": "._core._exceptions",
    "Direction": "._core._models",
    "Migration": "._core._models",
    "MigrationInfo": "._core._info",
    "Plan": "._core._models",
    "Step": "._core._models",
    "Transition": "._core._models",
    "UpdateResult": "._core._models",
    "OrchestrationPhase": "._run._orchestration",
    "PhaseResult": "._run._pipeline",
    "PipelineResult": "._run._pipeline",
    "RestartReceiver": "._run._pipeline",
    "UpdatePhase": "._run._pipeline",
    "UpdatePipeline": "._run._pipeline",
    "Route": "._run._planning",
    "build_plan": "._run._planning",
    "find_route": "._run._planning",
    "newest_reachable": "._run._planning",
    "RecoveryResult": "._safety._recovery",
    "recover": "._safety._recovery",
    "RehearsalCall": "._authoring._rehearsal",
    "RehearsalFinding": "._authoring._rehearsal",
    "RehearsalReport": "._authoring._rehearsal",
    "RehearsalStopped": "._authoring._rehearsal",
    "rehearse": "._authoring._rehearsal",
    "CommandRestarter": "._run._restart",
    "DockerComposeRestarter": "._run._restart",
    "Restarter": "._run._restart",
    "RestartResult": "._run._restart",
    "ServiceRestartPhase": "._run._restart",
    "RestoreReport": "._backup._restore",
    "revert_run": "._run._orchestration",
    "SandboxEscapeError": "._authoring._sandbox",
    "TreeChanges": "._backup._snapshot",
    "TreeDiff": "._backup._snapshot",
    "RunRecord": "._safety._state",
    "State": "._safety._state",
    "StateStore": "._safety._state",
    "Scope": "._backup._tree",
}


def __getattr__(name: str) -> _typing.Any:
    """A public name, imported from its module on first use; ``__version__`` from the
    installed package's metadata when first asked for."""
    module = _WHERE.get(name)
    if module is not None:
        value = getattr(_importlib.import_module(module, __name__), name)
        globals()[name] = value  # later lookups do not come here again
        return value
    if name == "__version__":
        from importlib.metadata import version  # noqa: PLC0415 - only when asked for

        return version("dopemux-update")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *__all__})
