"""The recorded state of an installation: its installed version and the history of runs.

Lives in ``<root>/.dopemux/update/state.json`` (the state folder is configurable) and is only
ever replaced atomically.

Dopemux keeps its own record of the installed version in ``<root>/VERSION``. When a store is
given that file (``version_file``), it reads the installed version from there while
``state.json`` records none, and every version it records is written there too (in the file's
own style: a leading ``v`` is kept), just before ``state.json``: the two records never
disagree after one of our runs. A file that does not exist is never created.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
import typing
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from .._core._exceptions import StateError
from .._core._faults import check_write
from .._core._fsutil import atomic_write
from .._core._log import get_logger
from .._core._versions import parse_version
from ._private import make_private_dirs

__all__ = [
    "DEFAULT_STATE_DIR",
    "VERSION_FILE",
    "MigrationRecord",
    "RunRecord",
    "State",
    "StateStore",
    "read_version_file",
    "utcnow",
]

DEFAULT_STATE_DIR = Path(".dopemux") / "update"
_STATE_FILE = "state.json"
VERSION_FILE = "VERSION"  # Dopemux's own record, at the installation's root
_HISTORY_LIMIT = 200
_RETRY_DELAYS = (0.05, 0.2, 0.5, 1.0)  # between the attempts of ``record_retrying``

logger = get_logger()


def read_version_file(path: Path) -> str | None:
    """The version in a Dopemux ``VERSION`` file, without a leading ``v``; None when there is
    no such file. Raises :class:`StateError` when it holds no valid version."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace").strip()
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise StateError(f"cannot be read: {exc.strerror or exc}", path=path) from exc
    value = text[1:] if text[:1] in ("v", "V") else text
    if not value:
        raise StateError("is empty: it should hold the installed version", path=path)
    parse_version(value, where=str(path))
    return value


def _write_version_file(path: Path, version: str) -> None:
    """Put ``version`` in an existing ``VERSION`` file, keeping its style and mode."""
    try:
        old = path.read_text(encoding="utf-8", errors="replace")
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return
    prefix = "v" if old.strip()[:1] in ("v", "V") else ""
    ending = "\n" if old.endswith("\n") else ""
    new = f"{prefix}{version}{ending}"
    if new != old:
        check_write()
        atomic_write(path, new.encode(), mode=mode)


def utcnow() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True, slots=True, kw_only=True)
class MigrationRecord:
    """One migration function that ran during a recorded run."""

    id: str
    direction: str
    checksum: str
    seconds: float
    outcome: str


@dataclass(frozen=True, slots=True, kw_only=True)
class RunRecord:
    """One update run, kept in the history."""

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
    #: What ran: ``upgrade``, ``downgrade`` or ``revert`` (None in files written before it
    #: was recorded: the direction says which of the first two).
    command: str | None = None
    #: A revert: the id of the run it undid, and why (``health check`` after the CLI's gate).
    reverts: str | None = None
    reason: str | None = None


@dataclass(frozen=True, slots=True, kw_only=True)
class State:
    """The content of ``state.json``."""

    installed_version: str | None = None
    history: tuple[RunRecord, ...] = ()
    #: Services a committed run asked to restart that were not (the restart failed, or was
    #: skipped): kept, in first-appearance order, until ``dopemux-update restart`` does it.
    restarts_owed: tuple[str, ...] = ()


# -- reading state.json -----------------------------------------------------------------------
#
# state.json is read by every command, ``status`` included, so without pydantic: the
# dataclasses' own field types say what each value must be, and a file that holds exactly
# those (what this tool writes) is read here. Anything else (a damaged file, or a value that
# only a lenient reading accepts, such as a number written as a string) is left to pydantic,
# which validates the same dataclasses as it validated the models before: it accepts what it
# accepted, and a damaged file gets the same error message (but for one word: where a record
# is not a JSON object at all, pydantic's error type is ``dataclass_type``, not ``model_type``).


_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


class _NotPlain(Exception):  # noqa: N818 - a signal inside this module, never raised out of it
    """The document holds something the plain reading does not judge: pydantic does."""


_FIELD_TYPES: dict[Any, tuple[tuple[str, Any, bool], ...]] = {}


