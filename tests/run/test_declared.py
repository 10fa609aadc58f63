"""The quick acceptance of MIGRATION_INFO never accepts what MigrationInfo refuses, and
gives the model's values when it accepts; a run of valid migrations does not import pydantic."""

from __future__ import annotations

import math
import random
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from conftest import MigrationWriter
from dopemux_update import MigrationInfo, load_transitions, scan_migrations
from dopemux_update._core._declared import Declared, accept

VALID: dict[str, Any] = {
    "version_from": "0.1.0",
    "version_to": "0.2.0",
    "description": "rename the cache folder",
    "breaking_changes": False,
    "estimated_duration_seconds": 30,
    "requires_restart": ["api", "worker"],
}


class Text(str):
    __slots__ = ()


class Number(int):
    pass


class Real(float):
    pass


class Mapping(dict[str, Any]):
    pass


def _with(**changes: Any) -> dict[str, Any]:
    return {**VALID, **changes}


def _without(key: str) -> dict[str, Any]:
    return {k: v for k, v in VALID.items() if k != key}


#: (a MIGRATION_INFO, whether the quick path takes it itself). Whatever it leaves, the model
#: judges; the tests below check the quick path against the model on each.
CASES: dict[str, tuple[object, bool]] = {
    "valid": (VALID, True),
    "valid with backup_required": (_with(backup_required=False), True),
    "tuple of services": (_with(requires_restart=("api",)), True),
    "no services": (_with(requires_restart=[]), True),
    "float duration": (_with(estimated_duration_seconds=2.5), True),
    "zero duration": (_with(estimated_duration_seconds=0), True),
    "negative zero duration": (_with(estimated_duration_seconds=-0.0), True),
    "duration 2**53": (_with(estimated_duration_seconds=2**53), True),
    "versions with a v and short": (_with(version_from="v0.1", version_to="0.2"), True),
    "version with spaces": (_with(version_from=" 0.1.0 "), True),
    "pre-release version": (_with(version_to="0.2.0rc1"), True),
    "service name of 128 characters": (_with(requires_restart=["a" * 128]), True),
    "service name with _.-": (_with(requires_restart=["my_app.web-1"]), True),
    "non-ASCII description": (_with(description="données déplacées"), True),
    # Left to the model: valid or not, it judges.
    "bool for a float": (_with(estimated_duration_seconds=True), False),
    "int subclass duration": (_with(estimated_duration_seconds=Number(3)), False),
    "float subclass duration": (_with(estimated_duration_seconds=Real(3.0)), False),
    "duration above 2**53": (_with(estimated_duration_seconds=2**53 + 1), False),
    "huge int duration": (_with(estimated_duration_seconds=10**400), False),
    "NaN duration": (_with(estimated_duration_seconds=math.nan), False),
    "infinite duration": (_with(estimated_duration_seconds=math.inf), False),
    "negative infinite duration": (_with(estimated_duration_seconds=-math.inf), False),
    "negative duration": (_with(estimated_duration_seconds=-1), False),
    "negative float duration": (_with(estimated_duration_seconds=-0.5), False),
    "string duration": (_with(estimated_duration_seconds="30"), False),
    "None duration": (_with(estimated_duration_seconds=None), False),
    "str subclass description": (_with(description=Text("d")), False),
    "str subclass version": (_with(version_from=Text("0.1.0")), False),
    "str subclass service": (_with(requires_restart=[Text("api")]), False),
    "str subclass key": (
        {Text(k) if k == "breaking_changes" else k: v for k, v in VALID.items()},
        False,
    ),
    "empty description": (_with(description=""), False),
    "bytes description": (_with(description=b"d"), False),
    "int for a bool": (_with(breaking_changes=0), False),
    "string for a bool": (_with(breaking_changes="no"), False),
    "int for backup_required": (_with(backup_required=1), False),
    "None for backup_required": (_with(backup_required=None), False),
    "set of services": (_with(requires_restart={"api"}), False),
    "frozenset of services": (_with(requires_restart=frozenset()), False),
    "string for services": (_with(requires_restart="api"), False),
    "dict for services": (_with(requires_restart={"api": 1}), False),
    "None for services": (_with(requires_restart=None), False),
    "list subclass of services": (_with(requires_restart=type("L", (list,), {})(["api"])), False),
    "bad service name": (_with(requires_restart=["ok", "rm -rf /"]), False),
    "service name with a newline": (_with(requires_restart=["api\n"]), False),
    "service name of 129 characters": (_with(requires_restart=["a" * 129]), False),
    "service name starting with a dot": (_with(requires_restart=[".api"]), False),
    "int service name": (_with(requires_restart=[1]), False),
    "bad version": (_with(version_from="banana"), False),
    "empty version": (_with(version_to=""), False),
    "int version": (_with(version_to=2), False),
    "extra key": (_with(requires_restarts=["x"]), False),
    "extra key instead of backup_required": (_with(backup_requried=True), False),
    "non-string key": ({**VALID, 1: "x"}, False),
    "missing key": (_without("description"), False),
    "missing services": (_without("requires_restart"), False),
    "empty dict": ({}, False),
    "dict subclass": (Mapping(VALID), False),
}


