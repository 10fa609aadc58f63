"""The package's layout is its architecture: each folder builds only on the ones below it,
and no two modules import each other, even lazily or for type checking only."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "dopemux_update"

# Lowest first. The public faces (``__init__``, ``edit``, ``testing``, ``dopemux``, ...) sit
# at the top and may use any folder; no folder may use them.
LAYERS = ("_core", "_backup", "_safety", "_run", "_authoring", "cli")
FACES = len(LAYERS)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module of the package that ``name`` imports, anywhere in its text."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name in known)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            for alias in node.names:
                if f"{target}.{alias.name}" in known:
                    found.add(f"{target}.{alias.name}")
                elif target in known:
                    found.add(target)
    # A lazy table of the form {"Name": "._module"} (the package's __getattr__, the CLI's
    # commands) is an import too.
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            text = node.value
            if text.startswith(".") and f"{package}{text}" in known:
                found.add(f"{package}{text}")
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    known = set(modules)
    return {name: _imports(name, path, known) for name, path in modules.items()}


def _layer(name: str) -> int:
    parts = name.split(".")
    if len(parts) > 1 and parts[1] in LAYERS:
        return LAYERS.index(parts[1])
    return FACES


def test_the_graph_is_seen() -> None:
    graph = _graph()
    assert "dopemux_update._backup._manifest" in graph["dopemux_update._backup._restore"]
    assert "dopemux_update.cli._update" in graph["dopemux_update.cli"]  # the lazy table
    assert "dopemux_update._run._orchestration" in graph["dopemux_update"]


def test_every_module_lives_in_a_layer_folder_or_is_a_public_face() -> None:
    faces = {name for name in _modules() if _layer(name) == FACES}
    assert faces == {
        "dopemux_update",
        "dopemux_update.__main__",
        "dopemux_update.dopemux",
        "dopemux_update.edit",
        "dopemux_update.pytest_plugin",
        "dopemux_update.testing",
    }


@pytest.mark.parametrize("layer", LAYERS)
def test_a_folder_imports_only_folders_below_it(layer: str) -> None:
    rank = LAYERS.index(layer)
    upward = sorted(
        f"{name} -> {target}"
        for name, targets in _graph().items()
        if _layer(name) == rank
        for target in targets
        if _layer(target) > rank
    )
    assert upward == []


def test_no_import_circles() -> None:
    graph = _graph()
    circles = []
    for start in graph:
        # A depth-first search from ``start`` that comes back to it.
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, trail = stack.pop()
            for target in graph[node]:
                if target == start:
                    circles.append(" -> ".join([*trail, start]))
                elif target not in seen:
                    seen.add(target)
                    stack.append((target, [*trail, target]))
    assert circles == []
