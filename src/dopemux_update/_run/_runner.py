"""Run migration functions, one after another, in a worker thread; judge what they return.

A whole sequence of calls runs in one ``anyio.to_thread`` hop: hopping between the event loop
and a thread for each of a thousand small migrations would cost more than the migrations.
The thread reports progress through a queue that the event loop drains (and hands to the
observer) while it waits, so the loop stays free and progress stays live.

A running call is never raced: a cancellation asks the sequence to stop *before the next
call* and waits for the current one to end, so nothing else touches the tree while a
migration may still be writing to it. A call still running ``grace`` seconds after a timeout
or a cancellation is *abandoned*: its thread is left running, and the caller must then leave
the tree alone (the run is left for ``recover``).
"""

from __future__ import annotations

import collections
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import NamedTuple

import anyio
import anyio.to_thread

from .._core._faults import crash_point
from .._core._models import MigrationFunction
from ._capture import capture_thread
from ._shown import exception_text, shown, traceback_text

__all__ = [
    "DEFAULT_GRACE",
    "Call",
    "CallFinished",
    "CallOutcome",
    "CallOutput",
    "CallSequence",
    "CallStarted",
    "RunnerEvent",
]

_POLL_SECONDS = 0.02
DEFAULT_GRACE = 10.0  # seconds a migration gets to end after a timeout or a cancellation


# The records below are named tuples: every update command creates these classes at its
# start, and a named tuple costs a tenth of a frozen dataclass. ``position`` is a call's place
# in the sequence (a field called ``index`` would hide the tuple's own method).


class Call(NamedTuple):
    """One migration function to call, with the id it reports under."""

    id: str
    function: MigrationFunction


class CallOutcome(NamedTuple):
    """How one call of ``migrate_forward`` or ``migrate_backward`` went."""

    ok: bool
    seconds: float
    error: str | None = None
    traceback: str | None = None


class CallStarted(NamedTuple):
    position: int


class CallOutput(NamedTuple):
    position: int
    stream: str
    line: str


class CallFinished(NamedTuple):
    position: int
    outcome: CallOutcome


RunnerEvent = CallStarted | CallOutput | CallFinished
ThreadHook = Callable[[Call], None]
FinishedHook = Callable[[Call, CallOutcome], None]


def _judge(value: object) -> str | None:
    if value is True:
        return None
    if value is False:
        return "returned False"
    # A broken __repr__ (even one raising SystemExit) must not hide the verdict.
    return f"returned {shown(value)} ({type(value).__name__}), not a bool"


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
                error=f"raised {exception_text(exc)}",
                traceback=traceback_text(exc),
            )
    problem = _judge(value)
    return CallOutcome(ok=problem is None, seconds=time.perf_counter() - start, error=problem)


