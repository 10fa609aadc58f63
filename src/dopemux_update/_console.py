"""Plain, line-by-line rendering of an update for the command line.

Works the same on a terminal and in a pipe; the operator-experience work adds live progress.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TextIO

from . import _events as ev
from ._models import Plan

__all__ = ["OutputCollector", "PlainReporter", "describe_plan", "format_bytes"]


def format_bytes(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover - the loop always returns


def describe_plan(plan: Plan) -> list[str]:
    """The plan as plain lines: route, migrations, breaking changes, restarts, estimate."""
    if plan.is_empty:
        return [f"Nothing to do: the installation is at {plan.current}."]
    hops = ", ".join(hop.name for hop in plan.hops)
    lines = [
        f"Plan: {plan.direction.value} {plan.current} → {plan.target}"
        f" ({len(plan.hops)} hop{'s' if len(plan.hops) != 1 else ''}: {hops})",
    ]
    for index, step in enumerate(plan.steps, start=1):
        info = step.migration.info
        flags = []
        if info.breaking_changes:
            flags.append("BREAKING")
        if info.requires_restart:
            flags.append("restarts " + ", ".join(info.requires_restart))
        suffix = f"  [{'; '.join(flags)}]" if flags else ""
        lines.append(f"  {index:>3}. {step.id}: {info.description}{suffix}")
    lines.append(
        f"  {len(plan.steps)} migration{'s' if len(plan.steps) != 1 else ''},"
        f" estimated {plan.estimated_seconds:g}s;"
        f" backup: {'yes' if plan.backup_required else 'not needed'}"
    )
    if plan.breaking_changes:
        lines.append("  Breaking changes: " + ", ".join(plan.breaking_changes))
    if plan.restart_services:
        lines.append("  Services to restart afterwards: " + ", ".join(plan.restart_services))
    return lines


@dataclass
class OutputCollector:
    """Keeps every line the migrations printed, tagged with the migration's id."""

    lines: list[dict[str, str]] = field(default_factory=list)

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.MigrationOutput):
            self.lines.append({"id": event.id, "stream": event.stream, "line": event.line})


@dataclass
class PlainReporter:
    """Writes one line per event to ``out``."""

    out: TextIO
    collector: OutputCollector = field(default_factory=OutputCollector)

    def _say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def __call__(self, event: ev.Event) -> None:  # noqa: PLR0912 - one branch per event kind
        self.collector(event)
        if isinstance(event, ev.PlanReady):
            for line in describe_plan(event.plan):
                self._say(line)
        elif isinstance(event, ev.BackupStarted):
            self._say("Taking a backup of the installation...")
        elif isinstance(event, ev.BackupCreated):
            size = format_bytes(event.bytes)
            self._say(f"Backup {event.backup_id}: {event.files} files, {size}, verified")
        elif isinstance(event, ev.MigrationStarted):
            verb = "forward" if event.direction.value == "upgrade" else "backward"
            self._say(f"[{event.index}/{event.total}] {event.id} ({verb})")
        elif isinstance(event, ev.MigrationOutput):
            self._say(f"      | {event.line}")
        elif isinstance(event, ev.MigrationFinished):
            if event.ok:
                self._say(f"      ok in {event.seconds:.2f}s")
            else:
                self._say(f"      FAILED after {event.seconds:.2f}s: {event.error}")
        elif isinstance(event, ev.RollbackStarted):
            self._say(f"Rolling back {event.steps} completed migration(s) in reverse order...")
        elif isinstance(event, ev.RollbackStep):
            state = "undone" if event.ok else f"UNDO FAILED: {event.error}"
            self._say(f"  rollback {event.id}: {state}")
        elif isinstance(event, ev.RestoreFinished):
            if event.ok:
                self._say(f"Installation restored from backup {event.backup_id}")
            else:
                self._say(f"RESTORE FROM BACKUP {event.backup_id} FAILED: {event.error}")
