"""dopemux-update: validated, backed-up, exactly reversible update migrations for Dopemux.

The names below are imported from their modules when first used (PEP 562), so that
``import dopemux_update`` (and so the command line) does not pay for every module at start-up.
"""

import importlib as _importlib
import typing as _typing

if _typing.TYPE_CHECKING:
    from ._backup import BackupStore as BackupStore
    from ._discovery import Catalog as Catalog
    from ._discovery import load_transitions as load_transitions
    from ._discovery import scan_migrations as scan_migrations
    from ._events import BackupCreated as BackupCreated
    from ._events import BackupProgress as BackupProgress
    from ._events import BackupStarted as BackupStarted
    from ._events import Event as Event
    from ._events import EventHandler as EventHandler
    from ._events import MigrationFinished as MigrationFinished
    from ._events import MigrationOutput as MigrationOutput
    from ._events import MigrationStarted as MigrationStarted
    from ._events import PlanReady as PlanReady
    from ._events import RestoreFinished as RestoreFinished
    from ._events import RestoreProgress as RestoreProgress
    from ._events import RestoreStarted as RestoreStarted
    from ._events import RollbackStarted as RollbackStarted
    from ._events import RollbackStep as RollbackStep
    from ._events import UpdateFinished as UpdateFinished
    from ._exceptions import BackupError as BackupError
    from ._exceptions import EditError as EditError
    from ._exceptions import LockError as LockError
    from ._exceptions import MigrationValidationError as MigrationValidationError
    from ._exceptions import PlanError as PlanError
    from ._exceptions import PreflightError as PreflightError
    from ._exceptions import Problem as Problem
    from ._exceptions import RecoveryNeededError as RecoveryNeededError
    from ._exceptions import RestartError as RestartError
    from ._exceptions import RevertError as RevertError
    from ._exceptions import StateError as StateError
    from ._exceptions import UnsafeStateError as UnsafeStateError
    from ._exceptions import UpdateError as UpdateError
    from ._exceptions import VersionError as VersionError
    from ._exceptions import VersionMismatchError as VersionMismatchError
    from ._manifest import BackupInfo as BackupInfo
    from ._manifest import InsufficientSpaceError as InsufficientSpaceError
    from ._models import Direction as Direction
    from ._models import Migration as Migration
    from ._models import MigrationInfo as MigrationInfo
    from ._models import Plan as Plan
    from ._models import Step as Step
    from ._models import Transition as Transition
    from ._models import UpdateResult as UpdateResult
    from ._orchestration import OrchestrationPhase as OrchestrationPhase
    from ._pipeline import PhaseResult as PhaseResult
    from ._pipeline import PipelineResult as PipelineResult
    from ._pipeline import RestartReceiver as RestartReceiver
    from ._pipeline import UpdatePhase as UpdatePhase
    from ._pipeline import UpdatePipeline as UpdatePipeline
    from ._planning import Route as Route
    from ._planning import build_plan as build_plan
    from ._planning import find_route as find_route
    from ._planning import newest_reachable as newest_reachable
    from ._recovery import RecoveryResult as RecoveryResult
    from ._recovery import recover as recover
    from ._rehearsal import RehearsalCall as RehearsalCall
    from ._rehearsal import RehearsalFinding as RehearsalFinding
    from ._rehearsal import RehearsalReport as RehearsalReport
    from ._rehearsal import RehearsalStopped as RehearsalStopped
    from ._rehearsal import rehearse as rehearse
    from ._restart import CommandRestarter as CommandRestarter
    from ._restart import DockerComposeRestarter as DockerComposeRestarter
    from ._restart import Restarter as Restarter
    from ._restart import RestartResult as RestartResult
    from ._restart import ServiceRestartPhase as ServiceRestartPhase
    from ._restore import RestoreReport as RestoreReport
    from ._revert import revert_run as revert_run
    from ._sandbox import SandboxEscapeError as SandboxEscapeError
    from ._snapshot import TreeChanges as TreeChanges
    from ._snapshot import TreeDiff as TreeDiff
    from ._state import RunRecord as RunRecord
    from ._state import State as State
    from ._state import StateStore as StateStore
    from ._tree import Scope as Scope

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
    "BackupInfo": "._manifest",
    "BackupStore": "._backup",
    "InsufficientSpaceError": "._manifest",
    "Catalog": "._discovery",
    "load_transitions": "._discovery",
    "scan_migrations": "._discovery",
    "BackupCreated": "._events",
    "BackupProgress": "._events",
    "BackupStarted": "._events",
    "Event": "._events",
    "EventHandler": "._events",
    "MigrationFinished": "._events",
    "MigrationOutput": "._events",
    "MigrationStarted": "._events",
    "PlanReady": "._events",
    "RestoreFinished": "._events",
    "RestoreProgress": "._events",
    "RestoreStarted": "._events",
    "RollbackStarted": "._events",
    "RollbackStep": "._events",
    "UpdateFinished": "._events",
    "BackupError": "._exceptions",
    "EditError": "._exceptions",
    "LockError": "._exceptions",
    "MigrationValidationError": "._exceptions",
    "PlanError": "._exceptions",
    "PreflightError": "._exceptions",
    "Problem": "._exceptions",
    "RecoveryNeededError": "._exceptions",
    "RestartError": "._exceptions",
    "RevertError": "._exceptions",
    "StateError": "._exceptions",
    "UnsafeStateError": "._exceptions",
    "UpdateError": "._exceptions",
    "VersionError": "._exceptions",
    "VersionMismatchError": "._exceptions",
    "Direction": "._models",
    "Migration": "._models",
    "MigrationInfo": "._models",
    "Plan": "._models",
    "Step": "._models",
    "Transition": "._models",
    "UpdateResult": "._models",
    "OrchestrationPhase": "._orchestration",
    "PhaseResult": "._pipeline",
    "PipelineResult": "._pipeline",
    "RestartReceiver": "._pipeline",
    "UpdatePhase": "._pipeline",
    "UpdatePipeline": "._pipeline",
    "Route": "._planning",
    "build_plan": "._planning",
    "find_route": "._planning",
    "newest_reachable": "._planning",
    "RecoveryResult": "._recovery",
    "recover": "._recovery",
    "RehearsalCall": "._rehearsal",
    "RehearsalFinding": "._rehearsal",
    "RehearsalReport": "._rehearsal",
    "RehearsalStopped": "._rehearsal",
    "rehearse": "._rehearsal",
    "CommandRestarter": "._restart",
    "DockerComposeRestarter": "._restart",
    "Restarter": "._restart",
    "RestartResult": "._restart",
    "ServiceRestartPhase": "._restart",
    "RestoreReport": "._restore",
    "revert_run": "._revert",
    "SandboxEscapeError": "._sandbox",
    "TreeChanges": "._snapshot",
    "TreeDiff": "._snapshot",
    "RunRecord": "._state",
    "State": "._state",
    "StateStore": "._state",
    "Scope": "._tree",
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
