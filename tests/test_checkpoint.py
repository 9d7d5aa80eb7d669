"""Context switching: checkpoints in SQLite, exact resume, and recovery from bad ones."""

from __future__ import annotations

import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aios
from aios.checkpoint.store import Checkpoint, CheckpointStore
from aios.llm.base import BackendCapabilities, Chunk, GenerationRequest, LLMBackend
from aios.state import StateDB
from aios.syscalls import LLMChat, Usage
from aios.testing import ScriptedLLM

MSG = [{"role": "user", "content": "go"}]
TEXT = " ".join(f"t{i}" for i in range(40))


class KVScripted(LLMBackend):
    """A scripted backend with a fake KV snapshot: the blob encodes the position, and a
    resume with a KV blob must not re-send the text (it checks the blob instead)."""

    capabilities: BackendCapabilities = BackendCapabilities(
        token_boundary=True, continuation=True, kv_snapshot=True, engine_queue=False)

    def __init__(self, text: str, delay: float = 0.0005) -> None:
        self.words = text.split(" ")
        self.delay = delay
        self.resumes: list[str] = []

    def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        return _KVGen(self, request)


class _KVGen:
    def __init__(self, b: KVScripted, req: GenerationRequest) -> None:
        self.b, self.req = b, req
        r = req.resume
        if r is not None and r.kv is not None:
            assert r.kv == f"{req.request_id}@{r.completion_tokens}".encode() * 100
            b.resumes.append("kv")
        elif r is not None:
            b.resumes.append("text")
        self.i = r.completion_tokens if r else 0
        self.done = False

    def __aiter__(self) -> _KVGen:
        return self

    async def __anext__(self) -> Chunk:
        if self.done:
            raise StopAsyncIteration
        await anyio.sleep(self.b.delay)
        words = self.b.words
        if self.i >= len(words):
            self.done = True
            return Chunk(finish_reason="stop", usage=Usage(prompt_tokens=1))
        w = words[self.i] if self.i == 0 else " " + words[self.i]
        self.i += 1
        return Chunk(text=w, token_ids=(self.i,), n_tokens=1)

    async def save_kv(self) -> bytes:
        return f"{self.req.request_id}@{self.i}".encode() * 100

    async def aclose(self) -> None:
        self.done = True


def rr_config(tmp_path: Path | None = None, **kw: Any) -> aios.KernelConfig:
    return aios.KernelConfig(
        scheduler=aios.SchedulerConfig(policy="rr", time_slice_ms=1),
        llm=[aios.LLMConfig(max_concurrency=1, window=1)],
        state_path=str(tmp_path / "state.db") if tmp_path else None, **kw)


async def chat(ctx: aios.Context) -> str:
    return (await ctx.llm.chat(MSG)).text


async def test_round_robin_switches_and_resumes_exactly(tmp_path: Path) -> None:
    backend = KVScripted(TEXT)
    async with aios.Kernel(rr_config(tmp_path), backends={"default": backend}) as k:
        procs = [k.spawn(chat) for _ in range(3)]
        results = [await p.wait() for p in procs]
        switches = [s for p in procs for s in p.switch_log]
    assert results == [TEXT] * 3
    assert switches, "round robin with 1 ms slices must have switched"
    assert all(s.restored == "kv" for s in switches)
    assert all(s.save_bytes > 0 and s.restore_bytes > 0 for s in switches)
    assert set(backend.resumes) == {"kv"}
    # every checkpoint row and KV blob is gone once its syscall completed
    with sqlite3.connect(tmp_path / "state.db") as db:
        assert db.execute("SELECT COUNT(*) FROM checkpoints").fetchone() == (0,)
        assert db.execute("SELECT COUNT(*) FROM kv_blobs").fetchone() == (0,)


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n_words=st.integers(1, 30), slice_ms=st.sampled_from([0.5, 1, 3]),
       agents=st.integers(2, 4))
async def test_preempted_any_number_of_times_gives_the_uninterrupted_text(
    n_words: int, slice_ms: float, agents: int
) -> None:
    text = " ".join(f"x{i}" for i in range(n_words))
    config = aios.KernelConfig(
        scheduler=aios.SchedulerConfig(policy="rr", time_slice_ms=slice_ms),
        llm=[aios.LLMConfig(max_concurrency=1, window=1)])
    backend = ScriptedLLM(default=text, token_delay=0.0003)
    async with aios.Kernel(config, backends={"default": backend}) as k:
        procs = [k.spawn(chat) for _ in range(agents)]
        assert [await p.wait() for p in procs] == [text] * agents


