"""Rehearsals: run a plan on a sandbox copy, forward, backward and forward again, and check
that backward really brings the tree back.

The installation is copied once, into a private folder: the *sandbox* the migrations run
on. The copy reads each file back as it writes it, hashing it (and keeping a small text
file's text, for diffs): that is the snapshot of what the sandbox held before the
migrations, taken in the same pass. A SQLite database, whose reading by content is dear
(every row), is instead kept aside as copied (one file copy, beside the sandbox) and read
only if a migration changes it (``_sandbox.DeferredDatabases``). The rehearsal has three
passes over the sandbox:

1. **apply**: each step of the plan in order (``migrate_forward`` for an upgrade);
2. **revert**: the undo of each step in reverse order; the sandbox must then hold exactly what
   it held before (content, modes, owners, links, symlinks; SQLite by content and settings,
   virtual tables by what they show: see ``_snapshot.item_difference``), apart from the
   tables the author names to leave out (``ignore_tables``);
3. **apply again**: the plan once more, which must succeed.

Each later snapshot of the sandbox reads again only what changed since the one before
(``_sandbox.snapshot_sandbox``: by ``lstat`` and the kernel's change times), so a plan
that touches three files costs three files' reading, not the tree's.

After the apply pass, each ``requires_restart`` name must be a service of the sandbox's
compose file (when it has one). When the sandbox does not come back identical, or a revert
fails, the migrations are stepped through one at a time (apply, revert, compare, apply
again) to find every one responsible and what each leaves behind. That needs fresh copies,
made the same way, from the live installation, which is only ever read. Not from its
latest backup: there may be none, it may be older than the installation, and it leaves out
what ``--include``/``--exclude`` choose differently; verify judges the installation as it
is. Hunting culprits is rare (verify failed), and each migration is judged against the copy
it ran on, so a change to the installation meanwhile cannot be blamed on a migration; each
fresh copy is compared with the first one all the same, and when they differ the report
says that the installation changed while verify ran (``RehearsalReport.notes``). Asked
for, the changes of the apply pass are kept too: the operator's preview of what the plan
would change in this installation.
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
import anyio.from_thread
import anyio.to_thread
from packaging.version import Version

from .._backup._manifest import MANIFEST, MANIFEST_SUM
from .._backup._snapshot import (
    DatabaseChange,
    PathChange,
    TableFilter,
    TreeChanges,
    TreeDiff,
    TreeSnapshot,
    diff_snapshots,
    forward_changes,
)
from .._backup._tree import Scope
from .._core._exceptions import PreflightError, UpdateError
from .._core._log import get_logger
from .._core._models import Direction, MigrationFunction, Step
from .._core._versions import parse_version
from .._run._capture import KeptLines, routing_installed
from .._run._health import compose_services, find_compose_file
from .._run._orchestration import prepare_plan
from .._run._runner import DEFAULT_GRACE, CallOutcome, call_function
from .._safety._journal import JOURNAL
from .._safety._state import DEFAULT_STATE_DIR
from .._safety._state_guard import StateGuard
from ._sandbox import (
    DeferredDatabases,
    SandboxSnapshot,
    copy_sandbox,
    remove_tree,
    snapshot_sandbox,
    temporary_folder,
)

__all__ = ["RehearsalCall", "RehearsalFinding", "RehearsalReport", "rehearse", "rehearse_steps"]

logger = get_logger()

APPLY, REVERT, COMPARE, APPLY_AGAIN = "apply", "revert", "compare", "apply again"
RESTARTS = "restarts"  # the requires_restart names, checked after the apply pass
#: Where a compose file is looked for, in this order (as the command line does).


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

    @property
    def way(self) -> str:
        """``"forward"`` or ``"backward"``: which way this call ran the migration."""
        return "backward" if self.function == "migrate_backward" else "forward"


@dataclass(frozen=True, slots=True)
class RehearsalFinding:
    """One thing a rehearsal found wrong: at which ``stage``, the migration responsible
    (``culprit``, None when only the migrations combined show it), what happened, and what
    the sandbox was left holding that it should not (``differences``)."""

    stage: str
    culprit: str | None
    error: str
    differences: TreeDiff = field(default_factory=TreeDiff)
    traceback: str | None = None
    isolated: bool = False  # found by stepping through the migrations one at a time


@dataclass(frozen=True, slots=True)
class RehearsalReport:
    """What a rehearsal found.

    ``ok`` when all three passes succeeded and the revert left the sandbox identical.
    Otherwise ``findings`` lists everything found, in order; ``stage``, ``culprit``,
    ``error`` and ``traceback`` are the first finding's (``stage`` is ``"apply"``,
    ``"restarts"``, ``"revert"``, ``"compare"`` or ``"apply again"``; ``culprit`` is None
    when a difference appears only with the migrations combined), ``culprits`` names every
    migration responsible, and ``differences`` lists everything the revert of the whole plan
    left different from the original (each finding holds its own migration's). ``changes``
    is what the apply pass changed, when asked for (see :func:`rehearse_steps`). ``notes``
    says what else the operator should know: that the installation changed while the
    migrations were stepped through on a new copy of it.
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
    culprits: tuple[str, ...] = ()
    findings: tuple[RehearsalFinding, ...] = ()
    changes: TreeChanges | None = None
    ignored_tables: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()  # what the operator should know besides the findings

    def __bool__(self) -> bool:
        """A report is its ``ok``."""
        return self.ok

    def describe(self) -> list[str]:
        """The outcome as lines for people (a changed text file with its diff, trimmed)."""
        count = len(self.migrations)
        noun = f"{count} migration{'s' if count != 1 else ''}"
        if self.ok and self.direction is Direction.DOWNGRADE:
            return [
                f"Rehearsal clean: {noun} run backward (the downgrade), forward again to an"
                f" identical tree, and backward once more ({self.seconds:.2f}s)."
            ]
        if self.ok:
            return [
                f"Rehearsal clean: {noun} applied, reverted to an identical tree,"
                f" and applied again ({self.seconds:.2f}s)."
            ]
        stage = _stage_words(self.stage, self.direction)
        lines = [f"Rehearsal FAILED at the {stage} stage: {self.error}"]
        if self.culprits:
            lines.append(f"Responsible: {', '.join(self.culprits)}")
        if not self.differences.is_empty:
            lines.append("What the revert left different from the original:")
            lines.extend(f"  {line}" for line in self.differences.describe_with_diffs())
        if len(self.findings) > 1:
            lines.append(f"Everything found ({len(self.findings)}):")
            for finding in self.findings:
                where = _stage_words(finding.stage, self.direction)
                lines.append(f"  - at the {where} stage: {finding.error}")
                lines.extend(f"      {line}" for line in finding.differences.describe())
        failed = next((c for c in reversed(self.calls) if not c.ok), None)
        if failed is not None and failed.output:
            lines.append(f"Output of {failed.id} ({failed.function}):")
            lines.extend(f"  | {line}" for _, line in failed.output)
        if failed is not None and failed.traceback:
            lines.append(f"Traceback of {failed.id} ({failed.function}):")
            lines.extend(f"  {line}" for line in failed.traceback.rstrip().splitlines())
        lines.extend(f"Note: {note}" for note in self.notes)
        if self.sandbox is not None:
            lines.append(f"Sandbox kept at {self.sandbox}")
        return lines


def _stage_words(stage: str | None, direction: Direction) -> str:
    """A stage as said for a downgrade too, where apply runs backward and revert forward."""
    if direction is not Direction.DOWNGRADE or stage not in {APPLY, REVERT, APPLY_AGAIN}:
        return str(stage)
    return f"{stage} ({'forward' if stage == REVERT else 'backward'})"


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
class _Outcome:
    findings: tuple[RehearsalFinding, ...] = ()
    whole: TreeDiff = field(default_factory=TreeDiff)  # what the whole plan's revert left
    abandoned: bool = False


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
        ignore: TableFilter | None = None,
        changes: bool = False,
        forward_only: bool = False,
    ) -> None:
        self.steps = tuple(steps)
        self.ignore = ignore
        self.want_changes = changes or forward_only
        self.forward_only = forward_only
        self.changes: TreeChanges | None = None
        self.state_dir = state_dir
        self._guard: StateGuard | None = None
        self.scope = scope
        self.sandbox = folder / "sandbox"
        self.clock = folder / "clock"  # touched for the clock marks of the snapshots
        self.deferred = DeferredDatabases(folder / "databases")
        self.last: SandboxSnapshot | None = None  # the sandbox's last snapshot
        self.base: TreeSnapshot | None = None  # what the first copy held
        self.notes: list[str] = []
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

    def _fresh_sandbox(self) -> TreeSnapshot:
        """A new copy of the installation as the sandbox (the stand-in state planted in
        it); its snapshot."""
        self._check_stop()
        remove_tree(self.sandbox)
        self.last = copy_sandbox(self.scope, self.sandbox, self.clock)
        self._plant_state()
        return self._snapshot(deferred=self.deferred)

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
        self._guard = StateGuard(folder, folder / JOURNAL, backup)

    def _snapshot(self, *, deferred: DeferredDatabases | None = None) -> TreeSnapshot:
        """What the sandbox holds, within the same include/exclude rules as the copy (small
        text files with their text, for diffs); only what changed since the last one is
        read again. Right after a copy, its databases are kept aside unread (``deferred``):
        each is read only if a migration changes it."""
        self._check_stop()
        sandbox = dataclasses.replace(self.scope, root=self.sandbox)
        self.last = snapshot_sandbox(sandbox, self.clock, previous=self.last, deferred=deferred)
        return self.last.tree

    def _diff(self, before: TreeSnapshot, after: TreeSnapshot) -> TreeDiff:
        return diff_snapshots(*self.deferred.settle(before, after), ignore=self.ignore)

    def run(self) -> _Outcome:
        findings: list[RehearsalFinding] = []
        try:
            return self._run(findings)
        except _AbandonedError as exc:
            findings.append(self._failure(exc.stage, exc.call))
            return _Outcome(tuple(findings), abandoned=True)

    def _run(self, findings: list[RehearsalFinding]) -> _Outcome:
        base = self.base = self._fresh_sandbox()
        failed = self._pass(APPLY, self.steps)
        if failed is not None:
            findings.append(self._failure(APPLY, failed))
            return _Outcome(tuple(findings))
        findings.extend(self._check_restarts())
        if self.want_changes:
            settled = self.deferred.settle(base, self._snapshot())
            self.changes = forward_changes(*settled, ignore=self.ignore)
        if self.forward_only:
            return _Outcome(tuple(findings))
        failed = self._pass(REVERT, tuple(reversed(self.steps)))
        # After a failed revert the tree is half-way: what it holds says little; the
        # migrations stepped through one at a time say who is responsible for what.
        whole = self._diff(base, self._snapshot()) if failed is None else TreeDiff()
        if failed is not None or not whole.is_empty:
            findings.extend(self._isolate(whole, failed))
            return _Outcome(tuple(findings), whole)
        failed = self._pass(APPLY_AGAIN, self.steps)
        if failed is not None:
            findings.append(self._failure(APPLY_AGAIN, failed))
        return _Outcome(tuple(findings))

    def _check_restarts(self) -> list[RehearsalFinding]:
        """Each ``requires_restart`` name that the sandbox's compose file, as the apply pass
        left it, does not define (nothing when there is no compose file or it is unreadable:
        restarts may go through a command instead). Only for an upgrade: a downgrade does not
        restart the services its backward functions removed from the compose file, as the
        update itself does not (they are dropped from its restarts with a warning)."""
        if any(step.direction is not Direction.UPGRADE for step in self.steps):
            return []
        compose = find_compose_file(self.sandbox)
        defined = compose_services(compose) if compose is not None else None
        if compose is None or defined is None:
            return []
        found: list[RehearsalFinding] = []
        for step in self.steps:
            for service in step.migration.declared.requires_restart:
                if service not in defined:
                    error = (
                        f"{step.id}: requires_restart names {service!r}, which {compose.name}"
                        " does not define after the apply pass; its restart would fail after"
                        " the update was committed"
                    )
                    found.append(RehearsalFinding(RESTARTS, step.id, error))
        return found

    def _failure(
        self, stage: str, call: RehearsalCall, *, isolated: bool = False
    ) -> RehearsalFinding:
        return RehearsalFinding(
            stage=stage,
            culprit=call.id,
            error=f"{call.id}: {call.function} {call.error}",
            traceback=call.traceback,
            isolated=isolated,
        )

    def _rebuild(self, count: int) -> bool:
        """A fresh sandbox with the first ``count`` steps applied; False if one fails."""
        self._check_unchanged(self._fresh_sandbox())
        return self._pass(APPLY, self.steps[:count]) is None

    def _check_unchanged(self, copy: TreeSnapshot) -> None:
        """A note when a new copy of the installation differs from the first: it changed
        while the rehearsal ran (each migration is still judged against the copy it ran on)."""
        if self.base is None or self.notes:
            return
        changed = self._diff(self.base, copy)
        if changed.is_empty:
            return
        count = len(changed.describe())
        note = (
            f"the installation changed while verify ran ({count} difference(s) from the"
            " first copy): the migrations were stepped through on a new copy of it, and"
            " the findings of that stage are about the tree as it is now"
        )
        logger.warning("verify.installation_changed", differences=changed.describe()[:20])
        self.notes.append(note)

    def _isolate(self, whole: TreeDiff, failed: RehearsalCall | None) -> list[RehearsalFinding]:
        """Step through the migrations one by one on a fresh copy, each applied, reverted,
        compared and applied again on what the ones before it made, to find every one
        responsible. A migration whose revert or second apply fails is recorded and the
        sandbox rebuilt (the ones so far applied to a fresh copy) before the next. When none
        is responsible on its own, the whole plan's failed revert (``failed``) or difference
        (``whole``) is what the migrations do together."""
        logger.info("verify.isolating", migrations=len(self.steps))
        before = self._fresh_sandbox()
        self._check_unchanged(before)
        found: list[RehearsalFinding] = []
        for index, step in enumerate(self.steps):
            if index:
                before = self._snapshot()
            call = self._call(APPLY, step)
            if not call.ok:  # it ran in the whole pass: the others made the difference
                found.append(self._failure(APPLY, call, isolated=True))
                break
            call = self._call(REVERT, step)
            if not call.ok:
                found.append(self._failure(REVERT, call, isolated=True))
                if not self._rebuild(index + 1):
                    break
                continue
            difference = self._diff(before, self._snapshot())
            if not difference.is_empty:
                count = len(difference.describe())
                error = (
                    f"{step.id}: its revert does not bring the tree back ({count} difference(s))"
                )
                found.append(RehearsalFinding(COMPARE, step.id, error, difference, isolated=True))
            call = self._call(APPLY_AGAIN, step)
            if not call.ok:
                found.append(self._failure(APPLY_AGAIN, call, isolated=True))
                if not self._rebuild(index + 1):
                    break
        if not found and failed is not None:
            found.append(self._failure(REVERT, failed))
        elif not found:
            error = (
                "reverting the whole plan does not bring the tree back, although each migration"
                " reverts cleanly on its own: the migrations interfere with each other"
            )
            found.append(RehearsalFinding(COMPARE, None, error, whole))
        return found


