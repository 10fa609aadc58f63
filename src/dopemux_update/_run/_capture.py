"""Capture what a migration prints, line by line, from its own worker thread only.

``sys.stdout`` and ``sys.stderr`` are wrapped, while an update runs, by a router that sends a
write to the sink of the thread that made it, and everything else where it always went.
Other threads' output (the command line's progress, the test runner) is untouched.
"""

from __future__ import annotations

import collections
import contextlib
import re
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TextIO

__all__ = [
    "MAX_KEPT_LINES",
    "MAX_LINE_CHARS",
    "KeptLines",
    "capture_thread",
    "clip_line",
    "omitted_lines",
    "routing_installed",
]

LineHandler = Callable[[str, str], None]


# A line end: ``\r\n``, ``\n``, or a lone ``\r`` (a progress bar redrawing its line).
_LINE_END = re.compile(r"\r\n|\r|\n")
# A line longer than this without an end is handed on in pieces: memory stays bounded.
MAX_PENDING = 1 << 20


# What is *held in memory* of a migration's output (for the summary, the JSON result): its
# last lines, each clipped. The run log receives every line whole, as it is printed.
MAX_KEPT_LINES = 200
MAX_LINE_CHARS = 4_000


def clip_line(line: str) -> str:
    """``line``, or its first :data:`MAX_LINE_CHARS` characters and how many more there were."""
    if len(line) <= MAX_LINE_CHARS:
        return line
    more = len(line) - MAX_LINE_CHARS
    return f"{line[:MAX_LINE_CHARS]}… ({more:,} more characters in the run log)"


def omitted_lines(count: int) -> str:
    """The marker that stands for ``count`` lines no longer held in memory."""
    return f"… {count:,} earlier line{'s' if count != 1 else ''} not shown (see the run log)"


class KeptLines:
    """The last :data:`MAX_KEPT_LINES` lines of one call's output, each clipped, and how many
    earlier ones were let go (they are in the run log)."""

    def __init__(self) -> None:
        self._lines: collections.deque[tuple[str, str]] = collections.deque(maxlen=MAX_KEPT_LINES)
        self._omitted = 0

    def add(self, stream: str, line: str) -> None:
        if len(self._lines) == MAX_KEPT_LINES:
            self._omitted += 1
        self._lines.append((stream, clip_line(line)))

    def kept(self) -> tuple[tuple[str, str], ...]:
        """``(stream, line)`` pairs; a marker (stream ``omitted``) first when lines went."""
        marker = (("omitted", omitted_lines(self._omitted)),) if self._omitted else ()
        return (*marker, *self._lines)


class _LineSink:
    """Cuts what a thread writes into lines; each write costs time in its own length only.

    ``\r`` ends a line as ``\n`` does: a progress bar that redraws its line 40,000 times
    gives 40,000 lines (what a terminal showed, one after another), never one line that
    grows and is re-scanned at each write.
    """

    def __init__(self, stream: str, handler: LineHandler) -> None:
        self._stream = stream
        self._handler = handler
        self._pending: list[str] = []  # the line so far, in pieces
        self._size = 0
        self._after_cr = False  # the last write ended with \r: a \n now ends no new line

    def write(self, text: str) -> None:
        start = 1 if self._after_cr and text.startswith("\n") else 0
        if text:
            self._after_cr = False
        for match in _LINE_END.finditer(text, start):
            lone_cr = match.group() == "\r"
            self._add(text[start : match.start()])
            if self._size or not lone_cr:  # "\r" at the start of a line draws nothing
                self._emit()
            start = match.end()
            self._after_cr = lone_cr and start == len(text)
        self._add(text[start:])

    def _add(self, piece: str) -> None:
        while piece:
            room = MAX_PENDING - self._size
            self._pending.append(piece[:room])
            self._size += min(room, len(piece))
            piece = piece[room:]
            if self._size >= MAX_PENDING:
                self._emit()

    def _emit(self) -> None:
        line = "".join(self._pending)
        self._pending.clear()
        self._size = 0
        self._handler(self._stream, line)

    def close(self) -> None:
        if self._size:
            self._emit()


class _Local(threading.local):
    sinks: dict[str, _LineSink] | None = None
    busy: bool = False


_local = _Local()


class _Router:
    """Stands in for ``sys.stdout``/``sys.stderr``; routes each write by thread."""

    def __init__(self, name: str, fallback: TextIO) -> None:
        self._name = name
        self._fallback = fallback

    def write(self, text: str) -> int:
        sinks = _local.sinks
        if sinks is None or _local.busy:
            return self._fallback.write(text)
        _local.busy = True  # a handler that logs or prints must not loop back here
        try:
            sinks[self._name].write(text)
        finally:
            _local.busy = False
        return len(text)

    def writelines(self, lines: list[str]) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        if _local.sinks is None:
            self._fallback.flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._fallback, name)


_install_lock = threading.Lock()
_install_count = 0
_originals: dict[str, TextIO] = {}


@contextlib.contextmanager
def routing_installed() -> Iterator[None]:
    """Install the routers on ``sys.stdout``/``sys.stderr`` for the duration (re-entrant)."""
    global _install_count  # noqa: PLW0603 - one process-wide installation, counted
    with _install_lock:
        if _install_count == 0:
            for name in ("stdout", "stderr"):
                original = getattr(sys, name)
                _originals[name] = original
                setattr(sys, name, _Router(name, original))
        _install_count += 1
    try:
        yield
    finally:
        with _install_lock:
            _install_count -= 1
            if _install_count == 0:
                for name, original in _originals.items():
                    if isinstance(getattr(sys, name), _Router):
                        setattr(sys, name, original)
                _originals.clear()


@contextlib.contextmanager
def capture_thread(handler: LineHandler) -> Iterator[None]:
    """Send this thread's prints to ``handler(stream, line)`` while the block runs."""
    sinks = {name: _LineSink(name, handler) for name in ("stdout", "stderr")}
    previous = _local.sinks
    _local.sinks = sinks
    try:
        yield
    finally:
        _local.sinks = previous
        for sink in sinks.values():
            sink.close()
