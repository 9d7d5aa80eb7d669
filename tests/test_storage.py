"""The storage manager: sandbox, versions, tombstones, quotas, retention, search, atomicity.

The handler runs here with a small fake SyscallContext and fake kernel services (a real
StateDB, a real ResourceQueue), so every test goes through the same path as a syscall
from the door; tests/test_storage_kernel.py drives it through a real kernel.
"""

from __future__ import annotations

import hashlib
import re
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aios
from aios.abc import StorageStore
from aios.config import KernelConfig, SchedulerConfig, StorageConfig
from aios.errors import (
    PathInvalid,
    PermissionDenied,
    QuotaExceeded,
    StorageConflict,
    StorageError,
    StorageNotFound,
)
from aios.plugins import PluginRegistry
from aios.scheduler.policies import FifoPolicy
from aios.scheduler.queue import ResourceQueue
from aios.state import StateDB
from aios.storage import paths
from aios.storage.handler import StorageHandler
from aios.storage.paths import normalize
from aios.storage.store import SQLiteStore, split_chunks
from aios.syscalls.storage import (
    StorageDelete,
    StorageHistory,
    StorageList,
    StorageRead,
    StorageRollback,
    StorageSearch,
    StorageWrite,
)

# -- fakes: what the door gives a handler ----------------------------------------------


class FakeSC:
    """A SyscallContext for one agent: real queue admission, counters in a dict."""

    _pids = iter(range(1, 1_000_000))

    def __init__(self, name: str, group: str | None = None) -> None:
        self.pid = next(self._pids)
        self.name = name
        self.group = group or name
        self.sid = f"test.{self.pid}"
        self.log = None
        self.ctx: Any = None
        self.priority = 0
        self.counters: Counter[str] = Counter()
        self.suspended = False
        self.attained = 0.0

    @asynccontextmanager
    async def admitted(self, queue: ResourceQueue, *, preemptible: bool = False
                       ) -> AsyncIterator[Any]:
        entry = queue.new_entry(self, self.sid, self.priority, preemptible=preemptible)
        async with queue.admitted(entry) as slot:
            yield slot

    def account(self, **counters: float) -> None:
        self.counters.update(counters)


class FakeServices:
    def __init__(self, config: KernelConfig, db: StateDB) -> None:
        self.config = config
        self.db = db
        self.log = None
        self.registry = PluginRegistry(autoload=False,
                                       extra={"aios.storage": {"sqlite": SQLiteStore}})
        self.options: dict[str, Any] = {}
        self.queues: dict[str, ResourceQueue] = {}

    def resource(self, name: str, window: int, *, slots: int | None = None,
                 preempt: bool | None = None) -> ResourceQueue:
        q = ResourceQueue(name, window, FifoPolicy(SchedulerConfig()))
        self.queues[name] = q
        return q

    def handler(self, family: str) -> None:
        return None


class Space:
    """One agent's view: ``await sp.write("a", "x")`` runs a syscall through the handler."""

    def __init__(self, handler: StorageHandler, name: str, group: str | None = None) -> None:
        self.h = handler
        self.sc = FakeSC(name, group)

    async def write(self, path: str, data: str | bytes, **kw: Any) -> Any:
        raw = data.encode() if isinstance(data, str) else data
        return await self.h.call(self.sc, StorageWrite(path=path, data=raw, **kw))

    async def read(self, path: str, version: int | None = None) -> bytes:
        data: bytes = await self.h.call(self.sc, StorageRead(path=path, version=version))
        return data

    async def list(self, prefix: str = "", deleted: bool = False) -> Any:
        return await self.h.call(self.sc, StorageList(prefix=prefix, deleted=deleted))

    async def delete(self, path: str, **kw: Any) -> Any:
        return await self.h.call(self.sc, StorageDelete(path=path, **kw))

    async def history(self, path: str) -> Any:
        return await self.h.call(self.sc, StorageHistory(path=path))

    async def rollback(self, path: str, version: int, **kw: Any) -> Any:
        return await self.h.call(self.sc, StorageRollback(path=path, version=version, **kw))

    async def search(self, query: str, k: int = 5) -> Any:
        return await self.h.call(self.sc, StorageSearch(query=query, k=k))


