"""Restarting services after a committed update."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import anyio

from ._exceptions import RestartError
from ._log import get_logger
from ._models import validate_service_name

__all__ = [
    "CommandRestarter",
    "DockerComposeRestarter",
    "RestartResult",
    "Restarter",
    "ServiceRestartPhase",
]

logger = get_logger()


@runtime_checkable
class Restarter(Protocol):
    """Restarts one service by name; raises :class:`RestartError` when it cannot."""

    async def restart(self, service: str) -> None: ...


class CommandRestarter:
    """Runs a command template per service, without a shell.

    ``{service}`` in any argument is replaced by the (validated) service name, e.g.
    ``CommandRestarter("systemctl restart dopemux-{service}")``.
    """

    def __init__(self, template: str | Sequence[str], *, cwd: Path | None = None) -> None:
        args = shlex.split(template) if isinstance(template, str) else list(template)
        if not args:
            raise ValueError("the restart command template is empty")
        if not any("{service}" in arg for arg in args):
            raise ValueError("the restart command template must contain {service}")
        self.args = tuple(args)
        self.cwd = cwd

    def command_for(self, service: str) -> list[str]:
        validate_service_name(service)
        return [arg.replace("{service}", service) for arg in self.args]

    async def restart(self, service: str) -> None:
        try:
            command = self.command_for(service)
        except ValueError as exc:
            raise RestartError(service, str(exc)) from exc
        logger.info("restart.command", service=service, command=command)
        try:
            process = await anyio.run_process(
                command, cwd=self.cwd, check=False, stderr=subprocess.STDOUT
            )
        except OSError as exc:
            raise RestartError(service, f"cannot run {command[0]!r}: {exc}") from exc
        output = process.stdout.decode(errors="replace")
        if process.returncode != 0:
            raise RestartError(
                service, f"{shlex.join(command)} exited with {process.returncode}", output=output
            )


class DockerComposeRestarter(CommandRestarter):
    """``docker compose [-f FILE] restart SERVICE`` in the installation's folder."""

    def __init__(self, project_root: Path, *, compose_file: Path | None = None) -> None:
        args = ["docker", "compose"]
        if compose_file is not None:
            args += ["-f", str(compose_file)]
        super().__init__([*args, "restart", "{service}"], cwd=project_root)


@dataclass(frozen=True, slots=True)
class RestartResult:
    """Which services were restarted and which failed (with their error messages)."""

    restarted: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]

    @property
    def ok(self) -> bool:
        return not self.failed

    def __bool__(self) -> bool:
        """A result is its ``ok``: ``if not await phase.execute():`` is safe."""
        return self.ok


class ServiceRestartPhase:
    """Restarts the services the orchestration handed over, in the order they were handed."""

    name = "service-restart"

    def __init__(self, restarter: Restarter) -> None:
        self.restarter = restarter
        self._services: dict[str, None] = {}

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(self._services)

    def hand_over(self, services: Iterable[str]) -> None:
        for service in services:
            self._services.setdefault(validate_service_name(service), None)

    async def execute(self) -> RestartResult:
        restarted: list[str] = []
        failed: list[tuple[str, str]] = []
        for service in self.services:
            try:
                await self.restarter.restart(service)
            except RestartError as exc:
                logger.error("restart.failed", service=service, error=str(exc), output=exc.output)
                failed.append((service, f"{exc}\n{exc.output}".rstrip()))
            else:
                logger.info("restart.done", service=service)
                restarted.append(service)
        return RestartResult(tuple(restarted), tuple(failed))
