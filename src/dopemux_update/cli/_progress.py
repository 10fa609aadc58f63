"""Live progress on a terminal, drawn with rich.

What is done is printed once, above a small live region: the plan's table, the backup, each
migration's line (✓ or ✗, its time against its estimate) with the last lines it printed, each
undo, the restore. The live region shows what is running now: a spinner per migration with
its elapsed time against its estimate and the last lines it printed (dim), byte bars for the
backup and the restore, and an overall bar with the time left, from the estimates. It redraws
ten times a second from rich's own thread; events only update state under a lock.
"""

from __future__ import annotations

import collections
import os
import sys
import threading
import time
from collections.abc import Sequence
from types import TracebackType
from typing import Any, TextIO, cast

from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from .._core import _events as ev
from .._core._models import Direction, Plan
from .._run._capture import clip_line
from ._summary import Summary, format_seconds
from ._view import (
    PROGRESS_ENV,
    OutputCollector,
    format_bytes,
    plan_footer,
    plan_heading,
    plan_rows,
    verified_words,
)

__all__ = ["LiveDisplay", "make_console", "plan_renderable", "summary_renderable"]

SPINNER = "⠋⠙⠹⠸⠼⠴⠦⠧⠇⠏"
TAIL = 4  # output lines under the running migration
KEPT = 10  # output lines printed under a finished migration
FLUSH_SECONDS = 0.1  # finished lines are printed in batches, at most ten times a second
_BAR_WIDTH = 30
_STATUS_STYLE = {
    "applied": "green",
    "rolled back": "yellow",
    "undo failed": "bold red",
    "applied, not undone": "bold red",
    "reverted": "green",
    "reverted, not undone": "bold red",
    "failed": "bold red",
    "not run": "dim",
}


def make_console() -> Console:
    """A console on stdout; ``DOPEMUX_UPDATE_PROGRESS=live`` draws even into a pipe."""
    forced = os.environ.get(PROGRESS_ENV, "").strip().lower() == "live"
    return Console(file=sys.stdout, force_terminal=True if forced else None, highlight=False)


def plan_renderable(plan: Plan) -> RenderableType:
    """The plan: its route, a table of the migrations, then estimate, breaking changes and
    restarts.

    Here and everywhere in this module, text from migrations (ids, descriptions, printed
    lines, errors) reaches rich only as :class:`~rich.text.Text`, never as a ``str``, which
    rich would parse as markup: ``"fix [/x] paths"`` must show as written, not crash.
    """
    # The description goes under its id, so that the short columns keep their width on an
    # 80-column terminal instead of squeezing the description into a word per line.
    table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 2, 0, 0))
    table.add_column("#", justify="right", style="dim", no_wrap=True)
    longest = max((len(step.id) for step in plan.steps), default=0)
    table.add_column("migration", overflow="fold", min_width=longest)
    table.add_column("estimate", justify="right", no_wrap=True)
    table.add_column("breaking", no_wrap=True)
    table.add_column("backup", no_wrap=True)
    for number, ident, description, estimate, breaking, restarts, backup in plan_rows(plan):
        # The id never breaks (no_wrap); the description and the services it restarts wrap
        # under it, in its column, so that the table fits 80 columns with the longest id.
        under = [Text(ident, no_wrap=True, overflow="fold"), Text(description, style="dim")]
        if restarts != "-":
            under.append(Text(f"restarts: {restarts}"))
        table.add_row(
            Text(number),
            Group(*under),
            Text(estimate),
            Text(breaking, style="bold red" if breaking == "yes" else "dim"),
            Text(backup, style="" if backup == "yes" else "dim"),
        )
    footer = [
        Text(line, style="bold red" if line.startswith("Breaking") else "")
        for line in plan_footer(plan)
    ]
    return Group(Text(plan_heading(plan), style="bold"), table, *footer)


