"""Faults on the LLM path that users of OpenAI-compatible servers hit (issue 15).

Each kind of fault has the case that was reported and at least one more. Servers are
played by :func:`aios.testing.openai_stub` (exact SSE shapes, stalls, keep-alives, error
answers); preemption runs on the in-process sim and :class:`aios.testing.ScriptedLLM`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import aios
from aios.config import LLMConfig
from aios.errors import ConfigError, InvalidSyscall, LLMError, LLMTimeout, RateLimited
from aios.llm.base import BackendCapabilities, Chunk, GenerationRequest, LLMBackend, Resume
from aios.llm.openai_backend import OpenAIBackend
from aios.llm.sim import SimBackend
from aios.llm.stops import StopMatcher
from aios.syscalls import LLMChat, ToolCallRequest
from aios.testing import OpenAIStub, ScriptedLLM, StubReply, openai_stub, stub_chunk

USER = [{"role": "user", "content": "Say hello."}]
FAST = {"backoff_base_s": 0.0001, "backoff_cap_s": 0.001, "seed": 7}


@pytest.fixture(scope="module")
def stub() -> Iterator[OpenAIStub]:
    with openai_stub() as s:
        yield s


def openai_cfg(stub: OpenAIStub, **llm: Any) -> aios.KernelConfig:
    options = {**FAST, **llm.pop("options", {})}
    return aios.KernelConfig(llm=[aios.LLMConfig(
        backend="openai", base_url=stub.base_url, model="stub-model", options=options,
        **llm)])


def openai_backend(stub: OpenAIStub, **llm: Any) -> OpenAIBackend:
    (cfg,) = openai_cfg(stub, **llm).llm
    return OpenAIBackend(cfg)


def usage(prompt: int, completion: int) -> dict[str, Any]:
    return stub_chunk(usage={"prompt_tokens": prompt, "completion_tokens": completion},
                      choices=False)


def window1(policy: str = "priority", **sched: Any) -> aios.KernelConfig:
    return aios.KernelConfig(scheduler=aios.SchedulerConfig(policy=policy, **sched),
                             llm=[aios.LLMConfig(max_concurrency=1, window=1)])


async def until(predicate: Any) -> None:
    """Let the loop run until ``predicate()`` holds (the per-test timeout bounds it)."""
    while not predicate():  # noqa: ASYNC110 - polling kernel state, no event to wait on
        await anyio.sleep(0.001)


WORDS = " ".join(f"w{i}" for i in range(60))


# -- 1. token counts come from the engine, for every token generated --------------------


async def test_multi_token_chunks_count_the_engines_usage(stub: OpenAIStub) -> None:
    stub.reset(StubReply(events=[stub_chunk("a b"), stub_chunk(" c d"),
                                 stub_chunk(finish="stop"), usage(3, 4)]))

    async def agent(ctx: aios.Context) -> aios.ChatResult:
        return await ctx.llm.chat(USER)

    async with aios.Kernel(openai_cfg(stub)) as k:
        proc = k.spawn(agent)
        result = await proc.wait()
    assert result.text == "a b c d"
    assert result.usage.completion_tokens == 4
    assert proc.info().tokens_out == 4


async def test_without_usage_the_estimate_counts_words_so_max_tokens_holds_on_resume(
        stub: OpenAIStub) -> None:
    # No usage chunk (a server ignoring stream_options): each delta counts its words, so
    # a preempted generation resumes with the budget it really has left.
    stub.reset(StubReply(events=[stub_chunk("a b"), stub_chunk(" c d"),
                                 stub_chunk(finish="length")]))
    backend = openai_backend(stub, supports_continuation=True)
    chunks = [c async for c in backend.generate(GenerationRequest(
        call=LLMChat(messages=USER, max_tokens=20), request_id="r"))]
    assert sum(c.n_tokens for c in chunks[:-1]) == 4  # however the reads cut the events
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4
    stub.reset(StubReply(events=[stub_chunk(" e"), stub_chunk(finish="length")]))
    resume = Resume(text="a b c d", completion_tokens=sum(c.n_tokens for c in chunks))
    [_ async for _ in backend.generate(GenerationRequest(
        call=LLMChat(messages=USER, max_tokens=20), request_id="r", resume=resume))]
    assert stub.bodies[-1]["max_tokens"] == 16
    await backend.close()


async def test_tokens_of_a_stream_left_early_are_accounted() -> None:
    async def agent(ctx: aios.Context) -> int:
        seen = 0
        async with ctx.llm.stream(USER) as s:
            async for _ in s:
                seen += 1
                if seen == 20:
                    break
        return seen

    async with aios.Kernel(window1(), backends={"default": ScriptedLLM([WORDS])}) as k:
        proc = k.spawn(agent)
        assert await proc.wait() == 20
    assert proc.info().tokens_out == 20
    assert proc.info().llm_calls == 1


async def test_tokens_of_a_killed_agent_are_accounted_and_charged() -> None:
    produced = 0

    class Counting(ScriptedLLM):
        async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
            nonlocal produced
            async for chunk in super().generate(request):
                produced += chunk.n_tokens
                yield chunk

    async def agent(ctx: aios.Context) -> None:
        await ctx.llm.chat(USER)

    async with aios.Kernel(window1("las"), backends={
            "default": Counting([WORDS], token_delay=0.001)}) as k:
        proc = k.spawn(agent)
        await until(lambda: produced >= 10)
        proc.kill()
        with pytest.raises(aios.ProcessKilled):
            await proc.wait()
        info = proc.info()
    assert info.tokens_out == produced > 0
    assert proc.attained >= produced  # LAS/fair service saw them too


# -- 2. stream shapes ---------------------------------------------------------------------


def whole_call(call_id: str, name: str, args: str) -> dict[str, Any]:
    return stub_chunk(tool_calls=[{"id": call_id, "type": "function",
                                   "function": {"name": name, "arguments": args}}])


async def test_tool_call_deltas_without_index_are_separate_calls(stub: OpenAIStub) -> None:
    stub.reset(StubReply(events=[
        whole_call("c1", "get_weather", '{"city": "Paris"}'),
        whole_call("c2", "get_time", '{"tz": "JST"}'),
        stub_chunk(finish="tool_calls"), usage(5, 12)]))
    backend = openai_backend(stub)
    (final,) = [c async for c in backend.generate(GenerationRequest(
        call=LLMChat(messages=USER), request_id="r"))]
    assert final.tool_calls == [
        ToolCallRequest(id="c1", name="get_weather", arguments='{"city": "Paris"}'),
        ToolCallRequest(id="c2", name="get_time", arguments='{"tz": "JST"}'),
    ]
    await backend.close()


async def test_a_new_id_at_the_same_index_is_a_new_call_and_names_are_not_doubled(
        stub: OpenAIStub) -> None:
    def tc(**kw: Any) -> dict[str, Any]:
        fn = {k: kw.pop(k) for k in ("name", "arguments") if k in kw}
        return stub_chunk(tool_calls=[{"index": 0, **kw, "function": fn}])

    stub.reset(StubReply(events=[
        tc(id="a", name="lookup", arguments='{"q": '),
        tc(name="lookup", arguments='"x"}'),          # name repeated whole: not doubled
        tc(id="b", name="lookup", arguments='{"q": "y"}'),  # index 0 again, new id
        stub_chunk(finish="tool_calls")]))
    backend = openai_backend(stub)
    (final,) = [c async for c in backend.generate(GenerationRequest(
        call=LLMChat(messages=USER), request_id="r"))]
    assert final.tool_calls == [ToolCallRequest(id="a", name="lookup", arguments='{"q": "x"}'),
                                ToolCallRequest(id="b", name="lookup", arguments='{"q": "y"}')]
    await backend.close()


async def test_reasoning_is_kept_counted_and_a_token_boundary(stub: OpenAIStub) -> None:
    stub.reset(StubReply(events=[
        stub_chunk(reasoning="Let me"), stub_chunk(reasoning=" think."),
        stub_chunk("Hi"), stub_chunk(finish="stop")]))

    async def agent(ctx: aios.Context) -> aios.ChatResult:
        return await ctx.llm.chat(USER)

    async with aios.Kernel(openai_cfg(stub)) as k:
        result = await k.spawn(agent).wait()
    assert result.text == "Hi"
    assert result.reasoning == "Let me think."
    assert result.usage.completion_tokens == 4  # 3 words of reasoning, 1 of answer
    assert result.message == {"role": "assistant", "content": "Hi"}
    # reasoning deltas are chunks like text ones (the events of one read share a chunk):
    # a boundary where preemption may happen
    stub.reset(StubReply(events=[stub_chunk(reasoning="a"), stub_chunk(reasoning="b"),
                                 stub_chunk(finish="stop")]))
    backend = openai_backend(stub)
    chunks = [c async for c in backend.generate(GenerationRequest(
        call=LLMChat(messages=USER), request_id="r"))]
    assert "".join(c.reasoning for c in chunks[:-1]) == "ab"
    assert all(c.reasoning and not c.text for c in chunks[:-1])
    assert sum(c.n_tokens for c in chunks[:-1]) == 2
    await backend.close()


@pytest.mark.parametrize("extra", [{"n": 2}, {"logprobs": True}, {"top_logprobs": 3},
                                   {"best_of": 3}])
async def test_several_choices_and_logprobs_are_refused_up_front(
        stub: OpenAIStub, extra: dict[str, Any]) -> None:
    stub.reset()

    async def agent(ctx: aios.Context) -> None:
        await ctx.llm.chat(USER, extra_body=extra)

    async with aios.Kernel(openai_cfg(stub)) as k:
        with pytest.raises(InvalidSyscall, match=rf"extra_body\.{next(iter(extra))}"):
            await k.spawn(agent).wait()
    assert stub.bodies == []  # never forwarded (and the answer dropped)


async def test_n_1_and_logprobs_false_pass() -> None:
    backend = ScriptedLLM(["fine"])

    async def agent(ctx: aios.Context) -> str:
        return (await ctx.llm.chat(USER, extra_body={"n": 1, "logprobs": False})).text

    async with aios.Kernel(window1(), backends={"default": backend}) as k:
        assert await k.spawn(agent).wait() == "fine"


# -- 3. stop strings across a preemption ----------------------------------------------------


class _Preempting:
    """A sim stream that asks the kernel to preempt after chosen token counts."""

    def __init__(self, owner: PreemptAt, inner: Any) -> None:
        self._owner = owner
        self._inner = inner

    def __aiter__(self) -> _Preempting:
        return self

    async def __anext__(self) -> Chunk:
        chunk: Chunk = await self._inner.__anext__()
        owner = self._owner
        owner.tokens += chunk.n_tokens
        if chunk.finish_reason is None and owner.tokens in owner.at and owner.proc:
            owner.proc.suspend()   # the running generation yields at this boundary...
            owner.proc.resume()    # ...and queues again at once
        return chunk

    def held_text(self) -> str:
        return str(self._inner.held_text())

    async def aclose(self) -> None:
        await self._inner.aclose()


class PreemptAt(LLMBackend):
    capabilities = SimBackend.capabilities

    def __init__(self, at: set[int]) -> None:
        self.inner = SimBackend(LLMConfig(options={"time_scale": 0}))
        self.at = at
        self.tokens = 0
        self.proc: aios.Process[Any] | None = None

    def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        return _Preempting(self, self.inner.generate(request))

    async def close(self) -> None:
        await self.inner.close()


PROMPT = [{"role": "user", "content": "Tell me about kernels."}]


async def run_sim(stop: list[str], max_tokens: int, at: set[int]) -> aios.ChatResult:
    backend = PreemptAt(at)

    async def agent(ctx: aios.Context) -> aios.ChatResult:
        return await ctx.llm.chat(PROMPT, max_tokens=max_tokens, stop=stop or None)

    async with aios.Kernel(window1(), backends={"default": backend}) as k:
        backend.proc = k.spawn(agent)
        return await backend.proc.wait()


async def test_held_back_stop_prefixes_survive_time_slices() -> None:
    # The reported case: rr with 1 ms slices, stops that never match, two agents.
    plain = await run_sim([], 40, set())
    words = plain.text.split()
    stops = [f"{w} zzzz" for w in words]
    engine = aios.LLMConfig(max_concurrency=1, window=1, options={"time_scale": 0.2})
    cfg = aios.KernelConfig(scheduler=aios.SchedulerConfig(policy="rr", time_slice_ms=1),
                            llm=[engine])

    async def agent(ctx: aios.Context) -> aios.ChatResult:
        return await ctx.llm.chat(PROMPT, max_tokens=40, stop=stops)

    async with aios.Kernel(cfg) as k:
        procs = [k.spawn(agent) for _ in range(2)]
        results = [await p.wait() for p in procs]
    assert sum(r.context_switches for r in results) > 0
    for r in results:
        assert (r.text, r.finish_reason, r.usage.completion_tokens) == (
            plain.text, "length", 40)


async def test_a_stop_string_spanning_the_switch_still_stops() -> None:
    words = (await run_sim([], 30, set())).text.split()
    stop = f" {words[10]} {words[11]}"
    uninterrupted = await run_sim([stop], 30, set())
    assert uninterrupted.finish_reason == "stop"
    assert uninterrupted.text == " ".join(words[:10])
    preempted = await run_sim([stop], 30, {11})  # " w10" is held at the switch
    assert preempted.context_switches == 1
    assert (preempted.text, preempted.finish_reason, preempted.usage.completion_tokens) == (
        uninterrupted.text, "stop", uninterrupted.usage.completion_tokens)


_REFERENCE = ["the", "of", "and", "to", "in", "is", " a", "e t", "s t", "ing"]


@settings(max_examples=30, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
async def test_preempted_equals_uninterrupted_with_random_stops(data: st.DataObject) -> None:
    # Property: on the sim (continuation from text), with any stop strings and any
    # preemption points, the preempted output is the uninterrupted one.
    max_tokens = data.draw(st.integers(5, 30), label="max_tokens")
    text = (await run_sim([], max_tokens, set())).text
    fragment = st.builds(
        lambda i, j, a, b: (text[i:i + j] + a)[b:] or "x",
        st.integers(0, len(text) - 1), st.integers(1, 12),
        st.sampled_from(["", " ", "zz", " zz", "e", "s "]), st.integers(0, 2))
    stops = data.draw(st.lists(fragment | st.sampled_from(_REFERENCE), max_size=3),
                      label="stops")
    at = data.draw(st.sets(st.integers(1, max_tokens), max_size=6), label="at")
    plain = await run_sim(stops, max_tokens, set())
    preempted = await run_sim(stops, max_tokens, at)
    assert (preempted.text, preempted.finish_reason, preempted.usage.completion_tokens) == (
        plain.text, plain.finish_reason, plain.usage.completion_tokens)


def test_stop_matcher_primed_with_held_text_equals_one_pass() -> None:
    stops = ["abc", "cd"]
    text = "xxabxcdy"
    one = StopMatcher(stops)
    whole = "".join(one.feed(ch)[0] for ch in text)
    for cut in range(len(text) + 1):
        first = StopMatcher(stops)
        out = "".join(first.feed(ch)[0] for ch in text[:cut])
        if first.stopped:
            assert out == whole
            continue
        second = StopMatcher(stops, first.held)   # a resumed stream's matcher
        out += "".join(second.feed(ch)[0] for ch in text[cut:])
        assert out == whole == "xxabx"


# -- 4. constrained decoding is not resumed from text --------------------------------------


async def preempt_attempt(**chat: Any) -> tuple[aios.ChatResult, list[str]]:
    order: list[str] = []
    backend = ScriptedLLM([WORDS, "urgent"], token_delay=0.001)

    async def slow(ctx: aios.Context) -> aios.ChatResult:
        r = await ctx.llm.chat(USER, **chat)
        order.append("slow")
        return r

    async def urgent(ctx: aios.Context) -> None:
        await ctx.llm.chat(USER)
        order.append("urgent")

    async with aios.Kernel(window1(), backends={"default": backend}) as k:
        a = k.spawn(slow, priority=5)
        q = k.llm_resources()["default"].queue
        # Once it has output (before, a bump costs nothing and is always allowed).
        await until(lambda: any(e.started for e in q.running))
        w = k.spawn(urgent, priority=0)
        await w.wait()
        return await a.wait(), order


async def test_json_mode_is_not_preempted_by_text_continuation() -> None:
    result, order = await preempt_attempt(response_format={"type": "json_object"})
    assert result.context_switches == 0
    assert order == ["slow", "urgent"]
    plain, order = await preempt_attempt()  # the same call without JSON mode yields
    assert plain.context_switches >= 1 and order == ["urgent", "slow"]


async def test_forced_tool_calls_are_not_preempted_either() -> None:
    tools = [{"type": "function", "function": {"name": "f", "parameters": {}}}]
    result, order = await preempt_attempt(tools=tools, tool_choice="required")
    assert result.context_switches == 0 and order == ["slow", "urgent"]


def test_preemptible_default_allows_constrained_calls_with_kv_snapshots() -> None:
    json_call = LLMChat(messages=USER, response_format={"type": "json_schema"})
    assert ScriptedLLM().preemptible(json_call) is False
    assert ScriptedLLM().preemptible(LLMChat(messages=USER,
                                             response_format={"type": "text"})) is True

    class KV(ScriptedLLM):
        capabilities = BackendCapabilities(token_boundary=True, kv_snapshot=True)

    assert KV().preemptible(json_call) is True


# -- 5. deadlines ------------------------------------------------------------------------------


async def test_keepalives_forever_end_at_the_total_deadline(stub: OpenAIStub) -> None:
    stub.reset(StubReply(events=[stub_chunk("one")], keepalive=True, done=False))

    async def agent(ctx: aios.Context) -> None:
        await ctx.llm.chat(USER)

    async with aios.Kernel(openai_cfg(stub, timeout_s=2, total_timeout_s=0.3)) as k:
        with pytest.raises(LLMTimeout, match="total_timeout_s") as info:
            await k.spawn(agent).wait()
    assert info.value.deadline == "total"


async def test_a_server_that_never_answers_ends_at_the_first_token_deadline(
        stub: OpenAIStub) -> None:
    stub.reset(*[StubReply(hang=True)] * 6)

    async def agent(ctx: aios.Context) -> None:
        await ctx.llm.chat(USER)

    cfg = openai_cfg(stub, first_token_timeout_s=0.3, max_retries=4)
    async with aios.Kernel(cfg) as k:
        with pytest.raises(LLMTimeout, match="first_token_timeout_s") as info:
            await k.spawn(agent).wait()
    assert info.value.deadline == "first_token"
    assert isinstance(info.value, aios.BackendUnavailable)
    assert len(stub.bodies) == 1  # not retried past its deadline


async def test_a_slow_in_process_backend_passes_the_total_deadline_too() -> None:
    cfg = aios.KernelConfig(llm=[aios.LLMConfig(max_concurrency=1, total_timeout_s=0.05)])

    async def agent(ctx: aios.Context) -> None:
        await ctx.llm.chat(USER)

    backend = ScriptedLLM([WORDS], token_delay=0.01)
    async with aios.Kernel(cfg, backends={"default": backend}) as k:
        proc = k.spawn(agent)
        with pytest.raises(LLMTimeout) as info:
            await proc.wait()
    assert info.value.deadline == "total"
    assert 0 < proc.info().tokens_out < 60


def test_deadline_defaults_are_finite_and_generous() -> None:
    cfg = aios.LLMConfig()
    assert 10 <= cfg.first_token_timeout_s <= cfg.total_timeout_s < float("inf")
    with pytest.raises(ConfigError, match="total_timeout_s"):
        aios.LLMConfig(total_timeout_s=0)


# -- 6. Retry-After through the kernel ------------------------------------------------------


@pytest.fixture
def sleeps(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Record long sleeps and make them short (the wait itself is not what is tested)."""
    seen: list[float] = []
    real = anyio.sleep

    async def sleep(delay: float) -> None:
        if delay >= 1:
            seen.append(delay)
        await real(min(delay, 0.01))

    monkeypatch.setattr(anyio, "sleep", sleep)
    return seen


