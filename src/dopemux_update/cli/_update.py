"""The commands that plan and change the installed version: ``plan``, ``upgrade``,
``downgrade``, ``stamp`` and ``new`` (:mod:`.cli` loads this module only when one of them
runs)."""

from __future__ import annotations

import gc
import os
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import anyio
import click
from packaging.version import Version

from .._core._exceptions import LockError, StateError, UpdateError
from .._core._models import Direction, Plan, UpdateResult
from .._core._versions import parse_version
from .._run._discovery import scan_migrations
from .._run._health import find_compose_file
from .._run._orchestration import OrchestrationPhase
from .._run._planning import baseline, spelled
from .._run._restart import (
    CommandRestarter,
    DockerComposeRestarter,
    Restarter,
    RestartResult,
)
from .._safety._journal import Journal
from .._safety._lock import holding_lock
from ._common import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_RECOVERY,
    EXIT_RESTART_FAILED,
    EXIT_UNHEALTHY,
    EXIT_USAGE,
    CommandError,
    Context,
    F,
    RunLog,
    common_options,
    emit,
    installed_version,
    make_context,
    open_run_log,
    time_limit_options,
    version_option_value,
)
from ._console import (
    Display,
    OutputCollector,
    display_mode,
    open_display,
    show_plan,
)
from ._gate import (
    GateOptions,
    GateOutcome,
    gate_options,
    gate_payload,
    gate_summary,
    owed_after,
    record_restarts,
    restart_phase_for,
    revert_unhealthy,
)
from ._recover import close_unrecoverable, recover_first, run_interruptibly
from ._summary import build_summary

__all__ = ["downgrade", "new", "plan", "stamp", "upgrade"]


def _plan_payload(plan: Plan) -> dict[str, Any]:
    return {
        "version_from": str(plan.current),
        "version_to": str(plan.target),
        "direction": plan.direction.value,
        "hops": [hop.name for hop in plan.hops],
        "no_op": [{"version_from": str(a), "version_to": str(b)} for a, b in plan.noop],
        "migrations": [
            {
                "id": step.id,
                "description": step.migration.declared.description,
                "estimated_duration_seconds": step.migration.declared.estimated_duration_seconds,
                "breaking_changes": step.migration.declared.breaking_changes,
                "requires_restart": list(step.migration.declared.requires_restart),
                "backup_required": step.migration.declared.backup_required,
            }
            for step in plan.steps
        ],
        "breaking_migrations": list(plan.breaking_changes),
        "restart_services": list(plan.restart_services),
        "estimated_duration_seconds": plan.estimated_seconds,
        "backup_required": plan.backup_required,
    }


T = TypeVar("T")


def _planned(phase: OrchestrationPhase) -> Plan:
    """``phase.plan()``, without the garbage collector walking what lives as long as the
    command: the modules imported so far, then the plan and its migrations, frozen (a
    caller of ``main(argv)`` in its own process gets them unfrozen when it returns). A plan
    of a thousand migrations otherwise sets off collections of everything, a full one among
    them, and so does the exit: tens of milliseconds."""
    gc.freeze()
    enabled = gc.isenabled()
    gc.disable()
    try:
        return _run(phase.plan)
    finally:
        gc.freeze()
        if enabled:
            gc.enable()


def _run(function: Callable[[], Awaitable[T]]) -> T:
    """``anyio.run(function)``, its main task ending with None: when Python 3.11's asyncio
    puts the Ctrl-C handler back it formats that task, result and all, three times, and a
    plan of a thousand migrations takes tens of milliseconds to format."""
    box: list[T] = []

    async def main() -> None:
        box.append(await function())

    anyio.run(main)
    return box[0]


# -- the commands ---------------------------------------------------------------------------


