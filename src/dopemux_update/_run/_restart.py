"""Restarting services after a committed update, then waiting until they are healthy."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import anyio

from .._core._declared import validate_service_name
from .._core._exceptions import RestartError
from .._core._log import get_logger
from ._health import DockerComposeHealth, HealthChecker, HealthStatus, compose_services

__all__ = [
    "DEFAULT_HEALTH_TIMEOUT",
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
        await _run_restart(service, command, self.cwd)


class DockerComposeRestarter(CommandRestarter):
    """``docker compose [-f FILE] restart SERVICE`` in the installation's folder.

    A service with no running container (a migration added it, or it was stopped) is
    started with ``up -d SERVICE`` instead: ``restart`` does nothing for it. ``health`` is
    the matching :class:`DockerComposeHealth`, which :class:`ServiceRestartPhase` uses by
    default.
    """

    def __init__(
        self, project_root: Path, *, compose_file: Path | None = None, docker: str = "docker"
    ) -> None:
        args = [docker, "compose"]
        if compose_file is not None:
            args += ["-f", str(compose_file)]
        super().__init__([*args, "restart", "{service}"], cwd=project_root)
        self.compose_file = compose_file
        self.health = DockerComposeHealth(project_root, compose_file=compose_file, docker=docker)
        self._up = (*args, "up", "-d", "{service}")

    def unknown_services(self, services: Iterable[str]) -> tuple[str, ...]:
        """The names the compose file does not define (none when it can't be read)."""
        if self.compose_file is None:
            return ()
        defined = compose_services(self.compose_file)
        if defined is None:
            return ()
        return tuple(s for s in services if s not in defined)

    def command_for(self, service: str) -> list[str]:
        validate_service_name(service)
        return [arg.replace("{service}", service) for arg in self.args]

    async def restart(self, service: str) -> None:
        status = await self.health.check(service)
        if not status.healthy and status.detail.startswith(("no container", "state ")):
            validate_service_name(service)
            command = [arg.replace("{service}", service) for arg in self._up]
            logger.info("restart.up", service=service, command=command, reason=status.detail)
            await _run_restart(service, command, self.cwd)
            return
        await super().restart(service)


async def _run_restart(service: str, command: list[str], cwd: Path | None) -> None:
    try:
        process = await anyio.run_process(command, cwd=cwd, check=False, stderr=subprocess.STDOUT)
    except OSError as exc:
        raise RestartError(service, f"cannot run {command[0]!r}: {exc}") from exc
    if process.returncode != 0:
        raise RestartError(
            service,
            f"{shlex.join(command)} exited with {process.returncode}",
            output=process.stdout.decode(errors="replace"),
        )


@dataclass(frozen=True, slots=True)
class RestartResult:
    """Which services were restarted, which failed (with their error messages), and the
    health of each restarted service when the gate ran (empty when it did not).

    ``ok`` when every restart succeeded and every checked service was healthy in time.
    """

    restarted: tuple[str, ...]
    failed: tuple[tuple[str, str], ...]
    health: tuple[HealthStatus, ...] = ()

    @property
    def healthy(self) -> bool:
        """No restarted service failed its health check."""
        return all(status.healthy for status in self.health)

    @property
    def unhealthy(self) -> tuple[str, ...]:
        return tuple(status.service for status in self.health if not status.healthy)

    @property
    def ok(self) -> bool:
        return not self.failed and self.healthy

    def __bool__(self) -> bool:
        """A result is its ``ok``: ``if not await phase.execute():`` is safe."""
        return self.ok


class _Default:
    """The restarter's own health checker, if it has one (``health`` left out)."""


DEFAULT_HEALTH_TIMEOUT = 60.0
_DEFAULT = _Default()


class ServiceRestartPhase:
    """Restarts the services the orchestration handed over, in the order they were handed,
    then waits until each restarted one is healthy (the health gate).

    ``health`` is what decides: left out, the restarter's own checker (docker compose's
    state and healthcheck for :class:`DockerComposeRestarter`, none for a command
    template); ``None`` skips the gate. Each service is asked again every
    ``poll_interval`` seconds until it is healthy or ``health_timeout`` seconds have passed
    since the restarts ended.
    """

    name = "service-restart"

    def __init__(
        self,
        restarter: Restarter,
        *,
        health: HealthChecker | _Default | None = _DEFAULT,
        health_timeout: float = DEFAULT_HEALTH_TIMEOUT,
        poll_interval: float = 1.0,
    ) -> None:
        if health_timeout < 0:
            raise ValueError("the health timeout must not be negative")
        self.restarter = restarter
        self.health: HealthChecker | None = (
            getattr(restarter, "health", None) if isinstance(health, _Default) else health
        )
        self.health_timeout = health_timeout
        self.poll_interval = poll_interval
        self._services: dict[str, None] = {}

    @property
    def services(self) -> tuple[str, ...]:
        return tuple(self._services)

    def hand_over(self, services: Iterable[str]) -> None:
        for service in services:
            self._services.setdefault(validate_service_name(service), None)

    def unknown_services(self, services: Iterable[str]) -> tuple[str, ...]:
        """Names the restarter knows it cannot restart (not in the compose file)."""
        check = getattr(self.restarter, "unknown_services", None)
        return tuple(check(services)) if callable(check) else ()

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
        health = await self.wait_healthy(restarted)
        return RestartResult(tuple(restarted), tuple(failed), health)

    async def wait_healthy(self, services: Sequence[str]) -> tuple[HealthStatus, ...]:
        """Ask until every service is healthy or the deadline passes; the last answers."""
        checker = self.health
        if checker is None or not services:
            return ()
        latest: dict[str, HealthStatus] = {}
        pending = list(services)
        deadline = anyio.current_time() + self.health_timeout
        while True:
            for service in list(pending):
                status = await checker.check(service)
                latest[service] = status
                if status.healthy:
                    pending.remove(service)
                    logger.info("health.ok", service=service, detail=status.detail)
            if not pending or anyio.current_time() >= deadline:
                break
            await anyio.sleep(min(self.poll_interval, max(0.0, deadline - anyio.current_time())))
        for service in pending:
            logger.error("health.failed", service=service, detail=latest[service].detail)
        return tuple(latest[service] for service in services)
