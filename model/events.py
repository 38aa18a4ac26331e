"""Discrete-event kernel of the golden model: virtual cycles, callbacks and coroutine tasks.

Engines schedule callbacks at absolute cycles; the firmware of each node is a
plain ``async def`` coroutine that only awaits the device protocol, so it is
driven here by hand (``coroutine.send``) instead of by asyncio — the same
coroutine later runs as a cocotb task against the RTL.  Ordering is fully
deterministic: callbacks at the same cycle run in the order they were
scheduled.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Coroutine
from typing import Any

_EARLY = 1 << 62  # at_start() callbacks sort before every at() callback of their cycle


class SimulationError(RuntimeError):
    """The simulated system cannot make progress or a firmware task failed."""


class Future:
    """A value that becomes available at some cycle; awaitable from a task."""

    __slots__ = ("_callbacks", "done", "value")

    def __init__(self) -> None:
        self.done = False
        self.value: Any = None
        self._callbacks: list[Callable[[Any], None]] = []

    def resolve(self, value: Any = None) -> None:
        if self.done:
            raise SimulationError("future resolved twice")
        self.done = True
        self.value = value
        callbacks, self._callbacks = self._callbacks, []
        for cb in callbacks:
            cb(value)

    def add_callback(self, cb: Callable[[Any], None]) -> None:
        if self.done:
            cb(self.value)
        else:
            self._callbacks.append(cb)

    def __await__(self):
        value = yield self
        return value


class Task:
    def __init__(self, name: str, coro: Coroutine) -> None:
        self.name = name
        self.coro = coro
        self.done = False
        self.result: Any = None
        self.exception: BaseException | None = None


class Simulator:
    """Event heap in virtual cycles plus cooperative tasks."""

    def __init__(self) -> None:
        self.now = 0
        self._heap: list[tuple[int, int, Callable[[], None]]] = []
        self._seq = 0
        self.tasks: list[Task] = []
        self._failed: list[Task] = []
        self._watch: tuple[int, Callable[[], None]] | None = None
        self._watch_due = 0

    def watch(self, period: int, fn: Callable[[], None]) -> None:
        """Call ``fn`` every ``period`` cycles while events remain (a run's watchdog).

        ``fn`` runs at the start of its cycle, before that cycle's events, and
        only when a later event exists: it never keeps the loop alive nor
        moves the end of a run.  It may raise to stop the run.
        """
        if period < 1:
            raise ValueError(f"watch period must be >= 1 cycle, not {period!r}")
        self._watch = (period, fn)
        self._watch_due = self.now + period

    def at(self, cycle: int, fn: Callable[[], None]) -> None:
        if cycle < self.now:
            raise SimulationError(f"cannot schedule in the past: {cycle} < {self.now}")
        heapq.heappush(self._heap, (cycle, self._seq, fn))
        self._seq += 1

    def after(self, cycles: int, fn: Callable[[], None]) -> None:
        self.at(self.now + cycles, fn)

    def at_start(self, cycle: int, fn: Callable[[], None]) -> None:
        """Run ``fn`` at ``cycle`` before every callback scheduled with :meth:`at`.

        ``fn`` sees the state at the end of ``cycle - 1``: this is how a host
        read samples a register (the RTL's AXI4-Lite read captures the state
        of the cycle before its data reaches the host).
        """
        if cycle <= self.now:
            raise SimulationError(f"cannot schedule at the start of {cycle} in cycle {self.now}")
        heapq.heappush(self._heap, (cycle, self._seq - _EARLY, fn))
        self._seq += 1

    def delay(self, cycles: int, value: Any = None) -> Future:
        fut = Future()
        self.after(cycles, lambda: fut.resolve(value))
        return fut

    def spawn(self, name: str, coro: Coroutine) -> Task:
        task = Task(name, coro)
        self.tasks.append(task)
        self.after(0, lambda: self._step(task, None))
        return task

    def _step(self, task: Task, value: Any) -> None:
        try:
            fut = task.coro.send(value)
        except StopIteration as stop:
            task.done = True
            task.result = stop.value
            return
        except BaseException as exc:  # surfaced by run()
            task.done = True
            task.exception = exc
            self._failed.append(task)
            return
        if not isinstance(fut, Future):
            task.done = True
            task.exception = SimulationError(
                f"task {task.name} awaited {fut!r}; firmware may only await the device protocol"
            )
            self._failed.append(task)
            return
        fut.add_callback(lambda v: self.after(0, lambda: self._step(task, v)))

    def run(self, max_cycles: int | None = None, stop_when_done: bool = False) -> None:
        """Run until every task finished (or raise if one failed or all are stuck).

        ``stop_when_done``: return as soon as every task has finished and the current
        cycle's events have run, leaving later events (a link layer's ticks) unrun: what
        the state is in the cycle the last task ended, as the RTL backend reads it then.
        """
        while self._heap:
            if stop_when_done and self._heap[0][0] > self.now and all(t.done for t in self.tasks):
                return
            cycle, _, fn = heapq.heappop(self._heap)
            if max_cycles is not None and cycle > max_cycles:
                raise SimulationError(f"cycle budget of {max_cycles} exhausted")
            while self._watch is not None and cycle >= self._watch_due:
                self.now = self._watch_due
                self._watch_due += self._watch[0]
                self._watch[1]()
            self.now = cycle
            fn()
            if self._failed:
                task = self._failed.pop(0)
                exc, task.exception = task.exception, None
                raise exc
        stuck = [t.name for t in self.tasks if not t.done]
        if stuck:
            raise SimulationError(
                f"deadlock at cycle {self.now}: tasks {stuck} wait for events that never come"
            )
