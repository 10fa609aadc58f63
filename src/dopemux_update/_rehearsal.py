"""Rehearsals: run a plan on a sandbox copy, forward, backward and forward again, and check
that backward really brings the tree back.

The installation is copied twice into a private folder: an *original* that nothing touches,
and a *sandbox* the migrations run on. The rehearsal has three passes over the sandbox:

1. **apply**: each step of the plan in order (``migrate_forward`` for an upgrade);
2. **revert**: the undo of each step in reverse order; the sandbox must then hold exactly what
   it held before (files, modes, symlinks; SQLite by tables, columns and rows);
3. **apply again**: the plan once more, which must succeed.

When the sandbox does not come back identical, the migrations are stepped through one at a
time on a fresh copy of the original (apply, revert, compare, apply again) to find the one
responsible and what it leaves behind. The live installation is only ever read.
"""

from __future__ import annotations

import dataclasses
import sqlite3
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.to_thread
from packaging.version import Version

from ._backup import MANIFEST, MANIFEST_SUM
from ._capture import KeptLines, routing_installed
from ._exceptions import PreflightError, UpdateError
from ._journal import JOURNAL
from ._log import get_logger
from ._models import Direction, MigrationFunction, Step
from ._orchestration import prepare_plan
from ._runner import DEFAULT_GRACE, CallOutcome, call_function
from ._sandbox import copy_tree, remove_tree, temporary_folder
from ._snapshot import TreeDiff, TreeSnapshot, diff_snapshots, take_snapshot
from ._state import DEFAULT_STATE_DIR
from ._state_guard import StateGuard
from ._tree import Scope
from ._versions import parse_version

__all__ = ["RehearsalCall", "RehearsalReport", "rehearse", "rehearse_steps"]

logger = get_logger()

APPLY, REVERT, COMPARE, APPLY_AGAIN = "apply", "revert", "compare", "apply again"


@dataclass(frozen=True, slots=True)
class RehearsalCall:
    """One migration function called during a rehearsal, and how it went."""

    stage: str  # "apply", "revert" or "apply again"
    id: str
    function: str  # "migrate_forward" or "migrate_backward"
    ok: bool
    seconds: float
    error: str | None = None
    traceback: str | None = None
    output: tuple[tuple[str, str], ...] = ()  # (stream, line)


@dataclass(frozen=True, slots=True)
class RehearsalReport:
    """What a rehearsal found.

    ``ok`` when all three passes succeeded and the revert left the sandbox identical.
    Otherwise ``stage`` says which check failed (``"apply"``, ``"revert"``, ``"compare"`` or
    ``"apply again"``), ``culprit`` names the migration responsible (None when the difference
    appears only with the migrations combined), ``error`` says what happened, and
    ``differences`` lists what the revert left different from the original.
    """

    ok: bool
    migrations: tuple[str, ...]
    direction: Direction = Direction.UPGRADE
    version_from: str | None = None
    version_to: str | None = None
    stage: str | None = None
    culprit: str | None = None
    error: str | None = None
    traceback: str | None = None
    differences: TreeDiff = field(default_factory=TreeDiff)
    isolated: bool = False  # the culprit was confirmed on its own, with a fresh copy
    abandoned: bool = False  # a migration call did not end; its thread was left running
    calls: tuple[RehearsalCall, ...] = ()
    sandbox: Path | None = None  # kept for inspection, when asked to
    seconds: float = 0.0

    def __bool__(self) -> bool:
        """A report is its ``ok``."""
        return self.ok

    def describe(self) -> list[str]:
        """The outcome as lines for people."""
        count = len(self.migrations)
        noun = f"{count} migration{'s' if count != 1 else ''}"
        if self.ok:
            return [
                f"Rehearsal clean: {noun} applied, reverted to an identical tree,"
                f" and applied again ({self.seconds:.2f}s)."
            ]
        lines = [f"Rehearsal FAILED at the {self.stage} stage: {self.error}"]
        if self.culprit is not None:
            lines.append(f"Responsible: {self.culprit}")
        if not self.differences.is_empty:
            lines.append("What the revert left different from the original:")
            lines.extend(f"  {line}" for line in self.differences.describe())
        failed = next((c for c in reversed(self.calls) if not c.ok), None)
        if failed is not None and failed.output:
            lines.append(f"Output of {failed.id} ({failed.function}):")
            lines.extend(f"  | {line}" for _, line in failed.output)
        if failed is not None and failed.traceback:
            lines.append(f"Traceback of {failed.id} ({failed.function}):")
            lines.extend(f"  {line}" for line in failed.traceback.rstrip().splitlines())
        if self.sandbox is not None:
            lines.append(f"Sandbox kept at {self.sandbox}")
        return lines


