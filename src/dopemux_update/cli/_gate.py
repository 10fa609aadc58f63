"""The health gate of ``upgrade``/``downgrade``/``restart`` on the command line, the revert
after an unhealthy service, and the restarts an installation still owes.

- ``--health-timeout S`` (default 60), ``--health-command TEMPLATE``, ``--no-health-check``.
  The compose restarter brings its own check (``docker compose ps``); a ``--restart-command``
  without ``--health-command`` has none: the summary says the services were not checked.
- A service unhealthy at the deadline: the committed run is reverted (``revert_run``), the
  services are restarted again (not gated: the tree is back as it was), exit 6. A revert
  that fails or is refused: exit 3, the run's backup kept.
- A restart that failed, was skipped (``--no-restart``) or had no restarter is owed:
  ``state.json``'s ``restarts_owed`` keeps it until ``dopemux-update restart`` does it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import click

from .._core._exceptions import UpdateError
from .._core._log import get_logger
from .._core._models import UpdateResult
from .._run._health import CommandHealth, HealthChecker, HealthStatus
from .._run._orchestration import OrchestrationPhase
from .._run._restart import DEFAULT_HEALTH_TIMEOUT, Restarter, RestartResult, ServiceRestartPhase
from .._run._revert import HEALTH_REASON
from .._safety._lock import holding_lock
from ._common import CommandError, Context, F
from ._console import Display
from ._summary import Detail, Summary

__all__ = [
    "GateOptions",
    "GateOutcome",
    "gate_options",
    "gate_payload",
    "gate_summary",
    "record_restarts",
    "restart_phase_for",
    "revert_unhealthy",
]

logger = get_logger()


def gate_options(function: F) -> F:
    """``--health-timeout``, ``--health-command`` and ``--no-health-check``."""
    decorators = [
        click.option(
            "--health-timeout",
            type=click.FloatRange(min=0),
            default=None,
            metavar="SECONDS",
            help=f"How long restarted services get to become healthy."
            f"  [default: {DEFAULT_HEALTH_TIMEOUT:g}]",
        ),
        click.option(
            "--health-command",
            metavar="TEMPLATE",
            help="Check each restarted service with this command (exit 0 = healthy), e.g."
            " 'curl -fsS http://localhost/{service}/health'.",
        ),
        click.option(
            "--no-health-check", is_flag=True, help="Restart the services; do not wait for health."
        ),
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


class GateOptions(NamedTuple):
    """The health gate's options, as click passes them."""

    health_timeout: float | None = None
    health_command: str | None = None
    no_health_check: bool = False

    def check(self, *, no_restart: bool) -> None:
        """Combinations that make no sense are usage errors (exit 2), before anything runs."""
        given = [
            name
            for name, value in (
                ("--health-command", self.health_command is not None),
                ("--health-timeout", self.health_timeout is not None),
                ("--no-health-check", self.no_health_check),
            )
            if value
        ]
        if no_restart and given:
            raise CommandError(f"{', '.join(given)}: there is no health check with --no-restart")
        if self.no_health_check and len(given) > 1:
            raise CommandError(f"--no-health-check cannot go with {given[0]}")


def restart_phase_for(
    ctx: Context, restarter: Restarter | None, gate: GateOptions
) -> tuple[ServiceRestartPhase | None, str | None]:
    """The restart phase, and why there is no health gate (None when there is one)."""
    if restarter is None:
        return None, None
    timeout = DEFAULT_HEALTH_TIMEOUT if gate.health_timeout is None else gate.health_timeout
    if gate.no_health_check:
        return ServiceRestartPhase(restarter, health=None), "not checked (--no-health-check)"
    if gate.health_command is not None:
        try:
            checker: HealthChecker = CommandHealth(gate.health_command, cwd=ctx.root)
        except ValueError as exc:
            raise CommandError(f"--health-command: {exc}") from exc
        return ServiceRestartPhase(restarter, health=checker, health_timeout=timeout), None
    phase = ServiceRestartPhase(restarter, health_timeout=timeout)
    if phase.health is None:
        return phase, "not checked (--restart-command without --health-command)"
    return phase, None


class GateOutcome:
    """What happened after the restarts: the revert (when a service was unhealthy).

    Filled in as the command goes; a class with slots, cheaper to create than a dataclass.
    """

    __slots__ = ("again", "attempted", "error", "owed", "revert")

    def __init__(self) -> None:
        self.attempted = False
        self.revert: UpdateResult | None = None
        self.error: str | None = None
        self.again: RestartResult | None = None
        self.owed: tuple[str, ...] = ()

    @property
    def reverted(self) -> bool:
        return self.revert is not None and self.revert.ok


async def revert_unhealthy(
    phase: OrchestrationPhase, restarter: Restarter, display: Display, outcome: GateOutcome
) -> None:
    """A restarted service is unhealthy: revert the committed run, restart again."""
    outcome.attempted = True
    again = ServiceRestartPhase(restarter, health=None)
    phase.on_event = None  # the display has shown the run; the revert is summarised after
    try:
        outcome.revert = await phase.revert(restart_phase=again, reason=HEALTH_REASON)
    except UpdateError as exc:
        outcome.error = str(exc)
        logger.error("revert.refused", error=outcome.error)
        return
    if not outcome.revert.ok:
        outcome.error = outcome.revert.error or "the revert failed"
        logger.error("revert.failed", error=outcome.error)
        return
    if again.services:
        display.restarting(again.services)
        outcome.again = await again.execute()


