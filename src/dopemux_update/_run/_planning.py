"""Pure planning: from the known transitions, the current and a target version, the plan.

No I/O happens here (like alembic's ``RevisionMap``): tests feed in-memory transitions.

The migration folders form one chain of *version points* v0 < v1 < ... < vn. A release that
ships no folder is a *no-op release*: an installation at version A is in the state of the
newest point at or below A, so upgrading from A to T runs every hop vi -> vi+1 with
A < vi+1 <= T (and a downgrade every hop with T < vi+1 <= A, newest first). A version older
than v0, the *baseline*, is refused: nothing says what state such an installation is in.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from packaging.version import Version

from .._core._exceptions import PlanError
from .._core._versions import Direction, Transition

if TYPE_CHECKING:
    from .._core._models import Migration, Plan

__all__ = ["Route", "baseline", "build_plan", "find_route", "newest_reachable", "spelled"]


@dataclass(frozen=True, slots=True)
class Route:
    """The hops between two versions, in the order they will run.

    ``noop`` lists the stretches of the way that no migration folder covers (releases that
    ship no migrations), as ``(from, to)`` pairs in the order they are passed.
    """

    current: Version
    target: Version
    direction: Direction
    hops: tuple[Transition, ...]
    noop: tuple[tuple[Version, Version], ...] = ()


def _edges(transitions: Sequence[Transition]) -> dict[Version, list[Transition]]:
    edges: dict[Version, list[Transition]] = {}
    for transition in sorted(transitions, key=lambda t: (t.version_from, t.version_to)):
        edges.setdefault(transition.version_from, []).append(transition)
    return edges


def _available(transitions: Sequence[Transition]) -> tuple[str, ...]:
    ordered = sorted(transitions, key=lambda t: (t.version_from, t.version_to))
    return tuple(t.name for t in ordered)


def _points(transitions: Sequence[Transition]) -> list[Version]:
    """Every version a folder names, in PEP 440 order, each in its folder's spelling."""
    points: dict[Version, Version] = {}
    for transition in transitions:
        points.setdefault(transition.version_from, transition.version_from)
        points.setdefault(transition.version_to, transition.version_to)
    return sorted(points.values())


def baseline(transitions: Sequence[Transition]) -> Version | None:
    """The oldest version any migration folder starts from; None without folders."""
    points = _points(transitions)
    return points[0] if points else None


def _check_baseline(transitions: Sequence[Transition], *versions: Version) -> None:
    first = baseline(transitions)
    if first is None:
        return
    for version in versions:
        if version < first:
            raise PlanError(
                f"version {version} is older than the baseline {first} (the oldest version"
                " a migration folder starts from): what state such an installation is in is"
                " unknown, so no migration can be planned from or to it",
                available=_available(transitions),
            )


def _point_at_or_below(points: Sequence[Version], version: Version) -> Version:
    """The newest version point at or below ``version`` (the state it is in)."""
    below = [p for p in points if p <= version]
    return below[-1] if below else version


def spelled(transitions: Sequence[Transition], version: Version) -> Version:
    """``version`` in the spelling of the folder that names it (``0.2`` -> ``0.2.0``)."""
    for point in _points(transitions):
        if point == version:
            return point
    return version


def newest_reachable(transitions: Sequence[Transition], current: Version) -> Version:
    """The newest version that a chain of upgrades starting at ``current`` reaches.

    ``current`` itself when it is newer than every folder (or no chain leaves it).
    """
    edges = _edges(transitions)
    start = _point_at_or_below(_points(transitions), current)
    newest, frontier, seen = current, [start], {start}
    while frontier:
        node = frontier.pop()
        newest = max(newest, node)
        for transition in edges.get(node, ()):
            if transition.version_to not in seen:
                seen.add(transition.version_to)
                frontier.append(transition.version_to)
    return newest


