"""``dopemux-update restart``: the restarts an installation still owes, health-checked.

Exit 0 when nothing is owed or every owed service restarted (and, where checked, became
healthy): the record is cleared. Exit 5 when a restart fails or a service stays unhealthy:
those stay owed (nothing to revert here: the run that asked for them was committed earlier).
"""

from __future__ import annotations

from pathlib import Path

import anyio
import click

from .._core._exceptions import StateError
from .._safety._journal import Journal
from .._safety._lock import holding_lock
from ._common import (
    EXIT_OK,
    EXIT_RECOVERY,
    EXIT_RESTART_FAILED,
    CommandError,
    common_options,
    emit,
    make_context,
)
from ._gate import GateOptions, gate_options, health_list, restart_phase_for

__all__ = ["restart_command"]


@click.command("restart")
@click.option(
    "--restart-command",
    metavar="TEMPLATE",
    help="Restart each service with this command, e.g. 'systemctl restart {service}'.",
)
@gate_options
@common_options
def restart_command(
    restart_command: str | None,
    health_timeout: float | None,
    health_command: str | None,
    no_health_check: bool,
    root: Path,
    migrations: Path | None,
    as_json: bool,
    verbose: int,
) -> int:
    """Restart (and health-check) the services an earlier run still owes."""
    from ._update import _restarter  # noqa: PLC0415 - the update commands, loaded here

    ctx = make_context(root, migrations, as_json, verbose)
    gate = GateOptions(health_timeout, health_command, no_health_check)
    gate.check(no_restart=False)
    try:
        owed = ctx.state.read().restarts_owed
    except StateError as exc:
        raise CommandError(str(exc)) from exc
    if not owed:
        emit(
            ctx,
            {
                "command": "restart",
                "ok": True,
                "exit_code": EXIT_OK,
                "restarted": [],
                "restart_failed": [],
                "health": [],
                "restarts_owed": [],
            },
            ["Nothing to restart: no restart is owed."],
        )
        return EXIT_OK
    restarter = _restarter(ctx, restart_command)
    if restarter is None:
        raise CommandError(
            f"no compose file in {ctx.root} to restart {', '.join(owed)} with:"
            " pass --restart-command TEMPLATE"
        )
    phase, no_gate = restart_phase_for(ctx, restarter, gate)
    assert phase is not None  # noqa: S101 - there is a restarter
    with holding_lock(ctx.state_dir):
        if Journal(ctx.state_dir).exists():
            raise CommandError(
                "an earlier run was interrupted: run `dopemux-update recover` first",
                EXIT_RECOVERY,
            )
        # A later downgrade may have removed a service from the compose file: nothing to
        # restart any more, so it is no longer owed.
        gone = phase.unknown_services(owed)
        phase.hand_over(name for name in owed if name not in gone)
        result = anyio.run(phase.execute)
        unhealthy = set(result.unhealthy)
        done = [name for name in result.restarted if name not in unhealthy]
        left = ctx.state.settle_restarts([*done, *gone]).restarts_owed
    code = EXIT_OK if result.ok else EXIT_RESTART_FAILED
    lines = [f"Restarted: {', '.join(result.restarted) or 'none'}"]
    if no_gate is not None:
        lines.append(f"Health: {no_gate}")
    lines.extend(
        f"{'Healthy' if s.healthy else 'UNHEALTHY'}: {s.service}: {s.detail}" for s in result.health
    )
    lines.extend(f"RESTART FAILED: {name}: {error}" for name, error in result.failed)
    if gone:
        lines.append(f"No longer in the compose file (not owed any more): {', '.join(gone)}")
    lines.append(
        f"Still owed: {', '.join(left)} (run `dopemux-update restart` again)"
        if left
        else "No restart is owed any more."
    )
    emit(
        ctx,
        {
            "command": "restart",
            "ok": result.ok,
            "exit_code": code,
            "restarted": list(result.restarted),
            "restart_failed": [{"service": n, "error": e} for n, e in result.failed],
            "health": health_list(result.health),
            "restarts_owed": list(left),
            "removed_services": list(gone),
        },
        lines,
    )
    return code
