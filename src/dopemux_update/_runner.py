"""Run migration functions, one after another, in a worker thread; judge what they return.

A whole sequence of calls runs in one ``anyio.to_thread`` hop: hopping between the event loop
and a thread for each of a thousand small migrations would cost more than the migrations.
The thread reports progress through a queue that the event loop drains (and hands to the
observer) while it waits, so the loop stays free and progress stays live.

A running call is never abandoned: a cancellation asks the sequence to stop *before the next
call* and waits for the current one to end, so nothing else touches the tree while a
migration may still be writing to it.
"""

from __future__ import annotations

import collections
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import anyio
import anyio.from_thread
import anyio.to_thread

from ._capture import capture_thread
from ._models import MigrationFunction

__all__ = [
    "Call",
    "CallFinished",
    "CallOutcome",
    "CallOutput",
    "CallSequence",
    "CallStarted",
    "RunnerEvent",
]

_POLL_SECONDS = 0.02


@dataclass(frozen=True, slots=True)
class Call:
    """One migration function to call, with the id it reports under."""

    id: str
    function: MigrationFunction


@dataclass(frozen=True, slots=True)
class CallOutcome:
    """How one call of ``migrate_forward`` or ``migrate_backward`` went."""

    ok: bool
    seconds: float
    error: str | None = None
    traceback: str | None = None


@dataclass(frozen=True, slots=True)
class CallStarted:
    index: int


@dataclass(frozen=True, slots=True)
class CallOutput:
    index: int
    stream: str
    line: str


@dataclass(frozen=True, slots=True)
class CallFinished:
    index: int
    outcome: CallOutcome


RunnerEvent = CallStarted | CallOutput | CallFinished
ThreadHook = Callable[[Call], None]
FinishedHook = Callable[[Call, CallOutcome], None]


def _judge(value: object) -> str | None:
    if value is True:
        return None
    if value is False:
        return "returned False"
    return f"returned {value!r} ({type(value).__name__}), not a bool"


def call_function(
    function: MigrationFunction, project_root: Path, on_line: Callable[[str, str], None]
) -> CallOutcome:
    """Call ``function(project_root)`` here, capturing its prints; any exception is a failure."""
    start = time.perf_counter()
    with capture_thread(on_line):
        try:
            value = function(project_root)
        except BaseException as exc:  # noqa: BLE001 - SystemExit in a migration is a failure too
            return CallOutcome(
                ok=False,
                seconds=time.perf_counter() - start,
                error=f"raised {type(exc).__name__}: {exc}",
                traceback="".join(traceback.format_exception(exc)),
            )
    problem = _judge(value)
    return CallOutcome(ok=problem is None, seconds=time.perf_counter() - start, error=problem)


class CallSequence:
    """Calls functions in order in one worker thread, stopping at a failure if asked to.

    ``outcomes`` grows, in order, as calls end; it is accurate even when ``run()`` was
    interrupted. ``on_started``/``on_finished`` run in the worker thread (for logging);
    observers get :data:`RunnerEvent` items in the event loop's thread.
    """

    def __init__(
        self,
        calls: Sequence[Call],
        project_root: Path,
        *,
        stop_on_failure: bool,
        on_started: ThreadHook | None = None,
        on_finished: FinishedHook | None = None,
        on_output: Callable[[Call, str, str], None] | None = None,
    ) -> None:
        self.calls = tuple(calls)
        self.project_root = project_root
        self.stop_on_failure = stop_on_failure
        self.outcomes: list[CallOutcome] = []
        self._on_started = on_started
        self._on_finished = on_finished
        self._on_output = on_output
        self._stop = threading.Event()
        self._events: collections.deque[RunnerEvent] = collections.deque()

    def request_stop(self) -> None:
        """Start no further call; the one running, if any, runs to its end."""
        self._stop.set()

    def flush(self, deliver: Callable[[RunnerEvent], None]) -> None:
        """Hand every event queued so far to ``deliver``, in order."""
        while self._events:
            deliver(self._events.popleft())

    def _stopped(self) -> bool:
        if self._stop.is_set():
            return True
        try:
            # Synchronous: sees a cancellation of the waiting task at once, without a hop.
            anyio.from_thread.check_cancelled()
        except BaseException:  # noqa: BLE001 - the backend's cancellation exception
            return True
        return False

    def _run_all(self) -> None:
        for index, call in enumerate(self.calls):
            if self._stopped():
                return
            if self._on_started is not None:
                self._on_started(call)
            self._events.append(CallStarted(index))

            def line(stream: str, text: str, index: int = index, call: Call = call) -> None:
                if self._on_output is not None:
                    self._on_output(call, stream, text)
                self._events.append(CallOutput(index, stream, text))

            outcome = call_function(call.function, self.project_root, line)
            self.outcomes.append(outcome)
            if self._on_finished is not None:
                self._on_finished(call, outcome)
            self._events.append(CallFinished(index, outcome))
            if not outcome.ok and self.stop_on_failure:
                return

    async def _pump(self, deliver: Callable[[RunnerEvent], None]) -> None:
        try:
            while True:
                await anyio.sleep(_POLL_SECONDS)
                self.flush(deliver)
        finally:
            self.request_stop()  # cancelled from outside: stop after the running call

    async def run(self, deliver: Callable[[RunnerEvent], None]) -> list[CallOutcome]:
        """Run the calls; deliver events while waiting; return the outcomes."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._pump, deliver)
            try:
                await anyio.to_thread.run_sync(self._run_all, abandon_on_cancel=False)
            finally:
                tg.cancel_scope.cancel()
        self.flush(deliver)
        return self.outcomes