@asynccontextmanager
async def storage(state_path: str | None = None, **cfg: Any) -> AsyncIterator[StorageHandler]:
    config = KernelConfig(state_path=state_path, storage=StorageConfig(**cfg))
    db = StateDB(state_path)
    await db.open()
    handler = StorageHandler(FakeServices(config, db))
    try:
        await handler.start()
        yield handler
    finally:
        await handler.close()
        await db.close()


async def count(h: StorageHandler, table: str) -> int:
    async with h.services.db.conn.execute(f"SELECT count(*) FROM {table}") as cur:
        row = await cur.fetchone()
    assert row is not None
    return int(row[0])


# -- the sandbox -------------------------------------------------------------------------


def test_normalize_canonical_forms() -> None:
    assert normalize("a//b/./c") == "a/b/c"
    assert normalize("a//b/./c/", allow_empty=True) == "a/b/c"  # a listing's prefix
    assert normalize("./notes.md") == "notes.md"
    # NFC: a decomposed e-acute and the composed one are one name
    assert normalize("caf\u0065\u0301.md") == normalize("caf\u00e9.md") == "caf\u00e9.md"
    assert normalize("", allow_empty=True) == ""


@pytest.mark.parametrize(("path", "why"), [
    ("../x", "'..'"),
    ("a/../../b", "'..'"),
    ("a/../b", "'..'"),
    ("/etc/passwd", "absolute"),
    ("a\x00b", "control character (U+0000)"),
    ("a\nb", "control character (U+000A)"),
    ("a\\..\\b", "backslash"),
    ("x" * 10_000, "longer than 255"),
    ("/".join(["d" * 200] * 10), "at most 1024"),
    ("", "empty"),
    ("./", "empty"),
    ("\ud800.txt", "lone surrogate (U+D800)"),
    ("dir/", "ends with '/'"),
])
def test_normalize_rejects(path: str, why: str) -> None:
    with pytest.raises(PathInvalid, match=re.escape(why)):
        normalize(path)


def test_spaces_own_group_and_others() -> None:
    sc = FakeSC("alice", "lab")
    assert paths.resolve(sc, "r.md").namespace == "alice"
    t = paths.resolve(sc, "group:lab/x/y.md", write=True)
    assert (t.namespace, t.path, t.shown) == ("group:lab", "x/y.md", "group:lab/x/y.md")
    assert paths.resolve(sc, "agent:alice/r.md").namespace == "alice"
    with pytest.raises(PermissionDenied, match="group:other"):
        paths.resolve(sc, "group:other/x")
    with pytest.raises(PermissionDenied, match="agent:bob"):
        paths.resolve(sc, "agent:bob/secret.md")
    with pytest.raises(PathInvalid, match="needs a name"):
        paths.resolve(sc, "group:/x")
    with pytest.raises(PathInvalid, match=re.escape("'..'")):
        paths.resolve(sc, "group:lab/../alice/x")
    for bare in ("agent:alice", "agent:alice/", "group:lab"):
        with pytest.raises(PathInvalid, match=r"expected '(agent|group):<name>/<file>'"):
            paths.resolve(sc, bare)
    assert paths.resolve(sc, "group:lab", allow_empty=True).path == ""  # a listing
    # a name cannot pose as a group's space
    assert not paths.may_access(FakeSC("group:lab", "x"), "group:lab", True)


# -- versions ----------------------------------------------------------------------------


