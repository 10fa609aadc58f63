"""The public surface: everything exported is listed, and all errors share one root."""

from __future__ import annotations

import inspect

import dopemux_update
from dopemux_update import UpdateError


def test_all_is_sorted_and_matches_the_exports() -> None:
    public = {name for name in vars(dopemux_update) if not name.startswith("_")}
    assert dopemux_update.__all__ == sorted(dopemux_update.__all__)
    modules = {name for name in public if inspect.ismodule(getattr(dopemux_update, name))}
    assert set(dopemux_update.__all__) == public - modules


def test_every_exception_derives_from_update_error() -> None:
    errors = [
        obj
        for obj in vars(dopemux_update).values()
        if isinstance(obj, type) and issubclass(obj, BaseException)
    ]
    assert len(errors) > 5
    assert all(issubclass(error, UpdateError) for error in errors)
