"""Pure planning: from the known transitions, the current and a target version, the plan.

No I/O happens here (like alembic's ``RevisionMap``): tests feed in-memory transitions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from packaging.version import Version

from ._exceptions import PlanError
from ._models import Direction, Migration, Plan, Step, Transition

__all__ = ["Route", "build_plan", "find_route", "newest_reachable"]


@dataclass(frozen=True, slots=True)
class Route:
    """The hops between two versions, in the order they will run."""

    current: Version
    target: Version
    direction: Direction
    hops: tuple[Transition, ...]


def _edges(transitions: Sequence[Transition]) -> dict[Version, list[Transition]]:
    edges: dict[Version, list[Transition]] = {}
    for transition in sorted(transitions, key=lambda t: (t.version_from, t.version_to)):
        edges.setdefault(transition.version_from, []).append(transition)
    return edges


def _available(transitions: Sequence[Transition]) -> tuple[str, ...]:
    ordered = sorted(transitions, key=lambda t: (t.version_from, t.version_to))
    return tuple(t.name for t in ordered)


def newest_reachable(transitions: Sequence[Transition], current: Version) -> Version:
    """The newest version that a chain of upgrades starting at ``current`` reaches."""
    edges = _edges(transitions)
    newest, frontier, seen = current, [current], {current}
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
    the current version gives a downgrade route: the same folders, newest first.
    Raises :class:`PlanError` when no chain or more than one chain connects the versions.
    """
    if target is None:
        target = newest_reachable(transitions, current)
    if target == current:
        return Route(current, target, Direction.UPGRADE, ())
    direction = Direction.UPGRADE if target > current else Direction.DOWNGRADE
    low, high = sorted((current, target))
    hops = _single_path(transitions, low, high)
    if direction is Direction.DOWNGRADE:
        hops = tuple(reversed(hops))
    return Route(current, target, direction, hops)


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
    steps: list[Step] = []
    for hop in route.hops:
        in_hop = migrations.get(hop.name, ())
        if route.direction is Direction.UPGRADE:
            steps.extend(Step(m, Direction.UPGRADE) for m in in_hop)
        else:
            steps.extend(Step(m, Direction.DOWNGRADE) for m in reversed(in_hop))
    return Plan(route.current, route.target, route.direction, route.hops, tuple(steps))
