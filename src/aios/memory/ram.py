"""The RAM tier: LRU-K replacement, and one bounded cache of memories per namespace.

LRU-K is the algorithm of E. J. O'Neil, P. E. O'Neil and G. Weikum, "The LRU-K Page
Replacement Algorithm For Database Disk Buffering", SIGMOD 1993. Each key keeps
``HIST(p, 1..K)``, the times of its last K *uncorrelated* references, and ``LAST(p)``,
the time of its latest reference. The victim is the resident key with the largest
backward K-distance, i.e. the smallest ``HIST(p, K)`` (0 when it has fewer than K
references: such keys go first, the oldest of them first, which is the paper's
subsidiary LRU policy). Two periods of the paper are kept:

* the *correlated reference period* (CRP): a reference within CRP of ``LAST(p)`` is
  correlated with the previous one (an agent that adds a memory and reads it back at
  once used it once). It updates ``LAST(p)`` only; the next uncorrelated reference shifts
  the history by the length of the correlated burst. A key referenced within the last
  CRP is not eligible for eviction;
* the *retained information period* (RIP): the history of an evicted key is kept for RIP
  more references, so a key that comes back is not mistaken for a new one.

Time is logical: one tick per reference to the tier, so traces replay exactly and no
clock is read. K=1 with CRP=0 is plain LRU (the benchmark's baseline).

Victims come from a heap of ``(HIST(K), HIST(1), seq, key)`` with lazy deletion (stale
entries, whose ``seq`` is no longer the key's, are dropped when popped; the heap is
rebuilt when they dominate), so a reference and an eviction each cost O(log n).
This module does no I/O and never awaits.
"""

from __future__ import annotations

import heapq
from collections import OrderedDict
from collections.abc import Hashable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

from aios.syscalls.memory import MemoryItem

__all__ = ["LRUK", "Cached", "RamTier"]

K = TypeVar("K", bound=Hashable)

ENTRY_OVERHEAD = 200
"""Bytes a cached memory costs beyond its text and metadata (Python objects, history)."""


class LRUK(Generic[K]):
    """LRU-K replacement over a set of resident keys (no values: the caller holds them).

    ``k`` >= 1; ``correlated_period`` and ``retained_period`` are in references.
    """

    def __init__(self, k: int = 2, *, correlated_period: int = 0,
                 retained_period: int = 100_000) -> None:
        if k < 1:
            raise ValueError(f"LRU-K needs k >= 1, got {k}")
        self.k = k
        self.crp = max(0, correlated_period)
        self.rip = max(0, retained_period)
        self.clock = 0
        self._hist: dict[K, list[int]] = {}
        self._last: dict[K, int] = {}
        self._resident: dict[K, int] = {}   # key -> seq of its live heap entry
        self._retained: OrderedDict[K, None] = OrderedDict()  # evicted, by eviction time
        self._heap: list[tuple[int, int, int, K]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._resident)

    def __contains__(self, key: object) -> bool:
        return key in self._resident

    def reference(self, key: K) -> None:
        """A reference to ``key`` at a new tick; a non-resident key becomes resident."""
        self.clock = t = self.clock + 1
        hist = self._hist.get(key)
        if hist is None:
            self._hist[key] = [t] + [0] * (self.k - 1)
        elif key not in self._resident:
            # Back from eviction with retained history: shift it (no correlation: the
            # paper's "p not in buffer" branch).
            self._retained.pop(key, None)
            hist[1:] = hist[:-1]
            hist[0] = t
        elif t - self._last[key] > self.crp:
            # A new uncorrelated reference closes the correlated burst that began at
            # HIST(1) and ended at LAST: older references move by its length.
            burst = self._last[key] - hist[0]
            for i in range(self.k - 1, 0, -1):
                hist[i] = hist[i - 1] + burst if hist[i - 1] else 0
            hist[0] = t
        else:
            self._last[key] = t  # correlated: LAST only, the heap key is unchanged
            return
        self._last[key] = t
        self._push(key)
        self._expire()

    def evict(self) -> K | None:
        """Choose a victim, make it non-resident (its history is retained) and return it;
        None when nothing is resident. A key within its correlated period is skipped
        unless every resident key is."""
        skipped: list[tuple[int, int, int, K]] = []
        victim: K | None = None
        while self._heap:
            item = heapq.heappop(self._heap)
            key = item[3]
            if self._resident.get(key) != item[2]:
                continue  # stale
            if self.crp and self.clock - self._last[key] <= self.crp:
                skipped.append(item)
                continue
            victim = key
            break
        if victim is None and skipped:
            victim = skipped.pop(0)[3]
        for item in skipped:
            heapq.heappush(self._heap, item)
        if victim is not None:
            del self._resident[victim]
            self._retained[victim] = None
        return victim

    def reinstate(self, key: K) -> None:
        """Undo :meth:`evict` of ``key`` (its eviction could not complete)."""
        if key in self._hist and key not in self._resident:
            self._retained.pop(key, None)
            self._push(key)

    def forget(self, key: K) -> None:
        """``key`` no longer exists: drop it and its history."""
        self._resident.pop(key, None)
        self._retained.pop(key, None)
        self._hist.pop(key, None)
        self._last.pop(key, None)

    def _push(self, key: K) -> None:
        self._seq += 1
        hist = self._hist[key]
        self._resident[key] = self._seq
        heapq.heappush(self._heap, (hist[-1], hist[0], self._seq, key))
        if len(self._heap) > 2 * len(self._resident) + 64:
            self._heap = [(self._hist[k][-1], self._hist[k][0], s, k)
                          for k, s in self._resident.items()]
            heapq.heapify(self._heap)

    def _expire(self) -> None:
        """Drop the history of evicted keys not referenced for more than RIP ticks."""
        while self._retained:
            key = next(iter(self._retained))
            if self.clock - self._last[key] <= self.rip:
                break
            self._retained.popitem(last=False)
            del self._hist[key], self._last[key]


