"""The recorded state of an installation: its installed version and the history of runs.

Lives in ``<root>/.dopemux/update/state.json`` (the state folder is configurable) and is only
ever replaced atomically.
"""

from __future__ import annotations

import os
import time
from datetime import UTC, datetime
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ._exceptions import StateError
from ._faults import check_write
from ._fsutil import atomic_write
from ._log import get_logger
from ._private import make_private_dirs
from ._versions import parse_version

__all__ = ["DEFAULT_STATE_DIR", "MigrationRecord", "RunRecord", "State", "StateStore", "utcnow"]

DEFAULT_STATE_DIR = Path(".dopemux") / "update"
_STATE_FILE = "state.json"
_HISTORY_LIMIT = 200
_RETRY_DELAYS = (0.05, 0.2, 0.5, 1.0)  # between the attempts of ``record_retrying``

logger = get_logger()


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class MigrationRecord(BaseModel):
    """One migration function that ran during a recorded run."""

    model_config = ConfigDict(frozen=True)

    id: str
    direction: str
    checksum: str
    seconds: float
    outcome: str


class RunRecord(BaseModel):
    """One update run, kept in the history."""

    model_config = ConfigDict(frozen=True)

    run_id: str | None = None
    started_at: str
    finished_at: str
    version_from: str
    version_to: str
    direction: str
    outcome: str
    backup_id: str | None = None
    migrations: tuple[MigrationRecord, ...] = ()
    error: str | None = None


class State(BaseModel):
    """The content of ``state.json``."""

    model_config = ConfigDict(frozen=True)

    installed_version: str | None = None
    history: tuple[RunRecord, ...] = Field(default=())


class StateStore:
    """Reads and atomically rewrites ``state.json`` in a state folder."""

    def __init__(self, state_dir: Path) -> None:
        self.state_dir = state_dir
        self.path = state_dir / _STATE_FILE

    def read(self) -> State:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return State()
        except OSError as exc:
            raise StateError(f"cannot be read: {exc.strerror or exc}", path=self.path) from exc
        try:
            state = State.model_validate_json(raw)  # parsed in pydantic-core: several x faster
        except (ValueError, ValidationError) as exc:
            raise StateError(f"is not a valid state file: {exc}", path=self.path) from exc
        if state.installed_version is not None:
            parse_version(state.installed_version, where=str(self.path))
        return state

    def write(self, state: State) -> None:
        make_private_dirs(self.state_dir)
        data = state.model_dump_json(indent=2, exclude_defaults=False) + "\n"
        check_write()
        atomic_write(self.path, data.encode())

    def set_aside(self) -> Path | None:
        """Rename a (corrupt) ``state.json`` to ``state.json.corrupt-<time>``; its new name,
        or None when there was none."""
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ")
        aside = self.path.with_name(f"{self.path.name}.corrupt-{stamp}")
        try:
            os.rename(self.path, aside)  # noqa: PTH104 - the plain rename(2) is the point
        except FileNotFoundError:
            return None
        return aside

    def installed_version(self) -> str | None:
        return self.read().installed_version

    def record(self, *, installed_version: str | None, run: RunRecord | None = None) -> State:
        """Set the installed version and append ``run`` to the history, in one atomic write."""
        state = self.read()
        history = state.history if run is None else (*state.history, run)[-_HISTORY_LIMIT:]
        version = installed_version if installed_version is not None else state.installed_version
        new = State(installed_version=version, history=history)
        self.write(new)
        return new

    def record_retrying(self, *, installed_version: str | None, run: RunRecord | None) -> State:
        """:meth:`record`, tried again a few times over about two seconds when the write
        fails (a full disk that something else is freeing); the last error is raised."""
        for delay in (*_RETRY_DELAYS, None):
            try:
                return self.record(installed_version=installed_version, run=run)
            except OSError as exc:
                if delay is None:
                    raise
                logger.warning("state.write_retry", error=str(exc), retry_in=delay)
                time.sleep(delay)
        raise AssertionError("unreachable")  # pragma: no cover