def _judge(raw: object) -> MigrationInfo | None:
    try:
        return MigrationInfo.model_validate(raw)
    except ValidationError:
        return None


def _same(quick: Declared, model: MigrationInfo) -> None:
    """The same values, of the same types, as the model's."""
    for key, value in Declared.of(model).as_dict().items():
        mine = getattr(quick, key)
        assert type(mine) is type(value), key
        if isinstance(value, float) and math.isnan(value):
            assert math.isnan(mine)
        else:
            assert mine == value, key
            if isinstance(value, float):
                assert math.copysign(1, mine) == math.copysign(1, value), key
    if isinstance(model.requires_restart, tuple):
        assert all(type(s) is str for s in quick.requires_restart)


@pytest.mark.parametrize(("raw", "quick"), list(CASES.values()), ids=list(CASES))
def test_the_quick_path_accepts_only_what_the_model_accepts_with_its_values(
    raw: dict[object, object], quick: bool
) -> None:
    accepted = accept(raw)
    model = _judge(raw)
    assert (accepted is not None) is quick
    if accepted is not None:
        assert model is not None, "accepted what MigrationInfo refuses"
        _same(accepted, model)


def test_the_table_holds_dicts_the_model_refuses_and_accepts_among_those_left_to_it() -> None:
    """The cases left to the model are not all refusals: the quick path leaves some valid
    dicts (a set of services, a huge int) to the model rather than guess."""
    left = [raw for raw, quick in CASES.values() if not quick]
    assert any(_judge(raw) is None for raw in left)
    assert any(_judge(raw) is not None for raw in left)


#: For each key, values the quick path takes, then values it must leave to the model.
_POOL: dict[str, tuple[list[object], list[object]]] = {
    "version_from": (["0.1.0", "v1", "1.0.post1", " 2.0"], ["x1", "", Text("1.0"), 1, None]),
    "version_to": (["0.2.0", "2!1.0", "1.0.dev0"], ["1..0", b"1.0", 2.0]),
    "description": (["d", " "], ["", Text("t"), None, 0]),
    "breaking_changes": ([True, False], [0, 1, "false", None]),
    "estimated_duration_seconds": (
        [0, 1, 0.0, -0.0, 1e300, 2**53],
        [2**53 + 1, -1, math.inf, math.nan, True, Number(1), Real(1.5), "1"],
    ),
    "requires_restart": (
        [[], (), ["a"], ("a", "b-c.d_e"), ["a", "a"], ["a" * 128]],
        [["-a"], ["a b"], [Text("a")], {"a"}, "a", [None], ["a" * 129]],
    ),
    "backup_required": ([True, False], [1, None]),
}


