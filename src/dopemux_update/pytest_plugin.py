"""The pytest plugin that ``dopemux-update`` registers: the ``installation_copy`` fixture.

::

    def test_forward_adds_leantime(installation_copy):
        root = installation_copy("tests/fixtures/installation-0.1.0")
        run_forward("migrations/v0.1.0_to_v0.2.0/001_add_leantime.py", root)
        assert "leantime" in (root / "config/mcp/broker.yaml").read_text()

Loaded automatically when dopemux-update is installed (a ``pytest11`` entry point); list it
in ``pytest_plugins`` if you disable plugin autoloading.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from .testing import copy_installation

__all__ = ["installation_copy"]


@pytest.fixture
def installation_copy(tmp_path: Path) -> Callable[[Path | str], Path]:
    """A function that copies a fixture installation into this test's temporary folder and
    returns the copy's path; each call makes a new, independent copy."""
    counter = iter(range(1, 1_000_000))

    def make(source: Path | str) -> Path:
        return copy_installation(source, tmp_path / f"installation-{next(counter)}")

    return make
