"""``dopemux-update status``: the installed version, what is pending, and what needs care.

A module of its own, so that the quickest command imports only what it reads with
(:mod:`.cli` loads it only when ``status`` runs).
"""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from packaging.version import Version

from .._backup._listing import backup_ids, copied_bytes
from .._core._exceptions import PlanError, StateError
from .._core._versions import Transition, parse_version
from .._run._planning import find_route, newest_reachable
from .._run._scan import scan_migrations
from .._safety._private import JOURNAL
from .._safety._state import VERSION_FILE
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_RECOVERY,
    EXIT_RESTART_FAILED,
    EXIT_USAGE,
    Context,
    common_options,
    emit,
    format_bytes,
    make_context,
)

if TYPE_CHECKING:
    from .._safety._drift import Drift

__all__ = ["status"]


def _pending(
    transitions: Sequence[Transition], current: Version
) -> tuple[str, list[str], str | None]:
    """The newest reachable version, the hops to it, and a problem that stops planning."""
    latest = str(newest_reachable(transitions, current))
    try:
        return latest, [hop.name for hop in find_route(transitions, current).hops], None
    except PlanError as exc:
        return latest, [], str(exc)


def _backups(backups_dir: Path) -> tuple[list[int], list[tuple[str, str]]]:
    """The bytes each readable backup copied, oldest first; the damaged ones, with why.

    A manifest that is whole and authentic is summed up without the store (``_listing``);
    any other is left to the store's strict reading, which says what is wrong with it (or
    reads a backup of an older format).
    """
    copied: list[int] = []
    damaged: list[tuple[str, str]] = []
    for backup_id in backup_ids(backups_dir):
        size = copied_bytes(backups_dir, backup_id)
        if size is None:
            from .._backup._store import BackupStore  # noqa: PLC0415 - only for such a one
            from ._backups import DamagedBackup, read_backup  # noqa: PLC0415 - as above

            found = read_backup(BackupStore(backups_dir), backup_id)
            if isinstance(found, DamagedBackup):
                damaged.append((found.id, found.error))
                continue
            size = found.copied_bytes
        copied.append(size)
    return copied, damaged


def _lock_holder(state_dir: Path) -> str | None:
    """``lock_holder``, whose module is imported only when the lock file names someone: a
    holder writes itself into it and empties it on release."""
    try:
        if not (state_dir / "lock").stat().st_size:
            return None
    except OSError:
        return None
    from .._safety._lock import lock_holder  # noqa: PLC0415 - see above

    return lock_holder(state_dir)


def _interruption(ctx: Context) -> tuple[str | None, bool, str]:
    """Who runs an update now; whether one was interrupted; and what (update or restore)."""
    running = _lock_holder(ctx.state_dir)
    interrupted = running is None and (ctx.state_dir / JOURNAL).exists()
    what = "update"
    if interrupted:  # the journal's code reads its records: only when there is one
        from .._safety._journal import Journal  # noqa: PLC0415

        with contextlib.suppress(OSError):  # unreadable: still an interrupted run, of some kind
            traces = Journal(ctx.state_dir).inspect()
            if traces is not None and traces.records and not traces.first_damaged:
                kind = traces.records[0].get("kind")
                what = "restore" if kind == "restore_started" else "update"
    return running, interrupted, what


