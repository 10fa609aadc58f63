"""Objects a migration supplies, put into words without letting them end the process.

A migration's return value, its exception or a value in its ``MIGRATION_INFO`` may have a
``__repr__`` or ``__str__`` that raises, even ``SystemExit``: showing it must not end the
command with exit 0 and no output. Only a ``KeyboardInterrupt`` in the main thread (where a
real Ctrl-C arrives) goes on; anything else gives a stand-in text naming the type.
"""

from __future__ import annotations

import threading
import traceback

__all__ = ["exception_text", "is_real_interrupt", "shown", "traceback_text"]


def is_real_interrupt(exc: BaseException) -> bool:
    """Whether ``exc`` may be the operator's Ctrl-C rather than something code raised."""
    return isinstance(exc, KeyboardInterrupt) and threading.current_thread() is (
        threading.main_thread()
    )


def _type_name(value: object) -> str:
    return type(value).__name__


def shown(value: object) -> str:
    """``repr(value)``, or ``<Type object>`` when its ``__repr__`` fails in any way."""
    try:
        return repr(value)
    except BaseException as exc:
        if is_real_interrupt(exc):
            raise
        return f"<{_type_name(value)} object>"


def exception_text(exc: BaseException) -> str:
    """``Type: message``; a ``SystemExit`` says what it is (``called sys.exit(0)``)."""
    if isinstance(exc, SystemExit):
        code = exc.code
        return f"SystemExit: {code if isinstance(code, str) else shown(code)}"
    try:
        message = str(exc)
    except BaseException as inner:
        if is_real_interrupt(inner):
            raise
        message = f"<{_type_name(exc)} object (its str() raised {_type_name(inner)})>"
    return f"{_type_name(exc)}: {message}"


def traceback_text(exc: BaseException) -> str:
    """The formatted traceback of ``exc``, chained exceptions included; when formatting it
    fails, its frames and :func:`exception_text`."""
    try:
        return "".join(traceback.format_exception(exc))
    except BaseException as inner:
        if is_real_interrupt(inner):
            raise
    try:
        frames = "".join(traceback.format_tb(exc.__traceback__))
    except BaseException as inner:
        if is_real_interrupt(inner):
            raise
        frames = ""
    return f"Traceback (most recent call last):\n{frames}{exception_text(exc)}\n"
