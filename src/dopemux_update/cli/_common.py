"""Pieces every command of the command line shares: exit codes, options, output, errors."""

from __future__ import annotations

import json
import os
import sys
import threading
from collections.abc import Callable, MutableMapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TextIO, TypeVar

import click
from packaging.version import Version

from .._core._exceptions import UpdateError
from .._core._log import Console, set_console
from .._core._versions import parse_version
from .._safety._private import check_state_dir, make_private_dirs, open_private
from .._safety._state import DEFAULT_STATE_DIR, VERSION_FILE, StateStore

# The exit codes and CommandError live in ._exit (which cli needs before any command runs);
# the commands import them from here.
from ._exit import EXIT_FAILED as EXIT_FAILED  # noqa: PLC0414
from ._exit import EXIT_INTERRUPTED as EXIT_INTERRUPTED  # noqa: PLC0414
from ._exit import EXIT_LOCKED as EXIT_LOCKED  # noqa: PLC0414
from ._exit import EXIT_OK as EXIT_OK  # noqa: PLC0414
from ._exit import EXIT_RECOVERY as EXIT_RECOVERY  # noqa: PLC0414
from ._exit import EXIT_RESTART_FAILED as EXIT_RESTART_FAILED  # noqa: PLC0414
from ._exit import EXIT_UNHEALTHY as EXIT_UNHEALTHY  # noqa: PLC0414
from ._exit import EXIT_USAGE as EXIT_USAGE  # noqa: PLC0414
from ._exit import CommandError as CommandError  # noqa: PLC0414

_HELD_IN_MEMORY = 4 << 20  # characters of a run log held in memory before it starts
#: ``json.dumps(value, default=repr)``'s encoder, made once: json.dumps makes a new one at
#: every call that passes ``default``, and a run writes a couple of lines per migration.
_LINE_ENCODER = json.JSONEncoder(default=repr)


F = TypeVar("F", bound=Callable[..., Any])


class Context(NamedTuple):
    """Where a command works and how it reports (a named tuple: every command creates this
    class at its start, and a named tuple costs a tenth of a frozen dataclass)."""

    root: Path
    migrations: Path
    state_dir: Path
    json: bool

    @property
    def state(self) -> StateStore:
        return StateStore(self.state_dir, version_file=self.root / VERSION_FILE)