async def test_retry_after_beyond_the_old_backoff_cap_is_honoured(
        stub: OpenAIStub, sleeps: list[float]) -> None:
    stub.reset(StubReply(429, {"error": {"message": "slow down"}}, {"Retry-After": "5"}))

    async def agent(ctx: aios.Context) -> str:
        return (await ctx.llm.chat(USER)).text

    async with aios.Kernel(openai_cfg(stub)) as k:
        assert await k.spawn(agent).wait() == "Hello world"
    assert sleeps == [5.0]
    assert len(stub.bodies) == 2


async def test_retry_after_past_the_maximum_fails_with_the_servers_value(
        stub: OpenAIStub, sleeps: list[float]) -> None:
    stub.reset(StubReply(429, {}, {"retry-after-ms": "7000"}))

    async def agent(ctx: aios.Context) -> None:
        await ctx.llm.chat(USER)

    async with aios.Kernel(openai_cfg(stub, max_retry_after_s=6)) as k:
        with pytest.raises(RateLimited, match="max_retry_after_s=6") as info:
            await k.spawn(agent).wait()
    assert info.value.retry_after == 7.0
    assert sleeps == [] and len(stub.bodies) == 1


# -- 7. set_priority on a running syscall ---------------------------------------------------


async def reprioritize(new: int) -> tuple[list[str], aios.ChatResult]:
    order: list[str] = []
    backend = ScriptedLLM([WORDS, "waiting"], token_delay=0.001)

    async def agent(ctx: aios.Context, name: str) -> aios.ChatResult:
        r = await ctx.llm.chat(USER)
        order.append(name)
        return r

    async with aios.Kernel(window1(), backends={"default": backend}) as k:
        a = k.spawn(agent, "A", priority=1)
        await until(lambda: len(backend.requests) == 1)
        w = k.spawn(agent, "W", priority=3)
        queue = k.llm_resources()["default"].queue
        await until(lambda: queue.waiting == 1)
        a.set_priority(new)
        await w.wait()
        return order, await a.wait()