async def test_streamed_output_is_not_repeated_across_switches() -> None:
    async def streamer(ctx: aios.Context) -> str:
        async with ctx.llm.stream(MSG) as s:
            return "".join([d async for d in s])

    async with aios.Kernel(rr_config(), backends={"default": KVScripted(TEXT)}) as k:
        procs = [k.spawn(streamer) for _ in range(3)]
        assert [await p.wait() for p in procs] == [TEXT] * 3


class Corrupting(CheckpointStore):
    """Damages what it saved, in the way the test asks."""

    def __init__(self, db: StateDB, how: str) -> None:
        super().__init__(db, kv_cap_bytes=1 << 30)
        self.how = how

    async def save(self, ckpt: Checkpoint, kv: bytes | None) -> int:
        n = await super().save(ckpt, kv)
        c = self.db.conn
        if self.how == "checksum":
            await c.execute("UPDATE checkpoints SET body = replace(body, 't', 'T')")
        elif self.how == "row":
            await c.execute("DELETE FROM checkpoints")
        elif self.how == "blob":
            await c.execute("UPDATE kv_blobs SET data = X'00'")
        elif self.how == "blob_gone":
            await c.execute("DELETE FROM kv_blobs")
        await c.commit()
        return n


@pytest.mark.parametrize(("how", "mode"), [("checksum", "recompute"), ("row", "recompute"),
                                           ("blob", "text"), ("blob_gone", "text")])
async def test_bad_checkpoint_falls_back_and_never_continues_wrongly(how: str, mode: str) -> None:
    backend = KVScripted(TEXT)

    async def streamer(ctx: aios.Context) -> tuple[str, str]:
        async with ctx.llm.stream(MSG) as s:
            streamed = "".join([d async for d in s])
        return streamed, s.result.text

    async with aios.Kernel(rr_config(), backends={"default": backend}) as k:
        k._handlers["llm"].ckpt = Corrupting(k._db, how)  # type: ignore[attr-defined]
        procs = [k.spawn(streamer) for _ in range(2)]
        for p in procs:
            streamed, text = await p.wait()
            assert streamed == TEXT
            assert text == TEXT
        modes = {s.restored for p in procs for s in p.switch_log}
    assert modes == {mode}


async def test_kv_blobs_over_the_cap_are_evicted_lru_and_resume_from_text(
    tmp_path: Path,
) -> None:
    db = StateDB(str(tmp_path / "s.db"))
    await db.open()
    store = CheckpointStore(db, kv_cap_bytes=250)
    call = LLMChat(messages=MSG)

    def ck(sid: str) -> Checkpoint:
        return Checkpoint(pid=1, syscall_id=sid, request=call, text="a b", token_ids=[1, 2],
                          completion_tokens=2, sampling={}, backend="x", model="m",
                          created_at=0.0)

    await store.save(ck("1"), b"a" * 100)
    await store.save(ck("2"), b"b" * 100)
    assert (await store.load("1")).mode == "kv"  # 1 is now more recently used than 2
    await store.save(ck("3"), b"c" * 100)        # over the cap: evicts 2
    assert (await store.load("2")).mode == "text"
    assert (await store.load("1")).mode == "kv"
    assert (await store.load("3")).mode == "kv"
    assert store.evictions == 1
    await store.delete("1")
    await store.delete("2")
    await store.delete("3")
    assert await store.stats() == {"checkpoints": 0, "kv_blobs": 0, "kv_bytes": 0,
                                   "kv_evictions": 1}
    await db.close()


async def test_killed_mid_switch_leaves_no_checkpoint(tmp_path: Path) -> None:
    async with aios.Kernel(rr_config(tmp_path), backends={"default": KVScripted(TEXT)}) as k:
        procs = [k.spawn(chat) for _ in range(3)]
        await anyio.sleep(0.01)
        procs[0].kill()
        for p in procs[1:]:
            assert await p.wait() == TEXT
    with sqlite3.connect(tmp_path / "state.db") as db:
        assert db.execute("SELECT COUNT(*) FROM checkpoints").fetchone() == (0,)


async def test_failed_kv_snapshot_resumes_from_the_text() -> None:
    class NoSave(_KVGen):
        async def save_kv(self) -> bytes:
            raise aios.BackendUnavailable("snapshot failed")

    class Backend(KVScripted):
        def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
            return NoSave(self, request)

    backend = Backend(TEXT)
    async with aios.Kernel(rr_config(), backends={"default": backend}) as k:
        procs = [k.spawn(chat) for _ in range(2)]
        assert [await p.wait() for p in procs] == [TEXT] * 2
        modes = {s.restored for p in procs for s in p.switch_log}
    assert modes == {"text"}
