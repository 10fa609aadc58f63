"""The health gate: restart, then wait until each restarted service is healthy."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import FakeDocker
from dopemux_update import ServiceRestartPhase
from dopemux_update._run._health import CommandHealth, parse_compose_ps, service_state
from dopemux_update._run._restart import DockerComposeRestarter

pytestmark = pytest.mark.anyio

COMPOSE = "services:\n  web:\n    image: x\n  db:\n    image: y\n"


@pytest.fixture
def compose_root(tmp_path: Path) -> Path:
    root = tmp_path / "install"
    root.mkdir()
    (root / "compose.yaml").write_text(COMPOSE)
    return root


def _phase(root: Path, **options: object) -> ServiceRestartPhase:
    restarter = DockerComposeRestarter(root, compose_file=root / "compose.yaml")
    phase = ServiceRestartPhase(restarter, poll_interval=0.01, **options)  # type: ignore[arg-type]
    phase.hand_over(["web", "db"])
    return phase


def test_compose_ps_output_is_read_as_lines_or_as_an_array() -> None:
    lines = '{"Service": "web", "State": "running", "Health": ""}\n{"Service": "db"}\n'
    array = '[{"Service": "web", "State": "running", "Health": ""}, {"Service": "db"}]'
    assert parse_compose_ps(lines) == parse_compose_ps(array)
    assert parse_compose_ps("") == []
    with pytest.raises(ValueError, match="JSON"):
        parse_compose_ps("[1, 2")


@pytest.mark.parametrize(
    ("row", "healthy", "detail"),
    [
        ({"State": "running", "Health": ""}, True, "running"),
        ({"State": "running", "Health": "healthy"}, True, "running, healthy"),
        ({"State": "running", "Health": "starting"}, False, "running, health starting"),
        ({"State": "running", "Health": "unhealthy"}, False, "running, health unhealthy"),
        ({"State": "exited", "Health": ""}, False, "state exited"),
    ],
)
def test_a_service_is_healthy_when_running_and_healthy_where_it_has_a_check(
    row: dict[str, str], healthy: bool, detail: str
) -> None:
    status = service_state([{"Service": "web", **row}], "web")
    assert (status.healthy, status.detail) == (healthy, detail)
    assert not service_state([{"Service": "other", **row}], "web").healthy


@pytest.mark.parametrize("array", [False, True])
async def test_healthy_services_pass_the_gate(
    compose_root: Path, fake_docker: FakeDocker, array: bool
) -> None:
    fake_docker.set(
        services={"web": {"state": "running"}, "db": {"state": "running", "health": "healthy"}},
        array=array,
    )
    result = await _phase(compose_root).execute()
    assert result.ok
    assert result.restarted == ("web", "db")
    assert [(s.service, s.healthy) for s in result.health] == [("web", True), ("db", True)]
    assert "compose -f" in fake_docker.calls()[0]
    assert any(call.endswith("restart web") for call in fake_docker.calls())


async def test_a_service_still_starting_is_waited_for_until_the_deadline(
    compose_root: Path, fake_docker: FakeDocker
) -> None:
    fake_docker.set(
        services={
            "web": {"state": "running", "on_restart": {"state": "running", "health": "starting"}},
            "db": {"state": "running"},
        }
    )
    result = await _phase(compose_root, health_timeout=0.2).execute()
    assert not result
    assert result.failed == ()
    assert result.unhealthy == ("web",)
    assert result.health[0].detail == "running, health starting"
    polls = [c for c in fake_docker.calls() if " ps " in f" {c} "]
    assert len(polls) > 3  # asked again until the deadline


async def test_a_service_with_no_running_container_is_started_with_up(
    compose_root: Path, fake_docker: FakeDocker
) -> None:
    fake_docker.set(services={"web": {"state": "absent"}, "db": {"state": "exited"}})
    result = await _phase(compose_root).execute()
    assert result.ok, result
    calls = fake_docker.calls()
    assert any(c.endswith("up -d web") for c in calls)
    assert any(c.endswith("up -d db") for c in calls)
    assert not any(c.endswith(("restart web", "restart db")) for c in calls)


async def test_a_failed_restart_is_reported_and_not_health_checked(
    compose_root: Path, fake_docker: FakeDocker
) -> None:
    fake_docker.set(services={"web": {"state": "running"}, "db": {"state": "running"}}, fail=["db"])
    result = await _phase(compose_root).execute()
    assert not result.ok
    assert [name for name, _ in result.failed] == ["db"]
    assert [s.service for s in result.health] == ["web"]


async def test_no_gate_when_health_is_none(compose_root: Path, fake_docker: FakeDocker) -> None:
    fake_docker.set(services={"web": {"state": "running", "health": "unhealthy"}, "db": {}})
    result = await _phase(compose_root, health=None).execute()
    assert result.ok
    assert result.health == ()


async def test_a_health_command_is_retried_until_it_passes(
    compose_root: Path, tmp_path: Path
) -> None:
    counter = tmp_path / "count"
    script = tmp_path / "check.sh"
    script.write_text(
        f'#!/bin/sh\necho x >> {counter}\n[ "$(wc -l < {counter})" -ge 3 ] || exit 1\n'
    )
    script.chmod(0o755)

    class Recording:
        async def restart(self, service: str) -> None:
            pass

    phase = ServiceRestartPhase(
        Recording(), health=CommandHealth(f"{script} {{service}}"), poll_interval=0.01
    )
    phase.hand_over(["web"])
    result = await phase.execute()
    assert result.ok
    assert counter.read_text().count("x") == 3


async def test_a_health_command_that_keeps_failing_names_its_exit_status(
    compose_root: Path,
) -> None:
    class Recording:
        async def restart(self, service: str) -> None:
            pass

    phase = ServiceRestartPhase(
        Recording(), health=CommandHealth("false {service}"), poll_interval=0.01, health_timeout=0
    )
    phase.hand_over(["web"])
    result = await phase.execute()
    assert not result
    assert result.health[0].detail == "false web exited with 1"


def test_restart_names_are_checked_against_the_compose_file(compose_root: Path) -> None:
    restarter = DockerComposeRestarter(compose_root, compose_file=compose_root / "compose.yaml")
    assert restarter.unknown_services(["web", "mcp-servers", "db"]) == ("mcp-servers",)
    phase = ServiceRestartPhase(restarter)
    assert phase.unknown_services(["nope"]) == ("nope",)