class CallSequence:
    """Calls functions in order in one worker thread, stopping at a failure if asked to.

    ``outcomes`` grows, in order, as calls end; it is accurate even when ``run()`` was
    interrupted. ``on_started``/``on_finished`` run in the worker thread (for logging and the
    journal); observers get :data:`RunnerEvent` items in the event loop's thread.

    With a ``timeout``, a call running longer fails ("timed out"), no further call starts, and
    the sequence waits ``grace`` seconds more for the thread to end. A thread can't be killed:
    if it is still running then, it is *abandoned* (``abandoned`` is True), and the caller must
    not touch the tree while this process lives.
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
        timeout: float | None = None,
        grace: float = DEFAULT_GRACE,
        estimates: Sequence[float] = (),
        on_slow: Callable[[Call, float], None] | None = None,
    ) -> None:
        self.calls = tuple(calls)
        self.project_root = project_root
        self.stop_on_failure = stop_on_failure
        self.outcomes: list[CallOutcome] = []
        self.timed_out: int | None = None
        self.abandoned = False
        self.abandoned_index: int | None = None  # the call whose thread was left running
        self._on_started = on_started
        self._on_finished = on_finished
        self._on_output = on_output
        self._timeout = timeout
        self._grace = grace
        self._estimates = tuple(estimates)
        self._on_slow = on_slow
        self._slow_reported: set[int] = set()
        self._stop = threading.Event()
        self._mutex = threading.Lock()
        self._current: tuple[int, float] | None = None
        self._timed_out_at: float | None = None
        self._stopped_at: float | None = None  # when a cancellation asked the sequence to stop
        self._events: collections.deque[RunnerEvent] = collections.deque()
        self._thread_scope: anyio.CancelScope | None = None
        self._error: BaseException | None = None

    def request_stop(self) -> None:
        """Start no further call; the one running, if any, runs to its end."""
        self._stop.set()

    def flush(self, deliver: Callable[[RunnerEvent], None]) -> None:
        """Hand every event queued so far to ``deliver``, in order."""
        while self._events:
            deliver(self._events.popleft())

    def _run_all(self) -> None:
        for index, call in enumerate(self.calls):
            if self._stop.is_set():
                return
            if self._on_started is not None:
                self._on_started(call)
            self._events.append(CallStarted(index))

            def line(stream: str, text: str, index: int = index, call: Call = call) -> None:
                if self._on_output is not None:
                    self._on_output(call, stream, text)
                self._events.append(CallOutput(index, stream, text))

            with self._mutex:
                self._current = (index, time.monotonic())
            outcome = call_function(call.function, self.project_root, line)
            with self._mutex:
                self._current = None
                if self.timed_out == index:
                    outcome = CallOutcome(
                        ok=False,
                        seconds=outcome.seconds,
                        error=f"timed out after {self._timeout:g}s",
                        traceback=outcome.traceback,
                    )
            crash_point("runner.call_returned")
            self.outcomes.append(outcome)
            if self._on_finished is not None:
                self._on_finished(call, outcome)
            self._events.append(CallFinished(index, outcome))
            if not outcome.ok and self.stop_on_failure:
                return

    def _check_clock(self) -> None:
        now = time.monotonic()
        with self._mutex:
            current = self._current
            if current is not None:
                index, started = current
                elapsed = now - started
                estimate = self._estimates[index] if index < len(self._estimates) else 0
                if estimate and elapsed > 3 * estimate and index not in self._slow_reported:
                    self._slow_reported.add(index)
                    if self._on_slow is not None:
                        self._on_slow(self.calls[index], elapsed)
                if self._timeout is not None and elapsed > self._timeout and self.timed_out is None:
                    self.timed_out = index
                    self._timed_out_at = now
                    self._stop.set()
            running_index = current[0] if current is not None else None
            waiting_since = [t for t in (self._timed_out_at, self._stopped_at) if t is not None]
        if (
            running_index is not None
            and waiting_since
            and now - min(waiting_since) > self._grace
            and self._thread_scope is not None
        ):
            self.abandoned = True
            self.abandoned_index = running_index
            self._thread_scope.cancel()

    async def _in_thread(self, done: anyio.Event) -> None:
        try:
            # Shielded: a cancellation from outside never abandons a running migration; only
            # the grace period after a timeout does, by cancelling this scope.
            with anyio.CancelScope(shield=True) as self._thread_scope:
                await anyio.to_thread.run_sync(self._run_all, abandon_on_cancel=True)
        except Exception as exc:  # noqa: BLE001 - re-raised by run(), outside the task group
            self._error = exc
        finally:
            done.set()

    async def _watch(self, done: anyio.Event, deliver: Callable[[RunnerEvent], None]) -> None:
        while not done.is_set():
            with anyio.move_on_after(_POLL_SECONDS):
                await done.wait()
            self.flush(deliver)
            self._check_clock()

    async def run(self, deliver: Callable[[RunnerEvent], None]) -> list[CallOutcome]:
        """Run the calls; deliver events while waiting; return the outcomes.

        Cancelled from outside, it stops before the next call, waits (shielded) for the
        running one, then re-raises. A running call that has not ended ``grace`` seconds after
        the cancellation is abandoned (``abandoned``, ``abandoned_index``), as after a timeout.
        """
        done = anyio.Event()
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._in_thread, done)
            try:
                await self._watch(done, deliver)
            except anyio.get_cancelled_exc_class():
                self.request_stop()
                with self._mutex:
                    self._stopped_at = time.monotonic()
                with anyio.CancelScope(shield=True):
                    await self._watch(done, deliver)
                raise
        self.flush(deliver)
        if self._error is not None:
            raise self._error
        return self.outcomes
