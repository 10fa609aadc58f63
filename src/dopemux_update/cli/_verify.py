"""``dopemux-update verify``: rehearse the plan on a sandbox copy of the installation; and
the preview of what the plan would change in it (``verify --changes``, ``plan --diff``)."""

from __future__ import annotations

import contextlib
import functools
import os
import sys
from pathlib import Path
from typing import Any

import anyio
import click
from packaging.version import Version

from .._authoring._rehearsal import APPLY, RehearsalCall, RehearsalReport, rehearse
from .._backup._snapshot import TableFilter
from .._core._exceptions import LockError
from .._safety._journal import Journal
from .._safety._lock import holding_lock, lock_holder
from ._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RECOVERY,
    CommandError,
    Context,
    common_options,
    emit,
    installed_version,
    make_context,
    open_run_log,
    time_limit_options,
    version_option_value,
)
from ._recover import run_interruptibly

__all__ = ["preview_changes", "verify_command"]


def _payload(report: RehearsalReport, code: int) -> dict[str, Any]:
    return {
        "command": "verify",
        "ok": report.ok,
        "exit_code": code,
        "version_from": report.version_from,
        "version_to": report.version_to,
        "direction": report.direction.value,
        "migrations": list(report.migrations),
        "stage": report.stage,
        "culprit": report.culprit,
        "culprits": list(report.culprits),
        "findings": [
            {
                "stage": finding.stage,
                "culprit": finding.culprit,
                "error": finding.error,
                "differences": finding.differences.to_json(),
            }
            for finding in report.findings
        ],
        "changes": report.changes.to_json() if report.changes is not None else None,
        "ignored_tables": list(report.ignored_tables),
        "notes": list(report.notes),
        "isolated": report.isolated,
        "abandoned": report.abandoned,
        "error": report.error,
        "differences": report.differences.to_json(),
        "calls": [
            {
                "stage": call.stage,
                "id": call.id,
                "function": call.function,
                "direction": call.way,
                "ok": call.ok,
                "seconds": round(call.seconds, 6),
                "error": call.error,
                "traceback": call.traceback,
                "output": [{"stream": stream, "line": line} for stream, line in call.output],
            }
            for call in report.calls
        ],
        "sandbox": str(report.sandbox) if report.sandbox else None,
        "seconds": round(report.seconds, 6),
    }


def _show_call(call: RehearsalCall) -> None:
    """Called from the rehearsal's worker thread, one line per migration call."""
    state = f"ok ({call.seconds:.2f}s)" if call.ok else f"FAILED: {call.error}"
    click.echo(f"  {f'{call.stage} ({call.way})':<22} {call.id}  {state}")


def _changes_lines(report: RehearsalReport) -> list[str]:
    if report.changes is None:
        return []
    plan = f"{report.direction.value} {report.version_from} → {report.version_to}"
    heading = f"What the {plan} would change in this installation:"
    return [heading, *(f"  {line}" for line in report.changes.describe())]


