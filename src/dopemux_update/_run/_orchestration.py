"""The orchestration phase: preflight, backup, run, and roll back exactly on failure.

Every step is announced in the write-ahead journal before it happens (see ``_journal``), so
that a crash at any point leaves enough on disk for ``_recovery`` to finish the commit or to
put the tree back: never anything in between.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar

import anyio
import anyio.to_thread
from packaging.version import Version

from .._backup._store import BackupStore, ProgressCallback
from .._backup._tree import Scope
from .._core import _events as ev
from .._core._exceptions import (
    PreflightError,
    RecoveryNeededError,
    RevertError,
    UpdateError,
    VersionMismatchError,
)
from .._core._faults import crash_point
from .._core._log import get_logger
from .._core._models import Direction, Plan, Step, UpdateResult
from .._core._versions import parse_version
from .._safety._journal import Journal, Record
from .._safety._lock import holding_lock_async
from .._safety._state import (
    DEFAULT_STATE_DIR,
    VERSION_FILE,
    MigrationRecord,
    RunRecord,
    State,
    StateStore,
    utcnow,
)
from .._safety._state_guard import StateGuard, StateTamperedError, absolute, restore_cwd
from ._capture import capture_thread, routing_installed
from ._discovery import load_transitions, scan_migrations
from ._pipeline import RestartReceiver
from ._planning import build_plan, find_route
from ._revert import check_installed, check_way_back, revertible_run
from ._runner import (
    DEFAULT_GRACE,
    Call,
    CallFinished,
    CallOutcome,
    CallOutput,
    CallSequence,
    CallStarted,
    RunnerEvent,
)

__all__ = ["OrchestrationPhase", "prepare_plan", "revert_run"]

logger = get_logger()

T = TypeVar("T")
_PROGRESS_SECONDS = 0.1  # backup and restore progress: at most ten events a second


def prepare_plan(migrations_dir: Path, current: Version, target: Version | None) -> Plan:
    """Scan, route, import and validate: everything a plan needs, and no writes."""
    catalog = scan_migrations(migrations_dir)
    route = find_route(catalog.transitions, current, target)

    def imported_output(stream: str, line: str) -> None:
        logger.info("migration.import_output", stream=stream, line=line)

    with capture_thread(imported_output):
        migrations = load_transitions(route.hops)
    return build_plan(route, migrations)


def _log_output(call: Call, stream: str, line: str) -> None:
    logger.info("migration.output", migration_id=call.id, stream=stream, line=line)


class _Run:
    """Mutable bookkeeping of one ``execute()`` (a class with slots: as a dataclass, its
    class took nearly a millisecond to create at every start of an update command)."""

    __slots__ = (
        "abandoned",
        "backup_id",
        "backup_lost",
        "committed",
        "completed",
        "durations",
        "error",
        "failed_id",
        "guard",
        "journal",
        "needs_recovery",
        "pending",
        "plan",
        "recorded",
        "records",
        "restored",
        "rolled_back",
        "run_id",
        "started_at",
        "tampered",
        "tampered_by",
        "verified_identical",
    )

    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.run_id = os.urandom(8).hex()  # what secrets.token_hex does, without its import
        self.started_at = utcnow()
        self.journal: Journal | None = None
        self.pending: list[Record] = []  # journal records to write next
        self.completed: list[Step] = []
        self.records: list[MigrationRecord] = []
        self.durations: list[tuple[str, float]] = []
        self.rolled_back: list[str] = []
        self.backup_id: str | None = None
        self.failed_id: str | None = None
        self.error: str | None = None
        self.needs_recovery = False
        self.abandoned = False
        self.restored = False
        self.verified_identical: bool | None = None
        #: The journal holds the commit point: from here on the run only goes forward.
        self.committed = False
        #: ... and the new version is recorded in state.json.
        self.recorded = False
        #: A migration deleted or changed the state folder (journal, backup): what it did.
        self.tampered: str | None = None
        self.tampered_by: str | None = None  # the migration whose forward or backward did it
        self.backup_lost = False
        self.guard: StateGuard | None = None

    def journal_now(self, *records: Record, sync: bool = True) -> None:
        """Write what is pending plus ``records`` (in the calling thread).

        Every record carries the run's id and backup id, so that recovery can still act on a
        journal whose first record was damaged.
        """
        assert self.journal is not None  # noqa: S101 - set before the first migration
        batch, self.pending = [*self.pending, *records], []
        tagged = [{"run_id": self.run_id, "backup_id": self.backup_id, **r} for r in batch]
        self.journal.append(tagged, sync=sync)

    def journal_if_possible(self, *records: Record, sync: bool = True) -> bool:
        """:meth:`journal_now`, but a failed write is logged, marks the run as needing
        recovery, and returns False: a rollback goes on without its journal records."""
        if self.journal is None:
            return False
        try:
            self.journal_now(*records, sync=sync)
        except (OSError, UpdateError) as exc:
            self.needs_recovery = True
            note = f"the journal could not be written ({exc})"
            if self.error is None or note not in self.error:
                self.error = f"{self.error}; {note}" if self.error else note
            logger.error(
                "journal.write_failed", error=str(exc), records=[r["kind"] for r in records]
            )
            return False
        return True

    @property
    def sync_steps(self) -> bool:
        """Per-migration records need syncing only when recovery would depend on them."""
        return self.backup_id is None


class _Latest:
    """The newest ``(done, total)`` a worker thread reported; the event loop reads it."""

    def __init__(self) -> None:
        self.value: tuple[int, int] | None = None
        self._sent: tuple[int, int] | None = None

    def __call__(self, done: int, total: int) -> None:
        self.value = (done, total)  # one reference store: safe across threads

    def take(self) -> tuple[int, int] | None:
        """The value, if it changed since the last take."""
        value = self.value
        if value is None or value == self._sent:
            return None
        self._sent = value
        return value


class OrchestrationPhase:
    """Runs the migrations between two versions of an installation.

    ``await execute()`` takes the installation's lock, validates every migration on the plan
    before anything is written (raising a :class:`~dopemux_update.PreflightError` if any is
    wrong), takes a backup, runs each migration function in a worker thread, and on failure
    runs the completed migrations' undo in reverse and restores the backup. Only on success
    is the target version recorded and the union of ``requires_restart`` handed to
    ``restart_phase``. ``timeout`` limits each migration (seconds); a migration still running
    ``grace`` seconds after its timeout, or after a cancellation, is abandoned and the run left
    for ``recover`` (the tree is not touched while its thread may still write to it).
    A ``current_version`` other than the recorded installed version is refused
    (:class:`~dopemux_update.VersionMismatchError`) unless ``force=True``.

    Before the commit, a ``restart_phase`` that offers ``unknown_services`` is asked whether
    it can restart every service the plan names (see :class:`RestartReceiver`). After a
    successful run, ``await revert()`` undoes it (see :func:`~dopemux_update.revert_run`).
    """

    name = "orchestration"

    def __init__(
        self,
        *,
        project_root: Path | str,
        migrations_dir: Path | str | None = None,
        current_version: str | Version,
        target_version: str | Version | None = None,
        restart_phase: RestartReceiver | None = None,
        state_dir: Path | str | None = None,
        on_event: ev.EventHandler | None = None,
        backup_include: Sequence[str] = (),
        backup_exclude: Sequence[str] = (),
        keep_backups: int | None = 5,
        timeout: float | None = None,
        grace: float = DEFAULT_GRACE,
        full_backup: bool = False,
        force: bool = False,
    ) -> None:
        # Absolute once, here: a migration that changes the working directory (at import or
        # while it runs) cannot redirect the lock, the state, the backups or the migrations.
        self.project_root = absolute(project_root)
        self.migrations_dir = (
            absolute(migrations_dir)
            if migrations_dir is not None
            else self.project_root / "migrations"
        )
        self.current_version = parse_version(current_version, where="current_version")
        self.target_version = (
            None
            if target_version is None
            else parse_version(target_version, where="target_version")
        )
        self.restart_phase = restart_phase
        self.state_dir = (
            absolute(state_dir) if state_dir is not None else self.project_root / DEFAULT_STATE_DIR
        )
        self._cwd = str(Path.cwd())
        self.on_event = on_event
        self.backup_include = tuple(backup_include)
        self.backup_exclude = tuple(backup_exclude)
        try:
            Scope(self.project_root, self.backup_exclude, self.backup_include).matchers()
        except ValueError as exc:
            raise PreflightError(str(exc)) from exc
        if timeout is not None and timeout <= 0:
            raise PreflightError("the timeout must be a positive number of seconds")
        self.keep_backups = keep_backups
        self.timeout = timeout
        self.grace = grace
        self.full_backup = full_backup  # copy every file: share none with older backups
        self.force = force  # run from current_version even when another one is recorded
        self._plan: Plan | None = None
        self._executed = False
        #: Set by ``revert_run``: this run undoes run ``_reverts`` (why: ``_reason``).
        self._command: str | None = None
        self._reverts: str | None = None
        self._reason: str | None = None
        self._committed_run: str | None = None  # the id of the run this phase committed
        self._not_restarted: set[str] = set()  # names a downgrade removed from compose
        #: What the run did, set when it ends: also when ``execute()`` was cancelled, which
        #: re-raises the cancellation after the rollback (or after leaving it to ``recover``).
        self.result: UpdateResult | None = None

    # -- public -----------------------------------------------------------------------------

    async def plan(self) -> Plan:
        """Preflight only: the validated plan, with nothing written.

        Computed once: ``execute()`` runs the plan this returned, so each migration file is
        imported (and its top-level code run) once per phase.
        """
        if self._plan is None:

            def prepare() -> Plan:
                if not self.project_root.is_dir():
                    raise PreflightError(f"{self.project_root}: installation folder does not exist")
                try:
                    return prepare_plan(
                        self.migrations_dir, self.current_version, self.target_version
                    )
                finally:
                    restore_cwd(self._cwd, "(import of the migrations)")

            with routing_installed():
                self._plan = await anyio.to_thread.run_sync(prepare)
        return self._plan

    async def execute(self) -> UpdateResult:
        """Run the plan once; see the class documentation."""
        if self._executed:
            raise UpdateError("this OrchestrationPhase has already run; create a new one")
        plan = await self.plan()  # validation reads only: nothing is written if it fails
        self._executed = True
        if plan.is_empty and not plan.moves:
            await anyio.to_thread.run_sync(self._check_recorded)
            return self._finish(_Run(plan), ok=True)
        # A release without migrations still moves the version record: journaled like any run.
        async with holding_lock_async(self.state_dir):
            journal = Journal(self.state_dir)
            if await anyio.to_thread.run_sync(journal.exists):
                raise RecoveryNeededError(
                    f"an earlier run on {self.project_root} was interrupted"
                    f" ({journal.path} exists); run `dopemux-update recover` first"
                )
            await anyio.to_thread.run_sync(self._check_recorded)
            try:
                return await self._execute(plan, journal)
            finally:
                journal.close()  # a close(2): nothing to flush, never blocks

    async def revert(
        self, *, restart_phase: RestartReceiver | None = None, reason: str | None = None
    ) -> UpdateResult:
        """Undo the run this phase committed (see :func:`~dopemux_update.revert_run`): its
        backward functions in reverse order, journaled and backed up like any run, the
        version record back to where it was. Raises :class:`~dopemux_update.RevertError`
        when this phase committed nothing, or the run can no longer be reverted exactly."""
        if self._committed_run is None:
            raise RevertError("this OrchestrationPhase has not committed a run to revert")
        return await revert_run(
            project_root=self.project_root,
            migrations_dir=self.migrations_dir,
            state_dir=self.state_dir,
            run_id=self._committed_run,
            on_event=self.on_event,
            timeout=self.timeout,
            grace=self.grace,
            restart_phase=restart_phase,
            keep_backups=self.keep_backups,
            reason=reason,
        )

    def _check_recorded(self) -> None:
        """``current_version`` must be the recorded installed version (unless ``force``):
        starting from another one would repeat or skip migrations. Nothing recorded: any."""
        if self.force:
            return
        store = StateStore(self.state_dir, version_file=self.project_root / VERSION_FILE)
        recorded = store.installed_version()
        if recorded is not None and parse_version(recorded) != self.current_version:
            raise VersionMismatchError(str(self.current_version), recorded)

    # -- the run ----------------------------------------------------------------------------

    async def _execute(self, plan: Plan, journal: Journal) -> UpdateResult:
        self._emit(ev.PlanReady(plan))
        logger.info(
            "update.planned",
            version_from=str(plan.current),
            version_to=str(plan.target),
            direction=plan.direction.value,
            migrations=len(plan.steps),
        )
        run = _Run(plan)
        store = StateStore(self.state_dir, version_file=self.project_root / VERSION_FILE)
        if plan.backup_required:
            await self._backup(run)
        with routing_installed():
            try:
                await anyio.to_thread.run_sync(journal.start, self._started_record(run))
                run.journal = journal
                run.guard = await anyio.to_thread.run_sync(self._guard, run)
                await self._run_steps(run)
                if run.abandoned:
                    await self._abandon(run, store)
                    return self._finish(run, ok=False)
                if run.failed_id is None:
                    await self._check_restart_names(run)
                if run.failed_id is None:
                    await self._commit(run, store)
            except (OSError, UpdateError) as exc:  # the journal or state could not be written
                if run.committed:  # past the commit point: never back
                    return self._finish(run, ok=run.recorded)
                self._adopt_journal(run, journal)
                self._note_failure(run, exc)
                with anyio.CancelScope(shield=True):
                    await self._roll_back(run, store)
                return self._finish(run, ok=False)
            except BaseException as exc:  # cancelled, or a bug: undo, then let it propagate
                if run.committed:  # the commit point is durable: only forward, never back
                    self._finish(run, ok=run.recorded)
                    raise
                self._adopt_journal(run, journal)
                if run.abandoned:  # a migration still runs: touch nothing, leave it to recover
                    await self._abandon(run, store)
                    self._finish(run, ok=False)  # kept in ``result``; the cancellation goes on
                    raise
                with anyio.CancelScope(shield=True):
                    cancelled = isinstance(exc, anyio.get_cancelled_exc_class())
                    run.failed_id = run.failed_id or ("(cancelled)" if cancelled else "(error)")
                    run.error = "the update was cancelled" if cancelled else repr(exc)
                    logger.warning(
                        "update.interrupted", error=run.error, completed=len(run.completed)
                    )
                    await self._roll_back(run, store)
                    self._finish(run, ok=False)
                raise
            if run.committed:
                return self._finish(run, ok=run.recorded)
            if run.failed_id is not None:
                with anyio.CancelScope(shield=True):
                    await self._roll_back(run, store)
                return self._finish(run, ok=False)
        return self._finish(run, ok=True)

    async def _check_restart_names(self, run: _Run) -> None:
        """After the forward pass, before the commit: every service the plan asks to restart
        must be one the restarter can restart (a migration may have added it to the compose
        file). An upgrade naming an unknown service fails, and is rolled back; in a
        downgrade, a name the backward pass removed from the compose file is not restarted.
        Asked only of a restart phase that offers ``unknown_services(names)``."""
        check = getattr(self.restart_phase, "unknown_services", None)
        services = run.plan.restart_services
        if not callable(check) or not services:
            return
        try:
            unknown = tuple(await anyio.to_thread.run_sync(check, services))
        except (OSError, ValueError, UpdateError) as exc:
            logger.warning("restart.names_unchecked", error=str(exc))
            return
        if not unknown:
            return
        restarter = getattr(self.restart_phase, "restarter", None)
        where = getattr(restarter, "compose_file", None) or "the restarter's configuration"
        if run.plan.direction is Direction.DOWNGRADE:
            self._not_restarted.update(unknown)
            logger.warning("restart.names_removed", services=list(unknown), compose_file=str(where))
            return
        declared = [
            f"{name} (requires_restart of "
            + ", ".join(
                step.id
                for step in run.plan.steps
                if name in step.migration.declared.requires_restart
            )
            + ")"
            for name in unknown
        ]
        run.failed_id = "(restart names)"
        run.error = (
            f"{where} does not define the service(s) to restart, after the migrations ran:"
            f" {'; '.join(declared)}. Fix the migration's requires_restart (or the compose"
            " file it edits); the update was rolled back"
        )
        logger.error("restart.names_unknown", services=list(unknown), compose_file=str(where))

    @staticmethod
    def _note_failure(run: _Run, exc: OSError | UpdateError) -> None:
        if isinstance(exc, StateTamperedError):  # a migration deleted or changed our state
            run.failed_id, run.tampered = exc.migration_id, str(exc)
            run.tampered_by = exc.migration_id
            run.error = str(exc)
            return
        run.failed_id = run.failed_id or "(update)"
        run.error = f"the update could not continue: {exc}"
        logger.error("update.io_failed", error=run.error, completed=len(run.completed))

    def _guard(self, run: _Run) -> StateGuard:
        backup = None
        if run.backup_id is not None:
            backup = BackupStore(self.state_dir / "backups").path_of(run.backup_id)
        assert run.journal is not None  # noqa: S101 - the journal exists now
        journal = run.journal
        return StateGuard(self.state_dir, journal.path, backup, lambda: journal.size)

    def _after_call(self, run: _Run, migration_id: str) -> None:
        """In the worker thread, after each migration call: put a changed working directory
        back, and stop the run if the migration touched the state folder."""
        restore_cwd(self._cwd, migration_id)
        if run.guard is not None and run.tampered is None:
            run.guard.check(migration_id)

    @staticmethod
    def _adopt_journal(run: _Run, journal: Journal) -> None:
        """Interrupted just as the journal was created: the rollback must still retire it."""
        if run.journal is None and journal.exists():
            run.journal = journal

    def _started_record(self, run: _Run) -> Record:
        plan = run.plan
        return {
            "kind": "run_started",
            "run_id": run.run_id,
            "started_at": run.started_at,
            "version_from": str(plan.current),
            "version_to": str(plan.target),
            "direction": plan.direction.value,
            "backup_id": run.backup_id,
            "steps": [
                {"id": s.id, "checksum": s.migration.checksum, "path": str(s.migration.path)}
                for s in plan.steps
            ],
            "restart_services": list(plan.restart_services),
            "migrations_dir": str(self.migrations_dir),
            "command": self._command or plan.direction.value,
            "reverts": self._reverts,
            "reason": self._reason,
        }

    def _emit(self, event: ev.Event) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception as exc:  # noqa: BLE001 - a display bug must not break an update
            logger.warning("event.handler_failed", event_type=type(event).__name__, error=repr(exc))

    async def _backup(self, run: _Run) -> None:
        scope = Scope.for_installation(
            self.project_root,
            state_dir=self.state_dir,
            migrations_dir=self.migrations_dir,
            include=self.backup_include,
            exclude=self.backup_exclude,
        )
        self._emit(ev.BackupStarted(str(scope.root)))
        store = BackupStore(self.state_dir / "backups")
        info = await self._with_progress(
            lambda report: store.create(
                scope,
                version_from=str(run.plan.current),
                version_to=str(run.plan.target),
                on_progress=report,
                full=self.full_backup,
            ),
            ev.BackupProgress,
        )
        run.backup_id = info.id
        self._emit(ev.BackupCreated(info.id, info.files, info.bytes))

    async def _with_progress(
        self,
        work: Callable[[ProgressCallback | None], T],
        event: Callable[[int, int], ev.Event],
    ) -> T:
        """``work(report)`` in a worker thread; what it reports goes to observers as
        ``event(done, total)``, from the event loop, at most every ``_PROGRESS_SECONDS``.

        The thread only stores its latest figures (as ``CallSequence`` queues its events): it
        never waits for the loop. Like ``anyio.to_thread.run_sync``, a cancellation waits for
        the thread to end.
        """
        if self.on_event is None:
            return await anyio.to_thread.run_sync(work, None)
        latest = _Latest()
        results: list[T] = []
        errors: list[Exception] = []
        done = anyio.Event()

        async def in_thread() -> None:
            try:
                results.append(await anyio.to_thread.run_sync(work, latest))
            except Exception as exc:  # noqa: BLE001 - re-raised below, outside the task group
                errors.append(exc)
            finally:
                done.set()

        async with anyio.create_task_group() as tg:
            tg.start_soon(in_thread)
            while not done.is_set():
                with anyio.move_on_after(_PROGRESS_SECONDS):
                    await done.wait()
                value = latest.take()
                if value is not None:
                    self._emit(event(*value))
        if errors:
            raise errors[0]
        return results[0]

    async def _run_steps(self, run: _Run) -> None:
        steps = run.plan.steps
        total = len(steps)
        index_of = {step.id: index for index, step in enumerate(steps)}
        log = logger.bind()  # bound once per run, not once per event: cheap per migration

        def started(call: Call) -> None:
            # Durable before the migration starts; carries the previous one's outcome too.
            run.journal_now(
                {"kind": "step_begun", "index": index_of[call.id], "id": call.id},
                sync=run.sync_steps,
            )
            log.info("migration.started", migration_id=call.id)

        def finished(call: Call, outcome: CallOutcome) -> None:
            run.pending.append(
                {"kind": "step_done", "index": index_of[call.id], "id": call.id, "ok": outcome.ok}
            )
            if outcome.ok:
                log.info("migration.applied", migration_id=call.id, seconds=outcome.seconds)
            else:
                log.error(
                    "migration.failed",
                    migration_id=call.id,
                    error=outcome.error,
                    traceback=outcome.traceback,
                )
            self._after_call(run, call.id)  # raises if the migration touched our state

        def slow(call: Call, elapsed: float) -> None:
            estimate = steps[index_of[call.id]].migration.declared.estimated_duration_seconds
            log.warning("migration.slow", migration_id=call.id, elapsed=elapsed, estimate=estimate)

        def deliver(event: RunnerEvent) -> None:
            step = steps[event.position]
            if isinstance(event, CallStarted):
                info = step.migration.declared
                self._emit(
                    ev.MigrationStarted(
                        step.id,
                        step.direction,
                        event.position + 1,
                        total,
                        info.estimated_duration_seconds,
                    )
                )
            elif isinstance(event, CallOutput):
                self._emit(ev.MigrationOutput(step.id, event.line, event.stream))
            else:
                outcome = event.outcome
                self._emit(
                    ev.MigrationFinished(
                        step.id, step.direction, outcome.ok, outcome.seconds, outcome.error
                    )
                )

        sequence = CallSequence(
            [Call(step.id, step.function) for step in steps],
            self.project_root,
            stop_on_failure=True,
            on_started=started,
            on_finished=finished,
            on_output=_log_output,
            timeout=self.timeout,
            grace=self.grace,
            estimates=[s.migration.declared.estimated_duration_seconds for s in steps],
            on_slow=slow,
        )
        try:
            await sequence.run(deliver)
        finally:
            # Also when interrupted: every call that ended is accounted for before a rollback.
            for step, outcome in zip(steps, sequence.outcomes, strict=False):
                run.durations.append((step.id, outcome.seconds))
                run.records.append(
                    MigrationRecord(
                        id=step.id,
                        direction=step.direction.value,
                        checksum=step.migration.checksum,
                        seconds=round(outcome.seconds, 6),
                        outcome="applied" if outcome.ok else "failed",
                    )
                )
                if outcome.ok:
                    run.completed.append(step)
                else:
                    run.failed_id, run.error = step.id, outcome.error
            if sequence.abandoned and sequence.abandoned_index is not None:
                stuck = steps[sequence.abandoned_index]
                run.abandoned = True
                run.failed_id = stuck.id
                cause = (
                    f"timed out after {self.timeout:g}s"
                    if sequence.timed_out == sequence.abandoned_index
                    else "interrupted"
                )
                run.error = (
                    f"{cause} and still running {self.grace:g}s later;"
                    " the migration's thread could not be stopped"
                )
            sequence.flush(deliver)

    def _commit_record(self, run: _Run) -> Record:
        """The commit point; it carries what recovery needs to complete the commit even if
        the journal's first record were unreadable."""
        plan = run.plan
        return {
            "kind": "committed",
            "version_from": str(plan.current),
            "version_to": str(plan.target),
            "direction": plan.direction.value,
            "started_at": run.started_at,
            "restart_services": list(plan.restart_services),
        }

    async def _commit(self, run: _Run, store: StateStore) -> None:
        """Write the commit point, then record the new version; from the commit point on the
        run only goes forward: a state write that fails is retried, and if it still fails the
        run is left for ``recover`` to complete, never rolled back.

        Everything happens in one worker thread, whose outcome is kept in ``run`` (a
        cancellation waits for the thread, then finds ``run.committed`` set)."""
        record = self._record(run, "reverted" if self._reverts else "applied")
        assert run.journal is not None  # noqa: S101 - the journal exists by now
        journal = run.journal

        def commit() -> None:
            try:
                run.journal_now(self._commit_record(run))
            except (OSError, UpdateError) as exc:
                contents = journal.inspect()
                if contents is None or "committed" not in contents.kinds():
                    run.failed_id = "(commit)"
                    run.error = f"could not write the commit point to the journal: {exc}"
                    logger.error("update.commit_failed", error=run.error)
                    return  # not committed: the run rolls back
                logger.warning("journal.commit_written_despite_error", error=str(exc))
            run.committed = True  # the commit point: from here on, only forward
            try:
                store.record_retrying(installed_version=str(run.plan.target), run=record)
            except (OSError, UpdateError) as exc:
                run.needs_recovery = True
                run.error = (
                    "committed: every migration succeeded and the commit point is in the"
                    f" journal, but the version record could not be written ({exc});"
                    " free space and run `dopemux-update recover` to complete the commit"
                )
                logger.error("update.commit_unrecorded", error=run.error)
                run.journal_if_possible({"kind": "needs_recovery", "reason": run.error})
                return
            run.recorded = True
            crash_point("commit.state_written")
            try:
                journal.retire()
            except OSError as exc:  # recorded: a later `recover` only retires it
                logger.warning("journal.retire_failed", error=str(exc))

        await anyio.to_thread.run_sync(commit)
        if not run.recorded:
            return
        logger.info("update.committed", installed_version=str(run.plan.target))
        if self.keep_backups is not None:
            await anyio.to_thread.run_sync(self._prune, store)

    def _prune(self, store: StateStore) -> None:
        """Keep the newest backups; never one that a run needing recovery depends on."""
        assert self.keep_backups is not None  # noqa: S101 - checked by the caller
        try:
            protect = {
                run.backup_id
                for run in store.read().history
                if run.outcome == "needs_recovery" and run.backup_id
            }
            BackupStore(self.state_dir / "backups").prune(self.keep_backups, protect=protect)
        except (OSError, UpdateError) as exc:  # the update itself is committed: only warn
            logger.warning("backup.prune_failed", error=str(exc))

    async def _abandon(self, run: _Run, store: StateStore) -> None:
        """A migration thread is still running: touch nothing, leave the run for ``recover``."""
        run.needs_recovery = True
        logger.error("update.abandoned", migration_id=run.failed_id, error=run.error)

        def leave() -> None:
            run.journal_now({"kind": "needs_recovery", "reason": run.error})
            store.record(installed_version=None, run=self._record(run, "needs_recovery"))

        with anyio.CancelScope(shield=True):
            await anyio.to_thread.run_sync(leave)

    async def _roll_back(self, run: _Run, store: StateStore) -> None:
        steps = list(reversed(run.completed))
        self._emit(ev.RollbackStarted(run.failed_id or "", len(steps)))
        logger.warning("rollback.started", failed=run.failed_id, steps=len(steps))
        rebuilt = run.tampered is not None
        if rebuilt:
            await anyio.to_thread.run_sync(self._rebuild_journal, run)
        # A journal that cannot be written (a full disk) does not stop the rollback: the
        # restore does not depend on it. The run then ends needing recovery.
        await anyio.to_thread.run_sync(
            lambda: run.journal_if_possible({"kind": "rollback_started", "failed": run.failed_id})
        )

        def finished(call: Call, outcome: CallOutcome) -> None:
            run.journal_if_possible(
                {"kind": "rollback_step", "id": call.id, "ok": outcome.ok}, sync=run.sync_steps
            )
            restore_cwd(self._cwd, call.id)
            if run.guard is not None and run.tampered is None:
                found = run.guard.problems()
                if found:  # an undo deleted or changed the state folder: noted, not raised
                    logger.error("migration.touched_state", migration_id=call.id, problems=found)
                    run.tampered_by = call.id
                    run.tampered = (
                        f"{call.id} (undoing it) touched the update's own state folder: "
                        + "; ".join(found)
                    )
            crash_point("rollback.step")
            logger.info(
                "rollback.step",
                migration_id=call.id,
                ok=outcome.ok,
                error=outcome.error,
                traceback=outcome.traceback,
            )

        def deliver(event: RunnerEvent) -> None:
            step = steps[event.position]
            if isinstance(event, CallOutput):
                self._emit(ev.MigrationOutput(step.id, event.line, event.stream))
            elif isinstance(event, CallFinished):
                outcome = event.outcome
                self._emit(ev.RollbackStep(step.id, outcome.ok, outcome.seconds, outcome.error))

        sequence = CallSequence(
            [Call(step.id, step.undo) for step in steps],
            self.project_root,
            stop_on_failure=False,
            on_finished=finished,
            on_output=_log_output,
            timeout=self.timeout,
            grace=self.grace,
        )
        try:
            await sequence.run(deliver)
        except (OSError, UpdateError) as exc:  # the journal could not be written
            logger.error("rollback.journal_failed", error=str(exc))
            run.needs_recovery = True
        if sequence.abandoned:
            run.needs_recovery = True
            run.abandoned = True
        for step, outcome in zip(steps, sequence.outcomes, strict=False):
            if outcome.ok:
                run.rolled_back.append(step.id)
            else:
                run.needs_recovery = True
        if run.tampered is not None and not rebuilt:
            await anyio.to_thread.run_sync(self._rebuild_journal, run)
        if run.abandoned:
            logger.error("rollback.abandoned", reason="an undo is still running")
        elif run.backup_lost:
            logger.error("rollback.backup_lost", backup_id=run.backup_id)
        elif run.backup_id is not None:
            await self._restore(run)
        elif run.completed:
            logger.warning("rollback.no_backup", reason="no migration on the plan asked for one")
        await self._close_failed_run(run, store)
        logger.warning(
            "rollback.finished",
            rolled_back=list(run.rolled_back),
            needs_recovery=run.needs_recovery,
        )

    def _rebuild_journal(self, run: _Run) -> None:
        """A migration deleted or changed the state folder: say so in a new journal (the
        folder re-created if need be), so that ``status`` and ``recover`` know of the run."""
        assert run.guard is not None  # noqa: S101 - set before any migration ran
        run.needs_recovery = True
        run.backup_lost = run.backup_id is not None and not run.guard.backup_usable()
        if run.error != run.tampered:
            run.error = f"{run.error}; then {run.tampered}" if run.error else run.tampered
        if run.backup_lost:
            run.error = (
                f"{run.error}. Its backup {run.backup_id} is gone or changed, so the"
                " installation cannot be restored to its state before the update; the"
                " backward functions of the migrations that ran were run, but the result"
                " cannot be verified"
            )
        if run.journal is not None:
            run.journal.close()
        try:
            self.state_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            journal = Journal(self.state_dir)
            journal.start(self._started_record(run))
        except OSError as exc:
            logger.error("journal.rebuild_failed", error=str(exc))
            run.journal = None
            return
        run.journal = journal
        run.journal_if_possible(
            {
                "kind": "state_lost",
                "migration": run.tampered_by,
                "reason": run.tampered,
                "backup_lost": run.backup_lost,
                "ran": [step.id for step in run.completed],
                "undone": list(run.rolled_back),
            }
        )

    async def _close_failed_run(self, run: _Run, store: StateStore) -> None:
        verdict = "needs_recovery" if run.needs_recovery else "rolled_back"

        def close() -> None:
            if run.needs_recovery:
                run.journal_if_possible({"kind": "needs_recovery", "reason": run.error})
            store.record(installed_version=None, run=self._record(run, verdict))
            if run.journal is not None and not run.needs_recovery:
                run.journal.retire()  # the run is over and its outcome recorded
            if run.journal is not None:
                run.journal.close()  # also a journal rebuilt after a migration removed ours

        try:
            await anyio.to_thread.run_sync(close)
        except (OSError, UpdateError) as exc:
            run.needs_recovery = True
            logger.error("state.write_failed", error=str(exc))

    async def _restore(self, run: _Run) -> None:
        backup_id = run.backup_id
        assert backup_id is not None  # noqa: S101 - checked by the caller
        store = BackupStore(self.state_dir / "backups")
        self._emit(ev.RestoreStarted(backup_id))
        try:
            await self._with_progress(
                lambda report: store.restore(backup_id, self.project_root, on_progress=report),
                lambda done, total: ev.RestoreProgress(backup_id, done, total),
            )
        except (OSError, UpdateError) as exc:
            run.needs_recovery = True
            run.verified_identical = False
            self._emit(ev.RestoreFinished(backup_id, False, str(exc), verified=False))
            logger.error("restore.failed", backup_id=backup_id, error=str(exc))
            return
        run.restored = True
        run.verified_identical = await anyio.to_thread.run_sync(
            self._check_identical, store, backup_id
        )
        self._emit(ev.RestoreFinished(backup_id, True, None, verified=run.verified_identical))

    def _check_identical(self, store: BackupStore, backup_id: str) -> bool:
        """After a restore: is the tree identical to the backup? (see ``_identical``)."""
        # Only a failed run gets here: a run that succeeds does not load the comparison.
        from .._backup._identical import differences  # noqa: PLC0415

        try:
            found = differences(store, backup_id, self.project_root)
        except (OSError, UpdateError) as exc:
            logger.error("restore.check_failed", backup_id=backup_id, error=str(exc))
            return False
        if found:
            logger.error(
                "restore.not_identical", backup_id=backup_id, count=len(found), paths=found[:20]
            )
            return False
        logger.info("restore.identical", backup_id=backup_id)
        return True

    def _record(self, run: _Run, outcome: str) -> RunRecord:
        return RunRecord(
            run_id=run.run_id,
            started_at=run.started_at,
            finished_at=utcnow(),
            version_from=str(run.plan.current),
            version_to=str(run.plan.target),
            direction=run.plan.direction.value,
            outcome=outcome,
            backup_id=run.backup_id,
            migrations=tuple(run.records),
            error=run.error,
            command=self._command or run.plan.direction.value,
            reverts=self._reverts,
            reason=self._reason,
        )

    def _finish(self, run: _Run, *, ok: bool) -> UpdateResult:
        plan = run.plan
        if run.committed:
            self._committed_run = run.run_id if run.recorded else None
        wanted = tuple(s for s in plan.restart_services if s not in self._not_restarted)
        services = wanted if ok else ()
        if ok and self.restart_phase is not None and services:
            self.restart_phase.hand_over(services)
        result = UpdateResult(
            ok=ok,
            version_from=str(plan.current),
            version_to=str(plan.target),
            direction=plan.direction,
            applied=tuple(step.id for step in run.completed),
            rolled_back=tuple(run.rolled_back),
            restart_services=services,
            needs_recovery=run.needs_recovery,
            failed_migration=run.failed_id,
            error=run.error,
            backup_id=run.backup_id,
            restored=run.restored,
            installed_version=str(plan.target if ok or run.committed else plan.current),
            durations=tuple(run.durations),
            abandoned=run.abandoned,
            verified_identical=run.verified_identical,
            committed=run.committed,
            backup_lost=run.backup_lost,
        )
        self.result = result
        self._emit(ev.UpdateFinished(result))
        logger.info(
            "update.finished",
            ok=ok,
            applied=len(result.applied),
            rolled_back=len(result.rolled_back),
            needs_recovery=result.needs_recovery,
        )
        return result


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
    check_installed(record, installed)
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
    check_way_back(record, plan)
    logger.info("revert.started", reverts=record.run_id, reason=reason)
    return await phase.execute()
