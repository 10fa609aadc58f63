"""The two ways in, ``dopemux-update`` and ``python -m dopemux_update``, run the same
command line."""

from __future__ import annotations

import importlib
import subprocess
import sys
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_the_script_names_the_entry_that_python_m_runs() -> None:
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    module, _, attribute = scripts["dopemux-update"].partition(":")
    assert module == "dopemux_update.__main__"
    entry = getattr(importlib.import_module(module), attribute)  # importing runs nothing
    assert callable(entry)


def test_the_entry_exits_with_the_commands_code_and_leaves_the_collector_on_less_often() -> None:
    code = (
        "import gc, sys\n"
        "from dopemux_update.__main__ import run\n"
        "sys.argv = ['dopemux-update', 'status', '--root', '/nonexistent/folder']\n"
        "try:\n"
        "    run()\n"
        "except SystemExit as exc:\n"
        "    print(exc.code, gc.isenabled(), gc.get_freeze_count() > 0, *gc.get_threshold())\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # The youngest generation is collected every 50,000 new objects (the older ones as usual).
    assert done.stdout.split() == ["2", "True", "True", "50000", "10", "10"], done.stderr