@dataclass(slots=True)
class Cached:
    """A memory in the RAM tier. ``dirty``: newer than the store's copy (or not in the
    store at all); ``persisted``: the store has a row for it."""

    item: MemoryItem
    size: int
    dirty: bool
    persisted: bool

    @property
    def cost(self) -> int:
        return self.size + ENTRY_OVERHEAD


class RamTier:
    """The cached memories of one namespace, at most ``budget`` bytes (see
    :data:`ENTRY_OVERHEAD`), evicted by LRU-K. Eviction is two-phase so that the caller
    can write dirty victims to the store before they leave RAM: :meth:`victims` picks
    them, then :meth:`drop` (written) or :meth:`keep` (the write failed)."""

    def __init__(self, budget: int, policy: LRUK[str]) -> None:
        self.budget = budget
        self.policy = policy
        self.entries: dict[str, Cached] = {}
        self.bytes = 0
        # ids put dirty, in put order, a superset of the dirty entries (the handler
        # marks entries clean itself): dirty() costs O(dirty), not O(entries)
        self._maybe_dirty: dict[str, None] = {}

    def __len__(self) -> int:
        return len(self.entries)

    def get(self, key: str) -> Cached | None:
        """The cached memory, counted as a reference (a hit), or None."""
        c = self.entries.get(key)
        if c is not None:
            self.policy.reference(key)
        return c

    def fits(self, cost: int) -> bool:
        return cost <= self.budget

    def put(self, c: Cached) -> None:
        """Insert or replace (room must have been made with :meth:`victims`)."""
        old = self.entries.get(c.item.id)
        if old is not None:
            self.bytes -= old.cost
        self.entries[c.item.id] = c
        self.bytes += c.cost
        if c.dirty:
            self._maybe_dirty[c.item.id] = None
        self.policy.reference(c.item.id)

    def victims(self, room: int, *, spare: str | None = None) -> list[Cached]:
        """Pick entries to evict so that ``room`` more bytes fit (the entry ``spare``, if
        cached, is being replaced: its bytes count as free and it is never picked)."""
        free = self.budget - self.bytes
        if spare is not None and spare in self.entries:
            free += self.entries[spare].cost
        out: list[Cached] = []
        reinstate: list[str] = []
        while free < room:
            key = self.policy.evict()
            if key is None:
                break
            if key == spare:
                reinstate.append(key)
                continue
            c = self.entries[key]
            out.append(c)
            free += c.cost
        for key in reinstate:
            self.policy.reinstate(key)
        return out

    def drop(self, victims: list[Cached]) -> None:
        for c in victims:
            if self.entries.pop(c.item.id, None) is not None:
                self.bytes -= c.cost

    def keep(self, victims: list[Cached]) -> None:
        for c in victims:
            self.policy.reinstate(c.item.id)

    def remove(self, key: str) -> Cached | None:
        """Forget ``key`` entirely (deleted)."""
        c = self.entries.pop(key, None)
        if c is not None:
            self.bytes -= c.cost
        self.policy.forget(key)
        return c

    def dirty(self) -> Iterator[Cached]:
        """The dirty entries, in the order they were put (new memories: add order)."""
        out: list[Cached] = []
        for key in list(self._maybe_dirty):
            c = self.entries.get(key)
            if c is None or not c.dirty:
                del self._maybe_dirty[key]
            else:
                out.append(c)
        return iter(out)
