"""Discovery and validation: every problem found, named and reported before any write."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from conftest import MigrationWriter
from dopemux_update import (
    MigrationInfo,
    MigrationValidationError,
    PreflightError,
    load_transitions,
    scan_migrations,
)


def load_all(root: Path) -> dict[str, tuple[object, ...]]:
    return dict(load_transitions(scan_migrations(root).transitions))


def test_files_run_in_numeric_order_and_folders_in_version_order(
    migrations: MigrationWriter,
) -> None:
    for name in ("10_ten.py", "2_two.py", "001_one.py"):
        migrations.add("v0.9.0_to_v0.10.0", name)
    migrations.add("v0.10.0_to_v0.11.0", "1_next.py")
    catalog = scan_migrations(migrations.root)
    assert [t.name for t in catalog.transitions] == ["v0.9.0_to_v0.10.0", "v0.10.0_to_v0.11.0"]
    loaded = load_transitions(catalog.transitions)
    ids = [m.id for m in loaded["v0.9.0_to_v0.10.0"]]
    assert ids == [
        "v0.9.0_to_v0.10.0/001_one",
        "v0.9.0_to_v0.10.0/2_two",
        "v0.9.0_to_v0.10.0/10_ten",
    ]


def test_examples_readme_init_pycache_and_private_helpers_are_ignored(
    migrations: MigrationWriter,
) -> None:
    migrations.add("v1.0_to_v1.1", "001_real.py")
    migrations.add("examples/v0.1.0_to_v0.2.0", "001_example.py", source="this is not python(")
    (migrations.root / "README.md").write_text("# docs\n")
    (migrations.root / "__init__.py").write_text("")
    (migrations.root / "__pycache__").mkdir()
    (migrations.root / "v1.0_to_v1.1" / "README.md").write_text("# docs\n")
    (migrations.root / "v1.0_to_v1.1" / "__init__.py").write_text("raise SystemExit\n")
    (migrations.root / "v1.0_to_v1.1" / "_helpers.py").write_text("raise SystemExit\n")
    (migrations.root / "v1.0_to_v1.1" / "__pycache__").mkdir()
    loaded = load_all(migrations.root)
    assert list(loaded) == ["v1.0_to_v1.1"]
    assert [m.id for m in loaded["v1.0_to_v1.1"]] == ["v1.0_to_v1.1/001_real"]  # type: ignore[attr-defined]


def test_import_leaves_sys_path_alone_and_gives_unique_module_names(
    migrations: MigrationWriter,
) -> None:
    helper = "CONSTANT = {!r}\n"
    for folder, value in (("v1.0_to_v1.1", "first"), ("v1.1_to_v1.2", "second")):
        migrations.add(folder, "001_same_name.py")
        path = migrations.root / folder / "001_same_name.py"
        path.write_text(helper.format(value) + path.read_text())
    before_path, before_modules = list(sys.path), set(sys.modules)
    loaded = load_all(migrations.root)
    assert sys.path == before_path
    assert set(sys.modules) == before_modules
    first = loaded["v1.0_to_v1.1"][0].forward  # type: ignore[attr-defined]
    second = loaded["v1.1_to_v1.2"][0].forward  # type: ignore[attr-defined]
    assert first.__globals__["CONSTANT"] == "first"
    assert second.__globals__["CONSTANT"] == "second"
    assert first.__module__ != second.__module__


def test_a_migration_using_dataclasses_imports(migrations: MigrationWriter) -> None:
    path = migrations.add("v1.0_to_v1.1", "001_dc.py")
    path.write_text(
        "from __future__ import annotations\nfrom dataclasses import dataclass\n"
        "@dataclass\nclass Thing:\n    name: str\n" + path.read_text()
    )
    assert len(load_all(migrations.root)["v1.0_to_v1.1"]) == 1


def test_backup_required_defaults_to_true() -> None:
    info = MigrationInfo.model_validate(
        {
            "version_from": "0.1.0",
            "version_to": "0.2.0",
            "description": "d",
            "breaking_changes": False,
            "estimated_duration_seconds": 30,
            "requires_restart": ["a", "b"],
        }
    )
    assert info.backup_required is True
    assert info.requires_restart == ("a", "b")


BROKEN = {
    "syntax error": ({"source": "def migrate_forward(:\n"}, "cannot be compiled: SyntaxError"),
    "import raises": (
        {"source": "raise RuntimeError('boom at import')\n"},
        "import failed: RuntimeError: boom at import",
    ),
    "forward missing": (
        {"source": "def migrate_backward(r):\n    return True\n"},
        "migrate_forward is missing",
    ),
    "info missing": (
        {
            "source": "def migrate_forward(r):\n    return True\n"
            "def migrate_backward(r):\n    return True\n"
        },
        "MIGRATION_INFO is missing",
    ),
    "info not a dict": (
        {
            "source": "def migrate_forward(r):\n    return True\n"
            "def migrate_backward(r):\n    return True\nMIGRATION_INFO = [1]\n"
        },
        "MIGRATION_INFO must be a dict, not list",
    ),
    "typo in a key": (
        {"info": {"requires_restarts": ["x"]}},
        "unknown key 'requires_restarts' (did you mean 'requires_restart'?)",
    ),
    "missing key": ({"drop_info_keys": ("description",)}, "missing the key 'description'"),
    "wrong version": ({"info": {"version_to": "0.3.0"}}, "version_to is '0.3.0' but its folder"),
    "unparsable version": ({"info": {"version_from": "banana"}}, "'version_from'"),
    "string bool": ({"info": {"breaking_changes": "no"}}, "'breaking_changes'"),
    "negative estimate": (
        {"info": {"estimated_duration_seconds": -1}},
        "'estimated_duration_seconds'",
    ),
    "bad service name": (
        {"info": {"requires_restart": ["ok", "rm -rf /"]}},
        "invalid service name",
    ),
    "two arguments": (
        {"forward": "return True", "source": None, "two_args": True},
        "must take exactly one positional argument",
    ),
    "async function": ({"async_forward": True}, "must be a plain function, not async"),
    "not callable": ({"forward_value": True}, "migrate_forward is not a function"),
}


def write_broken(migrations: MigrationWriter, kind: str) -> Path:
    options, _ = BROKEN[kind]
    options = dict(options)
    two_args = options.pop("two_args", False)
    async_forward = options.pop("async_forward", False)
    forward_value = options.pop("forward_value", False)
    path = migrations.add("v0.1.0_to_v0.2.0", "001_broken.py", **options)  # type: ignore[arg-type]
    text = path.read_text()
    if two_args:
        text = text.replace(
            "def migrate_forward(project_root):", "def migrate_forward(project_root, other):"
        )
    if async_forward:
        text = text.replace("def migrate_forward(", "async def migrate_forward(")
    if forward_value:
        text += "\nmigrate_forward = 42\n"
    path.write_text(text)
    return path


@pytest.mark.parametrize("kind", sorted(BROKEN))
def test_each_broken_file_is_named_with_its_reason(migrations: MigrationWriter, kind: str) -> None:
    path = write_broken(migrations, kind)
    with pytest.raises(MigrationValidationError) as info:
        load_all(migrations.root)
    message = str(info.value)
    assert str(path) in message
    assert BROKEN[kind][1] in message


def test_all_problems_are_reported_together(migrations: MigrationWriter) -> None:
    migrations.add("v0.1.0_to_v0.2.0", "001_a.py", info={"requires_restarts": []})
    migrations.add("v0.1.0_to_v0.2.0", "002_b.py", drop_info_keys=("breaking_changes",))
    migrations.add("v0.1.0_to_v0.2.0", "3_c.py")
    migrations.add("v0.1.0_to_v0.2.0", "003_c_again.py")
    migrations.add("v0.1.0_to_v0.2.0", "four.py")
    with pytest.raises(MigrationValidationError) as info:
        load_all(migrations.root)
    problems = {p.path.name: p.reason for p in info.value.problems}
    assert set(problems) == {"001_a.py", "002_b.py", "3_c.py", "four.py"}
    assert "already used by 003_c_again.py" in problems["3_c.py"]
    assert "expected NNN_name.py" in problems["four.py"]
    assert "5 problems" not in str(info.value)
    assert "4 problems found" in str(info.value)


def test_bad_folder_names_are_all_reported(migrations: MigrationWriter) -> None:
    migrations.add("v1.0_to_v1.1", "001_ok.py")
    (migrations.root / "v2_to_v1").mkdir()
    (migrations.root / "version-two").mkdir()
    with pytest.raises(MigrationValidationError) as info:
        scan_migrations(migrations.root)
    names = {p.path.name for p in info.value.problems}
    assert names == {"v2_to_v1", "version-two"}


def test_the_same_transition_spelt_twice_is_an_error(migrations: MigrationWriter) -> None:
    migrations.add("v1.0_to_v1.1", "001_ok.py")
    migrations.add("v1.0.0_to_v1.1.0", "001_ok.py")
    with pytest.raises(MigrationValidationError, match="same transition"):
        scan_migrations(migrations.root)


def test_a_missing_migrations_folder_means_nothing_to_run(tmp_path: Path) -> None:
    catalog = scan_migrations(tmp_path / "nowhere")
    assert catalog.transitions == ()
    assert not catalog.exists


def test_a_migrations_path_that_is_a_file_is_a_preflight_error(tmp_path: Path) -> None:
    (tmp_path / "migrations").write_text("")
    with pytest.raises(PreflightError, match="is not a folder of migrations"):
        scan_migrations(tmp_path / "migrations")


@pytest.mark.parametrize(
    ("definition", "accepted"),
    [
        ("def migrate_forward(project_root):\n    return True", True),
        ("def migrate_forward(project_root, verbose=False):\n    return True", True),
        ("def migrate_forward(*args):\n    return True", True),
        ("def migrate_forward(project_root, /):\n    return True", True),
        ("migrate_forward = lambda project_root: True", True),
        (
            "class _F:\n    def __call__(self, project_root):\n        return True\n"
            "migrate_forward = _F()",
            True,
        ),
        ("def migrate_forward():\n    return True", False),
        ("def migrate_forward(a, b):\n    return True", False),
        ("def migrate_forward(project_root, *, dry_run):\n    return True", False),
        ("def migrate_forward(project_root, *, dry_run=False):\n    return True", True),
    ],
)
def test_functions_must_be_callable_with_the_root_alone(
    migrations: MigrationWriter, definition: str, accepted: bool
) -> None:
    source = (
        definition
        + "\ndef migrate_backward(project_root):\n    return True\n"
        + "MIGRATION_INFO = {'version_from': '1.0', 'version_to': '1.1', 'description': 'd',"
        + " 'breaking_changes': False, 'estimated_duration_seconds': 1, 'requires_restart': []}\n"
    )
    migrations.add("v1.0_to_v1.1", "001_sig.py", source=source)
    if accepted:
        assert len(load_all(migrations.root)["v1.0_to_v1.1"]) == 1
    else:
        with pytest.raises(MigrationValidationError, match="exactly one positional argument"):
            load_all(migrations.root)


def test_bytecode_is_cached_by_content_so_a_same_second_edit_never_runs_stale_code(
    migrations: MigrationWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", False)
    path = migrations.add("v1.0_to_v1.1", "001_a.py", forward="return 'A'")
    stat = path.stat()
    first = load_all(migrations.root)["v1.0_to_v1.1"][0].forward  # type: ignore[attr-defined]
    assert first(Path()) == "A"
    cached = list((path.parent / "__pycache__").iterdir())
    assert len(cached) == 1
    # Same size, same mtime: a timestamp-based .pyc would be taken as current.
    path.write_text(path.read_text().replace("return 'A'", "return 'B'"))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    second = load_all(migrations.root)["v1.0_to_v1.1"][0].forward  # type: ignore[attr-defined]
    assert second(Path()) == "B"


def test_no_bytecode_is_written_when_python_is_told_not_to(
    migrations: MigrationWriter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    path = migrations.add("v1.0_to_v1.1", "001_a.py")
    load_all(migrations.root)
    assert not (path.parent / "__pycache__").exists()


@pytest.mark.parametrize(
    "path",
    ["/m/v0.1.0_to_v0.2.0/001_a.py", "/m/N.x/002_N.py", "rel/003_b.py", "004_c.py", "/m/x/5.py"],
)
@pytest.mark.parametrize("prefix", [None, "/tmp/pycache-prefix"])
def test_the_bytecode_path_is_the_one_cache_from_source_gives(
    path: str, prefix: str | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib.util

    from dopemux_update._run._discovery import _cache_path

    monkeypatch.setattr(sys, "pycache_prefix", prefix)
    assert _cache_path(Path(path)) == importlib.util.cache_from_source(path)