class RunLog:
    """Every structlog event of one command, as JSON lines, in ``<state>/logs/``.

    Written whatever the console's verbosity: migration output, tracebacks, debug events.
    Events are held until :meth:`start`, which the command calls once validation has passed,
    so that a refused command leaves nothing behind: in memory, and beyond
    :data:`_HELD_IN_MEMORY` characters in an anonymous temporary file, so that a flood of
    output before the start (a migration printing at import, a whole ``verify``) does not
    fill the memory.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._handle: TextIO | None = None
        self._buffer: list[str] = []
        self._buffered = 0
        self._spill: TextIO | None = None
        self._lock = threading.Lock()

    @property
    def started(self) -> bool:
        return self._handle is not None

    def start(self) -> None:
        with self._lock:
            if self._handle is not None:
                return
            make_private_dirs(self.path.parent)
            fd = open_private(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
            self._handle = os.fdopen(fd, "a", encoding="utf-8")
            if self._spill is not None:
                import shutil  # noqa: PLC0415 - only a flood held before the start: see above

                self._spill.seek(0)
                shutil.copyfileobj(self._spill, self._handle)
            self._handle.writelines(self._buffer)
            self._handle.flush()
            self._drop_held()

    def __call__(self, _: Any, __: str, event_dict: MutableMapping[str, Any]) -> Any:
        line = _LINE_ENCODER.encode(dict(event_dict)) + "\n"
        with self._lock:
            if self._handle is not None:
                # One write(2) per line, as a flush after each line made it (nothing is
                # held in the process), without the text layer's work for each line.
                data = line.encode()
                fd = self._handle.fileno()
                while data:
                    data = data[os.write(fd, data) :]
                return event_dict
            self._buffer.append(line)
            self._buffered += len(line)
            if self._buffered > _HELD_IN_MEMORY:
                if self._spill is None:
                    import tempfile  # noqa: PLC0415 - as shutil in start(): rarely needed

                    # Closed by _drop_held(), when the log starts or is closed or discarded.
                    self._spill = tempfile.TemporaryFile("w+", encoding="utf-8")  # noqa: SIM115
                self._spill.writelines(self._buffer)
                self._buffer.clear()
                self._buffered = 0
        return event_dict

    def _drop_held(self) -> None:
        self._buffer.clear()
        self._buffered = 0
        if self._spill is not None:
            self._spill.close()
            self._spill = None

    def close(self) -> None:
        with self._lock:
            if self._handle is not None:
                self._handle.close()
            self._drop_held()

    def discard(self) -> None:
        """Close and remove the log: the command turned out to be refused."""
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None
                self.path.unlink(missing_ok=True)
            self._drop_held()


def _console_filter(threshold: int) -> Callable[[Any, str, MutableMapping[str, Any]], Any]:
    def drop_quiet(_: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        if _LEVELS.get(method, _INFO) < threshold:
            import structlog  # noqa: PLC0415 - imported by configure_logging already

            raise structlog.DropEvent
        return event_dict

    return drop_quiet


def _brief(run_log: RunLog | None) -> Callable[[Any, str, MutableMapping[str, Any]], Any]:
    """Without ``-v``, a traceback stays in the run log instead of filling the console; the
    error message itself is still shown, with where to find the traceback."""
    where = str(run_log.path) if run_log is not None else "-v"

    def brief(_: Any, __: str, event_dict: MutableMapping[str, Any]) -> Any:
        if "traceback" in event_dict:
            event_dict.pop("traceback")
            event_dict["traceback_in"] = where
        return event_dict

    return brief


# logging's level numbers (logging.DEBUG, ...): the light console does not import logging.
_DEBUG, _INFO, _WARNING, _ERROR, _CRITICAL = 10, 20, 30, 40, 50
_LEVELS = {
    "debug": _DEBUG,
    "info": _INFO,
    "warning": _WARNING,
    "warn": _WARNING,
    "error": _ERROR,
    "exception": _ERROR,
    "critical": _CRITICAL,
}


# Events the command's own lines already tell (the progress, the summary, recover's report):
# at the default verbosity they stay in the run log instead of repeating on the console.
_SHOWN_BY_THE_UI = (
    "migration.",
    "rollback.",
    "restore.",
    "update.",
    "recovery.",
    "restart.",
    "health.",
    "journal.",
    "state.write_failed",
)
# ... but for these, which no line of the command's tells.
_NOT_SHOWN_BY_THE_UI = frozenset(
    {"restore.sqlite_replaced", "restore.folder_kept", "migration.changed_cwd"}
)


def _ui_only(quiet: bool) -> Callable[[Any, str, MutableMapping[str, Any]], Any]:
    """The default console: what the command's lines already say is dropped; any other
    warning or error becomes one short line (``warning: backup.skipped: path=x``)."""

    def ui_only(_: Any, method: str, event_dict: MutableMapping[str, Any]) -> Any:
        line = _ui_line(quiet, method, event_dict)
        if line is None:
            import structlog  # noqa: PLC0415 - imported by configure_logging already

            raise structlog.DropEvent
        return line

    return ui_only


def _ui_line(quiet: bool, method: str, event_dict: MutableMapping[str, Any]) -> str | None:
    """The short console line of a log event at the default verbosity, or None when the
    command's own lines already tell it (or ``-q`` keeps errors only)."""
    event = str(event_dict.get("event", ""))
    shown = event.startswith(_SHOWN_BY_THE_UI) and event not in _NOT_SHOWN_BY_THE_UI
    if shown or (quiet and _LEVELS.get(method, 0) < _ERROR):
        return None
    level = "error" if _LEVELS.get(method, _INFO) >= _ERROR else "warning"
    fields = ", ".join(
        f"{key}={value}"
        for key, value in event_dict.items()
        if key not in ("event", "level", "timestamp")
    )
    return f"{level}: {event}" + (f": {fields}" if fields else "")


class _UiLines:
    """The default console without structlog (nor logging): the library gives it the
    warnings and errors it logs while structlog is not configured (see ``_log``); they
    become the same short lines as :func:`_ui_only` makes. A traceback is left to
    ``traceback_in``: the run log, or ``-v``."""

    def __init__(self, quiet: bool, traceback_in: str = "-v") -> None:
        self.quiet = quiet
        self.traceback_in = traceback_in

    def __call__(self, level: str, event: str, fields: dict[str, Any]) -> None:
        shown = dict(fields)
        if "traceback" in shown:  # as _brief does
            shown.pop("traceback")
            shown["traceback_in"] = self.traceback_in
        line = _ui_line(self.quiet, level, {"event": event, **shown})
        if line is not None:
            sys.stderr.write(line + "\n")


