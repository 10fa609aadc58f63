"""Phases of an update and a small pipeline that runs them in order."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from .._core._log import get_logger

__all__ = ["PhaseResult", "PipelineResult", "RestartReceiver", "UpdatePhase", "UpdatePipeline"]

logger = get_logger()


@runtime_checkable
class PhaseResult(Protocol):
    """What a phase returns: at least whether it succeeded."""

    @property
    def ok(self) -> bool: ...


@runtime_checkable
class UpdatePhase(Protocol):
    """One step of an updater: orchestration, service restart, or one of your own."""

    @property
    def name(self) -> str: ...

    async def execute(self) -> PhaseResult: ...


@runtime_checkable
class RestartReceiver(Protocol):
    """Something the orchestration hands the services to restart to, on success only.

    It may also offer ``unknown_services(names) -> Sequence[str]`` (as
    :class:`~dopemux_update.ServiceRestartPhase` does): the orchestration then asks it, after
    the forward pass and before the commit, which of the plan's names it cannot restart
    (not in the compose file); an upgrade naming one fails and is rolled back.
    """

    def hand_over(self, services: Iterable[str]) -> None: ...


@dataclass(frozen=True, slots=True)
class PipelineResult:
    """The result of every phase that ran, in order; ``ok`` when all of them succeeded."""

    results: tuple[tuple[str, PhaseResult], ...]
    skipped: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.skipped and all(result.ok for _, result in self.results)

    def __bool__(self) -> bool:
        """A result is its ``ok``: ``if not await phase.execute():`` is safe."""
        return self.ok


class UpdatePipeline:
    """Runs phases in order and stops at the first one that does not succeed."""

    def __init__(self, phases: Sequence[UpdatePhase]) -> None:
        self.phases = tuple(phases)

    async def run(self) -> PipelineResult:
        results: list[tuple[str, PhaseResult]] = []
        for index, phase in enumerate(self.phases):
            logger.info("phase.started", phase=phase.name)
            result = await phase.execute()
            results.append((phase.name, result))
            logger.info("phase.finished", phase=phase.name, ok=result.ok)
            if not result.ok:
                skipped = tuple(p.name for p in self.phases[index + 1 :])
                if skipped:
                    logger.warning("pipeline.stopped", phase=phase.name, skipped=list(skipped))
                return PipelineResult(tuple(results), skipped)
        return PipelineResult(tuple(results), ())