async def test_write_read_list_history() -> None:
    async with storage() as h:
        a = Space(h, "alice")
        v1 = await a.write("reports/q1.md", "draft")
        v2 = await a.write("reports/q1.md", b"final")
        assert (v1.version, v2.version) == (1, 2)
        assert v2.sha256 == hashlib.sha256(b"final").hexdigest() and v2.size == 5
        assert v2.author == "alice" and not v2.deleted
        assert await a.read("reports/q1.md") == b"final"
        assert await a.read("./reports//q1.md", version=1) == b"draft"
        await a.write("reportsX", "not under reports/")
        await a.write("reports/sub/deep.md", "deep")
        assert [i.path for i in await a.list("reports")] == [
            "reports/q1.md", "reports/sub/deep.md"]
        assert [i.path for i in await a.list()] == [
            "reports/q1.md", "reports/sub/deep.md", "reportsX"]
        assert [(v.version, v.size) for v in await a.history("reports/q1.md")] == [
            (1, 5), (2, 5)]
        assert a.sc.counters["storage_bytes"] == 5 + 5 + 18 + 4


async def test_identical_content_is_stored_once() -> None:
    async with storage() as h:
        a = Space(h, "alice")
        for i in range(3):
            await a.write(f"copy{i}.txt", "same bytes" * 1000)
        await a.write("copy0.txt", "same bytes" * 1000)
        assert await count(h, "storage_blobs") == 1
        assert await count(h, "storage_versions") == 4


async def test_one_line_edit_of_a_large_text_stores_one_small_chunk() -> None:
    lines = [f"line {i}: the quick brown fox jumps over the lazy dog\n" for i in range(20_000)]
    async with storage() as h:
        a = Space(h, "alice")
        await a.write("big.txt", "".join(lines))
        chunks = await count(h, "storage_chunks")
        lines[10_000] = "line 10000: an edited line of another length\n"
        await a.write("big.txt", "".join(lines))
        assert await a.read("big.txt") == "".join(lines).encode()
        assert 1 <= await count(h, "storage_chunks") - chunks <= 3


@given(st.binary(max_size=20_000), st.integers(1, 64), st.integers(1, 4))
def test_chunks_join_to_the_data(data: bytes, min_size: int, factor: int) -> None:
    chunks = split_chunks(data, min_size=min_size, max_size=min_size * factor)
    assert b"".join(chunks) == data
    assert all(len(c) <= min_size * factor for c in chunks)


async def test_delete_is_restorable() -> None:
    async with storage() as h:
        a = Space(h, "alice")
        await a.write("x.md", "one")
        await a.write("x.md", "two")
        tomb = await a.delete("x.md")
        assert (tomb.version, tomb.deleted, tomb.size) == (3, True, 0)
        with pytest.raises(StorageNotFound, match=r"deleted in version 3.*rollback"):
            await a.read("x.md")
        assert await a.list() == []
        assert [i.deleted for i in await a.list(deleted=True)] == [True]
        with pytest.raises(StorageNotFound, match="deleted in version 3"):
            await a.delete("x.md")
        restored = await a.rollback("x.md", 1)
        assert restored.version == 4 and await a.read("x.md") == b"one"
        assert [v.deleted for v in await a.history("x.md")] == [False, False, True, False]


async def test_missing_paths_and_versions() -> None:
    async with storage() as h:
        a = Space(h, "alice")
        with pytest.raises(StorageNotFound, match="no file 'nope'"):
            await a.read("nope")
        with pytest.raises(StorageNotFound, match="no file"):
            await a.history("nope")
        with pytest.raises(StorageNotFound, match="no file"):
            await a.delete("nope")
        await a.write("x", "1")
        with pytest.raises(StorageNotFound, match=re.escape("no version 7 (current: 1")):
            await a.read("x", version=7)
        with pytest.raises(StorageNotFound, match="no version 7"):
            await a.rollback("x", 7)


async def test_stale_if_version_conflicts_and_writes_nothing() -> None:
    async with storage() as h:
        a = Space(h, "alice")
        await a.write("x", "new", if_version=0)  # create only
        with pytest.raises(StorageConflict, match="at version 1, not 0") as info:
            await a.write("x", "again", if_version=0)
        assert info.value.current == 1
        await a.write("x", "v2", if_version=1)
        with pytest.raises(StorageConflict) as info:
            await a.write("x", "lost update", if_version=1)
        assert info.value.current == 2
        with pytest.raises(StorageConflict):
            await a.delete("x", if_version=1)
        with pytest.raises(StorageConflict):
            await a.rollback("x", 1, if_version=1)
        assert [v.version for v in await a.history("x")] == [1, 2]
        assert await a.read("x") == b"v2"
        assert await count(h, "storage_blobs") == 2  # "again", "lost update": not kept