async def test_lowering_a_running_generations_priority_lets_the_waiting_one_in() -> None:
    order, a = await reprioritize(9)
    assert order == ["W", "A"]
    assert a.context_switches >= 1
    assert a.text == WORDS  # resumed exactly


async def test_a_priority_still_more_urgent_than_the_waiting_one_keeps_running() -> None:
    order, a = await reprioritize(2)
    assert order == ["A", "W"]
    assert a.context_switches == 0


# -- 8. a lent backend -------------------------------------------------------------------------


async def test_two_kernels_share_one_sim_backend_and_the_first_exit_closes_nothing() -> None:
    backend = SimBackend(LLMConfig(max_concurrency=2, options={"time_scale": 0}))

    async def agent(ctx: aios.Context) -> str:
        return (await ctx.llm.chat(USER, max_tokens=5)).text

    async with aios.Kernel(backends={"default": backend}) as k2:
        async with aios.Kernel(backends={"default": backend}) as k1:
            first = await k1.spawn(agent).wait()
            # its window is the backend's own config (2 slots + headroom), not 8
            assert k1.llm_resources()["default"].queue.window == 3
        assert not backend.engine.closed
        assert await k2.spawn(agent).wait() == first
    assert not backend.engine.closed
    await backend.close()


async def test_two_kernels_share_one_openai_backend(stub: OpenAIStub) -> None:
    stub.reset()
    backend = openai_backend(stub, max_concurrency=1, window=1)

    async def agent(ctx: aios.Context) -> str:
        return (await ctx.llm.chat(USER)).text

    async with aios.Kernel(backends={"default": backend}) as k2:
        async with aios.Kernel(backends={"default": backend}) as k1:
            assert await k1.spawn(agent).wait() == "Hello world"
            assert k1.llm_resources()["default"].queue.window == 1
        assert await k2.spawn(agent).wait() == "Hello world"  # not closed under it
    await backend.close()


