"""aios-memory-vec: hybrid search through ``ctx.memory`` with ``memory.store = "vec"``.

Most tests use a small deterministic embedder (hashed words), so they check the plumbing
(partition per namespace, fusion, filters, repair, restart) fast; the ``slow`` ones load
the WordLlama model shipped in its wheel (about 2 s) and check meaning-based recall.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aios_memory_vec.store as vec_store
import anyio
import numpy as np
import pytest
from aios_memory_vec import VecMemoryStore
from aios_memory_vec.embed import DIM, Embedder, load_embedder
from aios_memory_vec.store import RRF_K, vec_path

import aios
from aios.errors import MemoryStoreError
from aios.testing import EchoLLM


class HashEmbedder(Embedder):
    """Bag of hashed words: texts sharing words are near; no model, no threads."""

    name = "test-hash"

    def __init__(self) -> None:
        super().__init__(None)

    def __call__(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), DIM), dtype=np.float32)
        for i, text in enumerate(texts):
            for w in re.findall(r"\w+", text.lower()):
                out[i, int(hashlib.sha1(w.encode()).hexdigest(), 16) % DIM] += 1.0
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return np.divide(out, norms, out=np.zeros_like(out), where=norms > 0)


@pytest.fixture
def hashed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(vec_store, "load_embedder", HashEmbedder)


async def run(state: str, agent: Callable[..., Awaitable[Any]], *args: Any,
              name: str = "ann", group: str | None = None) -> Any:
    """Run ``agent`` in a kernel whose memory store is ``vec``; its return value."""
    cfg = aios.KernelConfig.from_dict({"state_path": state, "memory": {"store": "vec"}})
    async with aios.Kernel(cfg, backends={"default": EchoLLM()}) as kernel:
        kw = {"group": group} if group else {}
        return await kernel.spawn(agent, *args, name=name, **kw).wait()


def test_entry_point_is_registered() -> None:
    from importlib.metadata import entry_points

    (ep,) = [e for e in entry_points(group="aios.memory") if e.name == "vec"]
    assert ep.load() is VecMemoryStore


@pytest.mark.usefixtures("hashed")
async def test_hybrid_ranks_by_reciprocal_rank_fusion(tmp_path: Path) -> None:
    async def agent(ctx: aios.Context) -> Any:
        m = ctx.memory
        a = await m.add("the red fox jumps")
        b = await m.add("red red red apples")
        c = await m.add("a quiet evening")
        hits = await m.search("red fox", k=3)
        return a, b, c, hits

    a, b, _, hits = await run(str(tmp_path / "s.db"), agent)
    # a is first in both rankings (BM25: both words; cosine 0.71 vs b's 0.67), b second
    assert [h.id for h in hits] == [a, b]   # c: no shared word, cosine 0
    assert hits[1].score == pytest.approx(2 / (RRF_K + 2))
    assert hits[0].score == pytest.approx(2 / (RRF_K + 1))


@pytest.mark.usefixtures("hashed")
async def test_namespaces_are_partitions(tmp_path: Path) -> None:
    state = str(tmp_path / "s.db")

    async def ann(ctx: aios.Context) -> list[str]:
        await ctx.memory.add("ann's secret plan")
        return [await ctx.memory.add("lab meeting plan", namespace="group:lab")]

    async def bob(ctx: aios.Context) -> tuple[list[Any], list[Any]]:
        return (await ctx.memory.search("secret plan"),
                await ctx.memory.search("plan", namespace="group:lab"))

    shared = await run(state, ann, group="lab")
    own, lab = await run(state, bob, name="bob", group="lab")
    assert own == []                       # neither BM25 nor vectors leave the partition
    assert [h.id for h in lab] == shared
    with sqlite3.connect(vec_path(state)) as db:
        assert sorted(db.execute("SELECT nsid, count(*) FROM vec_items GROUP BY nsid")) == [
            (1, 1), (2, 1)]


@pytest.mark.usefixtures("hashed")
async def test_filter_update_delete_and_restart(tmp_path: Path) -> None:
    state = str(tmp_path / "s.db")

    async def first(ctx: aios.Context) -> tuple[str, str, str]:
        m = ctx.memory
        a = await m.add("apples are red", {"kind": "fact"})
        b = await m.add("apples taste sweet", {"kind": "note"})
        c = await m.add("bananas are yellow", {"kind": "fact"})
        await m.update(c, text="cherries are red")
        return a, b, c

    a, b, c = await run(state, first)

    async def second(ctx: aios.Context) -> tuple[list[str], list[str], list[str]]:
        m = ctx.memory
        facts = [h.id for h in await m.search("red apples", filter={"kind": "fact"})]
        bananas = [h.id for h in await m.search("bananas")]
        await m.delete(a)
        return facts, bananas, [h.id for h in await m.search("apples red")]

    facts, bananas, after = await run(state, second)
    assert facts == [a, c] and b not in facts
    assert bananas == []                     # the old text's vector went with it
    assert a not in after and set(after) == {b, c}


@pytest.mark.usefixtures("hashed")
async def test_missing_and_stale_vectors_are_repaired_at_start(tmp_path: Path) -> None:
    state = str(tmp_path / "s.db")

    async def add(ctx: aios.Context) -> list[str]:
        return [await ctx.memory.add(f"note {i} about topic{i}") for i in range(5)]

    ids = await run(state, add)
    with sqlite3.connect(vec_path(state)) as db:
        db.execute("DELETE FROM vec_items WHERE id = ?", (ids[0],))  # as if a crash lost it
        db.execute("INSERT INTO vec_items (nsid, id, embedding) VALUES (1, 'ghost', ?)",
                   (bytes(4 * DIM),))

    async def search(ctx: aios.Context) -> list[str]:
        return [h.id for h in await ctx.memory.search("topic0 topic1")]

    assert set(await run(state, search)) >= {ids[0], ids[1]}
    with sqlite3.connect(vec_path(state)) as db:
        have = {r[0] for r in db.execute("SELECT id FROM vec_items")}
    assert have == set(ids)


@pytest.mark.usefixtures("hashed")
async def test_memory_state_path_keeps_vectors_in_memory() -> None:
    async def agent(ctx: aios.Context) -> list[str]:
        i = await ctx.memory.add("in memory only")
        return [i, *(h.id for h in await ctx.memory.search("memory"))]

    i, *hits = await run(":memory:", agent)
    assert hits == [i]


@pytest.mark.usefixtures("hashed")
async def test_unreadable_vector_file_is_a_typed_error(tmp_path: Path) -> None:
    state = str(tmp_path / "s.db")
    await anyio.Path(vec_path(state)).write_bytes(b"this is not a database" * 100)

    async def agent(ctx: aios.Context) -> None:
        await ctx.memory.add("x")

    with pytest.raises(MemoryStoreError, match=r"cannot open the vectors"):
        await run(state, agent)


@pytest.mark.slow
def test_wordllama_loads_from_its_wheel_without_download() -> None:
    """The loader finds the wheel's ``tokenizers/`` file (no network here: a download
    attempt would fail the test)."""
    e = load_embedder()
    v = e(["the cat sat on the mat", "", "!!!"])
    assert v.shape == (3, DIM) and v.dtype == np.float32
    assert np.linalg.norm(v[0]) == pytest.approx(1.0, abs=1e-5)
    assert not v[1].any()
    assert load_embedder() is e


@pytest.mark.slow
async def test_semantic_recall_without_shared_words(tmp_path: Path) -> None:
    async def agent(ctx: aios.Context) -> tuple[str, list[str]]:
        m = ctx.memory
        cat = await m.add("my cat sleeps on the sofa all afternoon")
        for text in ("quarterly revenue grew four percent", "the train leaves at noon",
                     "install the package with pip", "rain is expected tomorrow"):
            await m.add(text)
        return cat, [h.id for h in await m.search("kitten napping on a couch", k=2)]

    cat, hits = await run(str(tmp_path / "s.db"), agent)
    assert hits[0] == cat


@pytest.mark.usefixtures("hashed")
async def test_ram_copy_of_a_partition_follows_writes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store's own k-NN: the RAM copy of a partition, loaded at its first search,
    sees later adds, updates and deletes. (Whole vectors as "prefixes": the hashed words
    of the test embedder land anywhere in the 256 dimensions.)"""
    from types import SimpleNamespace

    from aios.state import StateDB
    from aios.syscalls.memory import MemoryItem

    monkeypatch.setattr(vec_store, "RESCORE", 1)
    monkeypatch.setattr(vec_store, "COARSE_DIM", DIM)
    db = StateDB(str(tmp_path / "s.db"))
    await db.open()
    store = VecMemoryStore(SimpleNamespace(db=db))  # type: ignore[arg-type]
    await store.start()
    try:
        def item(id: str, text: str) -> MemoryItem:
            return MemoryItem(id=id, namespace="agent:ann", text=text, metadata={},
                              created=0.0, updated=0.0)

        await store.write([item(f"m{i}", f"word{i} filler") for i in range(30)])
        nsid = store._nsids["agent:ann"]
        assert await store._nearest(nsid, "word3", 1, None) == ["m3"]   # loads the copy
        await store.write([item("new", "zebra"), item("m3", "changed")], deleted=["m4"])
        assert await store._nearest(nsid, "zebra", 1, None) == ["new"]
        assert "m3" not in await store._nearest(nsid, "word3", 5, None)
        assert "m4" not in await store._nearest(nsid, "word4", 5, None)
        near = await store._nearest(nsid, "word7 filler", 3, None)
        assert near[0] == "m7" and len(near) == 3
    finally:
        await store.close()
        await db.close()