async def test_concurrent_writers_never_lose_a_version() -> None:
    async with storage(window=3) as h:
        agents = [Space(h, f"a{i}", "lab") for i in range(5)]

        async def writer(sp: Space) -> None:
            for j in range(8):
                await sp.write("group:lab/shared.log", f"{sp.sc.name}-{j}")

        async with anyio.create_task_group() as tg:
            for sp in agents:
                tg.start_soon(writer, sp)
        hist = await agents[0].history("group:lab/shared.log")
        assert [v.version for v in hist] == list(range(1, 41))
        contents = {await agents[0].read("group:lab/shared.log", v.version) for v in hist}
        assert contents == {f"a{i}-{j}".encode() for i in range(5) for j in range(8)}
        q = h.services.queues["storage:sqlite"]  # type: ignore[attr-defined]
        assert q.admissions == 40 + 1 + 40 and q.max_running <= 3


# -- sandbox through the handler ---------------------------------------------------------


async def test_group_space_is_shared_and_other_spaces_unreachable() -> None:
    async with storage() as h:
        alice, bob, eve = Space(h, "alice", "lab"), Space(h, "bob", "lab"), Space(h, "eve")
        v = await alice.write("group:lab/plan.md", "shared")
        assert v.path == "group:lab/plan.md"
        await alice.write("plan.md", "private")
        assert await bob.read("group:lab/plan.md") == b"shared"
        assert [i.path for i in await bob.list("group:lab")] == ["group:lab/plan.md"]
        with pytest.raises(StorageNotFound):
            await bob.read("plan.md")  # bob's own space has no plan.md
        with pytest.raises(PermissionDenied):
            await bob.read("agent:alice/plan.md")
        with pytest.raises(PermissionDenied):
            await eve.write("group:lab/plan.md", "vandal")
        with pytest.raises(PathInvalid):
            await bob.read("../alice/plan.md")
        with pytest.raises(PathInvalid):
            await bob.write("/alice/plan.md", "x")
        assert await alice.read("group:lab/plan.md") == b"shared"


@pytest.mark.parametrize(("first", "second", "named"), [
    ("dir/inner.txt", "dir", "'dir' is the directory of 'dir/inner.txt'"),
    ("dir", "dir/inner.txt", "'dir' is a file"),
    ("a", "a/b/c/d.md", "'a' is a file"),
    ("a/b/c.md", "a/b", "'a/b' is the directory of 'a/b/c.md'"),
])
async def test_a_path_is_never_both_a_file_and_a_directory(first: str, second: str,
                                                           named: str) -> None:
    async with storage() as h:
        sp = Space(h, "alice")
        await sp.write(first, "x")
        with pytest.raises(PathInvalid, match=re.escape(named)):
            await sp.write(second, "y")
        assert [i.path for i in await sp.list()] == [first]
        await sp.write("dir0", "a sibling whose name sorts just after 'dir/'")
        await sp.delete(first)  # once the file is gone, the name is free again
        await sp.write(second, "y")
        with pytest.raises(PathInvalid, match=re.escape(second)):
            await sp.rollback(first, 1)  # nor can a rollback bring the clash back


async def test_unicode_spellings_are_one_file() -> None:
    async with storage() as h:
        a = Space(h, "alice")
        await a.write("caf\u0065\u0301.md", "one")
        await a.write("caf\u00e9.md", "two")
        assert [i.path for i in await a.list()] == ["caf\u00e9.md"]
        assert [v.version for v in await a.history("caf\u0065\u0301.md")] == [1, 2]


# -- quotas and limits -------------------------------------------------------------------