def _merged(diffs: Sequence[TreeDiff]) -> TreeDiff:
    """Several findings' differences as one (each path and table once)."""
    added = sorted({p for d in diffs for p in d.added})
    removed = sorted({p for d in diffs for p in d.removed})
    changed: dict[str, PathChange] = {}
    databases: dict[tuple[str, str, str], DatabaseChange] = {}
    for diff in diffs:
        changed.update((c.path, c) for c in diff.changed if c.path not in changed)
        databases.update(((c.path, c.table, c.what), c) for c in diff.databases)
    return TreeDiff(
        tuple(added),
        tuple(removed),
        tuple(changed[p] for p in sorted(changed)),
        tuple(databases.values()),
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
    ignore_tables: Sequence[str] = (),
    changes: bool = False,
    forward_only: bool = False,
) -> RehearsalReport:
    """Rehearse ``steps`` on a copy of what ``scope`` covers, in this thread.

    ``ignore_tables`` names SQLite tables left out of the comparison (``TABLE``, or
    ``DB:TABLE`` for one database file, by its path relative to the root or its name); a
    malformed one raises :class:`~dopemux_update.PreflightError`. With ``changes``, the report
    also holds what the apply pass changed (``RehearsalReport.changes``); ``forward_only``
    runs just the apply pass, for that preview (and the restart check).

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
    try:
        ignore = TableFilter.parse(ignore_tables)
    except ValueError as exc:
        raise PreflightError(f"--ignore-table {exc}") from exc
    if not steps:
        empty = TreeChanges() if changes or forward_only else None
        return RehearsalReport(
            ok=True,
            migrations=ids,
            direction=direction,
            changes=empty,
            ignored_tables=tuple(ignore.shown()),
        )
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
            ignore=ignore,
            changes=changes,
            forward_only=forward_only,
        )
        try:
            found = rehearsal.run()
        except (OSError, sqlite3.Error) as exc:
            # Copying or reading the sandbox failed (a migration's own errors are captured).
            raise UpdateError(f"the rehearsal could not copy or read its sandbox: {exc}") from exc
    first = found.findings[0] if found.findings else None
    culprits = tuple(dict.fromkeys(f.culprit for f in found.findings if f.culprit is not None))
    differences = found.whole
    if differences.is_empty:
        differences = _merged([f.differences for f in found.findings])
    report = RehearsalReport(
        ok=first is None,
        migrations=ids,
        direction=direction,
        stage=first.stage if first else None,
        culprit=first.culprit if first else None,
        error=first.error if first else None,
        traceback=first.traceback if first else None,
        differences=differences,
        isolated=any(f.isolated for f in found.findings),
        abandoned=found.abandoned,
        calls=tuple(rehearsal.calls),
        sandbox=folder if keep_sandbox else None,
        seconds=time.perf_counter() - started,
        culprits=culprits,
        findings=found.findings,
        changes=rehearsal.changes,
        ignored_tables=tuple(ignore.shown()),
        notes=tuple(rehearsal.notes),
    )
    logger.info("verify.finished", ok=report.ok, stage=report.stage, culprits=list(report.culprits))
    return report


def _relative_state(root: Path, state: Path) -> str:
    """The state folder relative to the root (the default one when it lies outside)."""
    try:
        return state.absolute().relative_to(root.absolute()).as_posix()
    except ValueError:
        return DEFAULT_STATE_DIR.as_posix()


class _StopWhenCancelled(threading.Event):
    """A rehearsal's stop request when it runs for async code: set by hand, or seen as soon
    as the caller's task is cancelled. The rehearsal's thread reads the cancellation itself
    (``anyio.from_thread.check_cancelled``) at its next call, with no round trip through the
    event loop, which may be busy while the thread goes on."""

    def is_set(self) -> bool:
        if not super().is_set():
            try:
                anyio.from_thread.check_cancelled()
            except RuntimeError:
                pass  # not the rehearsal's worker thread (a migration's own): the flag only
            except BaseException:  # noqa: BLE001 - the backend's cancellation: stop
                self.set()
        return super().is_set()


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
    ignore_tables: Sequence[str] = (),
    changes: bool = False,
    forward_only: bool = False,
) -> RehearsalReport:
    """Rehearse the plan from ``current_version`` to ``target_version`` (default: the newest
    reachable) on a sandbox copy of ``project_root``; never changes the installation.
    ``ignore_tables``, ``changes`` and ``forward_only`` are as for :func:`rehearse_steps`.

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
    stop = _StopWhenCancelled()

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
            ignore_tables=ignore_tables,
            changes=changes,
            forward_only=forward_only,
        )

    reports: list[RehearsalReport] = []
    errors: list[Exception] = []
    done = anyio.Event()

    async def in_thread() -> None:
        try:
            # Not abandoned on cancellation: the thread sees it at its next call (the stop
            # flag reads it), or after the grace period, and removes its sandbox before this
            # returns.
            reports.append(await anyio.to_thread.run_sync(work, abandon_on_cancel=False))
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
