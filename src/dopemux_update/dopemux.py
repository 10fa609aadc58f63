"""A drop-in Orchestration phase for Dopemux's own updater.

Dopemux's ``dopemux.update.manager.UpdateManager`` builds its phases as ``Phase(manager)``,
runs them in order (``if not await phase.execute():`` stops the update) and, after a phase
fails, calls ``await manager.rollback.auto_rollback()``. The whole integration is::

    from dopemux_update.dopemux import install

    install(manager)  # in UpdateManager.__init__, after self.phases is built

This module never imports ``dopemux``: it is duck-typed against the attributes it uses.

``manager.project_root``
    The installation (a ``Path``).
``manager.check_for_updates()``
    Called at execute time; its ``current`` and ``target`` strings (a leading ``v`` is
    fine) are the versions to migrate between.
``manager.config.dry_run``
    Plan and validate only: nothing is written.
``manager.config.skip_migrations``
    The phase does nothing and succeeds.
``manager.config.timeout_minutes``
    The most a single migration may run (a migration longer than the whole update's
    budget is taken as hung); ``timeout=`` overrides it.
``manager.progress.update_phase_progress(phase_name, step_description, percentage)``
    Where progress goes (optional).
``manager.phases``, ``manager.rollback.auto_rollback``
    Used by :func:`install` only.

The phase recovers an interrupted earlier run first, runs the migrations (backup, journal,
exact rollback), restarts the services they name and waits until they are healthy; an
unhealthy service, or one that cannot be restarted, undoes the run (:meth:`revert`) and
restarts the services again, and the phase fails. Dopemux's own state folders
(``.dopemux/backups``, ``.dopemux/rollback``, ``.dopemux/update-session``) are left out of
the backup.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.to_thread

from ._core import _events as ev
from ._core._exceptions import UpdateError
from ._core._log import get_logger
from ._core._models import UpdateResult
from ._run._health import HealthChecker, find_compose_file
from ._run._orchestration import OrchestrationPhase
from ._run._restart import (
    DEFAULT_HEALTH_TIMEOUT,
    DockerComposeRestarter,
    Restarter,
    RestartResult,
    ServiceRestartPhase,
)
from ._run._revert import HEALTH_REASON
from ._run._runner import DEFAULT_GRACE
from ._safety._recovery import recover

__all__ = ["DOPEMUX_STATE_FOLDERS", "PHASE_NAME", "UpdateManagerPhase", "install"]

logger = get_logger()

PHASE_NAME = "Orchestration"
#: Dopemux's own state, never part of our backup (it only grows, and it is not ours).
DOPEMUX_STATE_FOLDERS = (".dopemux/backups", ".dopemux/rollback", ".dopemux/update-session")


class _Manager(Protocol):
    """What the phase reads from Dopemux's UpdateManager (see the module documentation)."""

    project_root: Path
    config: Any

    def check_for_updates(self) -> Any: ...


class _Default:
    """An option left out: the phase decides (see :class:`UpdateManagerPhase`)."""


_DEFAULT: Any = _Default()


