"""Scheduler properties: the window holds, policies order as documented, aging bounds waits."""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import anyio
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from aios.config import SchedulerConfig
from aios.scheduler.policies import (
    FairPolicy,
    FifoPolicy,
    LASPolicy,
    PriorityPolicy,
    RoundRobinPolicy,
)
from aios.scheduler.policy import Entry, EntryState
from aios.scheduler.queue import ResourceQueue


@dataclass(eq=False)
class FakeProc:
    pid: int
    group: str = "g"
    suspended: bool = False
    attained: float = 0.0


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def make_queue(policy: str, window: int, clock: FakeClock | None = None,
               **cfg: object) -> ResourceQueue:
    classes = {"fifo": FifoPolicy, "priority": PriorityPolicy, "las": LASPolicy,
               "fair": FairPolicy, "rr": RoundRobinPolicy}
    config = SchedulerConfig(policy=policy, **cfg)  # type: ignore[arg-type]
    return ResourceQueue("llm:test", window, classes[policy](config),
                         clock=clock or FakeClock())


async def admit_order(queue: ResourceQueue, entries: list[Entry], holders: int) -> list[Entry]:
    """Fill the window with ``holders``, queue ``entries``, then free one slot at a time."""
    order: list[Entry] = []
    hold = [queue.new_entry(FakeProc(10_000 + i), f"h{i}", 0) for i in range(holders)]
    for h in hold:
        await queue.acquire(h)
    assert len(queue.running) == holders == queue.window

    async def waiter(e: Entry) -> None:
        await queue.acquire(e)
        order.append(e)
        assert len(queue.running) <= queue.window

    async with anyio.create_task_group() as tg:
        for e in entries:
            tg.start_soon(waiter, e)
        await anyio.wait_all_tasks_blocked()
        assert queue.waiting == len(entries)
        for h in hold:
            queue.release(h, 0.0)
        while len(order) < len(entries):
            await anyio.wait_all_tasks_blocked()
            assert len(queue.running) <= queue.window
            running = [e for e in queue.running if e in entries]
            queue.release(running[0], 0.0)
        await anyio.wait_all_tasks_blocked()
    return order


@settings(max_examples=40, deadline=None)
@given(prios=st.lists(st.integers(-3, 3), min_size=1, max_size=30),
       window=st.integers(1, 4))
async def test_priority_is_strict_and_window_holds(prios: list[int], window: int) -> None:
    q = make_queue("priority", window)
    entries = [q.new_entry(FakeProc(i), f"s{i}", p) for i, p in enumerate(prios)]
    order = await admit_order(q, entries, window)
    assert [e.priority for e in order] == sorted(prios)
    # within a class, arrival order
    for a, b in itertools.pairwise(order):
        if a.priority == b.priority:
            assert a.seq < b.seq
    assert q.max_running <= window


@settings(max_examples=25, deadline=None)
@given(prios=st.lists(st.integers(-3, 3), min_size=1, max_size=20))
async def test_fifo_ignores_priority(prios: list[int]) -> None:
    q = make_queue("fifo", 1)
    entries = [q.new_entry(FakeProc(i), f"s{i}", p) for i, p in enumerate(prios)]
    order = await admit_order(q, entries, 1)
    assert order == entries


@settings(max_examples=40, deadline=None)
@given(attained=st.lists(st.integers(0, 10_000), min_size=1, max_size=25))
async def test_las_serves_least_attained_first(attained: list[int]) -> None:
    q = make_queue("las", 1, aging_tokens_per_s=0.0)
    entries = [q.new_entry(FakeProc(i, attained=a), f"s{i}", 0) for i, a in enumerate(attained)]
    order = await admit_order(q, entries, 1)
    assert [e.proc.attained for e in order] == sorted(attained)


@settings(max_examples=40, deadline=None)
@given(attained=st.integers(1, 50_000), rate=st.floats(1.0, 1000.0),
       waited=st.floats(0.0, 500.0))
async def test_las_aging_bounds_the_wait(attained: int, rate: float, waited: float) -> None:
    """An old syscall with attained A beats a fresh one exactly when it waited > A/rate."""
    clock = FakeClock()
    q = make_queue("las", 1, clock, aging_tokens_per_s=rate)
    old = q.new_entry(FakeProc(1, attained=attained), "old", 0)
    new = q.new_entry(FakeProc(2, attained=0.0), "new", 0)
    hold = q.new_entry(FakeProc(3), "hold", 0)
    await q.acquire(hold)
    order: list[str] = []

    async def waiter(e: Entry) -> None:
        await q.acquire(e)
        order.append(e.syscall_id)

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter, old)
        await anyio.wait_all_tasks_blocked()
        clock.t += waited
        tg.start_soon(waiter, new)
        await anyio.wait_all_tasks_blocked()
        q.release(hold, 0)
        await anyio.wait_all_tasks_blocked()
        q.release(q.running.copy().pop(), 0)
    expect_old_first = waited * rate > attained
    if abs(waited * rate - attained) > 1e-6 * max(1.0, attained):
        assert (order[0] == "old") == expect_old_first


