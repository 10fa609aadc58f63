"""Run one migration function in a worker thread and judge what it returned."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.from_thread
import anyio.to_thread
import structlog

from ._capture import capture_thread
from ._models import MigrationFunction

__all__ = ["CallOutcome", "run_function"]

logger = structlog.get_logger("dopemux_update")

OutputHandler = Callable[[str, str], None]


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """How one call of ``migrate_forward`` or ``migrate_backward`` went."""

    ok: bool
    seconds: float
    error: str | None = None
    traceback: str | None = None


def _judge(value: object) -> str | None:
    if value is True:
        return None
    if value is False:
        return "returned False"
    return f"returned {value!r} ({type(value).__name__}), not a bool"


def _call(
    function: MigrationFunction,
    project_root: Path,
    migration_id: str,
    on_output: OutputHandler | None,
) -> CallOutcome:
    def handle(stream: str, line: str) -> None:
        logger.info("migration.output", migration_id=migration_id, stream=stream, line=line)
        if on_output is not None:
            anyio.from_thread.run_sync(on_output, stream, line)

    start = time.perf_counter()
    with capture_thread(handle):
        try:
            value = function(project_root)
        except BaseException as exc:  # noqa: BLE001 - SystemExit in a migration is a failure too
            seconds = time.perf_counter() - start
            return CallOutcome(
                ok=False,
                seconds=seconds,
                error=f"raised {type(exc).__name__}: {exc}",
                traceback="".join(traceback.format_exception(exc)),
            )
    seconds = time.perf_counter() - start
    problem = _judge(value)
    return CallOutcome(ok=problem is None, seconds=seconds, error=problem)


async def run_function(
    function: MigrationFunction,
    project_root: Path,
    *,
    migration_id: str,
    on_output: OutputHandler | None = None,
) -> CallOutcome:
    """Call ``function(project_root)`` in a worker thread.

    The call is never abandoned: a cancellation waits for the thread to end, so nothing
    else touches the tree while a migration may still be writing to it.
    """
    return await anyio.to_thread.run_sync(
        _call, function, project_root, migration_id, on_output, abandon_on_cancel=False
    )