def _field_types(cls: Any) -> tuple[tuple[str, Any, bool], ...]:
    """``(name, type, required)`` of each field of dataclass ``cls``."""
    found = _FIELD_TYPES.get(cls)
    if found is None:
        hints = typing.get_type_hints(cls)
        found = tuple(
            (f.name, hints[f.name], f.default is dataclasses.MISSING)
            for f in dataclasses.fields(cls)
        )
        _FIELD_TYPES[cls] = found
    return found


def _plain(kind: Any, value: Any) -> Any:
    """``value`` from JSON as a field of type ``kind`` holds it, when it is exactly of that
    type (a string for ``str``, a number for ``float``, a list for a tuple, an object for a
    record); :class:`_NotPlain` otherwise."""
    if kind is str:
        if type(value) is str:
            return value
    elif kind is float:
        if type(value) in (int, float):
            try:
                return float(value)
            except OverflowError as exc:
                raise _NotPlain from exc
    elif dataclasses.is_dataclass(kind):
        if type(value) is dict:
            return _record(kind, value)
    elif typing.get_origin(kind) is tuple:
        if type(value) is list:
            item = typing.get_args(kind)[0]
            return tuple(_plain(item, element) for element in value)
    elif kind == str | None and (value is None or type(value) is str):
        return value
    raise _NotPlain


def _record(cls: Any, document: dict[str, Any]) -> Any:
    """Dataclass ``cls`` from a JSON object: known keys only (others are ignored)."""
    values = {}
    for name, kind, required in _field_types(cls):
        if name in document:
            values[name] = _plain(kind, document[name])
        elif required:
            raise _NotPlain
    return cls(**values)


def _parse_state(raw: bytes) -> State:
    """``state.json``'s bytes as a :class:`State`; ``ValueError`` (pydantic's
    ``ValidationError``, with its message) when they are not a valid state file."""
    try:
        text = raw.decode("utf-8")
        if _SURROGATE_ESCAPE.search(text) is None:  # a lone one: pydantic judges it
            document = json.loads(text)
            if type(document) is dict:
                state: State = _record(State, document)
                return state
    except (ValueError, RecursionError, _NotPlain):
        pass
    from pydantic import TypeAdapter  # noqa: PLC0415 - a file the plain reading left aside

    return TypeAdapter(State).validate_json(raw)


#: The last ``state.json`` read or written, as bytes and as the state they hold: a command
#: reads the file several times (and a long history costs milliseconds to parse), nearly
#: always unchanged. The bytes are read every time: equal bytes, the same state.
_last: tuple[bytes, State] | None = None


def _parse_state_cached(raw: bytes) -> State:
    global _last  # noqa: PLW0603 - the one-entry cache above
    last = _last
    if last is not None and last[0] == raw:
        return last[1]
    state = _parse_state(raw)
    _last = (raw, state)
    return state


# -- writing state.json -----------------------------------------------------------------------
#
# What ``json.dumps(dataclasses.asdict(state), indent=2, ensure_ascii=False)`` writes, byte
# for byte, without its pure-Python indenting encoder (tens of milliseconds for a history of
# a thousand migrations): strings through the same C escaping, numbers as ``json`` spells
# them. A value of a type it does not know is left to ``json.dumps``.

_encode_string = json.encoder.encode_basestring  # json.dumps's, with ensure_ascii=False
#: Per record type and indentation: its field names, and its text with a %s for each value.
_FORMS: dict[tuple[type, str], tuple[tuple[str, ...], str]] = {}


class _NotKnown(Exception):  # noqa: N818 - a signal inside this module, never raised out of it
    """A value ``_dump`` does not spell: ``json.dumps`` does."""


