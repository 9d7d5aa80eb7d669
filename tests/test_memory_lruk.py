"""LRU-K (O'Neil, O'Neil and Weikum 1993) as :class:`aios.memory.ram.LRUK` implements it."""

from __future__ import annotations

import pytest

from aios.memory.ram import LRUK, Cached, RamTier
from aios.syscalls.memory import MemoryItem


def refs(policy: LRUK[str], keys: str) -> None:
    for key in keys:
        policy.reference(key)


def evictions(policy: LRUK[str], n: int) -> str:
    return "".join(str(policy.evict()) for _ in range(n))


def test_k1_is_lru() -> None:
    p: LRUK[str] = LRUK(1)
    refs(p, "abcab")
    assert evictions(p, 3) == "cab"
    assert p.evict() is None


def test_k2_evicts_once_used_keys_first_oldest_first() -> None:
    p: LRUK[str] = LRUK(2)
    refs(p, "ab" * 3)      # hot: two references each
    refs(p, "xyz")         # a scan: one reference each
    assert evictions(p, 3) == "xyz"
    assert evictions(p, 2) == "ab"   # then by HIST(2): a's second-last ref is older


def test_k2_orders_by_the_kth_most_recent_reference() -> None:
    p: LRUK[str] = LRUK(2)
    refs(p, "aabbbba")   # HIST(a,2)=2, HIST(b,2)=6: a is the victim despite its last ref
    assert p.evict() == "a"


def test_correlated_references_count_once() -> None:
    p: LRUK[str] = LRUK(2, correlated_period=2)
    refs(p, "aa")        # the second a is correlated with the first
    refs(p, "bcdb")      # b referenced twice, uncorrelated (3 ticks apart)
    refs(p, "xyz")
    # a has one uncorrelated reference, like c and d: oldest first; b survives longest.
    assert evictions(p, 2) == "ac"
    assert "b" in p


def test_keys_in_their_correlated_period_are_not_evicted() -> None:
    p: LRUK[str] = LRUK(2, correlated_period=2)
    refs(p, "abc")
    assert p.evict() == "a"  # b and c were referenced within the last 2 ticks
    p2: LRUK[str] = LRUK(2, correlated_period=10)
    refs(p2, "ab")
    assert p2.evict() == "a"  # all are: fall back to the best victim among them


def test_correlated_burst_shifts_the_history() -> None:
    p: LRUK[str] = LRUK(3, correlated_period=2)
    refs(p, "a")          # t1: HIST = [1, 0, 0]
    refs(p, "a")          # t2: correlated, LAST = 2
    refs(p, "xy")         # t3, t4
    refs(p, "a")          # t5: uncorrelated; burst = LAST - HIST(1) = 1
    assert p._hist["a"] == [5, 2, 0]


def test_retained_history_recognises_a_returning_key() -> None:
    p: LRUK[str] = LRUK(2, retained_period=100)
    refs(p, "a")
    assert p.evict() == "a"
    refs(p, "bc")
    refs(p, "a")          # back: its second reference (history retained)
    refs(p, "d")
    assert evictions(p, 3) == "bcd"
    q: LRUK[str] = LRUK(2, retained_period=1)
    refs(q, "a")
    assert q.evict() == "a"
    refs(q, "bc")         # a's history expires
    refs(q, "a")
    assert q.evict() == "b"
    assert q.evict() == "c"
    assert q._hist["a"][1] == 0  # a came back as new


def test_reinstate_and_forget() -> None:
    p: LRUK[str] = LRUK(2)
    refs(p, "ab")
    assert p.evict() == "a"
    p.reinstate("a")
    assert "a" in p and len(p) == 2
    p.forget("a")
    assert "a" not in p and p.evict() == "b" and p.evict() is None


def test_heap_stays_bounded_under_many_references() -> None:
    p: LRUK[str] = LRUK(2)
    for _ in range(1000):
        refs(p, "abc")
    assert len(p._heap) <= 2 * len(p) + 64


def test_k_must_be_positive() -> None:
    with pytest.raises(ValueError, match="k >= 1"):
        LRUK(0)


def _cached(key: str, size: int) -> Cached:
    return Cached(MemoryItem(id=key, namespace="agent:a", text="x"), size, dirty=True,
                  persisted=False)


def test_tier_picks_victims_until_room_and_spares_the_replaced_entry() -> None:
    tier = RamTier(3 * 300, LRUK(2))
    for key in "abc":
        tier.put(_cached(key, 100))       # cost 300 each: full
    victims = tier.victims(600, spare="a")  # a is being replaced: its 300 are free
    assert [v.item.id for v in victims] == ["b"]
    tier.keep(victims)                     # the write failed: nothing leaves
    assert len(tier) == 3 and "b" in tier.policy
    victims = tier.victims(600)
    tier.drop(victims)
    assert [v.item.id for v in victims] == ["a", "b"] and tier.bytes == 300
