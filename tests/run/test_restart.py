"""Restart phase and restarters: validated names, no shell, failures reported."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from dopemux_update import (
    CommandRestarter,
    DockerComposeRestarter,
    RestartError,
    ServiceRestartPhase,
)

pytestmark = pytest.mark.anyio


class FlakyRestarter:
    def __init__(self, failing: set[str]) -> None:
        self.failing = failing
        self.calls: list[str] = []

    async def restart(self, service: str) -> None:
        self.calls.append(service)
        if service in self.failing:
            raise RestartError(service, "it would not come back", output="log line")


async def test_restart_phase_restarts_in_handed_order_and_reports_failures() -> None:
    restarter = FlakyRestarter({"b"})
    phase = ServiceRestartPhase(restarter)
    phase.hand_over(["a", "b"])
    phase.hand_over(["a", "c"])
    assert phase.services == ("a", "b", "c")
    result = await phase.execute()
    assert restarter.calls == ["a", "b", "c"]
    assert result.restarted == ("a", "c")
    assert result.failed[0][0] == "b"
    assert "log line" in result.failed[0][1]
    assert not result.ok


async def test_command_restarter_substitutes_the_service_without_a_shell(tmp_path: Path) -> None:
    out = tmp_path / "out"
    restarter = CommandRestarter(
        [
            sys.executable,
            "-c",
            f"import sys; open({str(out)!r}, 'w').write(sys.argv[1])",
            "{service}",
        ]
    )
    await restarter.restart("mcp-servers")
    assert out.read_text() == "mcp-servers"


async def test_command_restarter_reports_exit_code_and_output() -> None:
    restarter = CommandRestarter(
        [sys.executable, "-c", "print('no such unit'); raise SystemExit(4)", "{service}"]
    )
    with pytest.raises(RestartError) as info:
        await restarter.restart("redis")
    assert "exited with 4" in str(info.value)
    assert "no such unit" in info.value.output


async def test_a_missing_program_is_a_restart_error() -> None:
    with pytest.raises(RestartError, match="cannot run"):
        await CommandRestarter("/nonexistent/restart-tool {service}").restart("redis")


@pytest.mark.parametrize("name", ["a;b", "$(reboot)", "-rf", "", "x y"])
async def test_unsafe_service_names_are_refused(name: str) -> None:
    with pytest.raises(RestartError, match="invalid service name"):
        await CommandRestarter("true {service}").restart(name)
    with pytest.raises(ValueError, match="invalid service name"):
        ServiceRestartPhase(FlakyRestarter(set())).hand_over([name])


def test_templates_must_name_the_service() -> None:
    with pytest.raises(ValueError, match=r"\{service\}"):
        CommandRestarter("systemctl restart everything")
    with pytest.raises(ValueError, match="empty"):
        CommandRestarter("")


def test_docker_compose_restarter_command(tmp_path: Path) -> None:
    restarter = DockerComposeRestarter(tmp_path, compose_file=tmp_path / "docker-compose.yml")
    assert restarter.command_for("conport") == [
        "docker",
        "compose",
        "-f",
        str(tmp_path / "docker-compose.yml"),
        "restart",
        "conport",
    ]
    assert restarter.cwd == tmp_path