async def test_oversize_write_is_refused_before_queueing() -> None:
    async with storage(max_file_bytes=10) as h:
        a = Space(h, "alice")
        with pytest.raises(QuotaExceeded, match="11 bytes") as info:
            await a.write("big", b"x" * 11)
        assert (info.value.quota, info.value.limit, info.value.used) == (
            "storage.file_bytes", 10, 11)
        assert await count(h, "storage_versions") == 0
        assert h.services.queues["storage:sqlite"].admissions == 0  # type: ignore[attr-defined]


async def test_byte_and_file_quotas() -> None:
    async with storage(quota_bytes=100, quota_files=2) as h:
        a = Space(h, "alice")
        await a.write("a", b"x" * 60)
        with pytest.raises(QuotaExceeded, match="over its quota of 100") as info:
            await a.write("b", b"x" * 41)
        assert (info.value.quota, info.value.limit, info.value.used) == (
            "storage.bytes", 100, 60)
        await a.write("b", b"x" * 40)
        with pytest.raises(QuotaExceeded) as info:
            await a.write("c", b"")
        assert (info.value.quota, info.value.limit, info.value.used) == ("storage.files", 2, 2)
        await a.write("a", b"x" * 10)  # shrinking passes
        await a.delete("b")            # deleting frees bytes and a file
        await a.write("c", b"x" * 90)
        assert await h.store.usage("alice") == (100, 2)  # type: ignore[attr-defined]
        assert await Space(h, "bob").write("a", b"x" * 100)  # quotas are per space
        assert [i.path for i in await a.list()] == ["a", "c"]


# -- retention ---------------------------------------------------------------------------


async def test_keep_versions_prunes_old_versions_and_their_blobs() -> None:
    async with storage(keep_versions=3) as h:
        a = Space(h, "alice")
        for i in range(5):
            await a.write("x", f"v{i + 1}" * 100)
        assert [v.version for v in await a.history("x")] == [3, 4, 5]
        with pytest.raises(StorageNotFound, match="pruned"):
            await a.read("x", version=1)
        assert await count(h, "storage_blobs") == 3
        assert await count(h, "storage_chunks") == 3


async def test_pruning_keeps_chunks_and_blobs_still_in_use() -> None:
    lines = [f"{i}: some text of a line that varies {i * 7919 % 1000}\n" for i in range(5000)]
    a_text = "".join(lines)
    lines[2500] = "an edit\n"
    b_text = "".join(lines)
    lines[100] = "another edit\n"
    c_text = "".join(lines)
    async with storage(keep_versions=1) as h:
        a = Space(h, "alice")
        await a.write("x", a_text)
        await a.write("y", a_text)   # the same blob
        await a.write("x", b_text)   # x's first version goes; its blob is still y's
        assert await count(h, "storage_blobs") == 2
        await a.write("y", c_text)   # now blob A goes, but most chunks live on in B and C
        assert await count(h, "storage_blobs") == 2
        assert await a.read("x") == b_text.encode() and await a.read("y") == c_text.encode()
        async with h.services.db.conn.execute(
                "SELECT min(refs), sum(length(data)) FROM storage_chunks") as cur:
            row = await cur.fetchone()
        assert row is not None and row[0] >= 1 and row[1] < len(b_text) + 20_000


async def test_keep_days_prunes_on_prune() -> None:
    now = [1_000_000.0]
    async with storage(keep_versions=None, keep_days=1.0) as h:
        h.store.clock = lambda: now[0]  # type: ignore[attr-defined]
        a = Space(h, "alice")
        for i in range(3):
            await a.write("x", f"old {i}")
        now[0] += 86400.0 * 2
        await a.write("y", "young")
        assert await h.store.prune() == 2
        assert [v.version for v in await a.history("x")] == [3]  # the latest stays
        assert await a.read("x") == b"old 2"
        assert await h.store.prune() == 0


async def test_no_retention_keeps_everything() -> None:
    async with storage(keep_versions=None) as h:
        a = Space(h, "alice")
        for i in range(150):
            await a.write("x", str(i))
        assert len(await a.history("x")) == 150
        assert await h.store.prune() == 0


# -- search ------------------------------------------------------------------------------


