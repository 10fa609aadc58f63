"""``dopemux-update history``: the recorded runs, newest first."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

import click

from .._core._exceptions import StateError
from .._safety._state import RunRecord
from ._common import EXIT_OK, CommandError, common_options, emit, make_context

__all__ = ["describe_outcome", "history_command"]


def _seconds(run: RunRecord) -> float | None:
    try:
        started = datetime.fromisoformat(run.started_at.replace("Z", "+00:00"))
        finished = datetime.fromisoformat(run.finished_at.replace("Z", "+00:00"))
    except ValueError:
        return None
    return round((finished - started).total_seconds(), 3)


def describe_outcome(run: RunRecord, reverted_by: RunRecord | None) -> str:
    """The outcome in words: applied, rolled back, reverted after health check, ..."""
    if run.outcome == "reverted":
        why = f" after {run.reason}" if run.reason else ""
        return f"reverted{why} (undid run {run.reverts})"
    if run.outcome == "applied" and reverted_by is not None:
        why = f" after {reverted_by.reason}" if reverted_by.reason else ""
        return f"applied, then reverted{why} (by run {reverted_by.run_id})"
    if run.outcome == "rolled_back" and run.error is None:
        return "interrupted, rolled back by recover"
    if run.outcome == "rolled_back" and run.error == "the update was cancelled":
        return "interrupted, rolled back"
    return {"rolled_back": "rolled back", "needs_recovery": "needs recovery"}.get(
        run.outcome, run.outcome
    )


def _entry(run: RunRecord, reverted_by: RunRecord | None) -> dict[str, Any]:
    return {
        "run_id": run.run_id,
        "started_at": run.started_at,
        "finished_at": run.finished_at,
        "command": run.command or run.direction,
        "version_from": run.version_from,
        "version_to": run.version_to,
        "outcome": run.outcome,
        "outcome_text": describe_outcome(run, reverted_by),
        "reverts": run.reverts,
        "reverted_by": reverted_by.run_id if reverted_by is not None else None,
        "migrations": [m.id for m in run.migrations if m.outcome == "applied"],
        "backup_id": run.backup_id,
        "seconds": _seconds(run),
        "error": run.error,
    }


@click.command("history")
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Show at most N runs, newest first."
)
@common_options
def history_command(
    limit: int | None, root: Path, migrations: Path | None, as_json: bool, verbose: int
) -> int:
    """List the recorded runs, newest first."""
    ctx = make_context(root, migrations, as_json, verbose)
    try:
        history = ctx.state.read().history
    except StateError as exc:
        raise CommandError(str(exc)) from exc
    reverts = {run.reverts: run for run in history if run.reverts is not None}
    runs = [
        _entry(run, reverts.get(run.run_id) if run.run_id else None) for run in reversed(history)
    ]
    if limit is not None:
        runs = runs[:limit]
    lines = [] if runs else ["No run is recorded."]
    for run in runs:
        seconds = "" if run["seconds"] is None else f" in {run['seconds']:g}s"
        lines.append(
            f"{run['finished_at']}  {run['command']} {run['version_from']} → {run['version_to']}:"
            f" {run['outcome_text']}{seconds}"
        )
        if run["migrations"]:
            lines.append(f"    migrations: {', '.join(run['migrations'])}")
        if run["backup_id"]:
            lines.append(f"    backup:     {run['backup_id']}")
        if run["error"] and run["outcome"] != "applied":
            lines.append(f"    error:      {run['error']}")
    emit(ctx, {"command": "history", "runs": runs}, lines)
    return EXIT_OK