@click.command()
@click.option("--to", "to_version", help="Target version.  [default: the newest reachable]")
@click.option("--from", "from_version", help="Current version.  [default: the recorded one]")
@click.option(
    "--diff", "show_diff", is_flag=True, help="Preview the changes here (on a sandbox copy)."
)
@common_options
def plan(
    to_version: str | None,
    from_version: str | None,
    show_diff: bool,
    root: Path,
    migrations: Path | None,
    as_json: bool,
    verbose: int,
) -> int:
    """Validate every migration between two versions and show the plan."""
    ctx = make_context(root, migrations, as_json, verbose)
    current = installed_version(ctx, version_option_value(from_version, option="--from"))
    phase = OrchestrationPhase(
        project_root=ctx.root,
        migrations_dir=ctx.migrations,
        current_version=current,
        target_version=version_option_value(to_version, option="--to"),
        state_dir=ctx.state_dir,
    )
    the_plan = _run(phase.plan)
    preview: tuple[dict[str, Any], list[str]] = ({}, [])
    if show_diff:  # the forward pass on a sandbox copy: what it would change here
        from ._verify import preview_changes  # noqa: PLC0415 - the sandbox: for --diff only

        preview = preview_changes(ctx, current, version_option_value(to_version, option="--to"))
    emit(ctx, {"command": "plan", **_plan_payload(the_plan), **preview[0]})
    show_plan(the_plan, display_mode(ctx.json))
    for line in [] if ctx.json else preview[1]:
        click.echo(line)
    return EXIT_OK


