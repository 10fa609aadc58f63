"""``dopemux-update backups list|create|verify|restore|prune``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any, NamedTuple

import click

from .._backup._store import BackupInfo, BackupStore, DamagedBackupError
from .._backup._tree import Scope
from .._core._exceptions import BackupError
from .._safety._lock import holding_lock
from ._common import (
    EXIT_FAILED,
    EXIT_OK,
    CommandError,
    Context,
    common_options,
    emit,
    format_bytes,
    make_context,
    plural,
)

__all__ = ["DamagedBackup", "backups", "read_backup", "read_backups"]


def _store(ctx: Context) -> BackupStore:
    return BackupStore(ctx.state_dir / "backups")


def _backup_id(store: BackupStore, given: str) -> str:
    """``latest`` is the newest backup; an unknown id points at ``backups list``."""
    ids = store.ids()
    if given == "latest":
        if not ids:
            raise CommandError("there are no backups (`dopemux-update backups create` takes one)")
        return ids[-1]
    if given not in ids:
        raise CommandError(
            f"backup {given!r} does not exist in {store.backups_dir}: `dopemux-update backups"
            " list` shows the backups there (`latest` names the newest)"
        )
    return given


_SHARING_NOTE = (
    "Unchanged files are stored once and shared (one object) between backups: a damaged"
    " shared file damages every backup holding it. `backups create --full` (or"
    " `upgrade --full-backup`) takes a backup that shares nothing."
)


def backup_payload(info: BackupInfo, *, shared_files: int | None = None) -> dict[str, Any]:
    extra = {} if shared_files is None else {"shared_files": shared_files}
    return {
        "id": info.id,
        "created_at": info.created_at,
        "files": info.files,
        "bytes": info.bytes,
        "copied_bytes": info.copied_bytes,
        "version_from": info.version_from,
        "version_to": info.version_to,
        "path": str(info.path),
        **extra,
    }


def _describe(info: BackupInfo, *, shared_files: int | None = None) -> str:
    versions = info.version_from or "?"
    if info.version_to:
        versions += f" → {info.version_to}"
    shared = "" if shared_files is None else f", {shared_files} shared with other backups"
    return (
        f"{info.id}  {info.created_at}  {versions:<20} {info.files:>7}"
        f" {'file' if info.files == 1 else 'files'}"
        f"  {format_bytes(info.bytes):>10}  ({format_bytes(info.copied_bytes)} copied{shared})"
    )


class DamagedBackup(NamedTuple):
    """A backup whose manifest cannot be read or fails its checksum."""

    id: str
    error: str


def read_backups(store: BackupStore) -> list[BackupInfo | DamagedBackup]:
    """Every backup, oldest first; one that cannot be read is listed as damaged, so that
    one bad manifest does not hide the others."""
    return [read_backup(store, backup_id) for backup_id in store.ids()]


def read_backup(store: BackupStore, backup_id: str) -> BackupInfo | DamagedBackup:
    """One backup, or what is wrong with its manifest."""
    try:
        return store.info(store.read_manifest(backup_id))
    except BackupError as exc:
        return DamagedBackup(backup_id, str(exc))


@click.group()
def backups() -> None:
    """List, take, verify, restore and prune backups of the installation."""


@backups.command("list")
@common_options
def list_backups(root: Path, migrations: Path | None, as_json: bool, verbose: int) -> int:
    """List the backups, oldest first."""
    ctx = make_context(root, migrations, as_json, verbose)
    store = _store(ctx)
    lines: list[str] = []
    payload: list[dict[str, Any]] = []
    sharing = False
    for item in read_backups(store):
        if isinstance(item, DamagedBackup):
            lines.append(f"{item.id}  DAMAGED: {item.error}")
            payload.append({"id": item.id, "error": item.error})
            continue
        shared = store.shared_files(item.id)
        sharing = sharing or bool(shared)
        lines.append(_describe(item, shared_files=shared))
        payload.append(backup_payload(item, shared_files=shared))
    if sharing:
        lines.append(_SHARING_NOTE)
    emit(ctx, {"command": "backups list", "backups": payload}, lines or ["No backups."])
    return EXIT_OK


@backups.command("create")
@click.option("--include", multiple=True, metavar="GLOB", help="Back up only what matches.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Leave out what matches.")
@click.option(
    "--full",
    is_flag=True,
    help="Copy every file, sharing none with older backups (unchanged files share the"
    " previous backup's stored copies by default).",
)
@common_options
def create_backup(
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    full: bool,
    root: Path,
    migrations: Path | None,
    as_json: bool,
    verbose: int,
) -> int:
    """Take a verified backup of the installation now."""
    ctx = make_context(root, migrations, as_json, verbose)
    try:
        scope = Scope.for_installation(
            ctx.root,
            state_dir=ctx.state_dir,
            migrations_dir=ctx.migrations,
            include=include,
            exclude=exclude,
        )
    except ValueError as exc:
        raise CommandError(str(exc)) from exc
    with holding_lock(ctx.state_dir):
        info = _store(ctx).create(scope, version_from=ctx.state.installed_version(), full=full)
    emit(
        ctx,
        {"command": "backups create", "backup": backup_payload(info)},
        [f"Created backup {_describe(info)}"],
    )
    return EXIT_OK


@backups.command("verify")
@click.argument("backup_id", metavar="ID")
@common_options
def verify_backup(
    backup_id: str, root: Path, migrations: Path | None, as_json: bool, verbose: int
) -> int:
    """Re-hash every file of backup ID against its manifest (exit 1 if any differs).

    Unchanged files are shared between backups: a damaged one names every backup it damages.
    """
    ctx = make_context(root, migrations, as_json, verbose)
    backup_id = _backup_id(_store(ctx), backup_id)
    try:
        manifest = _store(ctx).verify(backup_id)
    except BackupError as exc:
        if "does not exist" in str(exc) or "not a valid" in str(exc):
            raise
        damaged = list(exc.damaged) if isinstance(exc, DamagedBackupError) else []
        affected = list(exc.affected) if isinstance(exc, DamagedBackupError) else []
        lines = [f"Backup {backup_id} FAILED verification: {exc}"]
        if affected:
            lines.append(
                f"Also damaged (they share the damaged files): {', '.join(affected)}."
                " Take a new backup (`backups create --full`) before relying on them."
            )
        emit(
            ctx,
            {
                "command": "backups verify",
                "id": backup_id,
                "ok": False,
                "error": str(exc),
                "damaged": damaged,
                "affected": affected,
            },
            lines,
            code=EXIT_FAILED,
        )
        return EXIT_FAILED
    info = _store(ctx).info(manifest)
    emit(
        ctx,
        {
            "command": "backups verify",
            "id": backup_id,
            "ok": True,
            "error": None,
            "damaged": [],
            "affected": [],
        },
        [
            f"Backup {backup_id} is intact: {plural(info.files, 'file')},"
            f" {format_bytes(info.bytes)}."
        ],
    )
    return EXIT_OK


@backups.command("restore")
@click.argument("backup_id", metavar="ID")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@common_options
def restore_backup(
    backup_id: str, yes: bool, root: Path, migrations: Path | None, as_json: bool, verbose: int
) -> int:
    """Make the installation identical to backup ID (`latest`: the newest one).

    The backup's version is recorded as installed only when it held the whole installation;
    after a partial backup (``--include``, or ``--exclude`` beyond the defaults) the record
    keeps its version.
    """
    # Only a restore pays for loading recovery (``backups create`` starts without it).
    from .._safety._recovery import covers_installation, journaled_restore  # noqa: PLC0415
    from ._recover import recover_first  # noqa: PLC0415

    ctx = make_context(root, migrations, as_json, verbose)
    store = _store(ctx)
    backup_id = _backup_id(store, backup_id)
    manifest = store.read_manifest(backup_id)
    if not yes:
        if as_json or not sys.stdin.isatty():
            raise CommandError(
                "restoring a backup overwrites the installation and there is no terminal to"
                " ask: pass --yes to go ahead"
            )
        if not click.confirm(
            f"Make {ctx.root.resolve()} identical to backup {backup_id}"
            f" ({manifest.created_at})? Changes since then are lost.",
            err=True,
        ):
            raise CommandError("cancelled; nothing was changed")
    with holding_lock(ctx.state_dir):
        recover_first(ctx)  # an interrupted run is settled before the tree is replaced
        # Journaled like a run: one cut short is seen by `status` and finished by `recover`.
        report, version = journaled_restore(ctx.root, ctx.state_dir, backup_id)
        partial = not covers_installation(manifest, ctx.root, ctx.state_dir)
        installed = ctx.state.installed_version()
    if partial:
        recorded = (
            f"{installed or 'not recorded'}, unchanged: the backup held part of the"
            f" installation only (included {list(manifest.included) or 'all'},"
            f" excluded {list(manifest.excluded)})"
        )
    else:
        recorded = version or "unchanged (the backup records none)"
    files = len(report.written)
    emit(
        ctx,
        {
            "command": "backups restore",
            "id": backup_id,
            "written": list(report.written),
            "removed": list(report.removed),
            "fixed": list(report.fixed),
            "databases": list(report.databases),
            "installed_version": version,
            "partial": partial,
        },
        [
            f"Restored backup {backup_id}: {files} written,"
            f" {len(report.removed)} removed, {len(report.fixed)} fixed,"
            f" {plural(len(report.databases), 'database')} put back.",
            f"Installed version: {recorded}",
        ],
    )
    return EXIT_OK


def _protected(ctx: Context) -> set[str]:
    """The backups a run needing recovery, or an unfinished one, depends on."""
    from .._safety._journal import Journal  # noqa: PLC0415 - only prune needs it

    protect = {
        run.backup_id
        for run in ctx.state.read().history
        if run.outcome == "needs_recovery" and run.backup_id
    }
    interrupted = Journal(ctx.state_dir).read()
    if interrupted and interrupted[0].get("backup_id"):
        protect.add(interrupted[0]["backup_id"])  # an unfinished run's backup stays
    return protect


def _doomed(store: BackupStore, keep: int, protect: set[str]) -> list[str]:
    """What ``store.prune(keep, protect=protect)`` would delete."""
    ids = store.ids()
    old = ids[: max(0, len(ids) - keep)]
    return [backup_id for backup_id in old if backup_id not in protect]


@backups.command("prune")
@click.option(
    "--keep", type=click.IntRange(min=0), required=True, metavar="N", help="How many to keep."
)
@click.option("--dry-run", is_flag=True, help="List what would be deleted; delete nothing.")
@click.option("--yes", "-y", is_flag=True, help="Do not ask for confirmation.")
@common_options
def prune_backups(
    keep: int,
    dry_run: bool,
    yes: bool,
    root: Path,
    migrations: Path | None,
    as_json: bool,
    verbose: int,
) -> int:
    """Delete all but the newest N backups (never one a run needing recovery depends on)."""
    ctx = make_context(root, migrations, as_json, verbose)
    store = _store(ctx)
    if not ctx.state_dir.is_dir():  # no state folder: no backups, and none is created
        deleted: list[str] = []
        kept: list[str] = []
    else:
        doomed = _doomed(store, keep, _protected(ctx))
        if doomed and not dry_run and not yes:
            if as_json or not sys.stdin.isatty():
                raise CommandError(
                    f"pruning deletes {plural(len(doomed), 'backup')} and there is no terminal"
                    " to ask: pass --yes to go ahead (--dry-run lists them)"
                )
            if not click.confirm(
                f"Delete {plural(len(doomed), 'backup')}: {', '.join(doomed)}?", err=True
            ):
                raise CommandError("cancelled; nothing was changed")
        if dry_run:
            deleted, kept = doomed, [i for i in store.ids() if i not in doomed]
        else:
            with holding_lock(ctx.state_dir):
                deleted = store.prune(keep, protect=_protected(ctx))
                kept = store.ids()
    verb = "Would delete" if dry_run else "Deleted"
    lines = [f"{verb} {plural(len(deleted), 'backup')}; {len(kept)} kept."]
    lines.extend(f"  {backup_id}" for backup_id in deleted if dry_run)
    emit(
        ctx,
        {"command": "backups prune", "deleted": deleted, "kept": kept, "dry_run": dry_run},
        lines,
    )
    return EXIT_OK
