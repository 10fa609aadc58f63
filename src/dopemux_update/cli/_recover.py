"""``dopemux-update recover``, recovery before other commands, and Ctrl-C handling."""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click

from .._core._exceptions import UpdateError
from .._core._fsutil import fsync_dir
from .._core._log import get_logger
from .._safety._journal import Journal
from .._safety._lock import holding_lock
from ._common import (
    EXIT_OK,
    EXIT_RECOVERY,
    CommandError,
    Context,
    common_options,
    emit,
    make_context,
)

if TYPE_CHECKING:
    from .._safety._recovery import RecoveryResult

__all__ = ["close_unrecoverable", "recover_command", "recover_first", "run_interruptibly"]

T = TypeVar("T")
logger = get_logger()


def _payload(result: RecoveryResult) -> dict[str, Any]:
    return {
        "action": result.action,
        "run_id": result.run_id,
        "version_from": result.version_from,
        "version_to": result.version_to,
        "installed_version": result.installed_version,
        "backup_id": result.backup_id,
        "restart_services": list(result.restart_services),
        "error": result.error,
        "interrupted": result.kind,
        "note": result.note,
    }


def _describe(result: RecoveryResult) -> str:
    note = f" Note: {result.note}." if result.note else ""
    if result.kind == "restore":
        if result.action == "failed":
            return f"Recovery FAILED: {result.error}"
        return (
            f"Finished the interrupted restore of backup {result.backup_id};"
            f" installed version {result.installed_version or 'unchanged'}."
        )
    run = (
        f"the interrupted run {result.version_from} → {result.version_to}"
        if result.version_from is not None
        else "the interrupted run"
    )
    if result.action == "restored":
        return (
            f"Recovered {run}: the installation was restored from backup {result.backup_id};"
            f" installed version {result.installed_version}.{note}"
        )
    if result.action == "committed":
        services = ", ".join(result.restart_services) or "none"
        return (
            f"Recovered {run}: it had committed; the installed version is now"
            f" {result.installed_version}. Services to restart: {services}"
            + (" (recorded as owed: `dopemux-update restart`)." if result.restart_services else ".")
        )
    if result.action == "failed":
        return f"Recovery of {run} FAILED: {result.error}"
    return f"Nothing to recover.{note}"


def recover_first(ctx: Context, *, force: bool = False) -> dict[str, Any] | None:
    """Before a command changes anything: finish or undo an interrupted run (lock held).

    With ``force`` (``stamp --force``), a run that recovery cannot settle is reported and
    left to the caller, which records the version the operator vouches for and then closes
    the journal with :func:`close_unrecoverable`.
    """
    if not Journal(ctx.state_dir).exists():
        return None
    # Recovery (and the restore it may need) is imported only when there is a journal.
    from .._safety._recovery import recover_sync  # noqa: PLC0415

    result = recover_sync(ctx.root, state_dir=ctx.state_dir)
    if not ctx.json:
        click.echo(_describe(result), err=not result.ok and force)
    if not result.ok and not force:
        raise CommandError(_describe(result), EXIT_RECOVERY)
    return _payload(result)


def close_unrecoverable(ctx: Context) -> bool:
    """``stamp --force`` recorded the version: close a journal recovery could not settle.

    Kept beside it as ``journal.jsonl.closed-<time>`` for the record. True if there was one.
    """
    journal = Journal(ctx.state_dir)
    if not journal.exists():
        return False
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
    aside = journal.path.with_name(f"{journal.path.name}.closed-{stamp}")
    journal.path.rename(aside)
    fsync_dir(journal.path.parent)
    logger.warning("recovery.closed_by_stamp", journal=str(aside))
    return True


def _tell(message: str) -> None:
    """A line on stderr, written as text to whatever ``sys.stderr`` is now: the live view's
    proxy prints it above the progress (``click.echo`` would hand the proxy bytes)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


async def run_interruptibly(
    work: Callable[[], Awaitable[T]],
    *,
    notice: str = (
        "Interrupted: stopping after the running migration (it gets --grace seconds),"
        " then rolling back; please wait..."
    ),
    again: str = "Still stopping; the rollback will not be cut short.",
) -> T | None:
    """Run ``work``; Ctrl-C (or SIGTERM) cancels it once, which rolls back; a second one
    during the rollback is only reported. Returns None when interrupted."""
    import anyio  # noqa: PLC0415 - updates alone: a restore or recover needs no event loop
    import anyio.lowlevel  # noqa: PLC0415

    interrupted = False
    results: list[T] = []
    errors: list[Exception] = []
    async with anyio.create_task_group() as tg:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            with anyio.CancelScope() as scope:

                async def watch() -> None:
                    nonlocal interrupted
                    async for signum in signals:
                        if not interrupted:
                            interrupted = True
                            scope.cancel()
                            # Let the cancelled work run first: the runner then stops before
                            # its next migration, before anyone reads the notice below.
                            await anyio.lowlevel.checkpoint()
                            logger.warning("update.interrupt", signal=signal.Signals(signum).name)
                            _tell(notice)
                        else:
                            _tell(again)

                tg.start_soon(watch)
                try:
                    results.append(await work())
                except Exception as exc:  # noqa: BLE001 - re-raised below, outside the group
                    errors.append(exc)
            tg.cancel_scope.cancel()
    if errors:
        raise errors[0]
    return results[0] if results else None


@click.command("recover")
@common_options
def recover_command(root: Path, migrations: Path | None, as_json: bool, verbose: int) -> int:
    """Finish or undo an interrupted run (exit 0 when there is nothing to do)."""
    from .._safety._recovery import RecoveryResult, recover_sync  # noqa: PLC0415 - as above

    ctx = make_context(root, migrations, as_json, verbose)
    if not ctx.state_dir.is_dir():
        result = RecoveryResult("none")  # no state folder, no traces: and none is created
    else:
        with holding_lock(ctx.state_dir):
            result = recover_sync(ctx.root, state_dir=ctx.state_dir)  # never raises
    code = EXIT_OK if result.ok else EXIT_RECOVERY
    payload = _payload(result)
    if result.action == "none":  # nothing done: the version stays what is recorded
        with contextlib.suppress(UpdateError):
            payload["installed_version"] = ctx.state.installed_version()
    emit(
        ctx,
        {"command": "recover", "ok": result.ok, "exit_code": code, **payload},
        [_describe(result)],
    )
    return code
