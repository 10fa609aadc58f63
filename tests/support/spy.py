"""Record what a function is called with, and let it do its work."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest


def spy(
    monkeypatch: pytest.MonkeyPatch,
    owner: object,
    name: str,
    into: list[Any],
    note: Callable[[Any], Any] = lambda first: first,
) -> Callable[..., Any]:
    """Replace ``owner.name`` (for this test) by a wrapper that appends ``note`` of its first
    argument to ``into`` and calls the real one; returns the wrapper, to put elsewhere too."""
    real = getattr(owner, name)

    def recording(first: Any, *args: Any, **kwargs: Any) -> Any:
        into.append(note(first))
        return real(first, *args, **kwargs)

    monkeypatch.setattr(owner, name, recording)
    return recording
