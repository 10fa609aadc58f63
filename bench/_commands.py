"""How the benchmarks start a tool: by its installed script, as its operators do.

``python -m PACKAGE`` also loads ``runpy`` and ``importlib.util`` (a few milliseconds) that
the installed script does without; each tool, ours and the baseline alike, is started the
same way. Where a script is missing, ``python -m`` is the fallback.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def command_for(script: str, module: str) -> list[str]:
    """The console script ``script`` installed beside this interpreter, or ``python -m
    module`` where there is none."""
    found = Path(sys.executable).with_name(script)
    if found.is_file() and os.access(found, os.X_OK):
        return [str(found)]
    return [sys.executable, "-m", module]


def under_python(command: list[str], *options: str) -> list[str]:
    """``command`` run with the interpreter's ``options`` (``-X importtime``): a script is
    handed to the interpreter by path."""
    if command[0] == sys.executable:
        return [sys.executable, *options, *command[1:]]
    return [sys.executable, *options, *command]


def dopemux_update() -> list[str]:
    return command_for("dopemux-update", "dopemux_update")


def alembic() -> list[str]:
    return command_for("alembic", "alembic")