def _dump(value: Any, pad: str) -> str:
    kind = type(value)
    if kind is str:
        return _encode_string(value)
    if value is None:
        return "null"
    if kind is bool:
        return "true" if value else "false"
    if kind is float:
        if value != value:  # noqa: PLR0124 - NaN, as json spells it
            return "NaN"
        if value in (math.inf, -math.inf):
            return "Infinity" if value > 0 else "-Infinity"
        return float.__repr__(value)
    if kind is int:
        return int.__repr__(value)
    inner = pad + "  "
    if kind is tuple or kind is list:
        if not value:
            return "[]"
        items = [inner + _dump(item, inner) for item in value]
        return "[\n" + ",\n".join(items) + "\n" + pad + "]"
    form = _FORMS.get((kind, pad))
    if form is None:
        if kind not in (State, RunRecord, MigrationRecord):
            raise _NotKnown
        names = tuple(f.name for f in dataclasses.fields(kind))
        lines = ",\n".join(f"{inner}{_encode_string(name)}: %s" for name in names)  # no % in
        form = names, "{\n" + lines + "\n" + pad + "}"  # a field's name or in the padding
        _FORMS[kind, pad] = form
    names, text = form
    return text % tuple([_dump(getattr(value, name), inner) for name in names])


def _document(state: State) -> str:
    """``state`` as ``state.json`` holds it (field order kept), with its final newline."""
    try:
        return _dump(state, "") + "\n"
    except _NotKnown:
        return json.dumps(dataclasses.asdict(state), indent=2, ensure_ascii=False) + "\n"


class StateStore:
    """Reads and atomically rewrites ``state.json`` in a state folder (and keeps Dopemux's
    ``VERSION`` file in step, when given one: see the module documentation)."""

    def __init__(self, state_dir: Path, *, version_file: Path | None = None) -> None:
        self.state_dir = state_dir
        self.path = state_dir / _STATE_FILE
        self.version_file = version_file

    def read(self) -> State:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return State()
        except OSError as exc:
            raise StateError(f"cannot be read: {exc.strerror or exc}", path=self.path) from exc
        try:
            state = _parse_state_cached(raw)
        except ValueError as exc:  # pydantic's ValidationError is one
            raise StateError(f"is not a valid state file: {exc}", path=self.path) from exc
        if state.installed_version is not None:
            parse_version(state.installed_version, where=str(self.path))
        return state

    def write(self, state: State) -> None:
        global _last  # noqa: PLW0603 - what was written is what the next read finds
        make_private_dirs(self.state_dir)
        data = _document(state).encode()
        check_write()
        atomic_write(self.path, data)
        _last = (data, state)

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
        """``state.json``'s version; while it records none, the ``VERSION`` file's."""
        recorded = self.read().installed_version
        if recorded is None and self.version_file is not None:
            return read_version_file(self.version_file)
        return recorded

    def version_file_disagrees(self) -> str | None:
        """The ``VERSION`` file's version when ``state.json`` records another one."""
        if self.version_file is None:
            return None
        recorded = self.read().installed_version
        try:
            other = read_version_file(self.version_file)
        except StateError as exc:
            return str(exc)
        if recorded is None or other is None:
            return None
        return None if parse_version(other) == parse_version(recorded) else other

    def record(self, *, installed_version: str | None, run: RunRecord | None = None) -> State:
        """Set the installed version and append ``run`` to the history, in one atomic write
        (the ``VERSION`` file, if any, is brought in step just before)."""
        state = self.read()
        history = state.history if run is None else (*state.history, run)[-_HISTORY_LIMIT:]
        version = installed_version if installed_version is not None else state.installed_version
        if installed_version is not None and self.version_file is not None:
            _write_version_file(self.version_file, installed_version)
        new = dataclasses.replace(state, installed_version=version, history=history)
        self.write(new)
        return new

    def owe_restarts(self, services: Iterable[str]) -> State:
        """Add ``services`` to the restarts owed (first appearance keeps its place)."""
        state = self.read()
        owed = tuple(dict.fromkeys([*state.restarts_owed, *services]))
        if owed == state.restarts_owed:
            return state
        new = dataclasses.replace(state, restarts_owed=owed)
        self.write(new)
        return new

    def settle_restarts(self, services: Iterable[str]) -> State:
        """Remove ``services`` from the restarts owed (they were restarted)."""
        state = self.read()
        done = set(services)
        owed = tuple(s for s in state.restarts_owed if s not in done)
        if owed == state.restarts_owed:
            return state
        new = dataclasses.replace(state, restarts_owed=owed)
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