def summary_renderable(summary: Summary) -> RenderableType:
    """The summary: a headline, a table of the migrations, then the facts."""
    parts: list[RenderableType] = [
        Text(summary.headline, style="bold green" if summary.ok else "bold red")
    ]
    if summary.rows:
        table = Table(box=None, header_style="bold", pad_edge=False, padding=(0, 2, 0, 0))
        table.add_column("migration", no_wrap=True)
        table.add_column("status", no_wrap=True)
        table.add_column("duration", justify="right", no_wrap=True)
        for row in summary.visible_rows():
            if isinstance(row, int):
                table.add_row(Text(f"... {row} more", style="dim"))
            else:
                style = _STATUS_STYLE.get(row.status, "")
                table.add_row(Text(row.id), Text(row.status, style=style), Text(row.duration))
        parts.append(table)
    width = max((len(detail.label) for detail in summary.details), default=0) + 2
    parts.extend(
        # A long value wraps under itself, not under its label.
        _KeepingCommands(
            detail.value,
            "red" if detail.bad else "",
            label=Text(f"{detail.label + ':':<{width}}", style="bold"),
        )
        for detail in summary.details
    )
    parts.extend(
        _KeepingCommands(line, "bold red" if not summary.ok else "") for line in summary.closing
    )
    return Group(*parts)


class _KeepingCommands:
    """A paragraph wrapped at spaces outside backticks only: `dopemux-update recover` is
    never split across lines, so that it can be copied in one go."""

    def __init__(self, text: str, style: str, *, label: Text | None = None) -> None:
        self.text = text
        self.style = style
        self.label = label if label is not None else Text()

    def _tokens(self) -> list[str]:
        parts = self.text.split("`")
        if len(parts) % 2 == 0:  # an unpaired backtick: nothing to keep together
            return self.text.split()
        tokens: list[str] = []
        glue = False  # the next piece joins the last token (no space between them)
        for index, part in enumerate(parts):
            if index % 2 == 1:
                piece = f"`{part}`"
                if glue and tokens:
                    tokens[-1] += piece
                else:
                    tokens.append(piece)
                glue = True
                continue
            words = part.split(" ")
            for position, word in enumerate(words):
                if position == 0 and glue and tokens:
                    tokens[-1] += word
                elif word:
                    tokens.append(word)
            glue = bool(part) and not part.endswith(" ")
        return tokens

    def __rich_console__(self, console: Console, options: Any) -> Any:
        indent = len(self.label.plain)
        width = max(options.max_width - indent, 1)
        lines: list[str] = []
        line = ""
        for token in self._tokens():
            # A token wider than the line (a long path, a command) gets a line of its own,
            # whole: the terminal wraps it softly, so that it still copies as one piece.
            if line and len(line) + 1 + len(token) > width:
                lines.append(line)
                line = token
            else:
                line = f"{line} {token}" if line else token
        lines.append(line)
        for number, text in enumerate(lines):
            head = self.label if number == 0 else Text(" " * indent)
            yield Text.assemble(
                head, Text(text, style=self.style), no_wrap=True, overflow="ignore", end="\n"
            )

    def __rich_measure__(self, console: Console, options: Any) -> Any:
        from rich.measure import Measurement  # noqa: PLC0415 - rich is loaded already

        tokens = self._tokens()
        indent = len(self.label.plain)
        return Measurement(
            indent + max((len(t) for t in tokens), default=1), indent + len(self.text)
        )


def _spinner(now: float) -> Text:
    return Text(SPINNER[int(now * 12.5) % len(SPINNER)], style="cyan")


def _output_lines(lines: Sequence[str], count: int) -> list[RenderableType]:
    out: list[RenderableType] = []
    if count > len(lines):
        earlier = count - len(lines)
        out.append(
            Text(
                f"      | ... {earlier} earlier line{'' if earlier == 1 else 's'} in the log", "dim"
            )
        )
    out.extend(_output_line(line) for line in lines)
    return out


def _output_line(line: str) -> RenderableType:
    """A line a migration printed, under its migration: when it wraps, the continuation
    stays in the text's column, right of the ``|``, instead of starting at the margin."""
    grid = Table.grid()
    grid.add_column(no_wrap=True)
    grid.add_column(overflow="fold")
    grid.add_row(Text("      | ", style="dim"), Text(line, style="dim"))
    return grid


