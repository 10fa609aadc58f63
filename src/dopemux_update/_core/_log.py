"""The library's logger: structured events that never print by themselves.

Unconfigured, structlog prints every event to stdout, which for a library is printing (and
inside Dopemux's updater it writes through the manager's own progress display). So each call
looks at structlog's configuration:

- a host (or our own command line) that configured structlog gets the event through its
  processors, as ``structlog.get_logger("dopemux_update")`` would;
- otherwise the event goes to the standard library's logger ``dopemux_update`` as one
  ``event key=value ...`` line, with the event name and its fields also attached to the
  record (``record.dopemux_event``, ``record.dopemux_fields``) for handlers that want them.
  That logger has a ``NullHandler``, so a host without any logging set up sees nothing at all
  (not even Python's last-resort handler on stderr). Each such event at or above the level
  a command line asked for is also given to the sink it set (:func:`set_console`): its
  console's short lines and its run log, without a logging handler or structlog.

Neither structlog nor :mod:`logging` is imported by an event: until someone has imported
:mod:`logging`, nobody can have given it a handler or a level, and the event goes to the
console sink alone (a command line that logs through its sink, such as ``backups create``,
pays for neither).

structlog is not imported here: until someone has imported it, nobody can have configured it,
so each call only looks it up in ``sys.modules`` (importing it costs tens of milliseconds of
start-up, its dev console pulling in rich).
"""

from __future__ import annotations

import functools
import operator
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import logging

__all__ = ["Console", "Logger", "get_logger", "set_console"]

LOGGER_NAME = "dopemux_update"

# logging's level numbers (logging.DEBUG, ...), without importing it before an event.
_LEVELS = {"debug": 10, "info": 20, "warning": 30, "error": 40, "critical": 50}
_WARNING = _LEVELS["warning"]

#: A command line's sink: ``(level, event, fields)`` of each event it asked for.
Console = Callable[[str, str, dict[str, Any]], None]
_console: list[tuple[Console, int]] = []  # none, or the one set, with its lowest level


def set_console(console: Console | None, *, level: str = "warning") -> None:
    """Give every event of ``level`` or above to ``console`` too, while structlog is not
    configured (None: no longer)."""
    _console[:] = [] if console is None else [(console, _LEVELS[level])]


@functools.cache
def _stdlib() -> logging.Logger:
    """The standard library's logger ``dopemux_update``, with its ``NullHandler``."""
    import logging  # noqa: PLC0415 - at the first event: see the module documentation

    logger = logging.getLogger(LOGGER_NAME)
    logger.addHandler(logging.NullHandler())
    return logger


def _render(value: object) -> str:
    text = str(value)
    if not text or any(c.isspace() for c in text) or '"' in text or "=" in text:
        return repr(text)
    return text


#: structlog's logger for ``LOGGER_NAME``, and the configuration it was made with.
_made: tuple[tuple[object, ...], Any] | None = None


def _structlog_logger(structlog: Any) -> Any:
    """``structlog.get_logger(LOGGER_NAME)``, bound once per configuration.

    An unbound ``get_logger()`` builds a new logger at every call (unless the host caches
    loggers); a run logs a couple of events per migration. Configuring structlog again
    (a host, a test's ``capture_logs``) replaces or changes these objects, and so the logger;
    so does a new ``sys.stdout``/``sys.stderr``, which a logger made without a file of its
    own writes to.
    """
    global _made  # noqa: PLW0603 - one logger per process and configuration
    config = structlog.get_config()
    key = (*config.values(), sys.stdout, sys.stderr)
    made = _made
    if made is not None and len(made[0]) == len(key) and all(map(operator.is_, made[0], key)):
        return made[1]
    logger = structlog.get_logger(LOGGER_NAME).bind()
    _made = (key, logger)
    return logger


class Logger:
    """A bound logger whose destination is decided at each call (see the module docs)."""

    __slots__ = ("_context",)

    def __init__(self, context: dict[str, Any] | None = None) -> None:
        self._context = context or {}

    def bind(self, **values: Any) -> Logger:
        return Logger({**self._context, **values})

    def _log(self, level: str, event: str, fields: dict[str, Any]) -> None:
        merged = {**self._context, **fields} if self._context else fields
        structlog = sys.modules.get("structlog")
        if structlog is not None and structlog.is_configured():
            getattr(_structlog_logger(structlog), level)(event, **merged)
            return
        number = _LEVELS[level]
        if _console and number >= _console[0][1]:
            _console[0][0](level, event, merged)
        if "logging" not in sys.modules:
            return  # no one has imported logging, so no one has given it a handler or level
        stdlib = _stdlib()
        if not stdlib.isEnabledFor(number):
            return
        text = " ".join([event, *(f"{k}={_render(v)}" for k, v in merged.items())])
        stdlib.log(
            number,
            "%s",
            text,
            extra={"dopemux_event": event, "dopemux_fields": merged},
            stacklevel=3,
        )

    def debug(self, event: str, **fields: Any) -> None:
        self._log("debug", event, fields)

    def info(self, event: str, **fields: Any) -> None:
        self._log("info", event, fields)

    def warning(self, event: str, **fields: Any) -> None:
        self._log("warning", event, fields)

    def error(self, event: str, **fields: Any) -> None:
        self._log("error", event, fields)

    def critical(self, event: str, **fields: Any) -> None:
        self._log("critical", event, fields)


def get_logger() -> Logger:
    """The library's logger (module-level ``logger = get_logger()``)."""
    return Logger()