# -- 9. backend options are validated ---------------------------------------------------------


def test_an_openai_option_typo_names_the_key(stub: OpenAIStub) -> None:
    with pytest.raises(ConfigError, match="unknown option") as info:
        openai_backend(stub, options={"backof_base_s": 1})
    assert info.value.key == "options.backof_base_s"
    with pytest.raises(ConfigError) as info:
        openai_backend(stub, options={"stream_options": ["include_usage"]})
    assert info.value.key is not None and info.value.key.startswith("options.stream_options")


async def test_stream_options_false_reaches_a_server_that_rejects_them(
        stub: OpenAIStub) -> None:
    stub.reset()
    stub.reject_fields = {"stream_options"}
    try:
        async def agent(ctx: aios.Context) -> aios.ChatResult:
            return await ctx.llm.chat(USER)

        async with aios.Kernel(openai_cfg(stub)) as k:
            with pytest.raises(LLMError, match="stream_options"):
                await k.spawn(agent).wait()
        stub.reset(StubReply(events=[stub_chunk("Hello"), stub_chunk(" world"),
                                     stub_chunk(finish="stop")]))
        async with aios.Kernel(openai_cfg(stub, options={"stream_options": False})) as k:
            result = await k.spawn(agent).wait()
        assert result.text == "Hello world"
        assert result.usage.completion_tokens == 2  # estimated: the server sent none
        assert "stream_options" not in stub.bodies[-1]
    finally:
        stub.reject_fields = set()