def test_the_quick_path_never_disagrees_with_the_model_over_random_dicts() -> None:
    """A seeded sweep over mixes of good and bad values, keys dropped and keys added."""
    rng = random.Random(16)  # noqa: S311 - a repeatable sweep, not a secret
    taken = left = 0
    for _ in range(3000):
        raw: dict[object, object] = {
            key: rng.choice(good if rng.random() < 0.85 else bad)
            for key, (good, bad) in _POOL.items()
        }
        for key in list(raw):
            if rng.random() < 0.03:
                del raw[key]
        if rng.random() < 0.03:
            raw[rng.choice(["requires_restarts", "extra", 3])] = True
        accepted = accept(raw)
        model = _judge(raw)
        if accepted is None:
            left += 1
            continue
        taken += 1
        assert model is not None, f"accepted what MigrationInfo refuses: {raw!r}"
        _same(accepted, model)
    assert taken > 300  # the sweep reaches the quick path...
    assert left > 300  # ... and the model


def test_a_migration_from_either_path_gives_the_same_info(migrations: MigrationWriter) -> None:
    """Migration.info is the MigrationInfo model whether or not the quick path took the
    dict; declared holds its values."""
    migrations.add("v0.1.0_to_v0.2.0", "001_plain.py", info={"requires_restart": ["api"]})
    migrations.add("v0.1.0_to_v0.2.0", "002_set.py", info={"requires_restart": {"api"}})
    loaded = load_transitions(scan_migrations(migrations.root).transitions)
    plain, judged = loaded["v0.1.0_to_v0.2.0"]
    for migration in (plain, judged):
        assert isinstance(migration.info, MigrationInfo)
        assert migration.info.requires_restart == ("api",)
        assert migration.declared == Declared.of(migration.info)
    assert plain.info is plain.info  # built once


def _modules_after(argv: list[str]) -> set[str]:
    code = (
        "import sys\n"
        "from dopemux_update.cli import main\n"
        f"code = main({argv!r})\n"
        "assert code == 0, code\n"
        "print('MODULES', *sorted(sys.modules), file=sys.stderr)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert run.returncode == 0, run.stdout + run.stderr
    return set(run.stderr.rpartition("MODULES ")[2].split())


def test_an_upgrade_and_downgrade_of_valid_migrations_do_not_import_pydantic(
    installation: Path, migrations: MigrationWriter
) -> None:
    for number in (1, 2):
        migrations.add("v0.1.0_to_v0.2.0", f"00{number}_step.py")
    migrations.add("v0.2.0_to_v0.3.0", "001_step.py", info={"requires_restart": ("api",)})
    where = ["--root", str(installation), "--migrations", str(migrations.root)]
    run = ["--yes", "--no-restart", "--json", *where]
    assert "pydantic" not in _modules_after(["upgrade", "--from", "0.1.0", *run])
    assert "pydantic" not in _modules_after(["downgrade", "--to", "0.1.0", *run])


def test_a_migration_info_the_quick_path_leaves_is_judged_by_pydantic(
    installation: Path, migrations: MigrationWriter
) -> None:
    """The check above can fail: a dict the quick path leaves brings the model in."""
    migrations.add("v0.1.0_to_v0.2.0", "001_set.py", info={"requires_restart": {"api"}})
    where = ["--root", str(installation), "--migrations", str(migrations.root)]
    argv = ["upgrade", "--from", "0.1.0", "--yes", "--no-restart", "--json", *where]
    assert "pydantic" in _modules_after(argv)


def test_a_migration_made_from_a_model_keeps_it_and_declares_its_values(tmp_path: Path) -> None:
    """``Migration(..., info=MigrationInfo(...))`` still works: ``info`` is that model."""
    from dopemux_update import Migration, Transition
    from dopemux_update._core._versions import cached_version

    model = MigrationInfo.model_validate(VALID)
    transition = Transition(
        "v0.1.0_to_v0.2.0", cached_version("0.1.0"), cached_version("0.2.0"), tmp_path
    )
    migration = Migration(
        "v0.1.0_to_v0.2.0/001_a",
        1,
        "a",
        tmp_path / "001_a.py",
        transition,
        model,
        lambda root: True,
        lambda root: True,
    )
    assert migration.info is model
    assert migration.declared == Declared.of(model)
    assert migration.declared.requires_restart == ("api", "worker")
