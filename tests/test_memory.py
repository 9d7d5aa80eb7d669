"""The memory manager: handler + SQLite store, namespaces, tiers, persistence, bad input.

The handler is driven through a small fake of the kernel's services and syscall context
(the door's own behaviour is tested with the kernel), so each test sees exactly the
memory manager.
"""

from __future__ import annotations

import json
import math
import re
import sqlite3
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aios.config import KernelConfig, MemoryConfig
from aios.errors import (
    MemoryNotFound,
    MemoryStoreError,
    PermissionDenied,
    QuotaExceeded,
    SyscallError,
)
from aios.memory.client import MemoryClient
from aios.memory.handler import MemoryHandler
from aios.memory.store import SCHEMA_VERSION, fts_query, tf_weight
from aios.plugins import PluginRegistry
from aios.scheduler.policies import FifoPolicy
from aios.scheduler.queue import ResourceQueue
from aios.state import StateDB
from aios.syscalls.memory import MemoryItem

# -- fakes of the kernel side -----------------------------------------------------------


class FakeServices:
    def __init__(self, config: KernelConfig, db: StateDB) -> None:
        self.config = config
        self.db = db
        self.log = None
        self.registry = PluginRegistry(autoload=False)
        self.options: dict[str, Any] = {}
        self.queues: dict[str, ResourceQueue] = {}

    def resource(self, name: str, window: int, *, slots: int | None = None,
                 preempt: bool | None = None) -> ResourceQueue:
        q = ResourceQueue(name, window, FifoPolicy(self.config.scheduler))
        self.queues[name] = q
        return q

    def handler(self, family: str) -> Any:
        return None


class FakeSlot:
    service = 0.0
    rejected = False


class FakeSC:
    """A syscall context for agent ``name`` of ``group``."""

    def __init__(self, name: str, group: str | None = None) -> None:
        self.sid = f"k.{name}"
        self.pid = 1
        self.name = name
        self.group = group or name
        self.log = None
        self.ctx: Any = None
        self.admissions: list[str] = []
        self.counters: dict[str, float] = {}

    @property
    def priority(self) -> int:
        return 0

    @asynccontextmanager
    async def admitted(self, queue: ResourceQueue, *,
                       preemptible: bool = False) -> AsyncIterator[FakeSlot]:
        self.admissions.append(queue.name)
        yield FakeSlot()

    def account(self, **counters: float) -> None:
        for k, v in counters.items():
            self.counters[k] = self.counters.get(k, 0.0) + v


class FakeDoor:
    """The door reduced to handing the syscall to the memory handler."""

    def __init__(self, handler: MemoryHandler) -> None:
        self.handler = handler

    async def call(self, proc: FakeSC, syscall: Any) -> Any:
        return await self.handler.call(proc, syscall)


@asynccontextmanager
async def memory(path: str | None = None, **cfg: Any) -> AsyncIterator[MemoryHandler]:
    """A started memory handler on a state DB (``path`` None: in memory)."""
    db = StateDB(path)
    await db.open()
    try:
        handler = MemoryHandler(FakeServices(KernelConfig(memory=MemoryConfig(**cfg)), db))
        await handler.start()
        try:
            yield handler
        finally:
            await handler.close()
    finally:
        await db.close()


def client(handler: MemoryHandler, name: str, group: str | None = None) -> MemoryClient:
    return MemoryClient(FakeDoor(handler), FakeSC(name, group))


# -- the verbs ----------------------------------------------------------------------------


async def test_add_get_search_update_delete() -> None:
    async with memory() as h:
        m = client(h, "ann")
        a = await m.add("The sky is blue because of Rayleigh scattering", {"topic": "sky"})
        b = await m.add("Grass is green because of chlorophyll", {"topic": "plants"})
        item = await m.get(a)
        assert (item.text, item.metadata, item.namespace) == (
            "The sky is blue because of Rayleigh scattering", {"topic": "sky"}, "agent:ann")
        hits = await m.search("why is the sky blue?")  # any word matches, BM25 ranks
        assert [x.id for x in hits] == [a, b] and hits[0].score > hits[1].score > 0
        assert hits[0].namespace == "agent:ann"
        assert [x.id for x in await m.search("green OR blue", k=5)] in ([a, b], [b, a])
        upd = await m.update(b, text="Grass is green: chlorophyll absorbs red and blue light")
        assert upd.metadata == {"topic": "plants"} and upd.updated >= upd.created
        assert {x.id for x in await m.search("absorbs")} == {b}
        await m.delete(a)
        with pytest.raises(MemoryNotFound):
            await m.get(a)
        assert [x.id for x in await m.search("sky")] == []


