"""What both displays show, as text: the plan, the output kept, byte sizes.

The plain display (``_console``) and the live one (``_progress``, rich) share these; neither
imports the other for them, so the live display can be imported only when it draws.
"""

from __future__ import annotations

import collections

from .._core import _events as ev
from .._core._models import Direction, Plan
from .._run._capture import MAX_KEPT_LINES, clip_line, omitted_lines
from ._common import format_bytes as format_bytes  # noqa: PLC0414 - for both displays

__all__ = [
    "PROGRESS_ENV",
    "OutputCollector",
    "describe_plan",
    "format_bytes",
    "plan_footer",
    "plan_heading",
    "plan_rows",
    "route_parts",
    "verified_words",
]

PROGRESS_ENV = "DOPEMUX_UPDATE_PROGRESS"


def plan_rows(plan: Plan) -> list[tuple[str, str, str, str, str, str, str]]:
    """``(#, id, description, estimate, breaking, restarts, backup)`` per migration."""
    rows = []
    for index, step in enumerate(plan.steps, start=1):
        info = step.migration.declared
        rows.append(
            (
                str(index),
                step.id,
                info.description,
                f"{info.estimated_duration_seconds:g}s",
                "yes" if info.breaking_changes else "no",
                ", ".join(info.requires_restart) or "-",
                "yes" if info.backup_required else "no",
            )
        )
    return rows


def route_parts(plan: Plan) -> list[str]:
    """The way from the current to the target version, in order: each hop's folder, and
    each stretch of releases that ship no migrations (``0.2.0 → 0.2.1: no migrations``)."""
    noop = [f"{a} → {b}: no migrations" for a, b in plan.noop]
    hops = [hop.name for hop in plan.hops]
    if plan.direction is Direction.UPGRADE:
        return [*hops, *noop]
    return [*noop, *hops]


def plan_heading(plan: Plan) -> str:
    count = len(plan.hops)
    return (
        f"Plan: {plan.direction.value} {plan.current} → {plan.target}"
        f" ({count} hop{'s' if count != 1 else ''}: {', '.join(route_parts(plan))})"
    )


def plan_footer(plan: Plan) -> list[str]:
    count = len(plan.steps)
    lines = [
        f"{count} migration{'s' if count != 1 else ''}, estimated {plan.estimated_seconds:g}s;"
        f" backup: {'yes' if plan.backup_required else 'not needed'}"
    ]
    if plan.breaking_changes:
        lines.append("Breaking changes: " + ", ".join(plan.breaking_changes))
    if plan.restart_services:
        lines.append("Services to restart afterwards: " + ", ".join(plan.restart_services))
    return lines


def describe_plan(plan: Plan) -> list[str]:
    """The plan as plain lines: route, a table of the migrations, breaking changes, restarts,
    estimate. The description comes last, so that the short columns stay aligned."""
    if plan.is_empty and not plan.moves:
        return [f"Nothing to do: the installation is at {plan.current}."]
    if plan.is_empty:
        return [
            f"Plan: {plan.direction.value} {plan.current} → {plan.target}:"
            f" {', '.join(route_parts(plan))}; only the version record changes."
        ]
    header = ("#", "id", "description", "estimate", "breaking", "restarts", "backup")
    rows = plan_rows(plan)
    order = (0, 1, 3, 4, 5, 6, 2)
    table = [tuple(row[i] for i in order) for row in [header, *rows]]
    widths = [max(len(row[i]) for row in table) for i in range(len(order))]
    right = {0, 2}  # numbers align right

    def line(row: tuple[str, ...]) -> str:
        cells = [
            cell.rjust(widths[i]) if i in right else cell.ljust(widths[i])
            for i, cell in enumerate(row)
        ]
        return ("  " + "  ".join(cells)).rstrip()

    return [plan_heading(plan), *map(line, table), *("  " + text for text in plan_footer(plan))]


class _Kept:
    """The last lines one migration printed, each with its place in the whole output."""

    __slots__ = ("lines", "omitted")

    def __init__(self) -> None:
        self.lines: collections.deque[tuple[int, dict[str, str]]] = collections.deque(
            maxlen=MAX_KEPT_LINES
        )
        self.omitted = 0


class OutputCollector:
    """Keeps what the migrations printed, tagged with the migration's id, and what the
    summary needs besides the result: the plan, and each undo's outcome and duration.

    Memory stays bounded however much is printed: the last :data:`MAX_KEPT_LINES` lines of
    each migration, each clipped (``clip_line``); a marker line (stream ``omitted``) says how
    many earlier ones are only in the run log.

    This and ``_Kept`` are classes with slots, not dataclasses: an update command creates
    them at every start, and a dataclass costs far more to create."""

    __slots__ = ("_kept", "_seen", "plan", "undo")

    def __init__(self) -> None:
        self.plan: Plan | None = None
        self.undo: dict[str, tuple[bool, float]] = {}
        self._kept: dict[str, _Kept] = {}
        self._seen = 0

    def __call__(self, event: ev.Event) -> None:
        if isinstance(event, ev.MigrationOutput):
            kept = self._kept.setdefault(event.id, _Kept())
            if len(kept.lines) == MAX_KEPT_LINES:
                kept.omitted += 1
            entry = {"id": event.id, "stream": event.stream, "line": clip_line(event.line)}
            kept.lines.append((self._seen, entry))
            self._seen += 1
        elif isinstance(event, ev.PlanReady):
            self.plan = event.plan
        elif isinstance(event, ev.RollbackStep):
            self.undo[event.id] = (event.ok, event.seconds)

    @property
    def lines(self) -> list[dict[str, str]]:
        """The lines kept, in the order they were printed, each marker before its lines."""
        found: list[tuple[float, dict[str, str]]] = []
        for migration_id, kept in self._kept.items():
            if kept.omitted:
                marker = {
                    "id": migration_id,
                    "stream": "omitted",
                    "line": omitted_lines(kept.omitted),
                }
                found.append((kept.lines[0][0] - 0.5, marker))
            found.extend(kept.lines)
        found.sort(key=lambda item: item[0])
        return [entry for _, entry in found]


def verified_words(verified: bool | None) -> str:
    if verified is None:
        return ""
    return "; verified identical" if verified else "; NOT verified identical (see the log)"