async def test_search_by_content_in_own_and_group_space() -> None:
    async with storage() as h:
        alice, bob = Space(h, "alice", "lab"), Space(h, "bob", "other")
        await alice.write("notes/sky.md", "Rayleigh scattering makes the sky blue.")
        await alice.write("notes/sea.md", "The sea is salty because of dissolved minerals.")
        await alice.write("group:lab/minutes.md", "We discussed scattering of light.")
        await alice.write("bin.dat", b"\x00scattering\x00")
        await bob.write("mine.md", "scattering scattering scattering")
        hits = await alice.search("why is the sky blue")
        assert hits[0].path == "notes/sky.md" and hits[0].score > 0
        assert "[sky]" in hits[0].snippet
        assert {x.path for x in await alice.search("scattering")} == {
            "notes/sky.md", "group:lab/minutes.md"}  # not bob's, not binary
        assert [x.path for x in await bob.search("scattering")] == ["mine.md"]
        await alice.delete("notes/sky.md")
        assert [x.path for x in await alice.search("Rayleigh")] == []
        await alice.rollback("notes/sky.md", 1)
        assert [x.path for x in await alice.search("Rayleigh")] == ["notes/sky.md"]
        for hostile in ['"', 'NEAR(a b', "sky* OR -", "*", "AND"]:
            assert isinstance(await alice.search(hostile), list)
        assert await alice.search("...") == []


# -- atomicity, persistence, corruption --------------------------------------------------


async def test_a_failed_write_leaves_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    async with storage() as h:
        a = Space(h, "alice")
        await a.write("x", "kept")

        def boom(*args: Any) -> int:
            raise RuntimeError("disk on fire")

        monkeypatch.setattr(SQLiteStore, "_retain", boom)
        with pytest.raises(RuntimeError):
            await a.write("x", "half written " * 500)
        with pytest.raises(RuntimeError):
            await a.write("new", "half written")
        monkeypatch.undo()
        assert [v.version for v in await a.history("x")] == [1]
        assert await a.read("x") == b"kept"
        assert [i.path for i in await a.list()] == ["x"]
        assert await count(h, "storage_blobs") == 1 and await count(h, "storage_chunks") == 1
        assert await h.store.usage("alice") == (4, 1)  # type: ignore[attr-defined]
        assert await a.search("half") == []
        assert (await a.write("x", "next")).version == 2


async def test_a_restarted_store_finds_everything(tmp_path: Path) -> None:
    db = str(tmp_path / "state.db")
    async with storage(db) as h:
        a = Space(h, "alice")
        await a.write("r.md", "first draft")
        await a.write("r.md", "second draft")
        await a.delete("r.md")
    async with storage(db) as h:
        a = Space(h, "alice")
        assert [v.deleted for v in await a.history("r.md")] == [False, False, True]
        await a.rollback("r.md", 2)
        assert await a.read("r.md") == b"second draft"
        assert [x.path for x in await a.search("draft")] == ["r.md"]


async def test_corrupt_content_is_reported_not_returned() -> None:
    async with storage() as h:
        a = Space(h, "alice")
        await a.write("good", "fine")
        await a.write("bad", "will be damaged")
        conn = h.services.db.conn
        await conn.execute("UPDATE storage_chunks SET data = ? WHERE hash = ?",
                           (b"WILL be damaged", hashlib.sha256(b"will be damaged").digest()))
        await conn.commit()
        with pytest.raises(StorageError, match="corrupt"):
            await a.read("bad")
        assert await a.read("good") == b"fine"


async def test_a_newer_or_damaged_schema_is_refused_at_start(tmp_path: Path) -> None:
    newer = str(tmp_path / "newer.db")
    async with storage(newer):
        pass
    db = StateDB(newer)
    await db.open()
    await db.conn.execute("UPDATE schema_versions SET version = 99 WHERE component = 'storage'")
    await db.conn.commit()
    await db.close()
    with pytest.raises(StorageError, match="schema version 99"):
        async with storage(newer):
            pass

    damaged = str(tmp_path / "damaged.db")
    db = StateDB(damaged)
    await db.open()
    await db.conn.execute("CREATE TABLE storage_files (id INTEGER PRIMARY KEY, junk TEXT)")
    await db.conn.commit()
    await db.close()
    with pytest.raises(StorageError, match=r"storage database error.*no such column"):
        async with storage(damaged):
            pass


