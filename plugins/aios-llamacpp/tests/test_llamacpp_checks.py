"""What the embedded model cannot do is refused with InvalidSyscall naming the field.

Before anything is queued (the kernel calls ``backend.check`` at the door) or generated
(the backend checks again): never forward a field and drop it.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from test_llamacpp_backend import run
from test_llamacpp_tools import ASK, CLOCK, SMALL_SCHEMA, WEATHER, chat, json_schema

from aios.config import LLMConfig
from aios.errors import InvalidSyscall
from aios.llm.base import LLMBackend
from aios_llamacpp import LlamaCppBackend


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


@pytest.mark.parametrize(
    ("kw", "field"),
    [
        ({"extra": {"n": 2}}, "n:"),
        ({"extra": {"logprobs": True}}, "logprobs"),
        ({"extra": {"top_logprobs": 3}}, "top_logprobs"),
        ({"extra": {"presence_penalty": 0.5}}, "presence_penalty"),
        ({"extra": {"max_token": 3}}, "max_token:"),
        ({"extra": {"top_k": -1}}, "top_k"),
        ({"extra": {"min_p": "x"}}, "min_p"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": "any"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function",
                                              "function": {"name": "nope"}}},
         "tool_choice.function.name"),
        ({"response_format": {"type": "grammar"}}, "response_format.type"),
        ({"response_format": {"type": "json_schema"}}, "response_format.json_schema"),
        ({"tools": [WEATHER], "tool_choice": "required",
          "response_format": {"type": "json_object"}}, "response_format"),
        ({"messages": [{"role": "user", "content": [
            {"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages[0].content[0]"),
    ],
)
def test_what_the_model_cannot_do_is_refused_naming_the_field(
    kw: dict[str, Any], field: str
) -> None:
    b = LlamaCppBackend(LLMConfig(backend="llamacpp"))
    with pytest.raises(InvalidSyscall, match=f"^llamacpp: {re.escape(field)}") as info:
        b.check(chat(**kw))
    assert info.value.syscall is not None


def test_a_tool_that_is_not_a_function_is_refused_before_any_backend() -> None:
    # LLMChat itself refuses it (the door's one validation), so no backend sees it.
    with pytest.raises(ValueError, match=r"tools\.0"):
        chat(tools=[{"type": "retrieval"}])


def test_what_the_model_can_do_passes_the_check() -> None:
    b = LlamaCppBackend(LLMConfig(backend="llamacpp"))
    for kw in (
        {},
        {"extra": {"n": 1, "logprobs": False, "top_k": 5, "min_p": 0.1,
                   "parallel_tool_calls": False, "presence_penalty": 0}},
        {"tools": [WEATHER], "tool_choice": "auto"},
        {"tools": [WEATHER], "tool_choice": "none"},
        {"tools": [WEATHER, CLOCK], "tool_choice": {"type": "function",
                                                    "function": {"name": "get_time"}}},
        {"response_format": {"type": "json_object"}},
        {"response_format": json_schema(SMALL_SCHEMA)},
        {"messages": [{"role": "developer", "content": "x"}, *ASK]},
    ):
        b.check(chat(**kw))
    assert LLMBackend.check is not LlamaCppBackend.check


async def test_refused_before_anything_is_generated(tiny: LlamaCppBackend) -> None:
    with pytest.raises(InvalidSyscall, match="n: 3"):
        await run(tiny, chat(extra={"n": 3}))
    assert tiny.stats()["generations"] == 0
    assert tiny.stats()["evaluated_tokens"] == 0


async def test_refused_at_the_kernels_door(tiny_gguf: Path, tmp_path: Path) -> None:
    import aios

    async def agent(ctx: aios.Context) -> aios.ChatResult:
        return await ctx.llm.chat(ASK, max_tokens=5, logprobs=True)

    llm = aios.LLMConfig(backend="llamacpp", options={"model_path": str(tiny_gguf)})
    cfg = aios.KernelConfig(llm=[llm], state_path=str(tmp_path / "state.db"))
    async with aios.Kernel(cfg) as k:
        with pytest.raises(aios.InvalidSyscall, match="logprobs"):
            await k.spawn(agent).wait()
        assert k.llm_resources()["default"].backend.stats()["generations"] == 0
