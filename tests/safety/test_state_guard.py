"""The state guard's check after each migration: its quick look misses nothing its full
look (``problems``) finds."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from dopemux_update._backup._names import MANIFEST, MANIFEST_SUM, OBJECTS
from dopemux_update._safety._state_guard import StateGuard, StateTamperedError


def _state(tmp_path: Path) -> tuple[Path, Path, Path]:
    state = tmp_path / "state"
    backup = state / "backups" / "b1"
    backup.mkdir(parents=True)
    (state / "backups" / OBJECTS).mkdir()
    for name in (MANIFEST, MANIFEST_SUM):
        (backup / name).write_text("stored\n")
    journal = state / "journal.jsonl"
    journal.write_text("record\n")
    return state, journal, backup


def _replace(path: Path) -> None:
    os.rename(path, path.with_name(path.name + ".old"))
    if path.with_name(path.name + ".old").is_dir():
        path.mkdir()
    else:
        path.write_bytes(path.with_name(path.name + ".old").read_bytes())


def _rewrite_same_size(path: Path) -> None:
    stat = path.stat()
    path.write_text("STORED\n")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))


TAMPERING: dict[str, Callable[[Path, Path, Path], None]] = {
    "state folder deleted": lambda s, j, b: shutil.rmtree(s),
    "state folder replaced": lambda s, j, b: _replace(s),
    "journal deleted": lambda s, j, b: j.unlink(),
    "journal replaced": lambda s, j, b: _replace(j),
    "journal appended to": lambda s, j, b: j.write_text("record\nmore\n"),
    "backup deleted": lambda s, j, b: shutil.rmtree(b),
    "backup replaced": lambda s, j, b: _replace(b),
    "manifest rewritten": lambda s, j, b: _rewrite_same_size(b / MANIFEST),
    "manifest checksum deleted": lambda s, j, b: (b / MANIFEST_SUM).unlink(),
    "stored objects deleted": lambda s, j, b: shutil.rmtree(b.parent / OBJECTS),
}


def test_an_untouched_state_passes_the_check(tmp_path: Path) -> None:
    state, journal, backup = _state(tmp_path)
    guard = StateGuard(state, journal, backup, lambda: len("record\n"))
    for _ in range(3):
        guard.check("m1")
    assert guard.problems() == []


@pytest.mark.parametrize("tamper", list(TAMPERING.values()), ids=list(TAMPERING))
def test_every_change_the_full_look_finds_stops_the_check(
    tmp_path: Path, tamper: Callable[[Path, Path, Path], None]
) -> None:
    state, journal, backup = _state(tmp_path)
    guard = StateGuard(state, journal, backup, lambda: len("record\n"))
    guard.check("m1")  # the quick look has been taken once
    tamper(state, journal, backup)
    assert guard.problems()
    with pytest.raises(StateTamperedError, match="m2"):
        guard.check("m2")