# -- plugins -----------------------------------------------------------------------------


def test_sqlite_store_is_registered_as_an_entry_point() -> None:
    assert PluginRegistry().get("aios.storage", "sqlite") is SQLiteStore
    assert issubclass(SQLiteStore, StorageStore)


async def test_a_store_that_is_not_a_storage_store_is_refused() -> None:
    config = KernelConfig(storage=StorageConfig(store="bad"))
    services = SimpleNamespace(config=config, db=None, registry=PluginRegistry(
        autoload=False, extra={"aios.storage": {"bad": dict}}))
    with pytest.raises(aios.PluginError, match="StorageStore"):
        await StorageHandler(services).start()  # type: ignore[arg-type]


# -- the property: concurrent agents vs a model dictionary -------------------------------

_PATHS = ["a.txt", "d/b.txt", "group:lab/shared.txt"]
_op = st.one_of(
    st.tuples(st.just("write"), st.sampled_from(_PATHS), st.binary(max_size=40)),
    st.tuples(st.just("delete"), st.sampled_from(_PATHS), st.none()),
    st.tuples(st.just("rollback"), st.sampled_from(_PATHS), st.integers(1, 6)),
)


def _model_check(results: dict[tuple[str, str], list[tuple[int, str, Any]]]) -> Iterator[
        tuple[tuple[str, str], list[int], bytes | None, dict[int, bytes | None]]]:
    """Replay the successful mutations of each (space, path) in version order."""
    for key, done in results.items():
        model: dict[int, bytes | None] = {}
        for version, op, arg in sorted(done, key=lambda d: d[0]):
            model[version] = (arg if op == "write" else None if op == "delete"
                              else model[arg])
        latest = model[max(model)] if model else None
        yield key, sorted(model), latest, model


@settings(max_examples=25, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.lists(_op, max_size=12), min_size=2, max_size=4), st.integers(1, 3))
async def test_concurrent_agents_match_a_model(plan: list[list[tuple[str, str, Any]]],
                                               window: int) -> None:
    async with storage(window=window, keep_versions=None) as h:
        spaces = [Space(h, f"agent{i}", "lab") for i in range(len(plan))]
        results: dict[tuple[str, str], list[tuple[int, str, Any]]] = {}

        async def run(sp: Space, ops: list[tuple[str, str, Any]]) -> None:
            for op, path, arg in ops:
                space = "group:lab" if path.startswith("group:") else sp.sc.name
                try:
                    if op == "write":
                        fv = await sp.write(path, arg)
                    elif op == "delete":
                        fv = await sp.delete(path)
                    else:
                        fv = await sp.rollback(path, arg)
                except StorageNotFound:
                    continue  # deleting a deleted file, rolling back to no version
                results.setdefault((space, path), []).append((fv.version, op, arg))

        async with anyio.create_task_group() as tg:
            for sp, ops in zip(spaces, plan, strict=True):
                tg.start_soon(run, sp, ops)

        reader = spaces[0]
        for (space, path), versions, latest, model in _model_check(results):
            sp = reader if space == "group:lab" else spaces[int(space[5:])]
            hist = await sp.history(path)
            assert [v.version for v in hist] == versions == list(range(1, len(versions) + 1))
            assert [v.deleted for v in hist] == [model[v] is None for v in versions]
            for v in hist:
                if not v.deleted:
                    assert await sp.read(path, v.version) == model[v.version]
            if latest is None:
                with pytest.raises(StorageNotFound):
                    await sp.read(path)
            else:
                assert await sp.read(path) == latest
        live = {(s, p) for (s, p), _, latest, _ in _model_check(results) if latest is not None}
        for i, sp in enumerate(spaces):
            listed = {(f"agent{i}", x.path) for x in await sp.list()}
            assert listed == {(s, p) for s, p in live if s == f"agent{i}"}