async def test_every_syscall_is_admitted_to_the_memory_resource() -> None:
    async with memory() as h:
        sc = FakeSC("ann")
        m = MemoryClient(FakeDoor(h), sc)
        i = await m.add("one")
        await m.get(i)
        await m.search("one")
        await m.update(i, text="two")
        await m.delete(i)
        assert sc.admissions == ["memory:sqlite"] * 5
        assert sc.counters == {"memory_calls": 5}
        assert h.guard_resource(None) == "memory:sqlite"


async def test_search_stems_and_ranks_deterministically() -> None:
    async with memory() as h:
        m = client(h, "ann")
        ids = [await m.add(f"note {i}: remembering the meeting") for i in range(5)]
        hits = await m.search("remember meetings", k=3)
        assert [x.id for x in hits] == ids[:3]  # equal scores: insertion order
        assert all(x.score == hits[0].score for x in hits)


async def test_metadata_filter_matches_value_and_type() -> None:
    async with memory() as h:
        m = client(h, "ann")
        a = await m.add("apple pie", {"kind": "recipe", "stars": 5, "vegan": True})
        b = await m.add("apple tart", {"kind": "recipe", "stars": 4, "vegan": False})
        c = await m.add("apple tree", {"kind": "plant", "stars": None})

        async def ids(**f: Any) -> set[str]:
            return {x.id for x in await m.search("apple", filter=f)}

        assert await ids(kind="recipe") == {a, b}
        assert await ids(stars=5) == {a}
        assert await ids(stars=5.0) == {a}
        assert await ids(vegan=True) == {a}
        assert await ids(stars=1) == set()   # not confused with True
        assert await ids(stars=None) == {c}
        assert await ids(missing="x") == set()  # a key no memory has matches nothing
        assert await ids(kind="recipe", vegan=False) == {b}


# -- namespaces ---------------------------------------------------------------------------


async def test_namespaces_own_group_and_others() -> None:
    async with memory() as h:
        ann, bob, eve = client(h, "ann", "lab"), client(h, "bob", "lab"), client(h, "eve")
        mine = await ann.add("ann's secret plan")
        shared = await ann.add("lab meeting on friday", namespace="group:lab")
        assert await bob.search("secret plan") == []  # own namespace by default
        assert [x.id for x in await bob.search("meeting", namespace="group:lab")] == [shared]
        assert (await bob.get(shared)).namespace == "group:lab"
        await bob.update(shared, text="lab meeting moved to monday")
        with pytest.raises(PermissionDenied, match="agent:ann"):
            await bob.search("plan", namespace="agent:ann")
        with pytest.raises(PermissionDenied, match="group:lab"):
            await eve.add("intrude", namespace="group:lab")
        for verb in (eve.get, eve.delete, bob.get):
            with pytest.raises(MemoryNotFound):  # ids out of reach are not revealed
                await verb(mine if verb is not eve.get else shared)
        with pytest.raises(MemoryNotFound):
            await eve.update(mine, text="x")
        assert (await ann.get(mine)).text == "ann's secret plan"


# -- tiers and persistence ----------------------------------------------------------------


async def test_eviction_keeps_everything_reachable() -> None:
    async with memory(ram_bytes_per_agent=2000) as h:
        m = client(h, "ann")
        ids = [await m.add(f"fact number {i} about topic{i % 7}", {"i": i}) for i in range(60)]
        assert h.evictions > 0 and h.stats()["cached_bytes"] <= 2000
        for i, x in enumerate(ids):
            assert (await m.get(x)).metadata == {"i": i}
        hits = await m.search("topic3", k=100)
        assert sorted(x.id for x in hits) == sorted(ids[i] for i in range(60) if i % 7 == 3)


async def test_restart_finds_everything(tmp_path: Path) -> None:
    path = str(tmp_path / "state.db")
    async with memory(path, ram_bytes_per_agent=1500) as h:
        m = client(h, "ann", "lab")
        ids = [await m.add(f"memory {i} of ann", {"i": i}) for i in range(30)]
        g = await m.add("group note", namespace="group:lab")
        await m.update(ids[0], text="memory zero, rewritten")
        await m.delete(ids[1])
        assert h.stats()["dirty"] > 0  # the RAM tier holds unwritten changes at exit
    async with memory(path) as h2:
        m = client(h2, "ann", "lab")
        assert (await m.get(ids[0])).text == "memory zero, rewritten"
        with pytest.raises(MemoryNotFound):
            await m.get(ids[1])
        assert (await m.get(ids[29])).metadata == {"i": 29}
        assert len(await m.search("ann", k=100)) == 28  # ids[0] no longer says "ann"
        assert [x.id for x in await client(h2, "bob", "lab").search(
            "note", namespace="group:lab")] == [g]


