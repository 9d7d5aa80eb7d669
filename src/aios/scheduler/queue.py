"""ResourceQueue: one resource's waiting syscalls, admission window and preemption.

The queue is a gate, not a worker: a syscall's own task waits here for admission, then
runs the resource call itself and releases its slot when done. No task, thread or timer
exists per syscall, and dispatch happens synchronously at the moment a slot frees.

It must never await while holding its state inconsistent: every method here is
synchronous except :meth:`acquire`, whose only await is the wake-up.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager

import anyio

from aios.scheduler.policy import Entry, EntryState, Schedulable, SchedulingPolicy

__all__ = ["ResourceQueue", "Slot"]


class Slot:
    """A held place in a window (see :meth:`ResourceQueue.admitted`).

    Set ``service`` (the policy's unit: tokens for an LLM, seconds for a tool) before the
    ``async with`` ends; ``rejected`` says the resource refused the work for lack of
    capacity, which narrows the window (AIMD)."""

    __slots__ = ("entry", "rejected", "service")

    def __init__(self, entry: Entry) -> None:
        self.entry = entry
        self.service = 0.0
        self.rejected = False


class ResourceQueue:
    """Priority queue + admission window for one resource (e.g. ``llm:default``)."""

    def __init__(
        self,
        name: str,
        window: int,
        policy: SchedulingPolicy,
        *,
        preempt: bool = True,
        slots: int | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window < 1:
            raise ValueError(f"admission window of {name} must be >= 1, got {window}")
        self.name = name
        self.window = window
        self.slots = slots or window
        """How many generations the engine runs at once; the window may exceed it (the
        engine then queues the rest), and an urgent syscall admitted beyond the slots
        preempts a less urgent one just as one waiting at a full window does."""
        self.limit = float(window)
        """The window in force: lowered when the backend rejects work (429), raised again
        by one slot per window's worth of completions, never above ``window`` (AIMD)."""
        self.policy = policy
        self.preempt_enabled = preempt
        self.clock = clock
        self.running: set[Entry] = set()
        self.finishing: set[Entry] = set()
        """Running entries with at most one token left: their successors may be admitted
        already, so that they are queued in the engine when the slot frees (no idle
        slot during the hand-over). They do not count against the window."""
        self._parked: dict[int, list[Entry]] = {}
        self._seq = 0
        # counters
        self.admissions = 0
        self.rejections = 0
        self.max_running = 0
        self.max_occupied = 0

    # -- the agent side ---------------------------------------------------------------

    def new_entry(self, proc: Schedulable, syscall_id: str, priority: int,
                  *, preemptible: bool = False) -> Entry:
        entry = Entry(proc, syscall_id, priority, preemptible=preemptible)
        self._seq += 1
        entry.seq = self._seq
        return entry

    @asynccontextmanager
    async def admitted(self, entry: Entry) -> AsyncIterator[Slot]:
        """``async with queue.admitted(entry) as slot:`` holds a slot for the block.

        Waits for admission under the policy (cancellation-safe); the slot is given back
        when the block exits on every path, with ``slot.service`` charged to the policy
        (anyio's ``CapacityLimiter`` used as ``async with``)."""
        await self.acquire(entry)
        slot = Slot(entry)
        try:
            yield slot
        finally:
            self.release(entry, slot.service, rejected=slot.rejected)

    async def acquire(self, entry: Entry) -> None:
        """Wait until ``entry`` is admitted (a slot is its own). Cancellation-safe."""
        entry.preempt = False
        entry.enqueued_at = now = self.clock()
        if not len(self.policy) and self._occupied() < int(self.limit) and not entry.proc.suspended:
            self._admit(entry, now)  # fast path: nobody waits, a slot is free
            return
        entry.state = EntryState.WAITING
        self._seq += 1
        entry.push_seq = self._seq
        entry.event = event = anyio.Event()
        if entry.proc.suspended:
            self._parked.setdefault(entry.proc.pid, []).append(entry)
        else:
            self.policy.push(entry, now)
            self._preempt_for(entry)
            self._dispatch()
        try:
            await event.wait()
        except BaseException:
            # Cancelled while waiting, or right after being admitted: give back
            # whatever we hold so that no slot and no heap entry leaks.
            if entry.state is EntryState.RUNNING:
                self.release(entry, 0.0)
            elif entry.state is EntryState.WAITING:
                self._forget(entry)
            raise

    def release(self, entry: Entry, service: float, *, rejected: bool = False) -> None:
        """``entry`` stopped running (done, failed or preempted) after ``service`` tokens.

        ``rejected``: the backend refused it for lack of capacity (rate limited): the
        window in force drops below what was in flight, so the kernel, not the engine,
        holds the excess; each later release raises it again by ``1/limit``.
        """
        if entry.state is not EntryState.RUNNING:
            return
        self.running.discard(entry)
        self.finishing.discard(entry)
        if rejected:
            self.limit = max(1.0, min(self.limit, len(self.running) + 1.0) - 1.0)
            self.rejections += 1
        elif self.limit < self.window:
            self.limit = min(float(self.window), self.limit + 1.0 / self.limit)
        entry.state = EntryState.DONE
        self.policy.on_release(entry, service)
        self._dispatch()

    def should_yield(self, entry: Entry, now: float) -> bool:
        """Checked by the running syscall at each token boundary."""
        if entry.preempt:
            return True
        ts = self.policy.time_slice_s
        return (self.preempt_enabled and ts is not None and now - entry.run_started >= ts
                and len(self.policy) > 0 and self.policy.yield_to_waiting(entry, now))

    # -- the dispatch loop ------------------------------------------------------------

    def _dispatch(self) -> None:
        """Admit waiting entries while the window has room.

        Invariant on return: ``len(running) - len(finishing) <= window``, and either the
        window is full or
        no dispatchable entry waits. Each turn takes the policy's best entry (ties broken
        by the policy with sequence numbers, so the same inputs give the same order);
        an entry of a suspended process is parked, neither run nor lost, until resume.
        It never blocks: it is called synchronously whenever a slot frees or work arrives.
        """
        while self._occupied() < int(self.limit):
            entry = self.policy.pop()
            if entry is None:
                return
            if entry.proc.suspended:
                self.policy.unpop(entry)
                self._parked.setdefault(entry.proc.pid, []).append(entry)
                continue
            self._admit(entry, self.clock())
            assert entry.event is not None
            entry.event.set()

    def _admit(self, entry: Entry, now: float) -> None:
        entry.state = EntryState.RUNNING
        entry.run_started = now
        self.running.add(entry)
        self.admissions += 1
        if len(self.running) > self.max_running:
            self.max_running = len(self.running)
        if self._occupied() > self.max_occupied:
            self.max_occupied = self._occupied()
        self.policy.on_admit(entry, now)
        entry.started = False
        if len(self.running) > self.slots:
            self._bump_queued(entry)
            self._preempt_for(entry)
        entry.waited += now - entry.enqueued_at

    def _forget(self, entry: Entry) -> None:
        parked = self._parked.get(entry.proc.pid)
        if parked and entry in parked:
            parked.remove(entry)
        else:
            self.policy.remove(entry)
        entry.state = EntryState.DONE

    def _preempt_for(self, urgent: Entry) -> None:
        """If ``urgent`` waits at a full window, or was admitted beyond the engine's slots,
        ask one running generation less urgent than it to yield.

        Victims, in order: the least urgent class; within it, one that has not started
        (still queued inside the engine: stopping it costs nothing and needs no resume
        support); then the cheapest to resume (``cost``: tokens to prefill again); of
        equals, the one running longest. A generation about to finish is never chosen.
        """
        if (not self.preempt_enabled or not self.policy.priority_classes
                or (self._occupied() < int(self.limit) and len(self.running) <= self.slots)):
            return
        victim: Entry | None = None
        best: tuple[int, bool, float, float] | None = None
        for r in self.running:
            if (r.preempt or r.priority <= urgent.priority or r in self.finishing
                    or not (r.preemptible or (not r.started and r.interrupt is not None))):
                continue
            key = (r.priority, not r.started, -r.cost, -r.run_started)
            if best is None or key > best:
                victim, best = r, key
        if victim is not None:
            victim.preempt = True
            if not victim.started and victim.interrupt is not None:
                victim.interrupt()

    def _bump_queued(self, urgent: Entry) -> None:
        """``urgent`` was admitted while the engine queues (more running than slots): the
        less urgent requests still waiting there for their first token would be served
        first by the engine's FIFO. Stop them (zero cost) and queue them again here."""
        queued = len(self.running) - self.slots
        if not self.preempt_enabled or not self.policy.priority_classes or queued <= 0:
            return
        # The engine's queue holds about the last `queued` admitted: newest first.
        behind = sorted((r for r in self.running
                         if r is not urgent and not r.started and not r.preempt
                         and r.interrupt is not None and r.priority > urgent.priority),
                        key=lambda r: -r.run_started)
        for r in behind[:queued]:
            r.preempt = True
            assert r.interrupt is not None
            r.interrupt()

    @property
    def can_bump(self) -> bool:
        """Whether an admitted request may be stopped before its first token (bumped) for
        a more urgent one: only with priority classes, preemption on, and room for the
        engine to queue requests (a window wider than its slots)."""
        return (self.preempt_enabled and self.policy.priority_classes
                and self.window > self.slots)

    def _occupied(self) -> int:
        # Early hand-over only while the backend takes everything it is given.
        if self.limit >= self.window:
            return len(self.running) - len(self.finishing)
        return len(self.running)

    def finishing_soon(self, entry: Entry) -> None:
        """``entry`` has at most one token left: admit its successor now (hand-over)."""
        if entry.state is EntryState.RUNNING and entry not in self.finishing:
            self.finishing.add(entry)
            self._dispatch()

    # -- process control --------------------------------------------------------------

    def suspend(self, proc: Schedulable) -> None:
        """Stop dispatching ``proc``'s syscalls; running preemptible ones yield."""
        for r in self.running:
            if r.proc is proc and r.preemptible:
                r.preempt = True

    def resume(self, proc: Schedulable) -> None:
        now = self.clock()
        for entry in self._parked.pop(proc.pid, []):
            self.policy.push(entry, now)
        self._dispatch()

    def reprioritize(self, entries: Iterable[Entry], priority: int) -> None:
        """New priority for ``entries``: a waiting one is re-queued (and may preempt); a
        running one made less urgent is re-evaluated against those waiting, as an
        arriving syscall would be."""
        now = self.clock()
        demoted = False
        for entry in entries:
            demoted = demoted or (entry.state is EntryState.RUNNING
                                  and priority > entry.priority)
            entry.priority = priority
            parked = self._parked.get(entry.proc.pid, ())
            if entry.state is EntryState.WAITING and entry not in parked:
                self.policy.remove(entry)
                self.policy.push(entry, now)
                self._preempt_for(entry)
        if demoted:
            self._preempt_for_waiting()
        self._dispatch()

    def _preempt_for_waiting(self) -> None:
        """Let the most urgent waiting entry preempt as if it had just arrived."""
        peek = getattr(self.policy, "peek", None)
        top = peek() if peek is not None else None
        if top is not None:
            self._preempt_for(top[1])

    @property
    def waiting(self) -> int:
        return len(self.policy) + sum(len(v) for v in self._parked.values())
