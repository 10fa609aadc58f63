"""The planner is pure: in-memory transitions in, a route out."""

from __future__ import annotations

from pathlib import Path

import pytest
from packaging.version import Version

from dopemux_update import Direction, PlanError, Transition, find_route, newest_reachable
from dopemux_update._core._versions import parse_transition_name


def chain(*names: str) -> list[Transition]:
    transitions = []
    for name in names:
        version_from, version_to = parse_transition_name(name)
        transitions.append(Transition(name, version_from, version_to, Path(name)))
    return transitions


def test_multi_hop_route_follows_version_order_not_string_order() -> None:
    transitions = chain("v0.10.0_to_v0.11.0", "v0.9.0_to_v0.10.0", "v0.8.0_to_v0.9.0")
    route = find_route(transitions, Version("0.8.0"), Version("0.11.0"))
    assert [hop.name for hop in route.hops] == [
        "v0.8.0_to_v0.9.0",
        "v0.9.0_to_v0.10.0",
        "v0.10.0_to_v0.11.0",
    ]
    assert route.direction is Direction.UPGRADE


def test_target_left_out_means_newest_reachable() -> None:
    transitions = chain("v1.0_to_v1.1", "v1.1_to_v2.0", "v3.0_to_v4.0")
    assert newest_reachable(transitions, Version("1.0")) == Version("2.0")
    route = find_route(transitions, Version("1.0"))
    assert route.target == Version("2.0")


def test_downgrade_route_runs_the_same_folders_newest_first() -> None:
    transitions = chain("v1.0_to_v1.1", "v1.1_to_v1.2")
    route = find_route(transitions, Version("1.2"), Version("1.0"))
    assert route.direction is Direction.DOWNGRADE
    assert [hop.name for hop in route.hops] == ["v1.1_to_v1.2", "v1.0_to_v1.1"]


def test_same_version_is_an_empty_route() -> None:
    route = find_route(chain("v1.0_to_v1.1"), Version("1.1"), Version("1.1"))
    assert route.hops == ()


def test_no_path_lists_the_available_transitions() -> None:
    transitions = chain("v1.0_to_v1.1", "v1.2_to_v1.3")
    with pytest.raises(PlanError) as info:
        find_route(transitions, Version("1.0"), Version("1.3"))
    message = str(info.value)
    assert "no chain" in message
    assert "v1.0_to_v1.1" in message
    assert "v1.2_to_v1.3" in message


def test_competing_paths_are_an_error_naming_both() -> None:
    transitions = chain("v1.0_to_v1.1", "v1.1_to_v1.2", "v1.0_to_v1.2")
    with pytest.raises(PlanError) as info:
        find_route(transitions, Version("1.0"), Version("1.2"))
    message = str(info.value)
    assert "more than one chain" in message
    assert "v1.0 → v1.1 → v1.2" in message
    assert "v1.0 → v1.2" in message


def test_side_branches_that_do_not_reach_the_target_do_not_compete() -> None:
    transitions = chain("v1.0_to_v1.1", "v1.1_to_v1.2", "v1.1_to_v5.0")
    route = find_route(transitions, Version("1.0"), Version("1.2"))
    assert [hop.name for hop in route.hops] == ["v1.0_to_v1.1", "v1.1_to_v1.2"]


def test_a_long_chain_plans_quickly_and_in_order() -> None:
    names = [f"v0.{i}.0_to_v0.{i + 1}.0" for i in range(500)]
    route = find_route(chain(*reversed(names)), Version("0.0.0"), Version("0.500.0"))
    assert [hop.name for hop in route.hops] == names


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("0.1.0_to_v0.2.0", "not of the form"),
        ("v0.1.0-v0.2.0", "not of the form"),
        ("vbanana_to_v0.2.0", "invalid version"),
        ("v0.2.0_to_v0.1.0", "must go up"),
        ("v0.2.0_to_v0.2.0", "must go up"),
    ],
)
def test_bad_folder_names_are_explained(name: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse_transition_name(name)


def test_a_version_between_points_runs_the_hop_that_leaves_its_point() -> None:
    """0.1.5 is in the state of 0.1.0: upgrading to 0.2.1 runs v0.1.0_to_v0.2.0."""
    route = find_route(chain("v0.1.0_to_v0.2.0"), Version("0.1.5"), Version("0.2.1"))
    assert [hop.name for hop in route.hops] == ["v0.1.0_to_v0.2.0"]
    assert route.noop == ((Version("0.2.0"), Version("0.2.1")),)
    assert str(route.target) == "0.2.1"


def test_a_no_op_release_runs_nothing_and_still_moves_the_version() -> None:
    route = find_route(chain("v0.1.0_to_v0.2.0"), Version("0.2.0"), Version("0.2.1"))
    assert route.hops == ()
    assert route.direction is Direction.UPGRADE
    assert route.noop == ((Version("0.2.0"), Version("0.2.1")),)


def test_a_downgrade_across_a_no_op_release_reverts_the_hops_below_it() -> None:
    route = find_route(chain("v0.1.0_to_v0.2.0"), Version("0.2.1"), Version("0.1.5"))
    assert route.direction is Direction.DOWNGRADE
    assert [hop.name for hop in route.hops] == ["v0.1.0_to_v0.2.0"]
    assert route.noop == ((Version("0.2.1"), Version("0.2.0")),)
    none = find_route(chain("v0.1.0_to_v0.2.0"), Version("0.1.9"), Version("0.1.0"))
    assert none.hops == ()


def test_no_folders_at_all_means_every_release_is_a_no_op() -> None:
    route = find_route([], Version("0.1.0"), Version("0.3.0"))
    assert route.hops == ()
    assert route.noop == ((Version("0.1.0"), Version("0.3.0")),)
    assert newest_reachable([], Version("0.1.0")) == Version("0.1.0")


def test_a_version_older_than_the_baseline_is_refused_naming_it() -> None:
    with pytest.raises(PlanError, match=r"0\.0\.5 is older than the baseline 0\.1\.0"):
        find_route(chain("v0.1.0_to_v0.2.0"), Version("0.0.5"), Version("0.2.0"))
    with pytest.raises(PlanError, match="baseline"):
        find_route(chain("v0.1.0_to_v0.2.0"), Version("0.2.0"), Version("0.0.1"))


def test_versions_compare_by_pep_440_and_come_back_in_the_folders_spelling() -> None:
    route = find_route(chain("v0.1.0_to_v0.2.0"), Version("0.1"), Version("v0.2"))
    assert [hop.name for hop in route.hops] == ["v0.1.0_to_v0.2.0"]
    assert (str(route.current), str(route.target)) == ("0.1.0", "0.2.0")
    assert route.noop == ()


def test_newest_reachable_starts_from_the_point_below_the_current_version() -> None:
    transitions = chain("v0.1.0_to_v0.2.0", "v0.2.0_to_v0.3.0")
    assert newest_reachable(transitions, Version("0.1.5")) == Version("0.3.0")
    assert newest_reachable(transitions, Version("0.4.0")) == Version("0.4.0")