async def test_write_through_mode_writes_at_once(tmp_path: Path) -> None:
    async with memory(write_back=False) as h:
        m = client(h, "ann")
        await m.add("written through")
        assert h.stats()["dirty"] == 0


async def test_memory_state_path() -> None:
    async with memory(":memory:") as h:
        m = client(h, "ann")
        await m.add("in memory only")
        assert len(await m.search("memory")) == 1


# -- bad input ----------------------------------------------------------------------------


async def test_bad_text_and_metadata() -> None:
    async with memory(max_text_bytes=1024 * 1024) as h:
        m = client(h, "ann")
        with pytest.raises(MemoryStoreError, match="empty"):
            await m.add("   ")
        with pytest.raises(MemoryStoreError, match=r"10485760 bytes.*max_text_bytes"):
            await m.add("x" * 10 * 1024 * 1024)
        with pytest.raises(MemoryStoreError, match="metadata is not JSON"):
            await m.add("ok", {"when": {1, 2}})
        with pytest.raises(MemoryStoreError, match="metadata is not JSON"):
            await m.add("ok", {"x": float("nan")})
        with pytest.raises(MemoryStoreError, match="metadata"):
            await m.add("ok", metadata=["not", "a", "dict"])  # type: ignore[arg-type]
        with pytest.raises(MemoryStoreError, match="text"):
            await m.add(42)  # type: ignore[arg-type]
        i = await m.add("kept")
        with pytest.raises(MemoryStoreError, match="metadata is not JSON"):
            await m.update(i, metadata={"b": b"bytes"})
        with pytest.raises(MemoryStoreError, match="empty"):
            await m.update(i, text="")
        item = await m.get(i)
        assert (item.text, item.metadata) == ("kept", {})
        assert [x.id for x in await m.search("kept")] == [i]


@pytest.mark.parametrize(("verb", "named"), [
    ("add", "memory text holds a lone surrogate '\\ud800' (U+D800) at index 2"),
    ("add_meta", "metadata holds a lone surrogate"),
    ("update", "memory text holds a lone surrogate"),
    ("search", "the query holds a lone surrogate"),
])
async def test_lone_surrogates_are_refused_by_name(verb: str, named: str) -> None:
    async with memory() as h:
        m = client(h, "ann")
        i = await m.add("kept")
        calls = {"add": lambda: m.add("ab\ud800"), "add_meta": lambda: m.add("ok", {"k": "\udfff"}),
                 "update": lambda: m.update(i, text="\ud800"),
                 "search": lambda: m.search("kept \ud800")}
        with pytest.raises(MemoryStoreError, match=re.escape(named)):
            await calls[verb]()
        assert [x.id for x in await m.search("kept")] == [i]


async def test_unknown_ids() -> None:
    async with memory() as h:
        m = client(h, "ann")
        for bad in ("nope", "", "'; DROP TABLE memory_items; --"):
            for verb in (m.get, m.delete):
                with pytest.raises(MemoryNotFound, match="no memory with id"):
                    await verb(bad)
            with pytest.raises(MemoryNotFound):
                await m.update(bad, text="x")


@pytest.mark.parametrize("query", [
    '"AND OR (', "AND", "NOT x", "a:b", "*", "NEAR(a b)", '"unbalanced', "x^y", "(((",
    "col : (", "{text}: x", "'; DROP TABLE memory_items; --", "ü ß 日本", "-x +y",
])
async def test_fts_syntax_in_queries_never_errors(query: str) -> None:
    async with memory() as h:
        m = client(h, "ann")
        i = await m.add("and or not near col unbalanced text x y drop table memory items "
                        "ü ß 日本 a b")
        hits = await m.search(query)
        assert [x.id for x in hits] in ([i], [])
        if fts_query(query) is not None:
            assert [x.id for x in hits] == [i]


