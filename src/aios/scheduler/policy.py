"""The scheduling-policy interface (entry-point group ``aios.schedulers``).

A policy orders the syscalls waiting for one resource. It only orders: the
:class:`~aios.scheduler.queue.ResourceQueue` owns the admission window, suspension,
preemption and wake-ups, and calls the policy synchronously (policies must never await
or do I/O: they run inside the dispatch loop).
"""

from __future__ import annotations

import heapq
from abc import ABC, abstractmethod
from collections.abc import Callable
from enum import Enum
from typing import TYPE_CHECKING, Any, Protocol

import anyio

from aios.config import SchedulerConfig

if TYPE_CHECKING:
    pass

__all__ = ["Entry", "EntryState", "HeapPolicy", "SchedulingPolicy", "Schedulable"]


class Schedulable(Protocol):
    """What the scheduler needs of a process."""

    pid: int
    group: str
    suspended: bool
    attained: float
    """Service received so far (tokens), across all of its syscalls: program-level."""


class EntryState(Enum):
    NEW = "new"
    WAITING = "waiting"
    RUNNING = "running"
    DONE = "done"


class Entry:
    """One syscall's place in a resource queue, for its whole life (across preemptions).

    ``seq`` is fixed at creation (arrival order); ``push_seq`` is renewed at every push,
    so a policy can send a preempted syscall to the back (rr) or keep its place (others).
    """

    __slots__ = (
        "cost",
        "enqueued_at",
        "event",
        "interrupt",
        "preempt",
        "preemptible",
        "priority",
        "proc",
        "push_seq",
        "run_started",
        "seq",
        "started",
        "state",
        "syscall_id",
        "token",
        "waited",
    )

    def __init__(
        self, proc: Schedulable, syscall_id: str, priority: int, *, preemptible: bool = False
    ) -> None:
        self.proc = proc
        self.syscall_id = syscall_id
        self.priority = priority
        self.preemptible = preemptible
        self.seq = 0
        self.push_seq = 0
        self.token = 0
        self.state = EntryState.NEW
        self.enqueued_at = 0.0
        self.run_started = 0.0
        self.waited = 0.0
        """Seconds spent waiting for admission so far (all admissions)."""
        self.preempt = False
        self.event: anyio.Event | None = None
        self.started = False
        """It has produced output in this admission (a first token). Admitted and not
        started, it is most likely still queued inside the engine: stopping it costs
        nothing, whatever the backend can resume."""
        self.cost = 0.0
        """What preempting it now would cost (tokens to prefill again on resume), kept up
        to date by the syscall's handler; victims are chosen cheapest first."""
        self.interrupt: Callable[[], None] | None = None
        """Set by the handler while it waits for a first token: stops that wait at once
        (a zero-cost preemption of a request queued in the engine)."""

    def __repr__(self) -> str:
        return (
            f"Entry(pid={self.proc.pid}, syscall={self.syscall_id}, prio={self.priority}, "
            f"seq={self.seq}, state={self.state.value})"
        )


class SchedulingPolicy(ABC):
    """Orders waiting entries. Constructed as ``cls(config: SchedulerConfig)``.

    ``time_slice_s`` set (not None) makes the queue preempt a running generation after
    that much time whenever others wait (round robin).
    """

    time_slice_s: float | None = None
    priority_classes: bool = True
    """Whether priority classes matter: a more urgent waiting syscall may preempt a less
    urgent running one. False for a policy that ignores priority (``fifo``)."""

    def __init__(self, config: SchedulerConfig) -> None:
        self.config = config

    @abstractmethod
    def push(self, entry: Entry, now: float) -> None:
        """Add a waiting entry."""

    @abstractmethod
    def pop(self) -> Entry | None:
        """Remove and return the entry to dispatch next, or None if none waits."""

    @abstractmethod
    def remove(self, entry: Entry) -> None:
        """Forget a waiting entry (cancelled, or re-prioritized)."""

    @abstractmethod
    def __len__(self) -> int:
        """How many entries wait."""

    def yield_to_waiting(self, entry: Entry, now: float) -> bool:
        """A running entry has used its time slice while others wait: should it yield?
        Default: yes (round robin). Called only when ``time_slice_s`` is set."""
        return True

    def on_admit(self, entry: Entry, now: float) -> None:  # noqa: B027 - optional hook
        """An entry starts running."""

    def unpop(self, entry: Entry) -> None:  # noqa: B027 - optional hook
        """An entry returned by :meth:`pop` was not admitted (its process is suspended;
        the queue parks it and pushes it again on resume)."""

    def on_release(self, entry: Entry, service: float) -> None:  # noqa: B027
        """An entry stopped running (done or preempted) after receiving ``service`` tokens."""

    def snapshot(self) -> dict[str, Any]:
        """Policy state for inspection (``aios ps``). Default: nothing."""
        return {}


class HeapPolicy(SchedulingPolicy):
    """A policy defined by a static sort key, on a binary heap.

    Entries are ``(key, push_seq, token, entry)``: ``push_seq`` breaks ties
    deterministically; removal marks the entry's token stale and the heap drops it lazily
    on pop, rebuilding when stale entries dominate (as mature event loops do).
    """

    def __init__(self, config: SchedulerConfig) -> None:
        super().__init__(config)
        self._heap: list[tuple[Any, int, int, Entry]] = []
        self._live = 0
        self._next_token = 0

    @abstractmethod
    def key(self, entry: Entry, now: float) -> Any:
        """The sort key of an entry pushed at ``now``: lower runs first."""

    def push(self, entry: Entry, now: float) -> None:
        self._next_token += 1
        entry.token = self._next_token
        heapq.heappush(self._heap, (self.key(entry, now), entry.push_seq, entry.token, entry))
        self._live += 1

    def peek(self) -> tuple[Any, Entry] | None:
        """The key and entry that :meth:`pop` would return, without removing it."""
        heap = self._heap
        while heap:
            key, _, token, entry = heap[0]
            if entry.token == token and entry.state is EntryState.WAITING:
                return key, entry
            heapq.heappop(heap)
        return None

    def pop(self) -> Entry | None:
        heap = self._heap
        while heap:
            _, _, token, entry = heapq.heappop(heap)
            if entry.token == token and entry.state is EntryState.WAITING:
                entry.token = 0
                self._live -= 1
                return entry
        return None

    def remove(self, entry: Entry) -> None:
        if entry.token:
            entry.token = 0
            self._live -= 1
            if len(self._heap) > 64 and self._live < len(self._heap) // 2:
                self._heap = [item for item in self._heap if item[3].token == item[2]]
                heapq.heapify(self._heap)

    def __len__(self) -> int:
        return self._live