class RehearsalStopped(UpdateError):  # noqa: N818 - a request, not a failure
    """The rehearsal was asked to stop (it is being cancelled); its sandbox is removed."""


class _AbandonedError(Exception):
    """A migration call did not end: the rehearsal cannot go on in this sandbox."""

    def __init__(self, stage: str, call: RehearsalCall) -> None:
        super().__init__(call.error)
        self.stage = stage
        self.call = call


_ABANDONED = "its thread did not end and was abandoned"
_POLL_SECONDS = 0.05


@dataclass(frozen=True, slots=True)
class _Finding:
    ok: bool
    abandoned: bool = False
    stage: str | None = None
    culprit: str | None = None
    error: str | None = None
    traceback: str | None = None
    differences: TreeDiff = field(default_factory=TreeDiff)
    isolated: bool = False


CallObserver = Callable[[RehearsalCall], None]


class _Rehearsal:
    def __init__(
        self,
        steps: Sequence[Step],
        scope: Scope,
        folder: Path,
        *,
        stop: threading.Event | None,
        on_call: CallObserver | None,
        timeout: float | None = None,
        grace: float = DEFAULT_GRACE,
        state_dir: str = DEFAULT_STATE_DIR.as_posix(),
    ) -> None:
        self.steps = tuple(steps)
        self.state_dir = state_dir
        self._guard: StateGuard | None = None
        self.scope = scope
        self.original = folder / "original"
        self.sandbox = folder / "sandbox"
        self.stop = stop
        self.on_call = on_call
        self.timeout = timeout
        self.grace = grace
        self.calls: list[RehearsalCall] = []

    def _check_stop(self) -> None:
        if self.stop is not None and self.stop.is_set():
            raise RehearsalStopped

    def _call(self, stage: str, step: Step) -> RehearsalCall:
        self._check_stop()
        undo = stage == REVERT
        function = step.undo if undo else step.function
        forward = (step.direction is Direction.UPGRADE) != undo
        output = KeptLines()  # the run log gets every line; memory, the last ones

        def line(stream: str, text: str) -> None:
            output.add(stream, text)
            logger.info("verify.output", id=step.id, stage=stage, stream=stream, line=text)

        outcome, stopping = self._call_with_limits(function, line)
        touched = self._guard.problems() if self._guard is not None else []
        if touched and outcome.ok:
            # A real run would stop here: its journal and backup live in that folder.
            outcome = CallOutcome(
                False,
                outcome.seconds,
                "deleted or changed the update's own state folder"
                f" ({'; '.join(touched)}); a real run would lose its journal and backup",
            )
            self._plant_state()  # the next calls are checked against a fresh one
        call = RehearsalCall(
            stage=stage,
            id=step.id,
            function="migrate_forward" if forward else "migrate_backward",
            ok=outcome.ok,
            seconds=outcome.seconds,
            error=outcome.error,
            traceback=outcome.traceback,
            output=output.kept(),
        )
        self.calls.append(call)
        if call.ok:
            logger.debug("verify.call", id=step.id, stage=stage, seconds=call.seconds)
        else:
            logger.warning(
                "verify.call_failed",
                id=step.id,
                stage=stage,
                function=call.function,
                error=call.error,
                traceback=call.traceback,
            )
        if self.on_call is not None:
            self.on_call(call)
        if stopping:
            raise RehearsalStopped
        if outcome.error is not None and outcome.error.endswith(_ABANDONED):
            raise _AbandonedError(stage, call)
        return call

    def _call_with_limits(
        self, function: MigrationFunction, line: Callable[[str, str], None]
    ) -> tuple[CallOutcome, bool]:
        """``function(sandbox)`` in a thread of its own, so that a timeout or a stop request
        is noticed while it runs. Past the timeout, or once asked to stop, it gets ``grace``
        seconds more to end; then it is abandoned (a daemon thread: it cannot keep the
        process alive). Returns the outcome and whether a stop was requested meanwhile."""
        results: list[CallOutcome] = []

        def target() -> None:
            begun = time.perf_counter()
            try:
                results.append(call_function(function, self.sandbox, line))
            except BaseException as exc:  # noqa: BLE001 - reported as the call's failure
                error = f"could not be run: {type(exc).__name__}: {exc}"
                results.append(CallOutcome(False, time.perf_counter() - begun, error))

        thread = threading.Thread(target=target, name="dopemux-update verify", daemon=True)
        started = time.monotonic()
        thread.start()
        timed_out = stopping = False
        give_up_at: float | None = None
        while True:
            thread.join(_POLL_SECONDS)
            if not thread.is_alive():
                break
            now = time.monotonic()
            if self.timeout is not None and not timed_out and now - started > self.timeout:
                timed_out = True
                give_up_at = give_up_at or now + self.grace
            if self.stop is not None and self.stop.is_set() and not stopping:
                stopping = True
                give_up_at = give_up_at or now + self.grace
            if give_up_at is not None and now > give_up_at:
                seconds = now - started
                reason = f"timed out after {self.timeout:g}s" if timed_out else "was stopped"
                return CallOutcome(False, seconds, f"{reason}; {_ABANDONED}"), stopping
        outcome = results[0]
        if timed_out:
            outcome = CallOutcome(
                False, outcome.seconds, f"timed out after {self.timeout:g}s", outcome.traceback
            )
        return outcome, stopping

    def _pass(self, stage: str, steps: Sequence[Step]) -> RehearsalCall | None:
        """Run one pass; the failed call, if one failed."""
        for step in steps:
            call = self._call(stage, step)
            if not call.ok:
                return call
        return None

    def _fresh_sandbox(self) -> None:
        self._check_stop()
        remove_tree(self.sandbox)
        copy_tree(Scope(self.original), self.sandbox)
        self._plant_state()

    def _plant_state(self) -> None:
        """A stand-in for the installation's state folder, inside the sandbox, with a journal
        and a backup: a migration that deletes or changes them fails the rehearsal."""
        folder = self.sandbox / self.state_dir
        if not folder.resolve().is_relative_to(self.sandbox.resolve()):
            return  # the state folder is outside the installation: nothing to plant
        backup = folder / "backups" / "rehearsal"
        backup.mkdir(parents=True, exist_ok=True)
        for name in (MANIFEST, MANIFEST_SUM):
            (backup / name).write_text("rehearsal stand-in\n")
        (folder / JOURNAL).write_text("rehearsal stand-in\n")
        self._guard = StateGuard.capture(folder, folder / JOURNAL, backup)

    def _snapshot(self) -> TreeSnapshot:
        """What the sandbox holds, within the same include/exclude rules as the copy."""
        self._check_stop()
        return take_snapshot(dataclasses.replace(self.scope, root=self.sandbox))

    def run(self) -> _Finding:
        try:
            return self._run()
        except _AbandonedError as exc:
            return dataclasses.replace(self._failure(exc.stage, exc.call), abandoned=True)

    def _run(self) -> _Finding:
        copy_tree(self.scope, self.original)
        self._fresh_sandbox()
        base = self._snapshot()
        failed = self._pass(APPLY, self.steps)
        if failed is not None:
            return self._failure(APPLY, failed)
        failed = self._pass(REVERT, tuple(reversed(self.steps)))
        if failed is not None:
            return self._failure(REVERT, failed)
        difference = diff_snapshots(base, self._snapshot())
        if not difference.is_empty:
            return self._isolate(difference)
        failed = self._pass(APPLY_AGAIN, self.steps)
        if failed is not None:
            return self._failure(APPLY_AGAIN, failed)
        return _Finding(ok=True)

    @staticmethod
    def _failure(stage: str, call: RehearsalCall, differences: TreeDiff | None = None) -> _Finding:
        return _Finding(
            ok=False,
            stage=stage,
            culprit=call.id,
            error=f"{call.id}: {call.function} {call.error}",
            traceback=call.traceback,
            differences=differences or TreeDiff(),
        )

    def _isolate(self, whole: TreeDiff) -> _Finding:
        """Step through the migrations one by one on a fresh copy to find the culprit."""
        logger.info("verify.isolating", migrations=len(self.steps))
        self._fresh_sandbox()
        for step in self.steps:
            before = self._snapshot()
            for stage in (APPLY, REVERT):
                call = self._call(stage, step)
                if not call.ok:
                    return self._failure(stage, call, differences=whole)
            difference = diff_snapshots(before, self._snapshot())
            if not difference.is_empty:
                return _Finding(
                    ok=False,
                    stage=COMPARE,
                    culprit=step.id,
                    error=(
                        f"{step.id}: its revert does not bring the tree back"
                        f" ({len(difference.describe())} difference(s))"
                    ),
                    differences=difference,
                    isolated=True,
                )
            call = self._call(APPLY_AGAIN, step)
            if not call.ok:
                return self._failure(APPLY_AGAIN, call, differences=whole)
        return _Finding(
            ok=False,
            stage=COMPARE,
            error=(
                "reverting the whole plan does not bring the tree back, although each migration"
                " reverts cleanly on its own: the migrations interfere with each other"
            ),
            differences=whole,
        )


