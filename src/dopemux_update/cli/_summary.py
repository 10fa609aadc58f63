"""The summary an update ends with: what ran and how, the backup, restarts, the log.

Built once from the result (``build_summary``) and drawn either as plain lines
(``plain_summary``) or as rich tables on a terminal (``_progress``). Its records are named
tuples: an update command creates their classes at every start, and a named tuple costs a
tenth of a frozen dataclass.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

from .._core._models import Direction, Plan, UpdateResult
from .._run._restart import RestartResult

__all__ = ["Detail", "Row", "Summary", "build_summary", "format_seconds", "plain_summary"]

MAX_ROWS = 40  # more migrations than this: the first and last ones, and the one that failed
_EDGE = 15


def format_seconds(seconds: float) -> str:
    """``0.42s``, ``12.3s``, ``4m05s``."""
    if seconds < 10:
        return f"{seconds:.2f}s"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes}m{rest:02d}s"


class Row(NamedTuple):
    """One migration of the run: ``applied`` (``reverted`` in a downgrade), ``rolled back``,
    ``undo failed``, ``applied, not undone``, ``failed`` or ``not run``; its step's duration
    and its undo's."""

    id: str
    status: str
    seconds: float | None = None
    undo_seconds: float | None = None

    @property
    def duration(self) -> str:
        text = "" if self.seconds is None else format_seconds(self.seconds)
        if self.undo_seconds is not None:
            text += f" (undo {format_seconds(self.undo_seconds)})"
        return text


class Detail(NamedTuple):
    """A labelled fact; ``bad`` ones are drawn as alerts."""

    label: str
    value: str
    bad: bool = False


class Summary(NamedTuple):
    ok: bool
    headline: str
    rows: tuple[Row, ...]
    details: tuple[Detail, ...]
    closing: tuple[str, ...] = ()

    def visible_rows(self) -> list[Row | int]:
        """The rows to draw; an int stands for that many rows left out."""
        rows = list(self.rows)
        if len(rows) <= MAX_ROWS:
            return list(rows)
        head, middle, tail = rows[:_EDGE], rows[_EDGE:-_EDGE], rows[-_EDGE:]
        shown: list[Row | int] = [*head]
        failed = [i for i, row in enumerate(middle) if row.status in ("failed", "undo failed")]
        start = 0
        for index in failed:
            if index > start:
                shown.append(index - start)
            shown.append(middle[index])
            start = index + 1
        if start < len(middle):
            shown.append(len(middle) - start)
        return [*shown, *tail]


def _rows(
    result: UpdateResult, plan: Plan | None, undo: Mapping[str, tuple[bool, float]]
) -> tuple[Row, ...]:
    ran = dict(result.durations)
    ids = [step.id for step in plan.steps] if plan is not None else list(ran)
    applied = set(result.applied)
    done = "applied" if result.direction is Direction.UPGRADE else "reverted"
    rows = []
    for migration_id in ids:
        seconds = ran.get(migration_id)
        if migration_id == result.failed_migration:
            rows.append(Row(migration_id, "failed", seconds))
        elif migration_id in undo:
            ok, undo_seconds = undo[migration_id]
            rows.append(
                Row(migration_id, "rolled back" if ok else "undo failed", seconds, undo_seconds)
            )
        elif migration_id in applied:
            status = done if result.ok or result.committed else f"{done}, not undone"
            rows.append(Row(migration_id, status, seconds))
        else:
            rows.append(Row(migration_id, "not run", seconds))
    return tuple(rows)


def _verified(result: UpdateResult) -> Detail:
    if result.verified_identical is True:
        return Detail(
            "Verified identical",
            "yes: content, modes, owners and links as before the update"
            " (SQLite by content and settings, not page bytes)",
        )
    if result.verified_identical is False:
        why = "the restore failed" if not result.restored else "differences found (see the log)"
        return Detail("Verified identical", f"NO: {why}", bad=True)
    if result.backup_id is None:
        why = "no backup was taken (no migration on the plan asked for one)"
    elif result.abandoned:
        why = "the restore did not run (a migration's thread is still running)"
    else:
        why = "the restore did not run"
    return Detail("Verified identical", f"not checked: {why}", bad=True)


def _restart_details(
    result: UpdateResult, restarted: RestartResult | None, *, restarter_used: bool
) -> list[Detail]:
    if not result.restart_services:
        return []
    if restarted is not None:
        details = []
        if restarted.restarted:
            details.append(Detail("Restarted", ", ".join(restarted.restarted)))
        details.extend(
            Detail("RESTART FAILED", f"{name}: {error}", bad=True)
            for name, error in restarted.failed
        )
        return details
    if not restarter_used:
        return [Detail("To restart", ", ".join(result.restart_services) + " (not restarted)")]
    return []