async def test_bad_search_arguments() -> None:
    async with memory() as h:
        m = client(h, "ann")
        await m.add("x")
        with pytest.raises(MemoryStoreError, match="query is empty"):
            await m.search("  ")
        with pytest.raises(MemoryStoreError, match="k"):
            await m.search("x", k=0)
        with pytest.raises(MemoryStoreError, match=r"filter key 'a'.*string, number"):
            await m.search("x", filter={"a": [1, 2]})
        with pytest.raises(MemoryStoreError, match="filter key"):
            await m.search("x", filter={'a"b': 1})
        with pytest.raises(MemoryStoreError, match="not JSON"):
            await m.search("x", filter={"a": object()})


async def test_namespace_cap_raises_and_writes_nothing() -> None:
    async with memory(max_bytes_per_namespace=100) as h:
        m = client(h, "ann")
        i = await m.add("a" * 60)
        with pytest.raises(QuotaExceeded, match="max_bytes_per_namespace") as err:
            await m.add("b" * 50)
        assert (err.value.quota, err.value.limit, err.value.used) == (
            "memory.namespace_bytes", 100, 60)
        with pytest.raises(QuotaExceeded):
            await m.update(i, text="c" * 101)
        assert (await m.get(i)).text == "a" * 60
        assert await m.search("bbbbb") == [] and len(await m.search("a" * 60)) == 1
        await m.update(i, text="d" * 10)     # shrinking is always allowed
        await m.add("e" * 80)                # ... and frees room
        await m.delete(i)
        await m.add("f" * 15)