# The display's state: classes with slots, which cost far less to create than dataclasses.


class _Transfer:
    """A backup or a restore: bytes done of the total, once the first report arrives."""

    __slots__ = ("done", "label", "started", "total")

    def __init__(self, label: str, started: float) -> None:
        self.label = label
        self.started = started
        self.done = 0
        self.total: int | None = None


class _Running:
    """The migration running now."""

    __slots__ = ("direction", "estimate", "id", "index", "started", "total")

    def __init__(
        self,
        id: str,
        index: int,
        total: int,
        estimate: float,
        started: float,
        direction: Direction,
    ) -> None:
        self.id = id
        self.index = index
        self.total = total
        self.estimate = estimate
        self.started = started
        self.direction = direction


class _Output:
    """The last lines a migration printed, and how many it printed in all."""

    __slots__ = ("count", "tail")

    def __init__(self) -> None:
        self.tail: collections.deque[str] = collections.deque(maxlen=KEPT)
        self.count = 0


class _CurrentStderr:
    """Writes to whatever ``sys.stderr`` is now: rich's proxy while the live view runs, so
    that log lines appear above it instead of tearing it."""

    def write(self, text: str) -> int:
        return sys.stderr.write(text)

    def flush(self) -> None:
        sys.stderr.flush()


class LiveDisplay:
    """The live view of an update (see the module's documentation)."""

    def __init__(self, collector: OutputCollector, console: Console | None = None) -> None:
        self.collector = collector
        self.console = console if console is not None else make_console()
        self._lock = threading.Lock()
        self._pending: list[RenderableType] = []
        self._last_flush = 0.0
        self._started = time.monotonic()
        self._plan: Plan | None = None
        self._estimates: dict[str, float] = {}
        self._left_estimate = 0.0  # estimates of the migrations not started yet
        self._finished = 0
        self._failed = 0
        self._current: _Running | None = None
        self._outputs: dict[str, _Output] = {}
        self._transfer: _Transfer | None = None
        self._activity: str | None = None
        self._rolling_back = False
        self._plan_shown = False
        redirect_stderr = sys.stderr.isatty()
        self._live = Live(
            console=self.console,
            get_renderable=self._render,
            refresh_per_second=10,
            transient=True,
            redirect_stdout=True,
            redirect_stderr=redirect_stderr,
        )
        self._saved_logger_factory: Any = None
        self._redirect_logs = redirect_stderr

    # -- framing ------------------------------------------------------------------------------

    def __enter__(self) -> LiveDisplay:
        self._started = time.monotonic()
        structlog = sys.modules.get("structlog")  # -v: configured by the command line
        if self._redirect_logs and structlog is not None and structlog.is_configured():
            self._saved_logger_factory = structlog.get_config()["logger_factory"]
            structlog.configure(
                logger_factory=structlog.PrintLoggerFactory(cast(TextIO, _CurrentStderr()))
            )
        self._live.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            self._flush(force=True)
        finally:
            self._live.stop()
            if self._saved_logger_factory is not None:
                sys.modules["structlog"].configure(logger_factory=self._saved_logger_factory)

    def restarting(self, services: Sequence[str]) -> None:
        with self._lock:
            self._activity = "Restarting " + ", ".join(services)
        self._flush(force=True)

    def show_plan_now(self, plan: Plan) -> None:
        self.console.print(plan_renderable(plan))
        self._plan_shown = True

    def show_summary(self, summary: Summary) -> None:
        self.console.print()
        # Not cropped: a path or command wider than the terminal is printed whole (see
        # ``_Fact``), for the terminal to wrap and the operator to copy.
        self.console.print(summary_renderable(summary), crop=False)

    # -- events (the event loop's thread) ------------------------------------------------------

    def __call__(self, event: ev.Event) -> None:
        self.collector(event)
        with self._lock:
            urgent = self._update(event)
        self._flush(force=urgent)

    def _update(self, event: ev.Event) -> bool:  # noqa: PLR0912, PLR0915 - a branch per event kind
        """Apply ``event`` to the state; True when what it printed should show at once."""
        now = time.monotonic()
        if isinstance(event, ev.PlanReady):
            self._plan = event.plan
            self._estimates = {
                s.id: s.migration.declared.estimated_duration_seconds for s in event.plan.steps
            }
            self._left_estimate = event.plan.estimated_seconds
            if not self._plan_shown:
                self._pending.append(plan_renderable(event.plan))
            return True
        if isinstance(event, ev.BackupStarted):
            self._transfer = _Transfer("Backup", now)
        elif isinstance(event, ev.BackupProgress | ev.RestoreProgress):
            if self._transfer is not None:
                self._transfer.done, self._transfer.total = event.done_bytes, event.total_bytes
        elif isinstance(event, ev.BackupCreated):
            took = now - self._transfer.started if self._transfer else 0.0
            self._transfer = None
            self._say(
                "✓",
                f"Backup {event.backup_id}: {event.files} file{'' if event.files == 1 else 's'},"
                f" {format_bytes(event.bytes)}, verified ({format_seconds(took)})",
                "green",
            )
        elif isinstance(event, ev.MigrationStarted):
            self._left_estimate -= event.estimated_seconds
            self._current = _Running(
                event.id, event.index, event.total, event.estimated_seconds, now, event.direction
            )
            return True  # what finished before it is printed now, above any later notice
        elif isinstance(event, ev.MigrationOutput):
            output = self._outputs.setdefault(event.id, _Output())
            output.tail.append(clip_line(event.line))
            output.count += 1
        elif isinstance(event, ev.MigrationFinished):
            self._finished_migration(event)
        elif isinstance(event, ev.RollbackStarted):
            self._stopped_unfinished()
            self._rolling_back = True
            steps = f"{event.steps} completed migration{'' if event.steps == 1 else 's'}"
            self._activity = f"Rolling back {steps}"
            self._say("↶", f"Rolling back {steps} in reverse order")
            return True
        elif isinstance(event, ev.RollbackStep):
            output = self._outputs.pop(event.id, _Output())
            if event.ok:
                self._say("↶", f"{event.id} undone ({format_seconds(event.seconds)})", "yellow")
            else:
                self._say("✗", f"{event.id} UNDO FAILED: {event.error}", "bold red")
            self._pending.extend(_output_lines(list(output.tail), output.count))
        elif isinstance(event, ev.RestoreStarted):
            self._activity = None
            self._transfer = _Transfer(f"Restore from {event.backup_id}", now)
        elif isinstance(event, ev.RestoreFinished):
            self._transfer = None
            if event.ok:
                good = event.verified is not False
                self._say(
                    "✓" if good else "✗",
                    f"Installation restored from backup {event.backup_id}"
                    + verified_words(event.verified),
                    "green" if good else "bold red",
                )
            else:
                self._say("✗", f"RESTORE FROM BACKUP {event.backup_id} FAILED: {event.error}")
            return True
        elif isinstance(event, ev.UpdateFinished):
            self._stopped_unfinished()
            self._current = None
            self._activity = None
            return True
        return False

    def _stopped_unfinished(self) -> None:
        """A migration that never finished (interrupted, abandoned): its line and the lines
        it printed stay on the screen instead of vanishing with the live region."""
        current = self._current
        if current is None:
            return
        self._say("✗", f"[{current.index}/{current.total}] {current.id}  did not finish")
        output = self._outputs.pop(current.id, _Output())
        self._pending.extend(_output_lines(list(output.tail), output.count))
        self._current = None

    def _finished_migration(self, event: ev.MigrationFinished) -> None:
        current = self._current
        index = f"[{current.index}/{current.total}] " if current is not None else ""
        estimate = self._estimates.get(event.id)
        against = f" / ~{estimate:g}s" if estimate is not None else ""
        timing = f"{format_seconds(event.seconds)}{against}"
        if event.ok:
            self._say("✓", f"{index}{event.id}  {timing}", "green")
        else:
            self._say("✗", f"{index}{event.id}  FAILED after {timing}: {event.error}", "bold red")
        output = self._outputs.pop(event.id, _Output())
        self._pending.extend(_output_lines(list(output.tail), output.count))
        if event.ok:
            self._finished += 1
        else:
            self._failed += 1
        self._current = None

    def _say(self, mark: str, text: str, style: str = "bold red") -> None:
        # A grid, so that a wrapped line keeps its indent under the text, not under the mark.
        line = Table.grid(padding=(0, 1))
        line.add_column(no_wrap=True)
        line.add_column()
        line.add_row(Text(mark, style=style), Text(text, style="" if style == "green" else style))
        self._pending.append(line)

    def _flush(self, *, force: bool) -> None:
        """Print what finished, above the live region, in one go."""
        now = time.monotonic()
        with self._lock:
            if not self._pending or (not force and now - self._last_flush < FLUSH_SECONDS):
                return
            batch, self._pending = self._pending, []
            self._last_flush = now
        self.console.print(Group(*batch))

    # -- drawing (rich's refresh thread) --------------------------------------------------------

    def _render(self) -> RenderableType:
        now = time.monotonic()
        with self._lock:
            parts: list[RenderableType] = list(self._pending)  # not flushed yet: show them now
            if self._transfer is not None:
                parts.append(self._transfer_line(self._transfer, now))
            if self._current is not None:
                parts.extend(self._running_lines(self._current, now))
            if self._activity is not None:
                parts.append(Text.assemble(_spinner(now), " ", self._activity))
            if self._plan is not None and self._plan.steps and not self._rolling_back:
                parts.append(self._overall_line(now))
        return Group(*parts)

    def _transfer_line(self, transfer: _Transfer, now: float) -> RenderableType:
        grid = Table.grid(padding=(0, 1))
        elapsed = now - transfer.started
        if transfer.total is None:
            bar = ProgressBar(total=None, pulse=True, width=_BAR_WIDTH)
            figures = format_seconds(elapsed)
        else:
            bar = ProgressBar(
                total=max(transfer.total, 1), completed=transfer.done, width=_BAR_WIDTH
            )
            figures = f"{format_bytes(transfer.done)} / {format_bytes(transfer.total)}"
            if 0 < transfer.done < transfer.total and elapsed > 0:
                left = (transfer.total - transfer.done) / (transfer.done / elapsed)
                figures += f"  ~{format_seconds(left)} left"
        grid.add_row(_spinner(now), Text(transfer.label, style="bold"), bar, Text(figures))
        return grid

    def _running_lines(self, current: _Running, now: float) -> list[RenderableType]:
        elapsed = now - current.started
        over = current.estimate > 0 and elapsed > current.estimate
        timing = Text(
            f"{format_seconds(elapsed)} / ~{current.estimate:g}s",
            style="yellow" if over else "dim",
        )
        backward = " (backward)" if current.direction is Direction.DOWNGRADE else ""
        line = Text.assemble(
            _spinner(now),
            f" [{current.index}/{current.total}] ",
            current.id,
            (backward, "dim"),
            "  ",
            timing,
        )
        output = self._outputs.get(current.id)
        tail = list(output.tail)[-TAIL:] if output is not None else []
        return [line, *(_output_line(text) for text in tail)]

    def _overall_line(self, now: float) -> RenderableType:
        total_estimate = sum(self._estimates.values())
        left = self._left_estimate
        if self._current is not None:
            left += max(0.0, self._current.estimate - (now - self._current.started))
        count = len(self._estimates)
        grid = Table.grid(padding=(0, 1))
        done_estimate = max(0.0, total_estimate - left)
        if total_estimate > 0:
            bar = ProgressBar(total=total_estimate, completed=done_estimate, width=_BAR_WIDTH)
        else:
            bar = ProgressBar(total=max(count, 1), completed=self._finished, width=_BAR_WIDTH)
        figures = (
            f"{self._finished}/{count} migrations  {format_seconds(now - self._started)} elapsed"
        )
        if self._failed:
            figures += f"  {self._failed} failed"
        elif self._current is not None or self._finished < count:
            figures += f"  ETA ~{format_seconds(left)}"
        grid.add_row(Text("Overall", style="bold"), bar, Text(figures))
        return grid