def _update_options(function: F) -> F:
    decorators = [
        click.option(
            "--from",
            "from_version",
            metavar="VERSION",
            help="Current version (must be the recorded one, unless --force)."
            "  [default: the recorded one]",
        ),
        click.option(
            "--force",
            is_flag=True,
            help="Run from --from VERSION even though another version is recorded.",
        ),
        click.option(
            "--yes",
            "-y",
            is_flag=True,
            help="Do not ask for confirmation (asked before breaking changes and before"
            " every downgrade).",
        ),
        click.option(
            "--no-restart", is_flag=True, help="List the services to restart; restart none."
        ),
        click.option(
            "--restart-command",
            metavar="TEMPLATE",
            help="Restart each service with this command, e.g. 'systemctl restart {service}'.",
        ),
        gate_options,
        click.option("--include", multiple=True, metavar="GLOB", help="Back up only what matches."),
        click.option("--exclude", multiple=True, metavar="GLOB", help="Leave out of the backup."),
        time_limit_options,
        click.option(
            "--keep-backups",
            type=click.IntRange(min=1),
            metavar="N",
            default=5,
            show_default=True,
            help="Backups kept after a successful update.",
        ),
        click.option(
            "--full-backup",
            is_flag=True,
            help="Copy every file into the backup, sharing none with older backups.",
        ),
        common_options,
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


@click.command()
@click.option(
    "--to",
    "to_version",
    metavar="VERSION",
    help="Target version.  [default: the newest reachable]",
)
@_update_options
def upgrade(to_version: str | None, **options: Any) -> int:
    """Run the migrations up to a newer version."""
    return _update(Direction.UPGRADE, to_version, **options)


@click.command()
@click.option(
    "--to",
    "to_version",
    required=True,
    metavar="VERSION",
    help="The older version to go back to.",
)
@_update_options
def downgrade(to_version: str, **options: Any) -> int:
    """Run the migrations backward to an older version."""
    return _update(Direction.DOWNGRADE, to_version, **options)


def _restarter(ctx: Context, command: str | None) -> Restarter | None:
    if command is not None:
        try:
            restarter = CommandRestarter(command, cwd=ctx.root)
        except ValueError as exc:
            raise CommandError(f"--restart-command: {exc}") from exc
        program = restarter.args[0]
        import shutil  # noqa: PLC0415 - for --restart-command alone

        found = shutil.which(program)
        local = ctx.root / program
        if found is None and "{service}" not in program and not os.access(local, os.X_OK):
            # Found out before any migration runs, not as a failed restart after the commit.
            raise CommandError(f"--restart-command: {program!r} is not an executable program")
        return restarter
    root = ctx.root.resolve()  # the restarter runs in root: a relative path would not hold
    compose = find_compose_file(root)
    return DockerComposeRestarter(root, compose_file=compose) if compose is not None else None


def _confirm(ctx: Context, plan: Plan, yes: bool, display: Display) -> None:
    reasons = []
    if plan.direction is Direction.DOWNGRADE and plan.steps:
        reasons.append(f"this downgrade runs {len(plan.steps)} migration(s) backward")
    if plan.breaking_changes:
        reasons.append("breaking changes: " + ", ".join(plan.breaking_changes))
    if not reasons or yes:
        return
    if ctx.json or not sys.stdin.isatty():
        raise CommandError(
            f"confirmation needed ({'; '.join(reasons)}) and there is no terminal to ask:"
            " pass --yes to go ahead"
        )
    display.show_plan_now(plan)  # what the operator is asked to agree to
    if not click.confirm(f"{'; '.join(reasons).capitalize()}. Continue?", err=True):
        raise CommandError("cancelled; nothing was changed", EXIT_USAGE)


class UpdateOptions(NamedTuple):
    """The options ``upgrade`` and ``downgrade`` share, as click passes them (a named tuple:
    created at every start of the command, it costs a tenth of a frozen dataclass)."""

    to_version: str | None
    from_version: str | None
    yes: bool
    no_restart: bool
    restart_command: str | None
    include: tuple[str, ...]
    exclude: tuple[str, ...]
    keep_backups: int
    timeout: float | None
    grace: float
    full_backup: bool = False
    health_timeout: float | None = None
    health_command: str | None = None
    no_health_check: bool = False
    force: bool = False

    @property
    def gate(self) -> GateOptions:
        return GateOptions(self.health_timeout, self.health_command, self.no_health_check)


def _update(expected: Direction, to_version: str | None, **options: Any) -> int:
    common = {key: options.pop(key) for key in ("root", "migrations", "as_json", "verbose")}
    ctx = make_context(**common)
    run_log = open_run_log(ctx, expected.value, common["verbose"])
    try:
        return _update_logged(ctx, run_log, expected, UpdateOptions(to_version, **options))
    except LockError:
        run_log.discard()  # refused before anything ran: like any refused command, no log
        raise
    except UpdateError:
        if run_log.started:
            click.echo(f"Log: {run_log.path}", err=True)
        raise
    finally:
        run_log.close()


def _update_logged(ctx: Context, run_log: RunLog, expected: Direction, opts: UpdateOptions) -> int:
    recovered = None
    if Journal(ctx.state_dir).exists():
        run_log.start()
        with holding_lock(ctx.state_dir):
            recovered = recover_first(ctx)
    current = installed_version(ctx, version_option_value(opts.from_version, option="--from"))
    _check_from(ctx, current, force=opts.force)
    target = version_option_value(opts.to_version, option="--to")
    if opts.no_restart and opts.restart_command is not None:
        raise CommandError("--restart-command and --no-restart contradict each other: pass one")
    opts.gate.check(no_restart=opts.no_restart)
    restarter = None if opts.no_restart else _restarter(ctx, opts.restart_command)
    restart_phase, no_gate = restart_phase_for(ctx, restarter, opts.gate)
    gate = GateOutcome()
    collector = OutputCollector()
    display = open_display(display_mode(ctx.json), collector)
    phase = OrchestrationPhase(
        project_root=ctx.root,
        migrations_dir=ctx.migrations,
        current_version=current,
        target_version=target,
        restart_phase=restart_phase,
        state_dir=ctx.state_dir,
        on_event=display,
        backup_include=opts.include,
        backup_exclude=opts.exclude,
        keep_backups=opts.keep_backups,
        timeout=opts.timeout,
        grace=opts.grace,
        full_backup=opts.full_backup,
        force=opts.force,
    )
    # Validation first, reading only: a bad migration changes nothing, not even the lock file.
    the_plan = _planned(phase)
    if not the_plan.is_empty or the_plan.moves:
        if the_plan.direction is not expected:
            other = "downgrade" if expected is Direction.UPGRADE else "upgrade"
            raise CommandError(
                f"{the_plan.target} is {'below' if other == 'downgrade' else 'above'}"
                f" the installed {the_plan.current}: use `dopemux-update {other}`"
            )
        _confirm(ctx, the_plan, opts.yes, display)
        run_log.start()  # validation passed: from here on the run leaves a log

    async def run() -> tuple[UpdateResult, RestartResult | None]:
        result = await phase.execute()
        restarted = None
        if result.ok and restart_phase is not None and restart_phase.services:
            display.restarting(restart_phase.services)
            restarted = await restart_phase.execute()
            if restarted.unhealthy and restarter is not None:
                await revert_unhealthy(phase, restarter, display, gate)
        return result, restarted

    with display:
        outcome = _run(lambda: run_interruptibly(run))
    log_path = run_log.path if run_log.started else None
    interrupted = outcome is None
    if outcome is None:
        if phase.result is None:  # interrupted before the run began: nothing was changed
            return _report_interrupted(ctx, collector, log_path)
        outcome = (phase.result, None)
    result, restarted = outcome
    gate.owed = record_restarts(ctx, *owed_after(result, restarted, gate))
    code = _report_update(
        ctx,
        result,
        restarted,
        display,
        command=expected,
        gate=gate,
        no_gate=no_gate,
        restarter_used=restarter is not None,
        recovered=recovered,
        log_path=log_path,
        interrupted=interrupted,
    )
    if result.abandoned:
        # A migration's thread is still running and can't be stopped; leaving through the
        # normal exit would wait for it. The journal tells `recover` what to do.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code


def _check_from(ctx: Context, current: Version, *, force: bool) -> None:
    """``--from`` that is not the recorded version would repeat or skip migrations."""
    recorded = ctx.state.installed_version()
    if force or recorded is None or parse_version(recorded) == current:
        return
    raise CommandError(
        f"--from {current} disagrees with the recorded installed version {recorded}"
        f" ({ctx.state.path}): running from {current} would repeat or skip migrations;"
        " pass --force to run from it anyway, or `dopemux-update stamp VERSION` to correct"
        " the record"
    )


def _report_interrupted(ctx: Context, collector: OutputCollector, log_path: Path | None) -> int:
    history = ctx.state.read().history
    last = history[-1] if history else None
    stuck = last is not None and last.outcome == "needs_recovery"
    code = EXIT_RECOVERY if stuck else EXIT_INTERRUPTED
    message = (
        "Interrupted; the rollback did not complete: the installation NEEDS RECOVERY"
        " (run `dopemux-update recover`)."
        if stuck
        else "Interrupted; the update was rolled back and the installation is as before."
    )
    emit(
        ctx,
        {
            "ok": False,
            "exit_code": code,
            "interrupted": True,
            "needs_recovery": stuck,
            "health": [],
            "reverted": False,
            "log": str(log_path) if log_path else None,
            "error": message,
            "output": collector.lines,
        },
        [message, *([f"Log: {log_path}"] if log_path else [])],
    )
    return code


def _rollback_outcome(result: UpdateResult) -> str | None:
    """What a failed run's rollback achieved, in one word a script can test."""
    if result.ok or result.committed:
        return None
    if result.verified_identical:
        return "restored_verified"
    if result.backup_id is None:
        return "backward_only_unverified"  # no backup: partial writes may remain
    if result.backup_lost:
        return "backup_lost"
    return "incomplete"


def _report_update(
    ctx: Context,
    result: UpdateResult,
    restarted: RestartResult | None,
    display: Display,
    *,
    command: Direction,
    restarter_used: bool,
    gate: GateOutcome | None = None,
    no_gate: str | None = None,
    recovered: dict[str, Any] | None = None,
    log_path: Path | None = None,
    interrupted: bool = False,
) -> int:
    gate = gate if gate is not None else GateOutcome()
    if gate.attempted:
        code = EXIT_UNHEALTHY if gate.reverted else EXIT_RECOVERY
    elif result.ok:
        code = EXIT_RESTART_FAILED if restarted is not None and restarted.failed else EXIT_OK
    elif result.needs_recovery:
        code = EXIT_RECOVERY
    else:
        code = EXIT_INTERRUPTED if interrupted else EXIT_FAILED
    failed = restarted.failed if restarted is not None else ()
    payload = {
        # The command run: a plan with nothing to do has no direction of its own.
        "command": command.value,
        "ok": result.ok,
        "exit_code": code,
        "version_from": result.version_from,
        "version_to": result.version_to,
        "installed_version": result.installed_version,
        "applied": list(result.applied),
        "rolled_back": list(result.rolled_back),
        "failed_migration": result.failed_migration,
        "error": result.error,
        "needs_recovery": result.needs_recovery,
        "backup_id": result.backup_id,
        "restored": result.restored,
        "restart_services": list(result.restart_services),
        "restarted": list(restarted.restarted) if restarted is not None else [],
        "restart_failed": [{"service": name, "error": error} for name, error in failed],
        "calls": _calls_payload(result, display.collector.undo),
        "output": display.collector.lines,
        "recovered": recovered,
        "abandoned": result.abandoned,
        "verified_identical": result.verified_identical,
        "committed": result.committed,
        "backup_lost": result.backup_lost,
        "rollback": _rollback_outcome(result),
        "interrupted": interrupted,
        "log": str(log_path) if log_path else None,
        **gate_payload(restarted, gate, no_gate),
    }
    emit(ctx, payload)
    if ctx.json:  # the object above is the whole report: --json shows no summary
        return code
    summary = build_summary(
        result,
        restarted,
        plan=display.collector.plan,
        undo=display.collector.undo,
        restarter_used=restarter_used,
        log_path=log_path,
        output=display.collector.lines,
    )
    display.show_summary(gate_summary(summary, result, restarted, gate, no_gate))
    return code


def _calls_payload(
    result: UpdateResult, undo: dict[str, tuple[bool, float]]
) -> list[dict[str, Any]]:
    """Each migration call in the order it ran, shaped as ``verify``'s ``calls``: the
    steps (stage ``apply``), then the undos of a rollback (stage ``rollback``)."""
    forward = result.direction is Direction.UPGRADE
    way, undo_way = ("forward", "backward") if forward else ("backward", "forward")
    calls: list[dict[str, Any]] = [
        {
            "stage": "apply",
            "id": ident,
            "function": f"migrate_{way}",
            "direction": way,
            "ok": ident != result.failed_migration,
            "seconds": round(seconds, 6),
            "error": result.error if ident == result.failed_migration else None,
        }
        for ident, seconds in result.durations
    ]
    calls.extend(
        {
            "stage": "rollback",
            "id": ident,
            "function": f"migrate_{undo_way}",
            "direction": undo_way,
            "ok": ok,
            "seconds": round(seconds, 6),
            "error": None,
        }
        for ident, (ok, seconds) in undo.items()
    )
    return calls


@click.command()
@click.argument("version")
@click.option(
    "--force",
    is_flag=True,
    help="Record VERSION even below the baseline (the oldest version a migration folder"
    " starts from), over a corrupt state.json (kept aside as state.json.corrupt-TIME) or"
    " over an interrupted run that `recover` cannot settle (its journal kept aside as"
    " journal.jsonl.closed-TIME).",
)
@common_options
def stamp(
    version: str, force: bool, root: Path, migrations: Path | None, as_json: bool, verbose: int
) -> int:
    """Record VERSION as installed, without running any migration."""
    ctx = make_context(root, migrations, as_json, verbose)
    parsed = version_option_value(version, option="VERSION")
    assert parsed is not None  # noqa: S101 - VERSION is a required argument
    try:
        transitions = scan_migrations(ctx.migrations).transitions
    except UpdateError:  # a broken migrations folder must not stop a repair of the record
        transitions = ()
    first = baseline(transitions)
    if first is not None and parsed < first and not force:
        raise CommandError(
            f"{parsed} is older than the baseline {first} (the oldest version a migration"
            f" folder in {ctx.migrations} starts from): no migration could be planned from it;"
            " pass --force to record it anyway"
        )
    parsed = spelled(transitions, parsed)  # 0.2 is recorded as the folder's 0.2.0
    aside = None
    closed = False
    with holding_lock(ctx.state_dir):
        if force:
            try:
                ctx.state.read()
            except StateError:
                aside = ctx.state.set_aside()  # the one command that can repair it
        recovered = recover_first(ctx, force=force)
        try:
            previous = ctx.state.installed_version()
        except StateError as exc:
            raise CommandError(
                f"{exc}; to record {parsed} over it, pass --force (the file is kept aside)"
            ) from exc
        ctx.state.record(installed_version=str(parsed))
        if recovered is not None and recovered["action"] == "failed":
            closed = close_unrecoverable(ctx)
    lines = [f"Recorded {parsed} as the installed version (was {previous or 'not recorded'})."]
    if aside is not None:
        lines.append(f"The corrupt state file was kept as {aside}.")
    if closed:
        lines.append("The interrupted run that could not be recovered is now closed.")
    emit(
        ctx,
        {
            "command": "stamp",
            "installed_version": str(parsed),
            "previous_version": previous,
            "corrupt_state_kept": str(aside) if aside is not None else None,
            "closed_interrupted_run": closed,
        },
        lines,
    )
    return EXIT_OK


@click.command()
@click.option("--from", "from_version", required=True, help="The version it migrates from.")
@click.option("--to", "to_version", required=True, help="The version it migrates to.")
@click.argument("name")
@common_options
def new(
    from_version: str,
    to_version: str,
    name: str,
    root: Path,
    migrations: Path | None,
    as_json: bool,
    verbose: int,
) -> int:
    """Create migrations/vFROM_to_vTO/NNN_NAME.py, ready to edit."""
    from .._authoring._scaffold import new_migration  # noqa: PLC0415 - for `new` only

    ctx = make_context(root, migrations, as_json, verbose, new_migrations=True)
    path = new_migration(ctx.migrations, from_version, to_version, name)
    migration_id = f"{path.parent.name}/{path.stem}"
    emit(
        ctx,
        {"command": "new", "path": str(path), "id": migration_id},
        [f"Created {path}", "Edit both functions and MIGRATION_INFO, then `dopemux-update plan`."],
    )
    return EXIT_OK