@click.command("verify")
@click.option("--to", "to_version", help="Target version.  [default: the newest reachable]")
@click.option("--from", "from_version", help="Current version.  [default: the recorded one]")
@click.option("--include", multiple=True, metavar="GLOB", help="Copy only what matches.")
@click.option("--exclude", multiple=True, metavar="GLOB", help="Leave out of the copy.")
@click.option(
    "--sandbox-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="Where to make the sandbox.  [default: the system's temporary folder]",
)
@click.option("--keep-sandbox", is_flag=True, help="Keep the sandbox to inspect it afterwards.")
@click.option(
    "--ignore-table",
    "ignore_tables",
    multiple=True,
    metavar="[DB:]TABLE",
    help="Leave a SQLite table out of the comparison (DB: only in that database file).",
)
@click.option(
    "--changes",
    is_flag=True,
    help="Also show what the plan would change here: diffs, row counts.",
)
@time_limit_options
@common_options
def verify_command(
    to_version: str | None,
    from_version: str | None,
    include: tuple[str, ...],
    exclude: tuple[str, ...],
    sandbox_dir: Path | None,
    keep_sandbox: bool,
    ignore_tables: tuple[str, ...],
    changes: bool,
    timeout: float | None,
    grace: float,
    root: Path,
    migrations: Path | None,
    as_json: bool,
    verbose: int,
) -> int:
    """Rehearse the plan on a sandbox copy: run it, undo it (the copy must come back
    identical), run it again. The installation is never changed. Exit 0 when clean."""
    ctx = make_context(root, migrations, as_json, verbose)
    _refuse_when_busy(ctx, "verify")
    _check_ignore_tables(ignore_tables)
    current = installed_version(ctx, version_option_value(from_version, option="--from"))
    work = functools.partial(
        rehearse,
        project_root=ctx.root,
        migrations_dir=ctx.migrations,
        current_version=current,
        target_version=version_option_value(to_version, option="--to"),
        state_dir=ctx.state_dir,
        include=include,
        exclude=exclude,
        sandbox_dir=sandbox_dir,
        keep_sandbox=keep_sandbox,
        on_call=None if ctx.json else _show_call,
        migration_timeout=timeout,
        grace=grace,
        ignore_tables=ignore_tables,
        changes=changes,
    )
    if not ctx.json:
        click.echo(f"Rehearsing on a sandbox copy of {ctx.root.resolve()} ...")
    # Every event, output line and traceback, kept in memory until the rehearsal has run
    # (a refused verify leaves no log), then written to .dopemux/update/logs/.
    # An installation without a state folder gets none from verify (only stamp, upgrade,
    # downgrade and backups create make one): no lock to take, since no update can hold
    # one there, and the run log stays in memory.
    keeps_state = ctx.state_dir.is_dir()
    run_log = open_run_log(ctx, "verify", verbose)
    try:
        # Held throughout, so that the copy is not taken halfway through someone's update.
        with holding_lock(ctx.state_dir) if keeps_state else contextlib.nullcontext():
            report = anyio.run(
                functools.partial(
                    run_interruptibly,
                    work,
                    notice="Interrupted: stopping the rehearsal and removing its sandbox...",
                    again="Still stopping; the installation itself was never touched.",
                )
            )
        if keeps_state:
            run_log.start()
        else:
            run_log.discard()
    finally:
        run_log.close()
    log_path = run_log.path if keeps_state else None
    if report is None:
        return _interrupted(ctx, log_path)
    code = EXIT_OK if report.ok else EXIT_FAILED
    lines = report.describe()
    if not report.migrations:
        lines = [f"Nothing to rehearse: no migration between {report.version_from} and itself."]
    lines = [*_changes_lines(report), *lines]
    if log_path is not None:
        lines.append(f"Log: {log_path}")
    emit(ctx, {**_payload(report, code), "log": str(log_path) if log_path else None}, lines)
    if report.abandoned:
        # A migration's thread is still running (on the sandbox, which is gone); leave now,
        # before it can print into this command's output.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _refuse_when_busy(ctx: Context, command: str) -> None:
    running = lock_holder(ctx.state_dir)  # before the journal: a running update has one
    if running is not None:
        raise LockError(f"another update is running on this installation: {running}")
    if Journal(ctx.state_dir).exists():
        raise CommandError(
            "an update of this installation was interrupted and needs recovery: run"
            f" `dopemux-update recover` first, then {command}",
            EXIT_RECOVERY,
        )


def _check_ignore_tables(values: tuple[str, ...]) -> None:
    try:
        TableFilter.parse(values)
    except ValueError as exc:
        raise CommandError(f"--ignore-table {exc}") from exc


def preview_changes(
    ctx: Context, current: Version, target: Version | None
) -> tuple[dict[str, Any], list[str]]:
    """What the plan's forward pass would change in the installation (``plan --diff``): run
    on a sandbox copy, under the update lock; the installation is never changed. Returns
    the JSON object (``changes``, ``restart_problems``) and the lines for people. Raises
    :class:`CommandError` when a migration fails in the sandbox (nothing to preview)."""
    _refuse_when_busy(ctx, "plan --diff")
    work = functools.partial(
        rehearse,
        project_root=ctx.root,
        migrations_dir=ctx.migrations,
        current_version=current,
        target_version=target,
        state_dir=ctx.state_dir,
        forward_only=True,
    )
    with holding_lock(ctx.state_dir) if ctx.state_dir.is_dir() else contextlib.nullcontext():
        report = anyio.run(
            functools.partial(
                run_interruptibly,
                work,
                notice="Interrupted: stopping the preview and removing its sandbox...",
                again="Still stopping; the installation itself was never touched.",
            )
        )
    if report is None:
        raise CommandError("interrupted; the installation was never touched", EXIT_INTERRUPTED)
    if report.stage == APPLY:
        raise CommandError(
            f"cannot preview the changes: in a sandbox copy, {report.error}", EXIT_FAILED
        )
    problems = [f.error for f in report.findings]
    payload = {
        "changes": report.changes.to_json() if report.changes is not None else None,
        "restart_problems": problems,
    }
    lines = ["", *_changes_lines(report), *(f"WARNING: {problem}" for problem in problems)]
    return payload, lines


def _interrupted(ctx: Context, log: Path | None) -> int:
    message = "Interrupted; the rehearsal was stopped. The installation was never touched."
    emit(
        ctx,
        {
            "command": "verify",
            "ok": False,
            "exit_code": EXIT_INTERRUPTED,
            "error": message,
            "log": str(log) if log is not None else None,
        },
        [message, *([f"Log: {log}"] if log is not None else [])],
    )
    return EXIT_INTERRUPTED