async def test_fair_serves_the_group_with_fewest_tokens() -> None:
    q = make_queue("fair", 1)
    heavy = FakeProc(1, group="heavy")
    light = FakeProc(2, group="light")
    # heavy has already received service
    e0 = q.new_entry(heavy, "warm", 0)
    await q.acquire(e0)
    q.release(e0, 500.0)
    entries = [q.new_entry(heavy, f"h{i}", 0) for i in range(3)] + [
        q.new_entry(light, f"l{i}", 0) for i in range(3)
    ]
    order = await admit_order(q, entries, 1)
    # light has 0 tokens < 500 and each release here adds 0: all light ones go first
    assert [e.proc.group for e in order[:3]] == ["light"] * 3


async def test_fair_lifts_a_returning_client_to_the_active_minimum() -> None:
    pol = FairPolicy(SchedulerConfig(policy="fair"))
    q = ResourceQueue("llm:t", 1, pol, clock=FakeClock())
    a, b = FakeProc(1, group="a"), FakeProc(2, group="b")
    ea = q.new_entry(a, "a0", 0)
    await q.acquire(ea)          # a is active (running)
    q.release(ea, 1000.0)
    ea2 = q.new_entry(a, "a1", 0)
    await q.acquire(ea2)         # a active again, counter 1000
    eb = q.new_entry(b, "b0", 0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(q.acquire, eb)  # b returns from idle: lifted to a's counter
        await anyio.wait_all_tasks_blocked()
        assert pol.counters["b"] == pytest.approx(1000.0)
        q.release(ea2, 0.0)
    q.release(eb, 0.0)


async def test_cancelled_waiter_leaves_nothing_behind() -> None:
    q = make_queue("priority", 1)
    hold = q.new_entry(FakeProc(1), "hold", 0)
    await q.acquire(hold)
    e = q.new_entry(FakeProc(2), "w", 0)
    with anyio.move_on_after(0.01):
        await q.acquire(e)
    assert e.state is EntryState.DONE
    assert q.waiting == 0
    q.release(hold, 0)
    assert not q.running


async def test_suspended_entries_are_parked_not_lost() -> None:
    q = make_queue("priority", 1)
    hold = q.new_entry(FakeProc(1), "hold", 0)
    await q.acquire(hold)
    p = FakeProc(2)
    e = q.new_entry(p, "w", 0)
    admitted = anyio.Event()

    async def waiter() -> None:
        await q.acquire(e)
        admitted.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(waiter)
        await anyio.wait_all_tasks_blocked()
        p.suspended = True
        q.suspend(p)
        q.release(hold, 0)
        await anyio.wait_all_tasks_blocked()
        assert not admitted.is_set() and not q.running and q.waiting == 1
        p.suspended = False
        q.resume(p)
        await admitted.wait()
    q.release(e, 0)


async def test_urgent_arrival_marks_least_urgent_preemptible_runner() -> None:
    q = make_queue("priority", 2)
    r1 = q.new_entry(FakeProc(1), "r1", 5, preemptible=True)
    r2 = q.new_entry(FakeProc(2), "r2", 3, preemptible=True)
    await q.acquire(r1)
    await q.acquire(r2)
    urgent = q.new_entry(FakeProc(3), "u", 0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(q.acquire, urgent)
        await anyio.wait_all_tasks_blocked()
        assert r1.preempt and not r2.preempt
        assert q.should_yield(r1, q.clock())
        q.release(r1, 0)
    assert urgent in q.running
    q.release(urgent, 0)
    q.release(r2, 0)


async def test_round_robin_slice_expires_only_when_others_wait() -> None:
    clock = FakeClock()
    q = make_queue("rr", 1, clock, time_slice_ms=100)
    r = q.new_entry(FakeProc(1), "r", 0, preemptible=True)
    await q.acquire(r)
    clock.t += 1.0
    assert not q.should_yield(r, clock())  # nobody waits: keep going
    w = q.new_entry(FakeProc(2), "w", 0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(q.acquire, w)
        await anyio.wait_all_tasks_blocked()
        assert q.should_yield(r, clock())
        q.release(r, 0)
    q.release(w, 0)


def test_window_below_one_is_rejected() -> None:
    with pytest.raises(ValueError, match="window"):
        make_queue("fifo", 0)


async def test_a_generation_about_to_end_hands_its_slot_over_early() -> None:
    q = make_queue("fifo", 1)
    a = q.new_entry(FakeProc(1), "a", 0)
    await q.acquire(a)
    b = q.new_entry(FakeProc(2), "b", 0)
    c = q.new_entry(FakeProc(3), "c", 0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(q.acquire, b)
        tg.start_soon(q.acquire, c)
        await anyio.wait_all_tasks_blocked()
        assert q.running == {a}
        q.finishing_soon(a)   # one token left: b may queue in the engine now
        await anyio.wait_all_tasks_blocked()
        assert q.running == {a, b}
        assert q.max_occupied == 1  # the window still holds for everything else
        q.release(a, 0)
        await anyio.wait_all_tasks_blocked()
        assert q.running == {b}      # c waits: a's early hand-over was b's
        q.release(b, 0)
    q.release(c, 0)


async def test_urgent_admitted_beyond_the_engine_slots_preempts() -> None:
    """The window has headroom over the engine's slots: an urgent syscall admitted into
    that headroom would queue inside the engine, so a less urgent generation yields."""
    q = ResourceQueue("llm:t", 3, PriorityPolicy(SchedulerConfig(policy="priority")),
                      slots=2, clock=FakeClock())
    old = q.new_entry(FakeProc(1), "old", 5, preemptible=True)
    new = q.new_entry(FakeProc(2), "new", 5, preemptible=True)
    await q.acquire(old)
    q.clock.t += 1  # type: ignore[attr-defined]
    await q.acquire(new)
    assert not old.preempt and not new.preempt  # within the slots: nobody yields
    urgent = q.new_entry(FakeProc(3), "urgent", 0)
    await q.acquire(urgent)                   # window has room: admitted at once...
    assert old.preempt                        # ...and the longest-running less urgent yields
    assert not new.preempt
    for e in (old, new, urgent):
        q.release(e, 0)


# -- issue 10/15: victims by cost, zero-cost preemption of requests queued in the engine,
#    and re-prioritising a running syscall ----------------------------------------------


def _prio_queue(window: int, slots: int) -> ResourceQueue:
    return ResourceQueue("llm:test", window, PriorityPolicy(SchedulerConfig(policy="priority")),
                         slots=slots, clock=FakeClock())


async def test_a_queued_request_not_yet_started_is_bumped_at_zero_cost() -> None:
    q = _prio_queue(window=3, slots=2)
    running = [q.new_entry(FakeProc(i), f"r{i}", 5) for i in range(3)]
    interrupted: list[str] = []
    for e in running:
        await q.acquire(e)
        e.interrupt = (lambda s=e.syscall_id: interrupted.append(s))
    running[0].started = running[1].started = True  # r2 is queued in the engine
    urgent = q.new_entry(FakeProc(9), "u", 0)
    q.release(running[0], 1.0)  # a slot frees: urgent is admitted beyond the slots
    await q.acquire(urgent)
    assert interrupted == ["r2"] and running[2].preempt
    assert not running[1].preempt  # the started one keeps running: no resume needed


async def test_victims_are_chosen_cheapest_to_resume_first() -> None:
    q = _prio_queue(window=2, slots=2)
    a, b = (q.new_entry(FakeProc(i), n, 5, preemptible=True) for i, n in enumerate("ab"))
    for e in (a, b):
        await q.acquire(e)
        e.started = True
    a.cost, b.cost = 900.0, 40.0
    urgent = q.new_entry(FakeProc(9), "u", 0)
    async with anyio.create_task_group() as tg:
        tg.start_soon(q.acquire, urgent)
        await anyio.lowlevel.checkpoint()
        assert b.preempt and not a.preempt
        q.release(b, 1.0)
    assert urgent.state is EntryState.RUNNING


async def test_lowering_a_running_syscalls_priority_lets_a_waiting_one_preempt() -> None:
    q = _prio_queue(window=1, slots=1)
    a = q.new_entry(FakeProc(1), "a", 1, preemptible=True)
    await q.acquire(a)
    a.started = True
    w = q.new_entry(FakeProc(2), "w", 3)
    async with anyio.create_task_group() as tg:
        tg.start_soon(q.acquire, w)
        await anyio.lowlevel.checkpoint()
        assert not a.preempt  # 3 does not preempt 1
        q.reprioritize([a], 9)
        assert a.preempt       # now 3 is more urgent than 9: re-evaluated at once
        q.release(a, 1.0)
    assert w.state is EntryState.RUNNING
