"""Recovery of an interrupted run, from its journal.

Before the commit point the tree is reconciled with the run's backup and the installed
version stays; after it, the commit is completed. Recovery is itself crash-safe: the journal
is retired only after the outcome is recorded, and every step is idempotent, so a recovery
interrupted by another crash is simply run again, and running it twice is harmless.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.to_thread

from ._backup import BackupStore
from ._exceptions import BackupError, StateError
from ._faults import crash_point
from ._journal import Journal, Record
from ._lock import holding_lock_async
from ._log import get_logger
from ._state import DEFAULT_STATE_DIR, RunRecord, StateStore, utcnow

__all__ = ["RecoveryResult", "recover", "recover_sync"]

logger = get_logger()


@dataclass(frozen=True, slots=True)
class RecoveryResult:
    """What ``recover`` did.

    ``action`` is ``"none"`` (nothing was interrupted), ``"restored"`` (the tree is back as
    before the interrupted run), ``"committed"`` (the interrupted run had committed; its
    commit is now complete) or ``"failed"`` (still needs recovery; ``error`` says why).
    """

    action: str
    run_id: str | None = None
    version_from: str | None = None
    version_to: str | None = None
    installed_version: str | None = None
    backup_id: str | None = None
    restart_services: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.action != "failed"


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
    )


def _already_recorded(state: StateStore, run_id: str | None, outcome: str) -> bool:
    history = state.read().history
    return bool(history) and history[-1].run_id == run_id and history[-1].outcome == outcome


def _clean_leftovers(backups_dir: Path) -> None:
    """Half-built or half-deleted backup folders left by a crash: never listed, now removed."""
    if backups_dir.is_dir():
        for leftover in backups_dir.iterdir():
            if leftover.name.startswith((".building-", ".deleting-")):
                shutil.rmtree(leftover, ignore_errors=True)


def recover_sync(project_root: Path, *, state_dir: Path | None = None) -> RecoveryResult:
    """Finish or undo an interrupted run; the caller holds the lock. Idempotent."""
    state_dir = state_dir if state_dir is not None else project_root / DEFAULT_STATE_DIR
    journal = Journal(state_dir)
    backups = BackupStore(state_dir / "backups")
    _clean_leftovers(backups.backups_dir)
    records = journal.read()
    if records is None:
        return RecoveryResult("none")
    state = StateStore(state_dir)
    if not records or records[0].get("kind") != "run_started":
        # The first record is written atomically, so this is a damaged journal: the run
        # cannot have changed anything before it was durable.
        journal.retire()
        return RecoveryResult("none")
    started = records[0]
    run_id, backup_id = started.get("run_id"), started.get("backup_id")
    common = {
        "run_id": run_id,
        "version_from": started["version_from"],
        "version_to": started["version_to"],
        "backup_id": backup_id,
    }
    logger.warning("recovery.started", **common)

    if any(r.get("kind") == "committed" for r in records):
        if not _already_recorded(state, run_id, "applied"):
            state.record(
                installed_version=started["version_to"],
                run=_history_entry(started, "applied"),
            )
        crash_point("recovery.before_clear")
        journal.retire()
        logger.warning("recovery.committed", **common)
        return RecoveryResult(
            "committed",
            installed_version=started["version_to"],
            restart_services=tuple(started.get("restart_services", ())),
            **common,
        )

    began = [r for r in records if r.get("kind") == "step_begun"]
    if backup_id is None:
        if began:
            ran = ", ".join(r["id"] for r in began)
            error = (
                "the interrupted run took no backup (no migration on its plan asked for one),"
                f" so its changes cannot be undone automatically; migrations that ran: {ran}."
                " Check the installation, record its version with `dopemux-update stamp`,"
                f" then remove {journal.path}"
            )
            return RecoveryResult("failed", error=error, **common)
        journal.retire()
        return RecoveryResult("none", **common)
    try:
        backups.restore(backup_id, project_root)
    except (OSError, BackupError) as exc:
        logger.error("recovery.failed", error=str(exc), **common)
        return RecoveryResult(
            "failed", error=f"restoring backup {backup_id} failed: {exc}", **common
        )
    crash_point("recovery.restored")
    if not _already_recorded(state, run_id, "rolled_back"):
        state.record(installed_version=None, run=_history_entry(started, "rolled_back"))
    crash_point("recovery.before_clear")
    journal.retire()
    installed = state.installed_version()
    logger.warning("recovery.restored", installed_version=installed, **common)
    return RecoveryResult("restored", installed_version=installed, **common)


async def recover(
    project_root: Path | str, *, state_dir: Path | str | None = None
) -> RecoveryResult:
    """Finish or undo an interrupted run of the installation at ``project_root``.

    Takes the installation's lock. With nothing to recover, returns ``action == "none"``.
    """
    root = Path(project_root)
    folder = Path(state_dir) if state_dir is not None else root / DEFAULT_STATE_DIR

    def check_root() -> None:
        if not root.is_dir():
            raise StateError("installation folder does not exist", path=root)

    await anyio.to_thread.run_sync(check_root)  # before the lock, which would create folders
    result = RecoveryResult("none")
    async with holding_lock_async(folder):
        with anyio.CancelScope(shield=True):  # half a recovery helps nobody
            result = await anyio.to_thread.run_sync(lambda: recover_sync(root, state_dir=folder))
    return result