def find_route(
    transitions: Sequence[Transition], current: Version, target: Version | None = None
) -> Route:
    """The single chain of transitions between ``current`` and ``target``.

    ``target`` left out means the newest version reachable from ``current``. A target below
    the current version gives a downgrade route: the same folders, newest first. Versions
    between (or after) the folders' version points are no-op releases (see the module
    documentation); both versions come back in their folder's spelling where a folder names
    them. Raises :class:`PlanError` when a version is older than the baseline, or when no
    chain or more than one chain connects the versions.
    """
    current = spelled(transitions, current)
    _check_baseline(transitions, current)
    if target is None:
        target = newest_reachable(transitions, current)
    target = spelled(transitions, target)
    _check_baseline(transitions, target)
    if target == current:
        return Route(current, target, Direction.UPGRADE, ())
    direction = Direction.UPGRADE if target > current else Direction.DOWNGRADE
    low, high = sorted((current, target))
    points = _points(transitions)
    start, end = _point_at_or_below(points, low), _point_at_or_below(points, high)
    hops = _single_path(transitions, start, end) if points and start != end else ()
    # The stretch above the newest point passed is a run of no-op releases.
    noop = [(max(end, low), high)] if end < high else []
    if not points:  # no folder at all: the whole way is no-op releases
        noop = [(low, high)]
    if direction is Direction.DOWNGRADE:
        hops = tuple(reversed(hops))
        noop = [(b, a) for a, b in noop]
    return Route(current, target, direction, hops, tuple(noop))


def _single_path(
    transitions: Sequence[Transition], low: Version, high: Version
) -> tuple[Transition, ...]:
    edges = _edges(transitions)
    # Number of distinct paths (capped at 2) from each version to ``high``. Versions only go
    # up along an edge, so visiting them from the highest down sees every successor first.
    nodes = sorted({low, high, *edges, *(t.version_to for t in transitions)}, reverse=True)
    paths: dict[Version, int] = {}
    for node in nodes:
        if node == high:
            paths[node] = 1
        elif node > high:
            paths[node] = 0
        else:
            paths[node] = min(2, sum(paths.get(t.version_to, 0) for t in edges.get(node, ())))
    available = _available(transitions)
    if paths.get(low, 0) == 0:
        raise PlanError(f"no chain of migrations leads from {low} to {high}", available=available)
    if paths[low] > 1:
        first, second = _two_paths(edges, paths, low, high)
        raise PlanError(
            f"more than one chain of migrations leads from {low} to {high}:"
            f" {_describe(first)} and {_describe(second)}",
            available=available,
        )
    path: list[Transition] = []
    node = low
    while node != high:
        transition = next(t for t in edges[node] if paths.get(t.version_to, 0))
        path.append(transition)
        node = transition.version_to
    return tuple(path)


def _two_paths(
    edges: Mapping[Version, list[Transition]],
    paths: Mapping[Version, int],
    low: Version,
    high: Version,
) -> tuple[list[Transition], list[Transition]]:
    def follow(node: Version, prefix: list[Transition]) -> list[Transition]:
        route = list(prefix)
        while node != high:
            transition = next(t for t in edges[node] if paths.get(t.version_to, 0))
            route.append(transition)
            node = transition.version_to
        return route

    prefix: list[Transition] = []
    node = low
    while True:
        leading = [t for t in edges[node] if paths.get(t.version_to, 0)]
        if len(leading) > 1:
            return (
                follow(leading[0].version_to, [*prefix, leading[0]]),
                follow(leading[1].version_to, [*prefix, leading[1]]),
            )
        prefix.append(leading[0])
        node = leading[0].version_to


def _describe(path: Sequence[Transition]) -> str:
    return " → ".join([f"v{path[0].version_from}", *(f"v{t.version_to}" for t in path)])


def build_plan(route: Route, migrations: Mapping[str, Sequence[Migration]]) -> Plan:
    """Turn a route into steps: forward in numeric order, or backward in exact reverse."""
    # The plan's models, imported here: finding a route (``status``) needs none of them.
    from .._core._models import Plan, Step  # noqa: PLC0415

    steps: list[Step] = []
    for hop in route.hops:
        in_hop = migrations.get(hop.name, ())
        if route.direction is Direction.UPGRADE:
            steps.extend(Step(m, Direction.UPGRADE) for m in in_hop)
        else:
            steps.extend(Step(m, Direction.DOWNGRADE) for m in reversed(in_hop))
    return Plan(route.current, route.target, route.direction, route.hops, tuple(steps), route.noop)