def _json_default(value: Any) -> Any:
    """What structlog's JSONRenderer writes for a value JSON has no form for."""
    try:
        return value.__structlog__()
    except AttributeError:
        return repr(value)


def _event_dict(level: str, event: str, fields: dict[str, Any]) -> dict[str, Any]:
    """The event as structlog's processors here make it: the fields, then the event, the
    level (``add_log_level``) and an ISO UTC timestamp (``TimeStamper(fmt="iso", utc=True)``)."""
    line = dict(fields)
    line["event"] = event
    line["level"] = level
    line["timestamp"] = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    return line


class _JsonLines:
    """The ``--json`` console without structlog: warnings and errors as the JSON lines
    structlog's JSONRenderer writes for them (a traceback left to ``traceback_in``)."""

    def __init__(self, traceback_in: str = "-v") -> None:
        self.traceback_in = traceback_in

    def __call__(self, level: str, event: str, fields: dict[str, Any]) -> None:
        line = _event_dict(level, event, fields)
        if "traceback" in line:  # as _brief does
            line.pop("traceback")
            line["traceback_in"] = self.traceback_in
        sys.stderr.write(json.dumps(line, default=_json_default) + "\n")


class _RunLogLines:
    """A command with a run log at the default verbosity, without structlog: every event
    to the run log as the JSON line structlog wrote there, and the warnings and errors to
    the console as ``console`` shows them."""

    def __init__(self, run_log: RunLog, console: Console) -> None:
        self.run_log = run_log
        self.console = console

    def __call__(self, level: str, event: str, fields: dict[str, Any]) -> None:
        self.run_log(None, level, _event_dict(level, event, fields))
        if _LEVELS[level] >= _WARNING:
            self.console(level, event, fields)


def reset_console_logging() -> None:
    """Remove the console a light :func:`configure_logging` set (the command ended)."""
    set_console(None)


def quiet_requested() -> bool:
    """``-q``/``--quiet`` was given to the running command (kept in click's context, so that
    no command's signature has to carry it)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx is not None and ctx.find_root().meta.get(_QUIET_KEY))


_QUIET_KEY = "dopemux_update.quiet"


def configure_logging(verbosity: int, *, json_logs: bool, run_log: RunLog | None = None) -> None:
    """Console logs on stderr at the chosen verbosity; with ``run_log``, every event too.

    At the default verbosity the console shows the command's own lines only: log events are
    left to the run log, but for warnings and errors nothing else reports (one short line
    each); ``-v`` adds the log lines (JSON only with ``--json``), ``-q`` keeps errors only.
    """
    reset_console_logging()
    found = sys.modules.get("structlog")
    if verbosity == 0 and (found is None or not found.is_configured()):
        # The default verbosity, and no host configured structlog: the same console lines
        # and run log as below, without importing structlog (and rich) at all.
        where = "-v" if run_log is None else str(run_log.path)
        console: Console = _JsonLines(where) if json_logs else _UiLines(quiet_requested(), where)
        if run_log is None:
            set_console(console)
        else:
            set_console(_RunLogLines(run_log, console), level="debug")
        return
    import structlog  # noqa: PLC0415 - 60 ms: only for commands that log more than lines

    level = {0: _WARNING, 1: _INFO}.get(verbosity, _DEBUG)
    renderer: structlog.types.Processor
    if json_logs:
        renderer = structlog.processors.JSONRenderer()
    else:
        plain = (
            "NO_COLOR" in os.environ
            or os.environ.get("TERM") in ("dumb", "unknown")
            or not sys.stderr.isatty()
        )
        renderer = structlog.dev.ConsoleRenderer(colors=not plain)
    if verbosity == 0 and not json_logs:
        renderer = _ui_only(quiet_requested())
    processors: list[structlog.types.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    if run_log is not None:
        processors.append(run_log)
    processors.append(_console_filter(level))
    if verbosity == 0:
        processors.append(_brief(run_log))
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            _DEBUG if run_log is not None else level
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def open_run_log(ctx: Context, command: str, verbose: int) -> RunLog:
    """Start this command's run log and send every log event to it."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    run_log = RunLog(ctx.state_dir / "logs" / f"{stamp}-{command}-{os.getpid()}.jsonl")
    configure_logging(verbose, json_logs=ctx.json, run_log=run_log)
    return run_log


def _remember_quiet(ctx: click.Context, _: click.Parameter, value: bool) -> None:
    if value:
        ctx.find_root().meta[_QUIET_KEY] = True


