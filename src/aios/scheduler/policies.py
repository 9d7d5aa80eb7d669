"""The built-in scheduling policies, registered as plugins in ``aios.schedulers``.

* ``fifo``: arrival order, ignoring priority. The baseline every engine already has.
* ``priority``: static priority classes, lower value first (like ``nice`` and vLLM),
  arrival order within a class.
* ``rr``: round robin within a priority class: a generation that used up its time slice
  while others wait is preempted and goes to the back of its class.
* ``las``: program-level least attained service (the Autellix idea): within a class, the
  agent that has received the least LLM service so far goes first. Aging keeps it from
  starving long programs: a waiting syscall's attained service is forgiven at
  ``aging_tokens_per_s``, so the static key ``attained + rate * t_enqueued`` orders the
  heap (``attained - rate * (now - t_enqueued)`` differs from it by a term common to
  every entry). A syscall that waited ``A / rate`` seconds beats any newcomer.
* ``fair``: virtual token counters (VTC) per group (or per agent): the waiting client
  with the smallest counter goes first; a client that becomes active again is lifted to
  the smallest active counter, so idling banks no credit.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from aios.config import SchedulerConfig
from aios.scheduler.policy import Entry, HeapPolicy, SchedulingPolicy

__all__ = ["FairPolicy", "FifoPolicy", "LASPolicy", "PriorityPolicy", "RoundRobinPolicy"]


class FifoPolicy(HeapPolicy):
    """Arrival order. A preempted syscall keeps its place (its first arrival)."""

    priority_classes = False

    def key(self, entry: Entry, now: float) -> Any:
        return entry.seq


class PriorityPolicy(HeapPolicy):
    """Lower priority value first; arrival order within a class."""

    def key(self, entry: Entry, now: float) -> Any:
        return (entry.priority, entry.seq)


class RoundRobinPolicy(HeapPolicy):
    """Time-sliced round robin within priority classes."""

    def __init__(self, config: SchedulerConfig) -> None:
        super().__init__(config)
        self.time_slice_s = config.time_slice_ms / 1000.0

    def key(self, entry: Entry, now: float) -> Any:
        # push_seq is renewed on every push: a preempted generation joins the back.
        return (entry.priority, entry.push_seq)


class LASPolicy(HeapPolicy):
    """Least attained service first, with linear aging (see the module docstring).

    Preemptive like Autellix's program-level LAS: a generation that has run a quantum
    (``time_slice_ms``) yields when a waiting syscall's program has attained less
    service than its own has by now (its attained service grows with every token).
    """

    def __init__(self, config: SchedulerConfig) -> None:
        super().__init__(config)
        self.rate = config.aging_tokens_per_s
        self.time_slice_s = config.time_slice_ms / 1000.0

    def key(self, entry: Entry, now: float) -> Any:
        return (entry.priority, entry.proc.attained + self.rate * now, entry.seq)

    def yield_to_waiting(self, entry: Entry, now: float) -> bool:
        head = self.peek()
        return head is not None and head[0] < self.key(entry, now)


class FairPolicy(SchedulingPolicy):
    """Virtual token counters per client (group or agent), FIFO within a client."""

    def __init__(self, config: SchedulerConfig) -> None:
        super().__init__(config)
        self.by_agent = config.fair_by == "agent"
        self.counters: dict[str, float] = {}
        self._waiting: dict[str, deque[Entry]] = {}
        self._running: dict[str, int] = {}
        self._live = 0
        self._popped: Entry | None = None

    def _client(self, entry: Entry) -> str:
        return f"pid:{entry.proc.pid}" if self.by_agent else entry.proc.group

    def _active(self, client: str) -> bool:
        return bool(self._waiting.get(client)) or self._running.get(client, 0) > 0

    def _activate(self, client: str) -> None:
        # VTC's lift: a client that was idle starts at the smallest active counter.
        if not self._active(client):
            floor = min((v for c, v in self.counters.items() if self._active(c)), default=0.0)
            self.counters[client] = max(self.counters.get(client, 0.0), floor)

    def push(self, entry: Entry, now: float) -> None:
        client = self._client(entry)
        self._activate(client)
        self._waiting.setdefault(client, deque()).append(entry)
        self._live += 1

    def pop(self) -> Entry | None:
        best: tuple[int, float, int] | None = None
        best_client = ""
        for client, q in self._waiting.items():
            if not q:
                continue
            head = q[0]
            k = (head.priority, self.counters.get(client, 0.0), head.seq)
            if best is None or k < best:
                best, best_client = k, client
        if best is None:
            return None
        self._live -= 1
        entry = self._waiting[best_client].popleft()
        if not self._waiting[best_client]:
            del self._waiting[best_client]
        # Count it as running before it leaves the waiting set, so the client never
        # looks idle in between and is not lifted (it keeps its deficit).
        self._running[best_client] = self._running.get(best_client, 0) + 1
        self._popped = entry
        return entry

    def remove(self, entry: Entry) -> None:
        q = self._waiting.get(self._client(entry))
        if q is not None and entry in q:
            q.remove(entry)
            self._live -= 1

    def __len__(self) -> int:
        return self._live

    def on_admit(self, entry: Entry, now: float) -> None:
        if entry is self._popped:
            self._popped = None
            return
        client = self._client(entry)  # admitted without waiting (the queue's fast path)
        self._activate(client)
        self._running[client] = self._running.get(client, 0) + 1

    def unpop(self, entry: Entry) -> None:
        self._popped = None
        client = self._client(entry)
        self._running[client] -= 1
        if not self._running[client]:
            del self._running[client]

    def on_release(self, entry: Entry, service: float) -> None:
        client = self._client(entry)
        self._running[client] -= 1
        if not self._running[client]:
            del self._running[client]
        self.counters[client] = self.counters.get(client, 0.0) + service

    def snapshot(self) -> dict[str, Any]:
        return {"counters": dict(self.counters)}
