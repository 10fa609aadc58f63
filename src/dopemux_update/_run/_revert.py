"""The rules of reverting a committed run: which run, and whether it can be undone exactly.

``revert_run`` (in ``_orchestration``, beside the phase it runs) reverts the installation's
newest committed run, or one named by its id.

A revert is an ordinary run of :class:`OrchestrationPhase` from the reverted run's
``version_to`` back to its ``version_from``: validated first, backed up, journaled (so that
``recover`` after a crash anywhere in it gives the state before or after it), rolled back to
the post-update state when a backward function fails, and committed by putting the version
record (``state.json`` and ``VERSION``) back. Its history record says ``reverted`` and names
the run it undid.

It refuses, changing nothing, when it could not be exact: the installation is no longer at
the run's ``version_to``, or the migration files on the way differ from those the run
applied (their checksums are recorded).
"""

from __future__ import annotations

from .._core._exceptions import RevertError
from .._core._models import Plan
from .._core._versions import parse_version
from .._safety._state import RunRecord, State

__all__ = ["HEALTH_REASON", "check_installed", "check_way_back", "revertible_run"]

_COMMITTED = ("applied", "reverted")
#: The ``reason`` of a revert made because a restarted service stayed unhealthy; history
#: says "reverted after health check".
HEALTH_REASON = "health check"


def revertible_run(state: State, run_id: str | None = None) -> RunRecord:
    """The recorded run to revert: ``run_id``, or the newest committed one; raises
    :class:`RevertError` when there is none, or it was reverted already."""
    history = state.history
    if run_id is None:
        found = next((r for r in reversed(history) if r.outcome in _COMMITTED), None)
        if found is None:
            raise RevertError("no committed run is recorded: there is nothing to revert")
    else:
        found = next((r for r in reversed(history) if r.run_id == run_id), None)
        if found is None:
            raise RevertError(f"no run {run_id} is recorded")
        if found.outcome not in _COMMITTED:
            raise RevertError(f"run {run_id} was not committed ({found.outcome}): nothing to undo")
    if found.reverts is not None:
        raise RevertError(
            f"the run to revert, {found.run_id}, is itself the revert of run {found.reverts}:"
            " to apply those migrations again, run the update again"
        )
    if found.run_id is None:
        raise RevertError("the run to revert was recorded without an id: it cannot be named")
    later = next((r for r in history if r.reverts == found.run_id), None)
    if later is not None:
        raise RevertError(f"run {found.run_id} was already reverted (by run {later.run_id})")
    return found


def check_installed(record: RunRecord, installed: str | None) -> None:
    """The installation must still be at the run's ``version_to``."""
    if installed is None or parse_version(installed) != parse_version(record.version_to):
        raise RevertError(
            f"run {record.run_id} moved the installation to {record.version_to}, but it is"
            f" now at {installed or 'no recorded version'}: it cannot be reverted exactly"
        )


def check_way_back(record: RunRecord, plan: Plan) -> None:
    """The way back must run exactly the migrations the run applied, unchanged since."""
    applied = {m.id: m.checksum for m in record.migrations if m.outcome == "applied"}
    planned = {step.id: step.migration.checksum for step in plan.steps}
    if set(applied) != set(planned):
        raise RevertError(
            f"run {record.run_id} applied {', '.join(applied) or 'no migration'}, but the"
            f" way back from {record.version_to} to {record.version_from} now runs"
            f" {', '.join(planned) or 'none'}: it cannot be reverted exactly"
        )
    changed = [
        str(step.migration.path) for step in plan.steps if applied[step.id] != planned[step.id]
    ]
    if changed:
        raise RevertError(
            f"migration file(s) changed since run {record.run_id} applied them: "
            + ", ".join(changed)
            + "; their backward functions may not undo what ran, so nothing was reverted"
        )
