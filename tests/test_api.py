"""The public surface: everything exported is listed, and all errors share one root."""

from __future__ import annotations

import inspect
import subprocess
import sys

import dopemux_update
from dopemux_update import UpdateError


def _public() -> dict[str, object]:
    """Every public name the package offers, resolved (the names are imported lazily)."""
    names = {name for name in dir(dopemux_update) if not name.startswith("_")}
    return {name: getattr(dopemux_update, name) for name in names}


def test_all_is_sorted_and_matches_the_exports() -> None:
    public = _public()
    assert dopemux_update.__all__ == sorted(dopemux_update.__all__)
    modules = {name for name, value in public.items() if inspect.ismodule(value)}
    assert set(dopemux_update.__all__) == set(public) - modules


def test_every_exception_derives_from_update_error() -> None:
    errors = [
        obj
        for obj in _public().values()
        if isinstance(obj, type) and issubclass(obj, BaseException)
    ]
    assert len(errors) > 5
    assert all(issubclass(error, UpdateError) for error in errors)


def test_importing_the_package_imports_none_of_its_modules() -> None:
    code = (
        "import sys, dopemux_update\n"
        "loaded = sorted(m for m in sys.modules if m.startswith('dopemux_update.'))\n"
        "heavy = sorted(m for m in ('rich', 'pydantic', 'anyio', 'asyncio', 'structlog')"
        " if m in sys.modules)\n"
        "print(loaded, heavy)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[] []"


def test_a_star_import_gives_every_public_name() -> None:
    code = (
        "from dopemux_update import *\n"
        "import dopemux_update\n"
        "print(sorted(set(dopemux_update.__all__) - set(globals())))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert out.strip() == "[]"