def common_options(function: F) -> F:
    """``--root``, ``--migrations``, ``--json`` and ``-v``, taken after the command's name."""
    decorators = [
        click.option(
            "--root",
            type=click.Path(file_okay=False, path_type=Path),
            default=Path(),
            show_default="the current folder",
            help="The installation's folder.",
        ),
        click.option(
            "--migrations",
            type=click.Path(file_okay=False, path_type=Path),
            default=None,
            help="The migrations folder.  [default: ROOT/migrations]",
        ),
        click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout."),
        click.option("-v", "--verbose", count=True, help="Log more to stderr (-vv for debug)."),
        click.option(
            "-q",
            "--quiet",
            is_flag=True,
            expose_value=False,
            callback=_remember_quiet,
            help="Print only errors and the final line.",
        ),
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


def time_limit_options(function: F) -> F:
    """``--timeout`` and ``--grace``: how long a migration may run, and then how long its
    thread gets to end (after a timeout or Ctrl-C) before it is abandoned."""
    from .._run._runner import DEFAULT_GRACE  # noqa: PLC0415 - the runner's commands only

    decorators = [
        click.option(
            "--timeout",
            type=click.FloatRange(min=0, min_open=True),
            metavar="SECONDS",
            help="Fail a migration that runs longer than this.",
        ),
        click.option(
            "--grace",
            type=click.FloatRange(min=0),
            default=DEFAULT_GRACE,
            show_default=True,
            metavar="SECONDS",
            help="After a timeout or Ctrl-C, how long a running migration gets to end before"
            " it is abandoned.",
        ),
    ]
    for decorator in reversed(decorators):
        function = decorator(function)
    return function


def make_context(
    root: Path,
    migrations: Path | None,
    as_json: bool,
    verbose: int,
    *,
    new_migrations: bool = False,
) -> Context:
    """Where the command works; a state folder that another user could change is refused
    here, before any command reads it (those that write check again under the lock).

    The root must exist, for every command; so must a ``--migrations`` folder given
    explicitly (a typo there would otherwise read as "nothing to run"), except for ``new``
    (``new_migrations``), which creates it.
    """
    configure_logging(verbose, json_logs=as_json)
    # Absolute once: a migration that changes the working directory cannot redirect anything.
    root = root.absolute()
    migrations = migrations.absolute() if migrations is not None else None
    if not root.is_dir():
        raise CommandError(
            f"{root}: installation folder does not exist"
            " (pass the installation's folder with --root DIR)"
        )
    if migrations is not None and not new_migrations and not migrations.is_dir():
        raise CommandError(
            f"{migrations}: migrations folder does not exist"
            " (pass the folder that holds the vX_to_vY folders with --migrations DIR)"
        )
    ctx = Context(
        root=root,
        migrations=migrations if migrations is not None else root / "migrations",
        state_dir=root / DEFAULT_STATE_DIR,
        json=as_json,
    )
    check_state_dir(ctx.state_dir)
    return ctx


def format_bytes(size: int) -> str:
    """``512 B``, ``1.5 KB``, ``2.0 GB``: a size as the commands show it."""
    value = float(size)
    for unit in ("B", "KB", "MB", "GB"):
        if value < 1024 or unit == "GB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{value:.1f} TB"  # pragma: no cover - the loop always returns


def plural(count: int, noun: str) -> str:
    """``1 file``, ``2 files``."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def emit(
    ctx: Context, payload: dict[str, Any], lines: Sequence[str] = (), *, code: int = EXIT_OK
) -> None:
    """The command's result: ``payload`` as one JSON object (with ``--json``), else ``lines``.

    Every object starts with ``command``, ``ok`` and ``exit_code`` (from ``code`` unless the
    payload has its own)."""
    if ctx.json:
        head = {
            "command": payload.get("command"),
            "ok": payload.get("ok", code == EXIT_OK),
            "exit_code": payload.get("exit_code", code),
        }
        click.echo(json.dumps({**head, **payload}, indent=2, default=str))
    elif lines:
        click.echo("\n".join(lines))  # one write for all of them


def version_option_value(value: str | None, *, option: str) -> Version | None:
    if value is None:
        return None
    try:
        return parse_version(value, where=option)
    except UpdateError as exc:
        raise CommandError(str(exc)) from exc


def installed_version(ctx: Context, explicit: Version | None) -> Version:
    if explicit is not None:
        return explicit
    recorded = ctx.state.installed_version()
    if recorded is None:
        raise CommandError(
            f"no installed version is recorded in {ctx.state.path};"
            " record it with `dopemux-update stamp VERSION` or pass --from"
        )
    return parse_version(recorded, where=str(ctx.state.path))
