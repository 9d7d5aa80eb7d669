"""The simulated engine: deterministic text, exact continuation, batching, prefix cache,
queue cap, scale (10k concurrent requests), slot release, clean shutdown, config errors."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from aios.config import LLMConfig
from aios.errors import BackendUnavailable, ConfigError, ContextWindowExceeded, RateLimited
from aios.llm.base import Chunk, GenerationRequest, Resume
from aios.llm.sim import SimBackend, SimEngine, SimEngineConfig
from aios.syscalls import LLMChat

FAST: dict[str, Any] = {"time_scale": 0.0}


def req(
    content: str = "tell me about the sky",
    *,
    max_tokens: int | None = 16,
    priority: int = 0,
    resume: Resume | None = None,
    request_id: str = "r",
    **kw: Any,
) -> GenerationRequest:
    call = LLMChat(messages=[{"role": "user", "content": content}], max_tokens=max_tokens, **kw)
    return GenerationRequest(call=call, request_id=request_id, priority=priority, resume=resume)


async def drain(stream: Any) -> tuple[str, Chunk, list[Chunk]]:
    chunks = [c async for c in stream]
    final = chunks[-1]
    assert final.finish_reason is not None
    return "".join(c.text for c in chunks), final, chunks


async def test_text_is_deterministic_and_per_token() -> None:
    e1, e2 = SimEngine(**FAST), SimEngine(**FAST)
    try:
        a, final, chunks = await drain(e1.submit(req()))
        b, _, _ = await drain(e2.submit(req()))
        c, _, _ = await drain(e1.submit(req("something else entirely")))
    finally:
        await e1.close()
        await e2.close()
    assert a == b
    assert a != c
    assert len(a.split()) == 16
    tokens = chunks[:-1]
    assert len(tokens) == 16
    assert all(ch.n_tokens == 1 and len(ch.token_ids) == 1 for ch in tokens)
    assert final.finish_reason == "length"
    assert final.model == "sim"
    assert final.usage is not None
    assert final.usage.completion_tokens == 16
    assert final.usage.prompt_tokens > 0


async def test_seed_changes_text() -> None:
    e = SimEngine(**FAST)
    try:
        a = (await e.complete(req(seed=1))).text
        b = (await e.complete(req(seed=2))).text
        c = (await e.complete(req(seed=1))).text
    finally:
        await e.close()
    assert a == c
    assert a != b


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(k=st.integers(min_value=0, max_value=40))
async def test_continuation_from_any_k_equals_uninterrupted(k: int) -> None:
    e = SimEngine(**FAST)
    try:
        full = (await e.complete(req(max_tokens=40))).text
        words = full.split()
        partial = " ".join(words[:k])
        rest = await e.complete(
            req(max_tokens=40, resume=Resume(text=partial, completion_tokens=k))
        )
    finally:
        await e.close()
    assert partial + rest.text == full
    assert rest.usage.completion_tokens == 40 - k
    assert rest.finish_reason == "length"


async def test_preempt_then_resume_hits_prefix_cache() -> None:
    prompt = " ".join(f"word{i}" for i in range(200))
    e = SimEngine(**FAST)
    try:
        full = (await e.complete(req(prompt, max_tokens=60, request_id="a"))).text
        e.clear_prefix_cache()
        e.reset_stats()
        # Preempt at a token boundary: stop reading after 30 tokens.
        s = e.submit(req(prompt, max_tokens=60, request_id="b"))
        got: list[str] = []
        async for ch in s:
            got.append(ch.text)
            if len(got) == 30:
                break
        await s.aclose()
        first_prefill = e.stats()["prefill_tokens"]
        partial = "".join(got)
        resumed = await e.complete(
            req(prompt, max_tokens=60, request_id="b", resume=Resume(partial, completion_tokens=30))
        )
        stats = e.stats()
    finally:
        await e.close()
    assert partial + resumed.text == full
    # The first attempt prefilled the whole prompt (nothing cached). The continuation's
    # prompt is that prompt + 30 generated tokens; all but the last partial block (16
    # tokens) comes from the prefix cache.
    n = resumed.usage.prompt_tokens
    assert n == first_prefill + 30
    assert resumed.usage.cached_tokens >= n - 16
    assert stats["prefill_tokens"] - first_prefill <= 16


async def test_full_batch_one_step_per_token() -> None:
    e = SimEngine(slots=8, **FAST)
    try:
        streams = [e.submit(req(f"agent {i}", max_tokens=20)) for i in range(8)]
        texts = await asyncio.gather(*(drain(s) for s in streams))
        stats = e.stats()
    finally:
        await e.close()
    assert all(len(t.split()) == 20 for t, _, _ in texts)
    assert stats["steps"] == 20
    assert stats["mean_batch"] == 8.0
    assert stats["completion_tokens"] == 160
    assert stats["requests"] == 8


async def test_more_requests_than_slots_are_batched() -> None:
    e = SimEngine(slots=4, **FAST)
    try:
        streams = [e.submit(req(f"agent {i}", max_tokens=10)) for i in range(12)]
        await asyncio.gather(*(drain(s) for s in streams))
        stats = e.stats()
    finally:
        await e.close()
    assert stats["steps"] == 30  # 3 waves of 10 steps at a full batch of 4
    assert stats["mean_batch"] == 4.0


async def test_priority_lower_first_then_fifo() -> None:
    e = SimEngine(slots=1, **FAST)
    order: list[str] = []

    async def run(name: str, stream: Any) -> None:
        await drain(stream)
        order.append(name)

    try:
        streams = {
            "first": e.submit(req("a", max_tokens=3, priority=5)),
            "low": e.submit(req("b", max_tokens=3, priority=9)),
            "urgent": e.submit(req("c", max_tokens=3, priority=1)),
            "urgent2": e.submit(req("d", max_tokens=3, priority=1)),
        }
        async with anyio.create_task_group() as tg:
            for name, s in streams.items():
                tg.start_soon(run, name, s)
    finally:
        await e.close()
    # All four wait when the first step admits: the lowest priority value goes first.
    assert order == ["urgent", "urgent2", "first", "low"]


async def test_queue_cap_rejects_with_rate_limited() -> None:
    e = SimEngine(slots=2, queue_cap=3, **FAST)
    try:
        accepted = [e.submit(req(f"q {i}", max_tokens=4)) for i in range(5)]  # 2 slots + 3
        with pytest.raises(RateLimited) as info:
            e.submit(req("one too many", max_tokens=4))
        assert info.value.retry_after is not None
        assert info.value.retry_after > 0
        assert e.stats()["rejected"] == 1
        assert e.stats()["requests"] == 5
        # A cancelled waiting request gives its place back.
        await accepted[-1].aclose()
        extra = e.submit(req("now it fits", max_tokens=4))
        await asyncio.gather(*(drain(s) for s in [*accepted[:-1], extra]))
    finally:
        await e.close()


async def test_ten_thousand_concurrent_requests() -> None:
    e = SimEngine(slots=256, **FAST)
    n = 10_000
    done = 0

    async def agent(i: int) -> None:
        nonlocal done
        r = await e.chat([{"role": "user", "content": f"agent {i} asks"}], max_tokens=3)
        assert len(r.text.split()) == 3
        done += 1

    try:
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(agent, i)
        stats = e.stats()
    finally:
        await e.close()
    assert done == n
    assert stats["completion_tokens"] == 3 * n
    assert stats["requests"] == n
    assert stats["mean_batch"] > 200
    assert stats["running"] == 0
    assert stats["waiting"] == 0


async def test_consumer_closing_early_frees_its_slot() -> None:
    e = SimEngine(slots=1, **FAST)
    try:
        s = e.submit(req("long one", max_tokens=10_000))
        n = 0
        async for _ in s:
            n += 1
            if n == 3:
                break
        await s.aclose()
        # The slot is free: another request completes and the long one stopped early.
        r = await e.complete(req("short", max_tokens=5))
        assert r.usage.completion_tokens == 5
        stats = e.stats()
        assert stats["completion_tokens"] < 20
        assert stats["running"] == 0
        assert [c async for c in s] == []  # a closed stream yields nothing more
    finally:
        await e.close()


async def test_cancelled_consumers_free_slot_and_waiting_place() -> None:
    # Real (1 ms) steps so the long generation is still running when it is cancelled.
    e = SimEngine(slots=1, step_base_ms=1.0, step_per_seq_ms=0.0, prefill_ms_per_token=0.0)
    try:
        holder = e.submit(req("holder", max_tokens=30_000))
        queued = e.submit(req("queued", max_tokens=5))
        assert e.stats()["waiting"] == 2
        with anyio.move_on_after(0.01):
            await drain(queued)  # cancelled while waiting for a slot
        assert e.stats()["waiting"] == 0
        with anyio.move_on_after(0.02):
            await drain(holder)  # cancelled while running
        r = await e.complete(req("next", max_tokens=2))
        assert r.usage.completion_tokens == 2
        assert e.stats()["running"] == 0
        assert e.stats()["completion_tokens"] < 30_000
    finally:
        await e.close()


async def test_idle_engine_does_not_step_and_close_leaves_no_task() -> None:
    e = SimEngine(**FAST)
    await e.start()
    await e.complete(req(max_tokens=4))
    steps = e.stats()["steps"]
    await anyio.sleep(0.02)
    assert e.stats()["steps"] == steps  # idle: no spinning step loop
    pending = e.submit(req("left running", max_tokens=30_000))
    await e.close()
    names = [t.get_name() for t in asyncio.all_tasks()]
    assert "aios-sim-engine" not in names
    with pytest.raises(BackendUnavailable):
        await drain(pending)
    with pytest.raises(BackendUnavailable):
        e.submit(req())


async def test_ideal_s_formula() -> None:
    cfg = SimEngineConfig(
        slots=4, step_base_ms=2.0, step_per_seq_ms=0.5, prefill_ms_per_token=0.1, time_scale=0.01
    )
    e = SimEngine(cfg)
    try:
        await asyncio.gather(*(e.complete(req(f"p {i}", max_tokens=7)) for i in range(6)))
        stats = e.stats()
    finally:
        await e.close()
    full_step_s = (2.0 + 0.5 * 4) * 0.01 / 1000
    prefill_s = stats["prefill_tokens"] * 0.1 * 0.01 / 1000
    assert stats["completion_tokens"] == 42
    assert stats["ideal_s"] == pytest.approx(42 / 4 * full_step_s + prefill_s)
    assert stats["prefill_s"] == pytest.approx(prefill_s)
    # Busy time is the sum of step costs: at least the ideal, at mean batch < slots more.
    assert stats["busy_s"] >= stats["ideal_s"] - 1e-12
    e.reset_stats()
    assert e.stats()["completion_tokens"] == 0
    assert e.stats()["ideal_s"] == 0.0


async def test_tool_call_reply() -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "search",
                "parameters": {
                    "type": "object",
                    "properties": {"query": {"type": "string"}, "k": {"type": "integer"}},
                    "required": ["query", "k"],
                },
            },
        },
        {"type": "function", "function": {"name": "other"}},
    ]
    e = SimEngine(**FAST)
    try:
        text, final, chunks = await drain(e.submit(req("find it", tools=tools)))
        again = await e.complete(req("find it", tools=tools))
        after_tool = GenerationRequest(
            call=LLMChat(
                messages=[
                    {"role": "user", "content": "find it"},
                    {"role": "assistant", "content": None, "tool_calls": []},
                    {"role": "tool", "tool_call_id": "x", "content": "result"},
                ],
                tools=tools,
                max_tokens=5,
            ),
            request_id="t",
        )
        answer = await e.complete(after_tool)
    finally:
        await e.close()
    assert text == ""
    assert final.finish_reason == "tool_calls"
    assert final.tool_calls is not None
    (tc,) = final.tool_calls
    assert tc.name == "search"
    args = json.loads(tc.arguments)
    assert set(args) == {"query", "k"}
    assert isinstance(args["k"], int)
    assert len(chunks) - 1 == 8  # a tool call still takes decode tokens
    assert again.tool_calls == [tc]  # deterministic
    assert answer.finish_reason == "length"
    assert answer.tool_calls == []
    assert len(answer.text.split()) == 5


async def test_script_replies_in_order() -> None:
    e = SimEngine(
        script=["hello there world", {"tool_call": {"name": "calc", "arguments": {"x": 1}}}],
        **FAST,
    )
    try:
        a = await e.complete(req(request_id="1"))
        b = await e.complete(req(request_id="2"))
        c = await e.complete(req(request_id="3", max_tokens=4))
    finally:
        await e.close()
    assert (a.text, a.finish_reason) == ("hello there world", "stop")
    assert b.finish_reason == "tool_calls"
    assert b.tool_calls[0].name == "calc"
    assert b.tool_calls[0].arguments == '{"x": 1}'
    assert len(c.text.split()) == 4  # script used up: generated text


async def test_stop_strings() -> None:
    e = SimEngine(**FAST)
    try:
        full = (await e.complete(req(max_tokens=20))).text
        words = full.split()
        target = words[5]
        cut = full.index(" " + target)
        r = await e.complete(req(max_tokens=20, stop=[" " + target]))
    finally:
        await e.close()
    assert r.text == full[:cut]
    assert r.finish_reason == "stop"


async def test_context_window_exceeded() -> None:
    e = SimEngine(max_context=50, **FAST)
    try:
        with pytest.raises(ContextWindowExceeded):
            e.submit(req(" ".join(["w"] * 60), max_tokens=1))
        with pytest.raises(ContextWindowExceeded):
            e.submit(req("short", max_tokens=100))
        # Without an explicit max_tokens the default is clamped to the window.
        r = await e.complete(req(" ".join(["w"] * 40), max_tokens=None))
        assert r.usage.prompt_tokens + r.usage.completion_tokens == 50
    finally:
        await e.close()


async def test_backend_interface_and_shared_engine() -> None:
    backend = SimBackend(LLMConfig(max_concurrency=3, options={"time_scale": 0.0}))
    assert backend.engine.config.slots == 3
    assert SimBackend.capabilities.token_boundary
    assert SimBackend.capabilities.continuation
    assert not SimBackend.capabilities.kv_snapshot
    await backend.start()
    shared = SimBackend.from_engine(backend.engine)
    try:
        text, _, _ = await drain(backend.generate(req(max_tokens=6)))
        direct = await backend.engine.complete(req(max_tokens=6))
        via_shared, _, _ = await drain(shared.generate(req(max_tokens=6)))
        assert text == direct.text == via_shared
        assert backend.stats()["requests"] == 3
        assert shared.stats() == backend.stats()
        await shared.close()  # does not close the shared engine
        assert not backend.engine.closed
    finally:
        await backend.close()
    assert backend.engine.closed


async def test_generate_is_lazy() -> None:
    e = SimEngine(slots=1, queue_cap=0, **FAST)
    backend = SimBackend.from_engine(e)
    try:
        it = backend.generate(req())
        assert e.stats()["requests"] == 0
        await drain(it)
        assert e.stats()["requests"] == 1
    finally:
        await e.close()


def test_invalid_option_is_config_error_naming_the_key() -> None:
    with pytest.raises(ConfigError) as info:
        SimBackend(LLMConfig(options={"slots": 0}))
    assert info.value.key == "options.slots"
    with pytest.raises(ConfigError) as info:
        SimBackend(LLMConfig(options={"step_base_msec": 1.0}))
    assert info.value.key == "options.step_base_msec"
    assert "unknown" in str(info.value)
    with pytest.raises(ConfigError):
        SimEngine(time_scale=-1)


def test_backend_model_and_slots_from_llm_config() -> None:
    b = SimBackend(LLMConfig(model="tiny", max_concurrency=5))
    assert b.engine.model == "tiny"
    assert b.engine.config.slots == 5
    b2 = SimBackend(LLMConfig(model="tiny", max_concurrency=5, options={"slots": 2}))
    assert b2.engine.config.slots == 2


def test_text_is_identical_across_processes() -> None:
    # Hash randomization must not change the text (no salted str hash anywhere).
    code = (
        "import asyncio\n"
        "from aios.llm.sim import SimEngine\n"
        "async def main():\n"
        "    e = SimEngine(time_scale=0.0)\n"
        "    r = await e.chat([{'role': 'user', 'content': 'same prompt'}], max_tokens=12)\n"
        "    await e.close()\n"
        "    print(r.text)\n"
        "asyncio.run(main())\n"
    )
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": seed},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for seed in ("1", "2")
    }
    assert len(outs) == 1
    assert len(outs.pop().split()) == 12