def rehearse_steps(
    steps: Sequence[Step],
    scope: Scope,
    *,
    sandbox_dir: Path | None = None,
    keep_sandbox: bool = False,
    stop: threading.Event | None = None,
    on_call: CallObserver | None = None,
    timeout: float | None = None,
    grace: float = DEFAULT_GRACE,
    state_dir: str = DEFAULT_STATE_DIR.as_posix(),
) -> RehearsalReport:
    """Rehearse ``steps`` on a copy of what ``scope`` covers, in this thread.

    ``state_dir`` is where the installation keeps the update's state, relative to its root:
    a stand-in is planted there in the sandbox, and a migration that deletes or changes it
    fails the rehearsal (a real run would lose its journal and backup).

    Each migration call runs in a thread of its own: one that runs past ``timeout`` seconds
    fails the rehearsal, and after ``grace`` more seconds (also after a stop request) it is
    abandoned and the rehearsal ends.

    The copy lives in a new folder under ``sandbox_dir`` (default: the system's temporary
    folder), removed afterwards unless ``keep_sandbox``. What the migrations print is
    captured (see ``RehearsalReport.calls``). Raises :class:`RehearsalStopped` between two
    calls once ``stop`` is set.
    """
    started = time.perf_counter()
    ids = tuple(step.id for step in steps)
    direction = steps[0].direction if steps else Direction.UPGRADE
    if not steps:
        return RehearsalReport(ok=True, migrations=ids, direction=direction)
    logger.info("verify.started", migrations=len(steps), root=str(scope.root))
    where = (sandbox_dir or Path(tempfile.gettempdir())).resolve()
    if where.is_relative_to(scope.root.resolve()):
        raise PreflightError(
            f"the sandbox folder {where} is inside the installation {scope.root}:"
            " the copy would copy itself; choose a folder outside it (--sandbox-dir)"
        )
    with routing_installed(), temporary_folder(sandbox_dir, keep=keep_sandbox) as folder:
        rehearsal = _Rehearsal(
            steps,
            scope,
            folder,
            stop=stop,
            on_call=on_call,
            timeout=timeout,
            grace=grace,
            state_dir=state_dir,
        )
        try:
            found = rehearsal.run()
        except (OSError, sqlite3.Error) as exc:
            # Copying or reading the sandbox failed (a migration's own errors are captured).
            raise UpdateError(f"the rehearsal could not copy or read its sandbox: {exc}") from exc
    report = RehearsalReport(
        ok=found.ok,
        migrations=ids,
        direction=direction,
        stage=found.stage,
        culprit=found.culprit,
        error=found.error,
        traceback=found.traceback,
        differences=found.differences,
        isolated=found.isolated,
        abandoned=found.abandoned,
        calls=tuple(rehearsal.calls),
        sandbox=folder if keep_sandbox else None,
        seconds=time.perf_counter() - started,
    )
    logger.info("verify.finished", ok=report.ok, stage=report.stage, culprit=report.culprit)
    return report