async def test_stream_options_given_as_a_dict_are_sent_as_given(stub: OpenAIStub) -> None:
    wanted = {"include_usage": True, "continuous_usage_stats": True}
    # vLLM's continuous usage: a running count on every chunk replaces the estimate.
    running = [dict(stub_chunk("Hello there"), usage={"prompt_tokens": 2,
                                                      "completion_tokens": 3}),
               dict(stub_chunk("!"), usage={"prompt_tokens": 2, "completion_tokens": 4}),
               stub_chunk(finish="stop")]
    stub.reset(StubReply(events=running))
    backend = openai_backend(stub, options={"stream_options": wanted})
    chunks = [c async for c in backend.generate(GenerationRequest(
        call=LLMChat(messages=USER), request_id="r"))]
    assert stub.bodies[-1]["stream_options"] == wanted
    assert sum(c.n_tokens for c in chunks[:-1]) == 4  # the running count, not the estimate
    await backend.close()


# -- 10. the door refuses what a backend cannot do ----------------------------------------------


async def test_the_sim_refuses_json_mode_at_the_door() -> None:
    cfg = aios.KernelConfig(llm=[aios.LLMConfig(options={"time_scale": 0})])

    async def agent(ctx: aios.Context) -> None:
        await ctx.llm.chat(USER, response_format={"type": "json_object"})

    async def streaming(ctx: aios.Context) -> None:
        async with ctx.llm.stream(USER, response_format={"type": "json_object"}) as s:
            async for _ in s:
                pass

    async with aios.Kernel(cfg) as k:
        for fn in (agent, streaming):
            with pytest.raises(InvalidSyscall, match="response_format"):
                await k.spawn(fn).wait()
        assert k.llm_resources()["default"].queue.admissions == 0


