"""state.json is written as ``json.dumps(..., indent=2)`` wrote it, and a read of the same
bytes gives the same state, whether or not the file was parsed before."""

from __future__ import annotations

import dataclasses
import json
import math
import random
from pathlib import Path

import pytest

from dopemux_update._core._exceptions import StateError
from dopemux_update._safety import _state
from dopemux_update._safety._state import MigrationRecord, RunRecord, State, StateStore
from support.spy import spy

TEXTS = ["", "a", "café", 'quo"te', "back\\slash", "new\nline", "\x00\x1b\x7f", "😀", "\u2028"]
NUMBERS = [0.0, -0.0, 1.5, 4.2e-05, 1e300, 1e-320, 123456789.0, math.inf, -math.inf, math.nan]


def _random_state(rng: random.Random) -> State:
    def text() -> str:
        return "".join(rng.choice(TEXTS) for _ in range(rng.randrange(3)))

    def maybe() -> str | None:
        return None if rng.random() < 0.3 else text()

    runs = tuple(
        RunRecord(
            run_id=maybe(),
            started_at=text(),
            finished_at=text(),
            version_from=text(),
            version_to=text(),
            direction=text(),
            outcome=text(),
            backup_id=maybe(),
            migrations=tuple(
                MigrationRecord(
                    id=text(),
                    direction=text(),
                    checksum=text(),
                    seconds=rng.choice(NUMBERS),
                    outcome=text(),
                )
                for _ in range(rng.randrange(4))
            ),
            error=maybe(),
            command=maybe(),
            reverts=maybe(),
            reason=maybe(),
        )
        for _ in range(rng.randrange(4))
    )
    owed = tuple(text() for _ in range(rng.randrange(3)))
    return State(installed_version=maybe(), history=runs, restarts_owed=owed)


def _as_json_dumps_writes(state: State) -> bytes:
    return (json.dumps(dataclasses.asdict(state), indent=2, ensure_ascii=False) + "\n").encode()


def test_the_state_file_is_spelled_as_json_dumps_with_indent_2_spells_it() -> None:
    rng = random.Random(11)  # noqa: S311 - a repeatable sweep, not a secret
    for _ in range(2000):
        state = _random_state(rng)
        assert _state._document(state).encode() == _as_json_dumps_writes(state)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_the_state_file_is_written_as_json_dumps_with_indent_2_writes_it(
    tmp_path: Path, seed: int
) -> None:
    state = _random_state(random.Random(seed))  # noqa: S311 - as above
    for written in (State(), state):
        StateStore(tmp_path).write(written)
        assert (tmp_path / "state.json").read_bytes() == _as_json_dumps_writes(written)


def test_a_state_read_twice_is_parsed_once_and_a_changed_file_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = StateStore(tmp_path)
    path = tmp_path / "state.json"
    path.write_text('{"installed_version": "1.0"}')
    parsed: list[bytes] = []
    spy(monkeypatch, _state, "_parse_state", parsed)
    assert store.read().installed_version == "1.0"
    assert StateStore(tmp_path).read().installed_version == "1.0"
    assert len(parsed) == 1
    path.write_text('{"installed_version": "2.0"}')  # same size, in place
    assert store.read().installed_version == "2.0"
    path.write_text('{"installed_version": "2.0", "hist')
    with pytest.raises(StateError):
        store.read()
    with pytest.raises(StateError):  # an error is not remembered as a state
        store.read()
    path.unlink()
    assert store.read() == State()
    store.write(State(installed_version="3.0"))
    assert store.read().installed_version == "3.0"
    assert len(parsed) == 4  # 1.0, 2.0, the damaged file twice; not what was written