def _relative_state(root: Path, state: Path) -> str:
    """The state folder relative to the root (the default one when it lies outside)."""
    try:
        return state.absolute().relative_to(root.absolute()).as_posix()
    except ValueError:
        return DEFAULT_STATE_DIR.as_posix()


async def rehearse(
    *,
    project_root: Path,
    migrations_dir: Path,
    current_version: Version | str,
    target_version: Version | str | None = None,
    state_dir: Path | None = None,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    sandbox_dir: Path | None = None,
    keep_sandbox: bool = False,
    on_call: CallObserver | None = None,
    migration_timeout: float | None = None,
    grace: float = DEFAULT_GRACE,
) -> RehearsalReport:
    """Rehearse the plan from ``current_version`` to ``target_version`` (default: the newest
    reachable) on a sandbox copy of ``project_root``; never changes the installation.

    The copy covers what a backup would (the root minus its state folder, ``.git`` and the
    migrations, narrowed by ``include``/``exclude``). A problem with the migrations raises a
    :class:`~dopemux_update.PreflightError` before anything is copied. A migration call that
    runs past ``migration_timeout`` seconds fails the rehearsal. Cancelling stops it: the
    call running then gets ``grace`` seconds to end before it is abandoned (a call that ends
    just as the cancellation arrives may be followed by one more, on the sandbox). The
    sandbox is removed either way.
    """
    root = Path(project_root)
    state = Path(state_dir) if state_dir is not None else root / DEFAULT_STATE_DIR
    current = parse_version(current_version, where="the current version")
    target = None if target_version is None else parse_version(target_version, where="--to")

    def prepare() -> tuple[Sequence[Step], Scope, str, str]:
        if not root.is_dir():
            raise PreflightError(f"{root}: installation folder does not exist")
        plan = prepare_plan(Path(migrations_dir), current, target)
        scope = Scope.for_installation(
            root,
            state_dir=state,
            migrations_dir=Path(migrations_dir),
            include=include,
            exclude=exclude,
        )
        return plan.steps, scope, str(plan.current), str(plan.target)

    with routing_installed():
        steps, scope, version_from, version_to = await anyio.to_thread.run_sync(prepare)
    state_name = _relative_state(root, state)
    stop = threading.Event()

    def work() -> RehearsalReport:
        return rehearse_steps(
            steps,
            scope,
            sandbox_dir=sandbox_dir,
            keep_sandbox=keep_sandbox,
            stop=stop,
            on_call=on_call,
            timeout=migration_timeout,
            grace=grace,
            state_dir=state_name,
        )

    reports: list[RehearsalReport] = []
    errors: list[Exception] = []
    done = anyio.Event()

    async def in_thread() -> None:
        try:
            # Shielded: the thread is never left behind by a cancellation; the stop flag
            # below ends it (at its next call, or after the grace period) and it removes its
            # sandbox before this returns.
            with anyio.CancelScope(shield=True):
                reports.append(await anyio.to_thread.run_sync(work))
        except Exception as exc:  # noqa: BLE001 - re-raised below, outside the task group
            errors.append(exc)
        finally:
            done.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(in_thread)
        try:
            await done.wait()
        except anyio.get_cancelled_exc_class():  # an anyio scope or a native task.cancel()
            stop.set()
            with anyio.CancelScope(shield=True):
                await done.wait()
            raise
    if errors:
        raise errors[0]
    return dataclasses.replace(reports[0], version_from=version_from, version_to=version_to)
