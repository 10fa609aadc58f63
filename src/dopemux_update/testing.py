"""Helpers for migration authors' own tests.

::

    from dopemux_update.testing import assert_reversible

    def test_add_leantime(installation_copy):
        assert_reversible("migrations/v0.1.0_to_v0.2.0/001_add_leantime.py",
                          "tests/fixtures/installation-0.1.0")

:func:`assert_reversible` rehearses a migration file (or a whole ``vA_to_vB`` folder) on a
sandbox copy of a fixture installation: forward must succeed, backward must bring the copy
back exactly (files, modes, owners, hard links, symlinks; SQLite by content and settings,
virtual tables by what they show), and forward must work again. The fixture installation
itself is only read.

:func:`run_forward` and :func:`run_backward` run migrations in place on a copy you made
(with :func:`copy_installation`, or the ``installation_copy`` pytest fixture that
``dopemux-update`` registers), so that you can assert on the result.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path

from ._authoring._rehearsal import RehearsalReport, rehearse_steps
from ._authoring._sandbox import copy_tree
from ._backup._snapshot import TableFilter, TreeDiff, TreeSnapshot, diff_snapshots, take_snapshot
from ._backup._tree import Scope
from ._core._exceptions import MigrationValidationError, Problem
from ._core._models import Direction, Migration, Step, Transition
from ._core._versions import parse_transition_name
from ._run._capture import routing_installed
from ._run._discovery import FILE_NAME, load_migration, load_transitions
from ._run._runner import call_function
from ._safety._state import DEFAULT_STATE_DIR

__all__ = [
    "assert_reversible",
    "assert_same_tree",
    "copy_installation",
    "load_migrations",
    "rehearse_migrations",
    "run_backward",
    "run_forward",
    "tree_differences",
]


def _transition(folder: Path) -> Transition:
    try:
        version_from, version_to = parse_transition_name(folder.name)
    except ValueError as exc:
        raise MigrationValidationError([Problem(folder, str(exc))]) from exc
    return Transition(folder.name, version_from, version_to, folder)


def load_migrations(path: Path | str) -> tuple[Migration, ...]:
    """Import and validate one migration file, or every migration of a ``vA_to_vB`` folder
    (in numeric order). Raises :class:`~dopemux_update.MigrationValidationError`."""
    path = Path(path)
    if path.is_dir():
        transition = _transition(path)
        return load_transitions([transition])[transition.name]
    if not path.is_file():
        raise MigrationValidationError([Problem(path, "no such migration file or folder")])
    match = FILE_NAME.match(path.name)
    if match is None:
        raise MigrationValidationError(
            [Problem(path, "not a migration file name: expected NNN_name.py")]
        )
    loaded = load_migration(
        path, _transition(path.parent), number=int(match["number"]), name=match["name"]
    )
    if not isinstance(loaded, Migration):
        raise MigrationValidationError(loaded)
    return (loaded,)


def rehearse_migrations(
    migration: Path | str,
    installation: Path | str,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    keep_sandbox: bool = False,
    sandbox_dir: Path | None = None,
    timeout: float | None = None,
    ignore_tables: Sequence[str] = (),
) -> RehearsalReport:
    """Rehearse a migration file or folder on a sandbox copy of ``installation``.

    The copy leaves out the installation's ``.dopemux/update`` state folder and ``.git``,
    as a backup does, narrowed by ``include``/``exclude`` globs. A migration call running
    longer than ``timeout`` seconds fails the rehearsal. ``ignore_tables`` names SQLite
    tables the comparison leaves out (``TABLE``, or ``DB:TABLE`` for one database file), as
    ``verify --ignore-table`` does.
    """
    root = Path(installation)
    if not root.is_dir():
        raise MigrationValidationError([Problem(root, "installation folder does not exist")])
    steps = [Step(m, Direction.UPGRADE) for m in load_migrations(migration)]
    scope = Scope.for_installation(
        root, state_dir=root / DEFAULT_STATE_DIR, include=include, exclude=exclude
    )
    return rehearse_steps(
        steps,
        scope,
        sandbox_dir=sandbox_dir,
        keep_sandbox=keep_sandbox,
        timeout=timeout,
        ignore_tables=ignore_tables,
    )


def assert_reversible(
    migration: Path | str,
    installation: Path | str,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    timeout: float | None = None,
    ignore_tables: Sequence[str] = (),
) -> RehearsalReport:
    """Assert that forward succeeds, backward restores ``installation`` exactly, and forward
    works again; the failure message names every migration responsible, at which stage, and
    what differs (a changed text file with its diff). ``ignore_tables`` as for
    :func:`rehearse_migrations`.
    """
    report = rehearse_migrations(
        migration,
        installation,
        include=include,
        exclude=exclude,
        timeout=timeout,
        ignore_tables=ignore_tables,
    )
    if not report.ok:
        raise AssertionError("\n".join(report.describe()))
    return report


def _keep_line(sink: list[str], _stream: str, line: str) -> None:
    sink.append(line)


def _run(migration: Path | str, root: Path | str, *, forward: bool) -> list[str]:
    migrations = load_migrations(migration)
    ordered = migrations if forward else tuple(reversed(migrations))
    output: list[str] = []
    for item in ordered:
        function = item.forward if forward else item.backward
        name = "migrate_forward" if forward else "migrate_backward"
        lines: list[str] = []
        with routing_installed():
            outcome = call_function(function, Path(root), functools.partial(_keep_line, lines))
        output.extend(lines)
        if not outcome.ok:
            printed = "".join(f"\n  | {line}" for line in lines)
            raise AssertionError(
                f"{item.id}: {name} {outcome.error}{printed}\n{outcome.traceback or ''}".rstrip()
            )
    return output


def run_forward(migration: Path | str, root: Path | str) -> list[str]:
    """Run ``migrate_forward`` of a migration file, or of a folder's migrations in order, on
    ``root`` itself; raise AssertionError if one fails. Returns the lines they printed."""
    return _run(migration, root, forward=True)


def run_backward(migration: Path | str, root: Path | str) -> list[str]:
    """Run ``migrate_backward`` of a migration file, or of a folder's migrations in reverse
    order, on ``root`` itself; raise AssertionError if one fails. Returns what they printed."""
    return _run(migration, root, forward=False)


def tree_differences(
    expected: Path | str, actual: Path | str, *, ignore_tables: Sequence[str] = ()
) -> TreeDiff:
    """How the installation at ``actual`` differs from the one at ``expected``: by content,
    modes, owners, hard links and symlinks, SQLite by content and settings (their state
    folders, and the tables ``ignore_tables`` names, left out); a changed text file comes
    with its unified diff."""

    def snapshot(root: Path) -> TreeSnapshot:
        scope = Scope.for_installation(root, state_dir=root / DEFAULT_STATE_DIR)
        return take_snapshot(scope, texts=True)

    ignore = TableFilter.parse(ignore_tables)
    return diff_snapshots(snapshot(Path(expected)), snapshot(Path(actual)), ignore=ignore)


def assert_same_tree(
    expected: Path | str, actual: Path | str, *, ignore_tables: Sequence[str] = ()
) -> None:
    """Assert that two installations hold the same (see :func:`tree_differences`)."""
    difference = tree_differences(expected, actual, ignore_tables=ignore_tables)
    if not difference.is_empty:
        lines = "\n".join(f"  {line}" for line in difference.describe_with_diffs())
        raise AssertionError(f"{actual} differs from {expected}:\n{lines}")


def copy_installation(source: Path | str, destination: Path | str) -> Path:
    """Copy a fixture installation to ``destination`` (which must not exist yet): modes and
    symlinks kept, SQLite databases copied through the backup API. Returns ``destination``."""
    target = Path(destination)
    if target.exists():
        raise FileExistsError(f"{target}: already exists")
    copy_tree(Scope(Path(source).resolve()), target)
    return target