def owed_after(
    result: UpdateResult, restarted: RestartResult | None, outcome: GateOutcome
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(services now owed a restart, services restarted) after an update."""
    if not result.ok:
        return (), ()
    done = list(restarted.restarted) if restarted is not None else []
    if outcome.reverted and outcome.again is not None:
        done += outcome.again.restarted
        return tuple(name for name, _ in outcome.again.failed), tuple(done)
    if restarted is None:
        return tuple(result.restart_services), ()
    return tuple(name for name, _ in restarted.failed), tuple(done)


def record_restarts(ctx: Context, owed: Iterable[str], done: Iterable[str]) -> tuple[str, ...]:
    """Add ``owed`` to, and remove ``done`` from, ``state.json``'s restarts owed; the list
    after. A write that fails is logged, not raised: the update itself is over."""
    owed, done = list(owed), [name for name in done if name not in set(owed)]
    store = ctx.state
    try:
        if owed or done:
            with holding_lock(ctx.state_dir):
                store.settle_restarts(done)
                store.owe_restarts(owed)
        return store.read().restarts_owed
    except (OSError, UpdateError) as exc:
        logger.warning("state.restarts_owed_unrecorded", error=str(exc), owed=owed)
        return tuple(owed)


def health_list(statuses: Sequence[HealthStatus]) -> list[dict[str, Any]]:
    return [{"service": s.service, "healthy": s.healthy, "detail": s.detail} for s in statuses]


def gate_payload(
    restarted: RestartResult | None, outcome: GateOutcome, no_gate: str | None
) -> dict[str, Any]:
    revert = outcome.revert
    return {
        "health": health_list(restarted.health) if restarted is not None else [],
        "health_checked": restarted is not None and bool(restarted.health),
        "health_not_checked": no_gate,
        "reverted": outcome.reverted,
        "revert": None
        if not outcome.attempted
        else {
            "ok": outcome.reverted,
            "error": outcome.error or (None if outcome.reverted else "the revert was interrupted"),
            "applied": list(revert.applied) if revert is not None else [],
            "backup_id": revert.backup_id if revert is not None else None,
            "needs_recovery": revert.needs_recovery if revert is not None else False,
            "restarted": list(outcome.again.restarted) if outcome.again is not None else [],
        },
        "restarts_owed": list(outcome.owed),
    }


def gate_summary(
    summary: Summary,
    result: UpdateResult,
    restarted: RestartResult | None,
    outcome: GateOutcome,
    no_gate: str | None,
) -> Summary:
    """The update's summary with the health gate, the revert and the restarts owed."""
    details = list(summary.details)
    closing = list(summary.closing)
    headline = summary.headline
    if restarted is not None and restarted.restarted:
        if no_gate is not None:
            details.append(Detail("Health", no_gate))
        for status in restarted.health:
            label = "Healthy" if status.healthy else "UNHEALTHY"
            details.append(Detail(label, f"{status.service}: {status.detail}", not status.healthy))
    if outcome.attempted:
        revert = outcome.revert
        if outcome.reverted and revert is not None:
            sick = ", ".join(restarted.unhealthy if restarted is not None else ())
            headline = (
                f"REVERTED: {sick} did not become healthy after the update to"
                f" {result.version_to}; the update was undone."
            )
            details.append(Detail("Reverted", ", ".join(revert.applied) or "no migration"))
            if outcome.again is not None:
                details.append(
                    Detail("Restarted again", ", ".join(outcome.again.restarted) or "none")
                )
                details.extend(
                    Detail("RESTART FAILED", f"{name}: {error}", bad=True)
                    for name, error in outcome.again.failed
                )
            closing.append(
                f"The installation is back at {result.version_from} (state.json and VERSION);"
                " fix the service and run the update again."
            )
        else:
            headline = (
                f"Update committed to {result.version_to}, a service is UNHEALTHY, and the"
                " REVERT FAILED."
            )
            error = outcome.error or "the revert was interrupted"
            details.append(Detail("Revert error", error, bad=True))
            where = (
                "run `dopemux-update recover`"
                if revert is not None and revert.needs_recovery
                else f"it is still at {result.version_to}"
            )
            backup = (
                f"; the backup taken before the update, {result.backup_id}, is kept"
                f" (`dopemux-update backups restore {result.backup_id}` puts it back)"
                if result.backup_id
                else ""
            )
            closing.append(f"The installation NEEDS ATTENTION: {where}{backup}.")
    if outcome.owed:
        closing.append(
            f"Restarts owed: {', '.join(outcome.owed)} (recorded; `dopemux-update restart`"
            " restarts them and clears the record)."
        )
    return summary._replace(
        ok=summary.ok and not outcome.attempted,
        headline=headline,
        details=tuple(details),
        closing=tuple(closing),
    )
