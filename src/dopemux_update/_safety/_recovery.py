"""Recovery of an interrupted run, from its journal.

Before the commit point the tree is reconciled with the run's backup and the installed
version stays; after it, the commit is completed. Recovery is itself crash-safe: the journal
is retired only after the outcome is recorded, and every step is idempotent, so a recovery
interrupted by another crash is simply run again, and running it twice is harmless.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .._backup._store import BackupStore, Manifest
from .._backup._tree import glob_escape
from .._core._exceptions import StateError, UpdateError
from .._core._faults import crash_point
from .._core._log import get_logger
from ._journal import Journal, Record
from ._lock import holding_lock_async
from ._state import DEFAULT_STATE_DIR, VERSION_FILE, RunRecord, StateStore, utcnow
from ._state_guard import absolute

if TYPE_CHECKING:
    from .._backup._restore import RestoreReport  # the store imports it when it restores

__all__ = ["RecoveryResult", "covers_installation", "journaled_restore", "recover", "recover_sync"]

logger = get_logger()


@dataclass(frozen=True, slots=True)
class RecoveryResult:
    """What ``recover`` did.

    ``action`` is ``"none"`` (nothing was interrupted), ``"restored"`` (the tree is back as
    before the interrupted run, or an interrupted ``backups restore`` was finished),
    ``"committed"`` (the interrupted run had committed; its commit is now complete) or
    ``"failed"`` (still needs recovery; ``error`` says what could not be done and what to
    do next).
    """

    action: str
    run_id: str | None = None
    version_from: str | None = None
    version_to: str | None = None
    installed_version: str | None = None
    backup_id: str | None = None
    restart_services: tuple[str, ...] = ()
    error: str | None = None
    #: What was interrupted: ``"run"`` (an update) or ``"restore"`` (``backups restore``).
    kind: str = "run"
    #: Something the operator should know although recovery succeeded.
    note: str | None = None

    @property
    def ok(self) -> bool:
        return self.action != "failed"


_NEXT_STEP = (
    "Check the installation; when it is right, record the version it is at with"
    " `dopemux-update stamp VERSION --force`, which also closes the interrupted run"
)


def _history_entry(started: Record, outcome: str, error: str | None = None) -> RunRecord:
    return RunRecord(
        run_id=started.get("run_id"),
        started_at=started.get("started_at", utcnow()),
        finished_at=utcnow(),
        version_from=started["version_from"],
        version_to=started["version_to"],
        direction=started.get("direction", "upgrade"),
        outcome=outcome,
        backup_id=started.get("backup_id"),
        error=error,
        command=started.get("command"),
        reverts=started.get("reverts"),
        reason=started.get("reason"),
    )


def _already_recorded(state: StateStore, run_id: str | None, outcome: str) -> bool:
    history = state.read().history
    return bool(history) and history[-1].run_id == run_id and history[-1].outcome == outcome


def _clean_leftovers(backups_dir: Path) -> int:
    """Half-built or half-deleted backup folders left by a crash: never listed, now removed.

    Returns how many half-built ones there were (a backup cut short: a trace to report).
    """
    if not backups_dir.is_dir():
        return 0
    leftovers = [
        path for path in backups_dir.iterdir() if path.name.startswith((".building-", ".deleting-"))
    ]
    if leftovers:
        import shutil  # noqa: PLC0415 - for leftovers alone

        for leftover in leftovers:
            shutil.rmtree(leftover, ignore_errors=True)
    return sum(path.name.startswith(".building-") for path in leftovers)


def _common(started: Record) -> dict[str, Any]:
    return {
        "run_id": started.get("run_id"),
        "version_from": started.get("version_from"),
        "version_to": started.get("version_to"),
        "backup_id": started.get("backup_id"),
    }


def covers_installation(manifest: Manifest, project_root: Path, state_dir: Path) -> bool:
    """Whether the backup held the whole installation: nothing included selectively, and
    nothing left out but ``.git``, the state folder and a migrations folder. Only then does
    its version describe the tree once it is restored."""
    defaults = {".git", "migrations"}
    with contextlib.suppress(ValueError):
        defaults.add(glob_escape(state_dir.relative_to(project_root).as_posix()))
    return not manifest.included and all(
        pattern in defaults or pattern.rstrip("/").endswith("migrations")
        for pattern in manifest.excluded
    )


def journaled_restore(
    project_root: Path, state_dir: Path, backup_id: str, *, run_id: str | None = None
) -> tuple[RestoreReport, str | None]:
    """``backups restore``: put backup ``backup_id`` back, journaled like a run.

    A ``restore_started`` record is made durable before the tree is touched, and the journal
    is retired only after the backup's version is recorded: a restore cut short is seen by
    ``status`` and finished by ``recover``. Returns the restore's report and the version
    recorded (None when the backup records none). The caller holds the lock.
    """
    backups = BackupStore(state_dir / "backups")
    manifest = backups.read_manifest(backup_id)
    journal = Journal(state_dir)
    if run_id is None:  # a new restore, not the completion of an interrupted one
        journal.start(
            {
                "kind": "restore_started",
                "run_id": os.urandom(8).hex(),
                "backup_id": backup_id,
                "started_at": utcnow(),
                "version": manifest.version_from,
            }
        )
    report = backups.restore(backup_id, project_root)
    crash_point("restore.before_record")
    if manifest.version_from is not None and covers_installation(
        manifest, project_root, state_dir
    ):  # a partial backup puts back only part of the tree: the record keeps its version
        StateStore(state_dir, version_file=project_root / VERSION_FILE).record(
            installed_version=manifest.version_from
        )
    journal.retire()
    return report, manifest.version_from if covers_installation(
        manifest, project_root, state_dir
    ) else None


def _finish_restore(project_root: Path, state_dir: Path, started: Record) -> RecoveryResult:
    backup_id = str(started.get("backup_id"))
    common: dict[str, Any] = {"run_id": started.get("run_id"), "backup_id": backup_id}
    logger.warning("recovery.restore_started", **common)
    try:
        _, version = journaled_restore(
            project_root, state_dir, backup_id, run_id=str(started.get("run_id"))
        )
    except (OSError, UpdateError) as exc:
        logger.error("recovery.failed", error=str(exc), **common)
        return RecoveryResult(
            "failed",
            kind="restore",
            error=(
                f"an interrupted `backups restore {backup_id}` could not be finished: {exc}."
                f" Free space or fix the cause and run `dopemux-update recover` again; if the"
                f" backup is damaged: {_NEXT_STEP}"
            ),
            **common,
        )
    installed = StateStore(state_dir, version_file=project_root / VERSION_FILE).installed_version()
    logger.warning("recovery.restore_finished", installed_version=installed, **common)
    return RecoveryResult(
        "restored", kind="restore", installed_version=installed or version, **common
    )


def _complete_commit(
    state: StateStore, journal: Journal, started: Record, committed: Record
) -> RecoveryResult:
    facts = {**started, **{k: v for k, v in committed.items() if k != "kind"}}
    common = _common(facts)
    outcome = "reverted" if facts.get("reverts") else "applied"
    if not _already_recorded(state, facts.get("run_id"), outcome):
        state.record(installed_version=facts["version_to"], run=_history_entry(facts, outcome))
    # The journal is retired before any restart: the interrupted run restarted nothing.
    state.owe_restarts(facts.get("restart_services", ()))
    crash_point("recovery.before_clear")
    journal.retire()
    logger.warning("recovery.committed", **common)
    return RecoveryResult(
        "committed",
        installed_version=facts["version_to"],
        restart_services=tuple(facts.get("restart_services", ())),
        **common,
    )


def _fallback_backup(backups: BackupStore, state: StateStore) -> str | None:
    """For a journal whose first record is unreadable and no other record names a backup:
    the newest backup taken for a run (its manifest names a target version) from the
    installed version, after the last recorded run. None if there is no such backup."""
    recorded = state.read()
    last = recorded.history[-1].finished_at if recorded.history else ""
    for backup_id in reversed(backups.ids()):
        try:
            manifest = backups.read_manifest(backup_id)
        except (OSError, UpdateError):
            continue
        if manifest.version_to is None:
            continue  # taken by `backups create`, not for a run
        if manifest.created_at < last or manifest.version_from != recorded.installed_version:
            return None
        return backup_id
    return None


def _restore_run(
    project_root: Path,
    backups: BackupStore,
    state: StateStore,
    journal: Journal,
    started: Record,
    *,
    note: str = "",
) -> RecoveryResult:
    common = _common(started)
    backup_id = common["backup_id"]
    try:
        backups.restore(backup_id, project_root)
    except (OSError, UpdateError) as exc:
        logger.error("recovery.failed", error=str(exc), **common)
        return RecoveryResult(
            "failed",
            error=(
                f"{note}restoring backup {backup_id} failed: {exc}. Free space or fix the"
                f" cause and run `dopemux-update recover` again; if the backup cannot be"
                f" used: {_NEXT_STEP}"
            ),
            **common,
        )
    crash_point("recovery.restored")
    recorded = _already_recorded(state, common["run_id"], "rolled_back")
    if not recorded and started.get("version_from") is not None:
        state.record(installed_version=None, run=_history_entry(started, "rolled_back"))
    crash_point("recovery.before_clear")
    journal.retire()
    installed = state.installed_version()
    logger.warning("recovery.restored", installed_version=installed, **common)
    return RecoveryResult("restored", installed_version=installed, note=note or None, **common)


def _damaged_journal(
    project_root: Path,
    backups: BackupStore,
    state: StateStore,
    journal: Journal,
    records: list[Record],
) -> RecoveryResult:
    """The journal's first record is unreadable: act on what the other records and the
    backups say, and never retire the journal without saying so."""
    committed = next((r for r in records if r.get("kind") == "committed"), None)
    if committed is not None and committed.get("version_to"):
        return _complete_commit(state, journal, {}, committed)
    named = next((r["backup_id"] for r in records if r.get("backup_id")), None)
    note = f"the journal {journal.path} is damaged (its first record is unreadable); "
    if named is None and any("backup_id" in r for r in records):
        # Its other records say the run took no backup: nothing to restore from.
        began = [str(r.get("id")) for r in records if r.get("kind") == "step_begun"]
        if not began:
            journal.retire()
            return RecoveryResult("none", note=note + "no migration had started; it was removed")
        return RecoveryResult(
            "failed",
            error=(
                f"{note}the interrupted run took no backup, so its changes cannot be undone"
                f" automatically; migrations that ran: {', '.join(began)}. {_NEXT_STEP}"
            ),
        )
    if named is None:
        named = _fallback_backup(backups, state)
        if named is not None:
            note += f"the newest backup taken for an update, {named}, was used; "
    if named is not None:
        facts = {**next((r for r in records if r.get("run_id")), {}), "backup_id": named}
        return _restore_run(project_root, backups, state, journal, facts, note=note)
    if not backups.ids() and not records:
        # An empty or wholly unreadable journal and no backup at all: no run of ours can
        # have changed anything yet (a run writes its journal after its backup).
        logger.warning("recovery.damaged_journal_retired", path=str(journal.path))
        journal.retire()
        return RecoveryResult(
            "none",
            note=note + "there is no backup, so no update had begun; the journal was removed",
        )
    return RecoveryResult(
        "failed",
        error=(
            f"{note}it names no backup, and no backup can be told to belong to the"
            " interrupted run, so it cannot be undone automatically. Close it with"
            " `dopemux-update stamp VERSION --force` (VERSION: what the installation was"
            " at); then, if one of the backups (`dopemux-update backups list`) holds the"
            " installation as it was, put it back with `dopemux-update backups restore ID`"
        ),
    )


def _recover(project_root: Path, state_dir: Path) -> RecoveryResult:
    journal = Journal(state_dir)
    backups = BackupStore(state_dir / "backups")
    half_built = _clean_leftovers(backups.backups_dir)
    contents = journal.inspect()
    if contents is None:
        if half_built:  # a backup cut short, before its run wrote anything else
            return RecoveryResult(
                "none",
                note=f"removed {half_built} half-built backup(s) left by an interrupted update"
                " or `backups create`; the installation itself had not been changed",
            )
        return RecoveryResult("none")
    state = StateStore(state_dir, version_file=project_root / VERSION_FILE)
    records = contents.records
    if contents.first_damaged or not records or records[0].get("kind") not in _FIRST_KINDS:
        return _damaged_journal(project_root, backups, state, journal, records)
    started = records[0]
    if started["kind"] == "restore_started":
        return _finish_restore(project_root, state_dir, started)
    common = _common(started)
    logger.warning("recovery.started", **common)

    committed = next((r for r in records if r.get("kind") == "committed"), None)
    if committed is not None:
        return _complete_commit(state, journal, started, committed)

    lost = next((r for r in records if r.get("kind") == "state_lost"), None)
    backup_id = common["backup_id"]
    if lost is not None and (backup_id is None or lost.get("backup_lost")):
        return _state_lost_report(started, records, lost)
    note = (
        f"the migration {lost.get('migration')} had touched the update's own state folder;"
        " its backup was intact"
        if lost is not None
        else ""
    )

    began = [r for r in records if r.get("kind") == "step_begun"]
    if backup_id is None:
        if began:
            ran = ", ".join(r["id"] for r in began)
            error = (
                "the interrupted run took no backup (no migration on its plan asked for one),"
                f" so its changes cannot be undone automatically; migrations that ran: {ran}."
                f" {_NEXT_STEP}"
            )
            return RecoveryResult("failed", error=error, **common)
        journal.retire()
        return RecoveryResult("none", **common)
    return _restore_run(project_root, backups, state, journal, started, note=note)


def _state_lost_report(started: Record, records: list[Record], lost: Record) -> RecoveryResult:
    """A migration took the state folder, and the backup with it: say plainly what cannot
    be restored, why, what was done, and what to do."""
    ran = [*lost.get("ran", ()), *(r["id"] for r in records if r.get("kind") == "step_begun")]
    undone = [
        *lost.get("undone", ()),
        *(r["id"] for r in records if r.get("kind") == "rollback_step" and r.get("ok")),
    ]
    backup_id = started.get("backup_id")
    backup = (
        f"The backup taken before the update ({backup_id}) is gone or changed"
        if backup_id is not None
        else "No backup was taken (no migration on the plan asked for one)"
    )
    return RecoveryResult(
        "failed",
        error=(
            f"{lost.get('reason')}. {backup}, so the installation cannot be"
            f" restored to {started.get('version_from')}. Migrations that ran:"
            f" {', '.join(dict.fromkeys(ran)) or 'none'}; undone by their backward functions:"
            f" {', '.join(dict.fromkeys(undone)) or 'none'}; the result is not verified."
            f" {_NEXT_STEP}"
        ),
        **_common(started),
    )


_FIRST_KINDS = ("run_started", "restore_started")


def recover_sync(project_root: Path, *, state_dir: Path | None = None) -> RecoveryResult:
    """Finish or undo an interrupted run; the caller holds the lock. Idempotent.

    Never raises for what it finds on disk: whatever goes wrong ends as a ``"failed"``
    result that says what could not be done and what to do next.
    """
    project_root = absolute(project_root)
    state_dir = absolute(state_dir) if state_dir is not None else project_root / DEFAULT_STATE_DIR
    try:
        return _recover(project_root, state_dir)
    except StateError as exc:
        logger.error("recovery.failed", error=str(exc))
        return RecoveryResult(
            "failed",
            error=(
                f"the recorded state cannot be read: {exc}. Fix or remove the file; to record"
                f" the installed version over it: {_NEXT_STEP}"
            ),
        )
    except (OSError, UpdateError, KeyError, TypeError, ValueError) as exc:
        logger.error("recovery.failed", error=repr(exc))
        return RecoveryResult(
            "failed",
            error=(
                f"recovery could not complete: {type(exc).__name__}: {exc}. Nothing more was"
                f" changed; fix the cause (free space, permissions) and run `dopemux-update"
                f" recover` again. If it keeps failing: {_NEXT_STEP}"
            ),
        )


async def recover(
    project_root: Path | str, *, state_dir: Path | str | None = None
) -> RecoveryResult:
    """Finish or undo an interrupted run of the installation at ``project_root``.

    Takes the installation's lock. With nothing to recover, returns ``action == "none"``.
    """
    import anyio  # noqa: PLC0415 - the async face alone: the command line's restore needs none
    import anyio.to_thread  # noqa: PLC0415

    root = absolute(project_root)
    folder = absolute(state_dir) if state_dir is not None else root / DEFAULT_STATE_DIR

    def check_root() -> None:
        if not root.is_dir():
            raise StateError("installation folder does not exist", path=root)

    await anyio.to_thread.run_sync(check_root)  # before the lock, which would create folders
    result = RecoveryResult("none")
    async with holding_lock_async(folder):
        with anyio.CancelScope(shield=True):  # half a recovery helps nobody
            result = await anyio.to_thread.run_sync(lambda: recover_sync(root, state_dir=folder))
    return result