@click.command()
@click.option(
    "--check",
    is_flag=True,
    help="For monitoring, exit with: 0 up to date, 1 migrations pending, 2 a problem with"
    " the migrations or the record, 3 needs recovery, 5 service restarts owed.",
)
@common_options
def status(root: Path, migrations: Path | None, as_json: bool, verbose: int, check: bool) -> int:
    """Show the installed version and what is pending."""
    ctx = make_context(root, migrations, as_json, verbose)
    store = ctx.state
    state = store.read()
    problem: str | None = None
    try:
        installed = store.installed_version()  # state.json's, else Dopemux's VERSION file
        version_file = store.version_file_disagrees()
    except StateError as exc:
        installed, version_file, problem = state.installed_version, None, str(exc)
    catalog = scan_migrations(ctx.migrations)
    latest: str | None = None
    pending: list[str] = []
    if installed is not None:
        latest, pending, problem = _pending(catalog.transitions, parse_version(installed))
    last = state.history[-1] if state.history else None
    backups, damaged = _backups(ctx.state_dir / "backups")
    drift: list[Drift] = []
    if state.history:  # nothing has run: nothing can have drifted
        from .._safety._drift import find_drift  # noqa: PLC0415 - only with a history

        drift = find_drift(state.history, ctx.migrations)
    running, interrupted, what = _interruption(ctx)
    payload = {
        "command": "status",
        "root": str(ctx.root),
        "installed_version": installed,
        "version_file": version_file,
        "latest_version": latest,
        "hops": pending,
        "migrations_dir": str(ctx.migrations),
        "migrations_found": catalog.exists,
        "transitions": [t.name for t in catalog.transitions],
        "problem": problem,
        "last_run": dataclasses.asdict(last) if last else None,
        "backups": len(backups),
        "backups_bytes": sum(backups),
        "damaged_backups": [{"id": backup_id, "error": error} for backup_id, error in damaged],
        "needs_recovery": interrupted,
        "interrupted": what if interrupted else None,
        "running": running,
        "drift": [{"id": d.id, "path": str(d.path), "reason": d.reason} for d in drift],
        "restarts_owed": list(state.restarts_owed),
    }
    lines = [
        f"Installation:      {ctx.root.resolve()}",
        f"Installed version: {installed or 'not recorded (use `dopemux-update stamp VERSION`)'}",
    ]
    if version_file is not None:
        lines.append(
            f"WARNING: {ctx.root / VERSION_FILE} says {version_file}, but the update record"
            f" says {installed}; `dopemux-update stamp VERSION` sets both"
        )
    if not catalog.exists:
        lines.append(f"Migrations:        none (no folder at {ctx.migrations})")
    if latest is not None:
        lines.append(f"Newest reachable:  {latest}")
        lines.append(f"Pending:           {', '.join(pending) if pending else 'nothing'}")
    if problem:
        lines.append(f"Problem:           {problem}")
    if last is not None:
        lines.append(
            f"Last run:          {last.version_from} → {last.version_to}"
            f" {last.outcome.replace('_', ' ')} at {last.finished_at}"
        )
    stored = format_bytes(sum(backups))
    lines.append(f"Backups:           {len(backups)} ({stored} stored)")
    lines.extend(f"WARNING: backup {backup_id} is DAMAGED: {error}" for backup_id, error in damaged)
    if running is not None:
        lines.append(f"An update is running now: {running}.")
    if interrupted:
        lines.append(
            "WARNING: an update was interrupted and the installation NEEDS RECOVERY:"
            " run `dopemux-update recover`."
            if what == "update"
            else "WARNING: an interrupted restore (`backups restore` was cut short): the"
            " installation NEEDS RECOVERY: run `dopemux-update recover` to finish it."
        )
    lines.extend(f"WARNING: {d.id} was applied but {d.reason} ({d.path})" for d in drift)
    if state.restarts_owed:
        lines.append(
            f"Restarts owed:     {', '.join(state.restarts_owed)} (run `dopemux-update restart`)"
        )
    code = _status_check(payload) if check else EXIT_OK
    emit(ctx, payload, lines, code=code)
    return code


def _status_check(payload: dict[str, Any]) -> int:
    """``status --check``: the most urgent thing to act on, as an exit code."""
    if payload["needs_recovery"]:
        return EXIT_RECOVERY
    if (
        payload["problem"]
        or payload["installed_version"] is None
        or payload["version_file"] is not None
        or payload["drift"]
    ):
        return EXIT_USAGE
    if payload.get("restarts_owed"):  # recorded by an update whose restarts did not happen
        return EXIT_RESTART_FAILED
    latest, installed = payload["latest_version"], payload["installed_version"]
    behind = latest is not None and parse_version(latest) != parse_version(installed)
    return EXIT_FAILED if payload["hops"] or behind else EXIT_OK
