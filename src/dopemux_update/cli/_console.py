"""How the command line shows an update: plain lines, or live progress on a terminal.

``display_mode`` picks one: ``json`` (nothing but the final JSON object on stdout), ``live``
(rich progress and tables, ``_progress``, on a terminal) or ``plain`` (one line per event,
for pipes, CI and dumb terminals). ``DOPEMUX_UPDATE_PROGRESS=plain|live`` overrides the
choice (``live`` then draws even into a pipe). rich is imported only in live mode: a plain or
JSON run does not pay for it.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from types import TracebackType
from typing import Literal, Protocol, TextIO

import click

from .._core import _events as ev
from .._core._models import Plan
from ._summary import Summary, format_seconds, plain_summary
from ._view import (
    PROGRESS_ENV,
    OutputCollector,
    describe_plan,
    format_bytes,
    verified_words,
)

__all__ = [
    "Display",
    "OutputCollector",
    "PlainReporter",
    "describe_plan",
    "display_mode",
    "format_bytes",
    "format_seconds",
    "open_display",
    "show_plan",
]

Mode = Literal["json", "plain", "live", "quiet"]


def display_mode(as_json: bool, stream: TextIO | None = None) -> Mode:
    """``json`` with ``--json``; else the override, else ``live`` on a capable terminal."""
    if as_json:
        return "json"
    ctx = click.get_current_context(silent=True)
    if ctx is not None and ctx.find_root().meta.get("dopemux_update.quiet"):
        return "quiet"  # -q: errors and the final line only
    forced = os.environ.get(PROGRESS_ENV, "").strip().lower()
    if forced in ("plain", "live"):
        return "plain" if forced == "plain" else "live"
    if os.environ.get("TERM", "") in ("dumb", "unknown"):
        return "plain"
    out = sys.stdout if stream is None else stream
    isatty = getattr(out, "isatty", None)
    return "live" if isatty is not None and isatty() else "plain"


def show_plan(plan: Plan, mode: Mode) -> None:
    """Print the plan: a rich table in live mode, plain lines otherwise (not in JSON mode)."""
    if mode in ("json", "quiet"):
        return
    if mode == "live" and not plan.is_empty:
        from ._progress import make_console, plan_renderable  # noqa: PLC0415 - rich is slow

        make_console().print(plan_renderable(plan))
        return
    for text in describe_plan(plan):
        click.echo(text)


class PlainReporter:
    """Writes one line per event to ``out`` (a class with slots: cheaper to create than a
    dataclass, at every start of an update command)."""

    __slots__ = ("collector", "out", "plan_shown")

    def __init__(
        self, out: TextIO, collector: OutputCollector | None = None, plan_shown: bool = False
    ) -> None:
        self.out = out
        self.collector = collector if collector is not None else OutputCollector()
        self.plan_shown = plan_shown  # shown before a confirmation: not again when it starts

    def _say(self, text: str) -> None:
        self.out.write(text + "\n")
        self.out.flush()

    def __call__(self, event: ev.Event) -> None:  # noqa: PLR0912 - one branch per event kind
        self.collector(event)
        if isinstance(event, ev.PlanReady):
            if not self.plan_shown:
                for line in describe_plan(event.plan):
                    self._say(line)
        elif isinstance(event, ev.BackupStarted):
            self._say("Taking a backup of the installation...")
        elif isinstance(event, ev.BackupCreated):
            size = format_bytes(event.bytes)
            files = f"{event.files} file{'' if event.files == 1 else 's'}"
            self._say(f"Backup {event.backup_id}: {files}, {size}, verified")
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
            steps = f"{event.steps} completed migration{'' if event.steps == 1 else 's'}"
            self._say(f"Rolling back {steps} in reverse order...")
        elif isinstance(event, ev.RollbackStep):
            state = "undone" if event.ok else f"UNDO FAILED: {event.error}"
            self._say(f"  rollback {event.id}: {state}")
        elif isinstance(event, ev.RestoreStarted):
            self._say(f"Restoring the installation from backup {event.backup_id}...")
        elif isinstance(event, ev.RestoreFinished):
            if event.ok:
                verified = verified_words(event.verified)
                self._say(f"Installation restored from backup {event.backup_id}{verified}")
            else:
                self._say(f"RESTORE FROM BACKUP {event.backup_id} FAILED: {event.error}")


class Display(Protocol):
    """Receives the run's events, frames the run (``with``), and shows the final summary."""

    collector: OutputCollector

    def __call__(self, event: ev.Event) -> None: ...

    def __enter__(self) -> Display: ...

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None: ...

    def restarting(self, services: Sequence[str]) -> None:
        """The migrations are committed; these services are being restarted now."""

    def show_plan_now(self, plan: Plan) -> None:
        """Show the plan before the run (to ask for confirmation); not again when it starts."""

    def show_summary(self, summary: Summary) -> None: ...


class _Quiet:
    """``--json``: collect the output for the JSON object; show nothing."""

    def __init__(self, collector: OutputCollector) -> None:
        self.collector = collector

    def __call__(self, event: ev.Event) -> None:
        self.collector(event)

    def __enter__(self) -> Display:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def restarting(self, services: Sequence[str]) -> None:
        pass

    def show_plan_now(self, plan: Plan) -> None:
        pass

    def show_summary(self, summary: Summary) -> None:
        pass


class _Plain(_Quiet):
    """One line per event on stdout, then the summary as plain lines."""

    def __init__(self, collector: OutputCollector) -> None:
        super().__init__(collector)
        self._reporter = PlainReporter(sys.stdout, collector)

    def __call__(self, event: ev.Event) -> None:
        self._reporter(event)

    def restarting(self, services: Sequence[str]) -> None:
        click.echo("Restarting: " + ", ".join(services) + "...")

    def show_plan_now(self, plan: Plan) -> None:
        show_plan(plan, "plain")
        self._reporter.plan_shown = True

    def show_summary(self, summary: Summary) -> None:
        for text in plain_summary(summary):
            click.echo(text)


class _FinalLine(_Quiet):
    """``-q``: the summary's headline only (errors go to stderr as usual)."""

    def show_summary(self, summary: Summary) -> None:
        click.echo(summary.headline)


def open_display(mode: Mode, collector: OutputCollector) -> Display:
    """The display for ``mode``; a live one draws only between ``__enter__`` and ``__exit__``."""
    if mode == "json":
        return _Quiet(collector)
    if mode == "quiet":
        return _FinalLine(collector)
    if mode == "plain":
        return _Plain(collector)
    from ._progress import LiveDisplay  # noqa: PLC0415 - rich is slow to import

    return LiveDisplay(collector)