def _failure_closing(result: UpdateResult) -> str:
    """What a failed run left, in one true sentence or two."""
    if result.backup_lost:
        return (
            "The installation NEEDS RECOVERY and CANNOT be restored automatically: the"
            " backup taken before the update is gone. The backward functions ran, but the"
            " tree is not verified. Run `dopemux-update recover` for what to do next."
        )
    if result.needs_recovery and result.backup_id is None:
        return (
            "The installation NEEDS RECOVERY; no backup was taken (no migration on the"
            " plan asked for one): run `dopemux-update recover` for what to do next."
        )
    if result.needs_recovery:
        return (
            f"The installation NEEDS RECOVERY; the backup {result.backup_id} was kept:"
            " run `dopemux-update recover`."
        )
    if result.backup_id is None:
        return (
            "The backward functions of the applied migrations ran, but no backup was"
            " taken (no migration on the plan asked for one): what the failed migration"
            " changed before it failed was not undone, and the tree was not verified."
            f" The recorded version is still {result.version_from}."
        )
    restored = " and restored from its backup" if result.restored else ""
    return f"The installation was rolled back{restored}; it is still at {result.version_from}."


def _own_reason(result: UpdateResult, output: Sequence[Mapping[str, str]]) -> str | None:
    """The failed migration's last printed line: usually why it failed, where the error
    only says that it returned False."""
    lines = [
        entry["line"]
        for entry in output
        if entry.get("id") == result.failed_migration
        and entry.get("stream") != "omitted"
        and entry.get("line", "").strip()
    ]
    return lines[-1].strip() if lines else None


def build_summary(
    result: UpdateResult,
    restarted: RestartResult | None,
    *,
    plan: Plan | None,
    undo: Mapping[str, tuple[bool, float]],
    restarter_used: bool,
    log_path: Path | None,
    output: Sequence[Mapping[str, str]] = (),
) -> Summary:
    """Everything the operator needs to know about the run, in display order; ``output``
    (the lines the migrations printed) gives a failed migration's own reason."""
    details: list[Detail] = []
    closing: list[str] = []
    if result.ok:
        verb = "Upgraded" if result.direction is Direction.UPGRADE else "Downgraded"
        if result.version_from == result.version_to:
            headline = f"Nothing to do: already at {result.version_to}."
        else:
            count = len(result.applied)
            done = "applied" if result.direction is Direction.UPGRADE else "reverted"
            headline = (
                f"{verb} {result.version_from} → {result.version_to}:"
                f" {count} migration{'' if count == 1 else 's'} {done}."
            )
        if result.backup_id is not None:
            details.append(Detail("Backup", result.backup_id))
        details += _restart_details(result, restarted, restarter_used=restarter_used)
    elif result.committed:
        headline = (
            f"Update COMMITTED but not recorded: {len(result.applied)} migration(s) applied;"
            " the version record could not be written."
        )
        details.append(Detail("Error", str(result.error), bad=True))
        if result.backup_id is not None:
            details.append(Detail("Backup", result.backup_id + " (kept)"))
        closing.append(
            f"The installation is at {result.version_to}, but state.json still records"
            f" {result.version_from}: free space and run `dopemux-update recover` to complete"
            " the commit (it records the new version; nothing is rolled back)."
        )
    else:
        headline = (
            "Interrupted: the update was stopped before it finished."
            if result.failed_migration == "(cancelled)"
            else f"Update FAILED at {result.failed_migration}: {result.error}"
        )
        details.append(Detail("Failed migration", str(result.failed_migration), bad=True))
        details.append(Detail("Error", str(result.error), bad=True))
        reason = _own_reason(result, output)
        if reason is not None:
            details.append(Detail("Its last output", reason, bad=True))
        details.append(Detail("Rolled back", ", ".join(result.rolled_back) or "nothing"))
        if result.backup_lost:
            details.append(
                Detail("Backup", f"{result.backup_id} (GONE: a migration removed it)", bad=True)
            )
        elif result.backup_id is not None:
            kept = " (kept)" if result.needs_recovery else ""
            details.append(Detail("Backup", result.backup_id + kept))
        details.append(_verified(result))
        closing.append(_failure_closing(result))
    if log_path is not None:
        details.append(Detail("Log", str(log_path)))
    return Summary(
        ok=result.ok,
        headline=headline,
        rows=_rows(result, plan, undo),
        details=tuple(details),
        closing=tuple(closing),
    )


def plain_summary(summary: Summary) -> list[str]:
    """The summary as plain lines (pipes, CI): a line per migration, then the facts."""
    lines = [summary.headline]
    rows = summary.visible_rows()
    width = max((len(r.status) for r in summary.rows), default=0)
    timing = max((len(r.duration) for r in summary.rows), default=0)
    for row in rows:
        if isinstance(row, int):
            lines.append(f"  ... {row} more migration{'' if row == 1 else 's'} ...")
        else:
            lines.append(f"  {row.status:<{width}}  {row.duration:>{timing}}  {row.id}".rstrip())
    label = max((len(d.label) for d in summary.details), default=0) + 1
    lines.extend(f"{d.label + ':':<{label}} {d.value}" for d in summary.details)
    lines.extend(summary.closing)
    return lines
