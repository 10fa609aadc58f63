"""Is a restarted service healthy? Docker compose's view, or a command per service.

The health gate (DESIGN guarantee 15) asks a checker about each restarted service until it
is healthy or a deadline passes:

- :class:`DockerComposeHealth` reads ``docker compose -f FILE ps --all --format json`` (one
  JSON object a line, or one JSON array: compose has printed both): a service is healthy
  when a container of it is ``running`` and, where the service defines a healthcheck, its
  health is ``healthy``;
- :class:`CommandHealth` runs a command template per service (``{service}`` replaced, no
  shell): exit status 0 is healthy.
"""

from __future__ import annotations

import json
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import anyio

from .._core._declared import validate_service_name
from .._core._log import get_logger

__all__ = [
    "COMPOSE_FILES",
    "CommandHealth",
    "DockerComposeHealth",
    "HealthChecker",
    "HealthStatus",
    "compose_services",
    "find_compose_file",
    "parse_compose_ps",
]

logger = get_logger()

#: The file names docker compose looks for in a project folder, in its order.
COMPOSE_FILES = ("compose.yaml", "compose.yml", "docker-compose.yaml", "docker-compose.yml")
_OUTPUT_LIMIT = 2000  # characters of a failing command's output kept in a detail


@dataclass(frozen=True, slots=True)
class HealthStatus:
    """One service's health: ``healthy``, and what was seen (``detail``)."""

    service: str
    healthy: bool
    detail: str

    def __bool__(self) -> bool:
        return self.healthy


@runtime_checkable
class HealthChecker(Protocol):
    """Tells whether one service is healthy right now (never raises for an unhealthy one)."""

    async def check(self, service: str) -> HealthStatus: ...


def parse_compose_ps(output: str) -> list[dict[str, Any]]:
    """The containers ``docker compose ps --format json`` printed: a JSON array, or one JSON
    object a line. Raises :class:`ValueError` for anything else."""
    text = output.strip()
    if not text:
        return []
    try:
        if text.startswith("["):
            parsed = json.loads(text)
            items = parsed if isinstance(parsed, list) else [None]
        else:
            items = [json.loads(line) for line in text.splitlines() if line.strip()]
    except ValueError as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if not all(isinstance(item, dict) for item in items):
        raise ValueError("not JSON objects (one a line, or an array of them)")
    return list(items)


def service_state(containers: Sequence[dict[str, Any]], service: str) -> HealthStatus:
    """A service's health from the containers compose listed."""
    mine = [c for c in containers if c.get("Service") == service]
    if not mine:
        return HealthStatus(service, False, "no container (not created or not started)")
    for container in mine:
        state = str(container.get("State", "")).lower()
        health = str(container.get("Health", "")).lower()
        if state != "running":
            return HealthStatus(service, False, f"state {state or 'unknown'}")
        if health and health != "healthy":
            return HealthStatus(service, False, f"running, health {health}")
    health = str(mine[0].get("Health", "")).lower()
    return HealthStatus(service, True, "running, healthy" if health else "running")


def find_compose_file(root: Path) -> Path | None:
    """The compose file docker compose would use in ``root``, if there is one."""
    return next((root / name for name in COMPOSE_FILES if (root / name).is_file()), None)


def compose_services(compose_file: Path) -> tuple[str, ...] | None:
    """The service names a compose file defines; None when it cannot be read as one."""
    try:
        from ruamel.yaml import YAML  # noqa: PLC0415 - only when restarts are checked
        from ruamel.yaml.error import YAMLError  # noqa: PLC0415
    except ImportError:  # pragma: no cover - ruamel.yaml is a dependency
        return None
    try:
        document = YAML(typ="safe", pure=True).load(compose_file.read_text())
    except (OSError, YAMLError, UnicodeDecodeError) as exc:
        logger.warning("compose.unreadable", path=str(compose_file), error=str(exc))
        return None
    services = document.get("services") if isinstance(document, dict) else None
    if not isinstance(services, dict):
        return None
    return tuple(str(name) for name in services)


async def _run(command: list[str], cwd: Path | None) -> tuple[int, str]:
    try:
        process = await anyio.run_process(command, cwd=cwd, check=False, stderr=subprocess.STDOUT)
    except OSError as exc:
        return 127, f"cannot run {command[0]!r}: {exc.strerror or exc}"
    return process.returncode, process.stdout.decode(errors="replace")


class DockerComposeHealth:
    """Health as ``docker compose ps`` reports it (see the module documentation)."""

    def __init__(
        self, project_root: Path, *, compose_file: Path | None = None, docker: str = "docker"
    ) -> None:
        self.cwd = project_root
        self.args = [docker, "compose"]
        if compose_file is not None:
            self.args += ["-f", str(compose_file)]

    async def containers(self) -> list[dict[str, Any]]:
        """Every container of the project, running or not; raises :class:`ValueError`."""
        command = [*self.args, "ps", "--all", "--format", "json"]
        code, output = await _run(command, self.cwd)
        if code != 0:
            raise ValueError(f"{shlex.join(command)} exited with {code}: {output.strip()}")
        try:
            return parse_compose_ps(output)
        except ValueError as exc:
            raise ValueError(f"{shlex.join(command)} printed no JSON: {exc}") from exc

    async def check(self, service: str) -> HealthStatus:
        try:
            containers = await self.containers()
        except ValueError as exc:
            return HealthStatus(service, False, str(exc)[:_OUTPUT_LIMIT])
        return service_state(containers, service)


class CommandHealth:
    """A command template per service, without a shell: exit status 0 is healthy."""

    def __init__(self, template: str | Sequence[str], *, cwd: Path | None = None) -> None:
        args = shlex.split(template) if isinstance(template, str) else list(template)
        if not args:
            raise ValueError("the health command template is empty")
        if not any("{service}" in arg for arg in args):
            raise ValueError("the health command template must contain {service}")
        self.args = tuple(args)
        self.cwd = cwd

    async def check(self, service: str) -> HealthStatus:
        validate_service_name(service)
        command = [arg.replace("{service}", service) for arg in self.args]
        code, output = await _run(command, self.cwd)
        detail = f"{shlex.join(command)} exited with {code}"
        if output.strip():
            detail += f": {output.strip()[-_OUTPUT_LIMIT:]}"
        return HealthStatus(service, code == 0, detail)
