"""Reverting a committed run: the installation's newest one, or one named by its id.

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

from pathlib import Path

import anyio.to_thread

from . import _events as ev
from ._exceptions import RevertError
from ._log import get_logger
from ._models import UpdateResult
from ._orchestration import OrchestrationPhase
from ._pipeline import RestartReceiver
from ._runner import DEFAULT_GRACE
from ._state import DEFAULT_STATE_DIR, VERSION_FILE, RunRecord, State, StateStore
from ._state_guard import absolute
from ._versions import parse_version

__all__ = ["HEALTH_REASON", "revert_run", "revertible_run"]

logger = get_logger()

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


async def revert_run(
    *,
    project_root: Path | str,
    migrations_dir: Path | str | None = None,
    state_dir: Path | str | None = None,
    run_id: str | None = None,
    on_event: ev.EventHandler | None = None,
    timeout: float | None = None,  # noqa: ASYNC109 - per migration, as OrchestrationPhase
    grace: float = DEFAULT_GRACE,
    restart_phase: RestartReceiver | None = None,
    keep_backups: int | None = 5,
    reason: str | None = None,
) -> UpdateResult:
    """Undo the installation's newest committed run (or run ``run_id``); see the module
    documentation. Returns the revert's :class:`UpdateResult` (a failed revert is rolled
    back to the post-update state, or left for ``recover``, like any run); raises
    :class:`~dopemux_update.RevertError` (nothing changed) when it cannot be exact."""
    root = absolute(project_root)
    folder = absolute(state_dir) if state_dir is not None else root / DEFAULT_STATE_DIR
    store = StateStore(folder, version_file=root / VERSION_FILE)

    def read() -> tuple[State, str | None]:
        return store.read(), store.installed_version()

    state, installed = await anyio.to_thread.run_sync(read)
    record = revertible_run(state, run_id)
    if installed is None or parse_version(installed) != parse_version(record.version_to):
        raise RevertError(
            f"run {record.run_id} moved the installation to {record.version_to}, but it is"
            f" now at {installed or 'no recorded version'}: it cannot be reverted exactly"
        )
    phase = OrchestrationPhase(
        project_root=root,
        migrations_dir=migrations_dir,
        current_version=record.version_to,
        target_version=record.version_from,
        restart_phase=restart_phase,
        state_dir=folder,
        on_event=on_event,
        timeout=timeout,
        grace=grace,
        keep_backups=keep_backups,
    )
    phase._command = "revert"  # set here only: the revert is this module's business
    phase._reverts = record.run_id
    phase._reason = reason
    plan = await phase.plan()
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
    logger.info("revert.started", reverts=record.run_id, reason=reason)
    return await phase.execute()
