"""What a run of many migrations must not pay for: no timings here, only the behaviour that
keeps the cost per migration small (issue 16, "Speed")."""

from __future__ import annotations

import gc
import threading
from pathlib import Path

import pytest

from conftest import MigrationWriter
from dopemux_update import Plan, UpdateResult
from dopemux_update.cli import main


def test_the_command_line_never_formats_the_plan_or_the_result_when_its_event_loop_ends(
    installation: Path, migrations: MigrationWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Python 3.11's asyncio formats the event loop's main task, its result included, when
    it puts the Ctrl-C handler back: a plan of a thousand migrations took tens of
    milliseconds to format, twice per command. Only the main thread installs that handler."""
    assert threading.current_thread() is threading.main_thread()
    formatted: list[str] = []

    def recording_repr(self: object) -> str:
        formatted.append(type(self).__name__)
        return type(self).__name__

    monkeypatch.setattr(Plan, "__repr__", recording_repr)
    monkeypatch.setattr(UpdateResult, "__repr__", recording_repr)
    for n in (1, 2):
        migrations.add("v1.0_to_v1.1", f"00{n}_step.py")
    common = ["--root", str(installation), "--migrations", str(migrations.root), "--json"]
    assert main(["stamp", "1.0", "--root", str(installation)]) == 0
    assert main(["plan", "--to", "1.1", *common]) == 0
    assert main(["upgrade", "--no-restart", "--yes", *common]) == 0
    assert main(["downgrade", "--to", "1.0", "--no-restart", "--yes", *common]) == 0
    assert formatted == []


def test_a_caller_of_main_gets_its_garbage_collector_back_as_it_was(
    installation: Path, migrations: MigrationWriter
) -> None:
    """The command freezes what lives as long as it does (the modules, the plan): for its
    own process; a caller in the same process finds nothing frozen and collection on."""
    migrations.add("v1.0_to_v1.1", "001_step.py")
    common = ["--root", str(installation), "--migrations", str(migrations.root), "--json"]
    assert main(["stamp", "1.0", "--root", str(installation)]) == 0
    frozen = gc.get_freeze_count()
    assert main(["upgrade", "--no-restart", "--yes", *common]) == 0
    assert gc.get_freeze_count() == frozen
    assert gc.isenabled()
    migrations.add("v1.1_to_v1.2", "001_broken.py", source="raise RuntimeError('at import')\n")
    assert main(["upgrade", "--no-restart", "--yes", *common]) == 2
    assert gc.get_freeze_count() == frozen
    assert gc.isenabled()