class UpdateManagerPhase:
    """Dopemux's "Orchestration" phase: migrations, restarts and the health gate.

    ``options``: ``migrations_dir`` (default ``ROOT/migrations``), ``state_dir``,
    ``restarter`` (default: docker compose when the installation has a compose file;
    ``None`` restarts nothing), ``health`` (default: the restarter's own check; ``None``
    skips the gate), ``health_timeout`` (seconds, default 60), ``timeout`` (per migration;
    default ``config.timeout_minutes``), ``grace``, ``keep_backups``, ``backup_include``,
    ``backup_exclude`` (added to Dopemux's own state folders), ``on_event`` (our events, as
    :class:`~dopemux_update.OrchestrationPhase` gives them).

    After :meth:`execute`, ``result`` is the orchestration's result and ``restart_result``
    that of the restarts (None when nothing was restarted).
    """

    def __init__(
        self,
        manager: _Manager,
        *,
        migrations_dir: Path | str | None = None,
        state_dir: Path | str | None = None,
        restarter: Restarter | None = _DEFAULT,
        health: HealthChecker | None = _DEFAULT,
        health_timeout: float = DEFAULT_HEALTH_TIMEOUT,
        timeout: float | None = _DEFAULT,
        grace: float = DEFAULT_GRACE,
        keep_backups: int | None = 5,
        backup_include: Sequence[str] = (),
        backup_exclude: Sequence[str] = (),
        on_event: ev.EventHandler | None = None,
    ) -> None:
        self.manager = manager
        self.migrations_dir = None if migrations_dir is None else Path(migrations_dir)
        self.state_dir = None if state_dir is None else Path(state_dir)
        self._restarter = restarter
        self._health = health
        self.health_timeout = health_timeout
        self._timeout = timeout
        self.grace = grace
        self.keep_backups = keep_backups
        self.backup_include = tuple(backup_include)
        self.backup_exclude = (*DOPEMUX_STATE_FOLDERS, *backup_exclude)
        self.on_event = on_event
        self.result: UpdateResult | None = None
        self.restart_result: RestartResult | None = None
        self.revert_result: UpdateResult | None = None
        self._phase: OrchestrationPhase | None = None
        self._restart_phase: ServiceRestartPhase | None = None
        self._reverted = False

    # -- what BasePhase has -----------------------------------------------------------------

    @property
    def name(self) -> str:
        return PHASE_NAME

    @property
    def description(self) -> str:
        return "Applying migrations, restarting services and checking their health"

    # -- the phase --------------------------------------------------------------------------

    @property
    def project_root(self) -> Path:
        return Path(self.manager.project_root).absolute()

    async def execute(self) -> bool:
        """Run the migrations between the manager's versions; True when everything succeeded
        (or there was nothing to do)."""
        config = getattr(self.manager, "config", None)
        if getattr(config, "skip_migrations", False):
            self._progress("Migrations skipped (skip_migrations)", 100.0)
            logger.info("dopemux.skipped", reason="skip_migrations")
            return True
        try:
            return await self._execute(dry_run=bool(getattr(config, "dry_run", False)))
        except UpdateError as exc:  # preflight: nothing was changed
            logger.error("dopemux.refused", error=str(exc), error_type=type(exc).__name__)
            self._progress(f"Migrations refused: {exc}", None)
            return False

    async def _execute(self, *, dry_run: bool) -> bool:
        info = self.manager.check_for_updates()
        current, target = str(info.current), str(info.target)
        if not dry_run and not await self._recover_first():
            return False
        restart_phase = await anyio.to_thread.run_sync(self._make_restart_phase)  # stats
        self._restart_phase = restart_phase
        phase = OrchestrationPhase(
            project_root=self.project_root,
            migrations_dir=self.migrations_dir,
            current_version=current,
            target_version=target,
            restart_phase=restart_phase,
            state_dir=self.state_dir,
            on_event=self._on_event,
            backup_include=self.backup_include,
            backup_exclude=self.backup_exclude,
            keep_backups=self.keep_backups,
            timeout=self._migration_timeout(),
            grace=self.grace,
        )
        self._phase = phase
        if dry_run:
            plan = await phase.plan()
            steps = ", ".join(step.id for step in plan.steps) or "no migrations"
            self._progress(f"Dry run: {plan.current} → {plan.target}: {steps}", 100.0)
            return True
        result = await phase.execute()
        self.result = result
        if not result:
            self._progress(f"Migrations failed: {result.error}", None)
            return False
        if restart_phase is None or not restart_phase.services:
            self._progress(f"Migrated to {result.installed_version}", 100.0)
            return True
        self._progress(f"Restarting {', '.join(restart_phase.services)}", 90.0)
        restarted = await restart_phase.execute()
        self.restart_result = restarted
        if restarted:
            self._progress(f"Migrated to {result.installed_version}; services healthy", 100.0)
            return True
        problems = [name for name, _ in restarted.failed] + list(restarted.unhealthy)
        self._progress(f"Not healthy after the update: {', '.join(problems)}; reverting", None)
        logger.error("dopemux.unhealthy", services=problems)
        await self.revert(reason=HEALTH_REASON)
        return False

    async def revert(self, *, reason: str = "a later phase of the update failed") -> bool:
        """Undo the run this phase committed (backward functions in reverse, the version
        records back, journaled like any run), then restart the services the revert names
        (not those its backward functions removed from the compose file).

        True when there is nothing to undo (no run committed, or already reverted) or the
        revert succeeded. Dopemux's ``auto_rollback`` calls this first once :func:`install`
        put the phase in place; ``reason`` goes into the history record.
        """
        phase = self._phase
        if self._reverted or phase is None or self.result is None or not self.result.ok:
            return True
        with anyio.CancelScope(shield=True):  # half a revert helps nobody
            self._progress("Reverting the migrations", None)
            restarter = self._restart_phase.restarter if self._restart_phase else None
            again = ServiceRestartPhase(restarter, health=None) if restarter else None
            try:
                reverted = await phase.revert(restart_phase=again, reason=reason)
            except UpdateError as exc:
                logger.error("dopemux.revert_failed", error=str(exc))
                self._progress(f"Revert failed: {exc}", None)
                return False
            self.revert_result = reverted
            if not reverted:
                self._progress(f"Revert failed: {reverted.error}", None)
                return False
            self._reverted = True
            if again is not None and again.services:
                await again.execute()
            self._progress(f"Reverted to {reverted.installed_version}", None)
        return True

    # -- helpers ----------------------------------------------------------------------------

    async def _recover_first(self) -> bool:
        recovered = await recover(self.project_root, state_dir=self.state_dir)
        if recovered.action == "none":
            return True
        if not recovered.ok:
            self._progress(f"An earlier update needs recovery: {recovered.error}", None)
            return False
        self._progress(f"Recovered an interrupted update ({recovered.action})", None)
        return True

    def _make_restart_phase(self) -> ServiceRestartPhase | None:
        restarter = self._restarter
        if isinstance(restarter, _Default):
            compose = find_compose_file(self.project_root)
            restarter = (
                DockerComposeRestarter(self.project_root, compose_file=compose)
                if compose is not None
                else None
            )
        if restarter is None:
            return None
        if isinstance(self._health, _Default):  # the restarter's own check
            return ServiceRestartPhase(restarter, health_timeout=self.health_timeout)
        return ServiceRestartPhase(
            restarter, health=self._health, health_timeout=self.health_timeout
        )

    def _migration_timeout(self) -> float | None:
        if not isinstance(self._timeout, _Default):
            return self._timeout
        minutes = getattr(getattr(self.manager, "config", None), "timeout_minutes", None)
        return float(minutes) * 60 if isinstance(minutes, int | float) and minutes > 0 else None

    def _progress(self, step: str, percentage: float | None) -> None:
        progress = getattr(self.manager, "progress", None)
        update: Callable[..., object] | None = getattr(progress, "update_phase_progress", None)
        if update is None:
            return
        try:
            update(PHASE_NAME, step, percentage)
        except Exception as exc:  # noqa: BLE001 - a display problem must not break an update
            logger.warning("dopemux.progress_failed", error=repr(exc))

    def _on_event(self, event: ev.Event) -> None:
        if self.on_event is not None:
            self.on_event(event)
        if isinstance(event, ev.PlanReady):
            count = len(event.plan.steps)
            self._progress(f"{count} migration(s): {event.plan.current} → {event.plan.target}", 0)
        elif isinstance(event, ev.BackupCreated):
            self._progress(f"Backup {event.backup_id} taken and verified", 5.0)
        elif isinstance(event, ev.MigrationStarted):
            done = 5.0 + 80.0 * (event.index - 1) / max(event.total, 1)
            self._progress(f"[{event.index}/{event.total}] {event.id}", done)
        elif isinstance(event, ev.RollbackStarted):
            self._progress(f"{event.failed_id} failed: rolling back", None)
        elif isinstance(event, ev.RestoreFinished):
            verdict = "verified identical" if event.verified else "NOT verified"
            self._progress(f"Restored from backup {event.backup_id} ({verdict})", None)


def install(manager: Any, **options: Any) -> UpdateManagerPhase:
    """Put an :class:`UpdateManagerPhase` in place of the manager's phase named
    "Orchestration" (or before its "Validation" phase, or last), and make the manager's
    ``rollback.auto_rollback()`` (when present) revert our committed run first. Returns
    the phase."""
    phase = UpdateManagerPhase(manager, **options)
    phases: list[Any] = manager.phases
    names = [getattr(p, "name", None) for p in phases]
    if PHASE_NAME in names:
        phases[names.index(PHASE_NAME)] = phase
    elif "Validation" in names:
        phases.insert(names.index("Validation"), phase)
    else:
        phases.append(phase)
    rollback = getattr(manager, "rollback", None)
    original = getattr(rollback, "auto_rollback", None)
    if rollback is not None and callable(original):

        async def auto_rollback(*args: Any, **kwargs: Any) -> bool:
            reverted = await phase.revert()
            rolled_back = bool(await original(*args, **kwargs))
            return reverted and rolled_back

        rollback.auto_rollback = auto_rollback
    return phase