async def test_store_failure_rolls_back_and_loses_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    async with memory(path) as h:
        m = client(h, "ann")
        good = await m.add("good memory")
        bad = await m.add("poison memory")
        await h.services.db.conn.execute(
            "CREATE TRIGGER poison BEFORE INSERT ON memory_items WHEN new.text LIKE 'poison%' "
            "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
        await h.services.db.conn.commit()
        with pytest.raises(MemoryStoreError, match=r"rolled back.*disk on fire"):
            await m.search("memory")  # flushing both fails as a whole
        async with h.services.db.conn.execute("SELECT count(*) FROM memory_items") as cur:
            assert (await cur.fetchone()) == (0,)
        assert (await m.get(good)).text == "good memory"   # still in the RAM tier
        assert (await m.get(bad)).text == "poison memory"
        await h.services.db.conn.execute("DROP TRIGGER poison")
        await h.services.db.conn.commit()
        assert {x.id for x in await m.search("memory")} == {good, bad}


async def test_eviction_failure_fails_the_add_only(tmp_path: Path) -> None:
    async with memory(ram_bytes_per_agent=700) as h:
        m = client(h, "ann")
        first = await m.add("poison 1")
        await m.add("fine 2")
        await h.services.db.conn.execute(
            "CREATE TRIGGER poison BEFORE INSERT ON memory_items WHEN new.text LIKE 'poison%' "
            "BEGIN SELECT RAISE(ABORT, 'disk on fire'); END")
        await h.services.db.conn.commit()
        for i in range(10):
            try:
                await m.add(f"more {i}")
            except MemoryStoreError:
                break
        else:
            pytest.fail("no eviction had to write the poisoned memory")
        assert (await m.get(first)).text == "poison 1"
        await h.services.db.conn.execute("DROP TRIGGER poison")
        await h.services.db.conn.commit()


async def test_corrupt_or_foreign_tables_are_refused(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE memory_items (id TEXT, body TEXT)")
    with pytest.raises(MemoryStoreError, match=r"memory_items lacks .*namespace"):
        async with memory(path):
            pass
    with sqlite3.connect(path) as db:
        assert [r[1] for r in db.execute("PRAGMA table_info(memory_items)")] == ["id", "body"]


async def test_newer_schema_is_refused_and_older_is_kept(tmp_path: Path) -> None:
    path = str(tmp_path / "s.db")
    async with memory(path) as h:
        i = await client(h, "ann").add("survives")
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT version FROM schema_versions WHERE component='memory'"
                          ).fetchone() == (SCHEMA_VERSION,)
        db.execute("UPDATE schema_versions SET version = 99 WHERE component = 'memory'")
    with pytest.raises(MemoryStoreError, match=r"schema version 99.*newer"):
        async with memory(path):
            pass
    with sqlite3.connect(path) as db:
        db.execute("UPDATE schema_versions SET version = 1 WHERE component = 'memory'")
    async with memory(path) as h:  # the 1 -> 2 upgrade is idempotent on version 2 tables
        assert (await client(h, "ann").get(i)).text == "survives"
        assert [x.id for x in await client(h, "ann").search("survive")] == [i]


async def test_version_1_file_is_upgraded(tmp_path: Path) -> None:
    """A version 1 file (FTS5 index kept by triggers) gets the postings of version 2."""
    path = str(tmp_path / "s.db")
    with sqlite3.connect(path) as db:
        db.executescript("""
            CREATE TABLE schema_versions (component TEXT PRIMARY KEY, version INTEGER);
            INSERT INTO schema_versions VALUES ('memory', 1);
            CREATE TABLE memory_namespaces (nsid INTEGER PRIMARY KEY, name TEXT UNIQUE,
                nbytes INTEGER NOT NULL DEFAULT 0, items INTEGER NOT NULL DEFAULT 0);
            CREATE TABLE memory_items (seq INTEGER PRIMARY KEY, id TEXT UNIQUE,
                namespace TEXT, nskey TEXT, text TEXT, metadata TEXT, nbytes INTEGER,
                created REAL, updated REAL);
            CREATE VIRTUAL TABLE memory_fts USING fts5(text, nskey, content='memory_items',
                content_rowid='seq');
            CREATE TRIGGER memory_items_ai AFTER INSERT ON memory_items BEGIN
                INSERT INTO memory_fts(rowid, text, nskey) VALUES (new.seq, new.text,
                new.nskey);
                UPDATE memory_namespaces SET nbytes = nbytes + new.nbytes, items = items + 1
                    WHERE name = new.namespace;
            END;
            INSERT INTO memory_namespaces (name) VALUES ('agent:ann'), ('agent:bob');
            INSERT INTO memory_items VALUES
                (1, 'a1', 'agent:ann', 'n1', 'the cat sat', '{}', 11, 0, 0),
                (2, 'a2', 'agent:ann', 'n1', 'cats and cats', '{}', 13, 0, 0),
                (3, 'b1', 'agent:bob', 'n2', 'a cat of bob', '{}', 12, 0, 0);
        """)
    async with memory(path) as h:
        ann = client(h, "ann")
        assert [x.id for x in await ann.search("cat")] == ["a2", "a1"]  # tf 2 first
        assert [x.id for x in await client(h, "bob").search("cat")] == ["b1"]
        new = await ann.add("a new cat")
        assert new in {x.id for x in await ann.search("cat")}
        assert await h.store.usage("agent:ann") == 24 + len("a new cat")  # type: ignore[union-attr]
    with sqlite3.connect(path) as db:
        names = {r[0] for r in db.execute("SELECT name FROM sqlite_master")}
        assert "memory_fts" not in names and "memory_postings" in names


async def test_every_error_is_a_syscall_error() -> None:
    # The door attaches the syscall; the family is one branch of the tree.
    assert issubclass(MemoryNotFound, MemoryStoreError)
    assert issubclass(MemoryStoreError, SyscallError)


# -- property: the two tiers behave as one dictionary ------------------------------------

_WORDS = ["alpha", "beta", "gamma", "delta", "omega"]

_op = st.one_of(
    st.tuples(st.just("add"), st.lists(st.sampled_from(_WORDS), max_size=3),
              st.integers(0, 3)),
    st.tuples(st.just("update"), st.integers(0, 40), st.lists(st.sampled_from(_WORDS),
                                                                  max_size=3)),
    st.tuples(st.just("meta"), st.integers(0, 40), st.integers(0, 3)),
    st.tuples(st.just("delete"), st.integers(0, 40)),
    st.tuples(st.just("get"), st.integers(0, 40)),
    st.tuples(st.just("search"), st.sampled_from(_WORDS)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(ops=st.lists(_op, max_size=40), budget=st.sampled_from([0, 600, 1500, 10**6]),
       k=st.sampled_from([1, 2, 3]), crp=st.sampled_from([0, 2]))
def test_tiers_agree_with_a_model_dict(ops: list[tuple[Any, ...]], budget: int, k: int,
                                       crp: int) -> None:
    anyio.run(_check_against_model, ops, budget, k, crp)


async def _check_against_model(ops: list[tuple[Any, ...]], budget: int, k: int,
                               crp: int) -> None:
    model: dict[str, tuple[str, dict[str, Any]]] = {}
    ids: list[str] = []   # every id ever made (deleted ones too)
    async with memory(ram_bytes_per_agent=budget, lru_k=k, lru_k_correlated_period=crp) as h:
        m = client(h, "ann")
        for n, op in enumerate(ops):
            if op[0] == "add":
                text = " ".join([f"uniq{n}", *op[1]])
                meta = {"tag": op[2]}
                i = await m.add(text, meta)
                ids.append(i)
                model[i] = (text, meta)
            elif op[0] in ("update", "meta", "delete", "get") and ids:
                i = ids[op[1] % len(ids)]
                try:
                    if op[0] == "update":
                        text = " ".join([f"uniq{n}", *op[2]])
                        await m.update(i, text=text)
                        model[i] = (text, model[i][1])
                    elif op[0] == "meta":
                        await m.update(i, metadata={"tag": op[2]})
                        model[i] = (model[i][0], {"tag": op[2]})
                    elif op[0] == "delete":
                        await m.delete(i)
                        del model[i]
                    else:
                        got = await m.get(i)
                        assert (got.text, got.metadata) == model[i]
                except MemoryNotFound:
                    assert i not in model
                else:
                    assert op[0] == "delete" or i in model
            elif op[0] == "search":
                hits = await m.search(op[1], k=1000, filter={"tag": 1})
                want = {i for i, (t, meta) in model.items()
                        if op[1] in t.split() and meta == {"tag": 1}}
                assert {x.id for x in hits} == want
            assert h.stats()["cached_bytes"] <= budget
        for i in ids:
            if i in model:
                got = await m.get(i)
                assert (got.text, got.metadata) == model[i]
                first = model[i][0].split()[0]
                assert [x.id for x in await m.search(first)] == [i]
            else:
                with pytest.raises(MemoryNotFound):
                    await m.get(i)
        await m.search("uniq")  # flushes the namespace: the store alone must agree
        assert h.store is not None
        assert await h.store.usage("agent:ann") == sum(
            len(t) + len(json.dumps(md, separators=(",", ":"))) for t, md in model.values())


async def test_common_words_are_pruned_from_queries_with_rarer_ones(
        monkeypatch: pytest.MonkeyPatch) -> None:
    import aios.memory.store as store

    monkeypatch.setattr(store, "PRUNE_MIN", 10)
    async with memory() as h:
        m = client(h, "ann")
        for i in range(20):
            await m.add(f"the usual entry {i}")
        rare = await m.add("the zebra entry")
        assert [x.id for x in await m.search("the zebra", k=3)] == [rare]  # "the" dropped
        assert len(await m.search("the entry", k=50)) == 21  # all common: the rarest kept
        assert [x.id for x in await m.search("zebras", k=3)] == [rare]    # stemmed


# -- property: the threshold algorithm returns the exhaustive BM25 top k -------------------

_TERMS = ["ka", "lo", "mi", "ne", "su", "ta"]


def _bm25_top(docs: list[list[str]], query: list[str], k: int) -> list[int]:
    """Brute force: every document scored over every query term, ties by position."""
    n = len(docs)
    avgdl = sum(map(len, docs)) / n
    df = {t: sum(t in d for d in docs) for t in query}
    scores = []
    for i, d in enumerate(docs):
        s = sum(math.log(1 + (n - df[t] + 0.5) / (df[t] + 0.5))
                * tf_weight(d.count(t), len(d), avgdl) for t in query if t in d)
        if any(t in d for t in query):
            scores.append((-round(s, 9), i))
    return [i for _, i in sorted(scores)[:k]]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(docs=st.lists(st.lists(st.sampled_from(_TERMS), min_size=1, max_size=6),
                     min_size=1, max_size=60),
       query=st.lists(st.sampled_from(_TERMS), min_size=1, max_size=4, unique=True),
       k=st.integers(1, 8), first=st.sampled_from([1, 2, 16]))
def test_early_exit_equals_exhaustive_ranking(docs: list[list[str]], query: list[str],
                                              k: int, first: int) -> None:
    anyio.run(_check_ranking, docs, query, k, first)


async def _check_ranking(docs: list[list[str]], query: list[str], k: int,
                         first: int) -> None:
    import aios.memory.store as store

    old = store.FIRST_BATCH
    store.FIRST_BATCH = first   # short reads: the bound decides more often
    try:
        async with memory() as h:
            assert h.store is not None
            items = [MemoryItem(id=f"m{i}", namespace="agent:ann", text=" ".join(d),
                                metadata={}, created=0.0, updated=0.0)
                     for i, d in enumerate(docs)]
            await h.store.write(items)
            await h.store.write([MemoryItem(id="other", namespace="agent:bob",
                                            text=" ".join(_TERMS), metadata={},
                                            created=0.0, updated=0.0)])
            hits = await h.store.search("agent:ann", " ".join(query), k)
            assert [x.id for x in hits] == [f"m{i}" for i in _bm25_top(docs, query, k)]
    finally:
        store.FIRST_BATCH = old
