"""Capture what a migration prints, line by line, from its own worker thread only.

``sys.stdout`` and ``sys.stderr`` are wrapped, while an update runs, by a router that sends a
write to the sink of the thread that made it, and everything else where it always went.
Other threads' output (the command line's progress, the test runner) is untouched.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Callable, Iterator
from typing import Any, TextIO

__all__ = ["capture_thread", "routing_installed"]

LineHandler = Callable[[str, str], None]


class _LineSink:
    def __init__(self, stream: str, handler: LineHandler) -> None:
        self._stream = stream
        self._handler = handler
        self._pending = ""

    def write(self, text: str) -> None:
        self._pending += text
        *lines, self._pending = self._pending.split("\n")
        for line in lines:
            self._handler(self._stream, line.rstrip("\r"))

    def close(self) -> None:
        if self._pending:
            line, self._pending = self._pending, ""
            self._handler(self._stream, line.rstrip("\r"))


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