@pytest.mark.parametrize("part", [
    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
    {"type": "input_audio", "input_audio": {"data": "AAAA", "format": "wav"}},
])
async def test_the_sim_refuses_content_it_cannot_read_at_the_door(part: dict[str, Any]) -> None:
    cfg = aios.KernelConfig(llm=[aios.LLMConfig(options={"time_scale": 0})])
    msgs = [{"role": "user", "content": [{"type": "text", "text": "What is this?"}, part]}]

    async def agent(ctx: aios.Context) -> None:
        await ctx.llm.chat(msgs)

    async with aios.Kernel(cfg) as k:
        with pytest.raises(InvalidSyscall, match=rf"messages\.0\.content: '{part['type']}' "
                                                 "parts are not supported by the sim"):
            await k.spawn(agent).wait()
        assert k.llm_resources()["default"].queue.admissions == 0


async def test_tool_choice_that_cannot_be_honoured_is_refused_and_required_is_followed(
) -> None:
    cfg = aios.KernelConfig(llm=[aios.LLMConfig(options={"time_scale": 0})])
    tools = [{"type": "function", "function": {
        "name": "clock", "parameters": {"type": "object", "properties": {}}}}]
    after_tool = [*USER, {"role": "assistant", "content": None, "tool_calls": [
        {"id": "c", "type": "function", "function": {"name": "clock", "arguments": "{}"}}]},
        {"role": "tool", "tool_call_id": "c", "content": "noon"}]

    def agent(**chat: Any) -> Any:
        async def run(ctx: aios.Context) -> aios.ChatResult:
            return await ctx.llm.chat(after_tool, **chat)
        return run

    async with aios.Kernel(cfg) as k:
        named = {"type": "function", "function": {"name": "calendar"}}
        with pytest.raises(InvalidSyscall, match=r"tool_choice\.function\.name"):
            await k.spawn(agent(tools=tools, tool_choice=named)).wait()
        with pytest.raises(InvalidSyscall, match="without tools"):
            await k.spawn(agent(tool_choice="required")).wait()
        forced = await k.spawn(agent(tools=tools, tool_choice="required")).wait()
    assert forced.finish_reason == "tool_calls" and forced.tool_calls[0].name == "clock"
