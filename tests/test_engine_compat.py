"""Engines that refuse what the kernel may send (issue 10): ``priority`` and the
continuation fields. The server is :func:`aios.testing.openai_stub`; each refusal is
learnt once per backend instance, logged once, and the request goes again at once
without the field (not counted as a retry)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import aios
from aios.config import LLMConfig
from aios.errors import LLMError
from aios.llm.base import Chunk, GenerationRequest, Resume
from aios.llm.openai_backend import OpenAIBackend
from aios.syscalls import LLMChat
from aios.testing import OpenAIStub, StubReply, openai_stub, stub_chunk

USER = [{"role": "user", "content": "Say hello."}]
FAST = {"backoff_base_s": 0.0001, "backoff_cap_s": 0.001, "seed": 7}
HELLO = [stub_chunk("Hello"), stub_chunk(" world"), stub_chunk(finish="stop"),
         stub_chunk(usage={"prompt_tokens": 5, "completion_tokens": 2}, choices=False)]


class Events:
    """A logger recording (level, event, fields)."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, dict[str, Any]]] = []

    def __getattr__(self, level: str) -> Any:
        def log(event: str, **kw: Any) -> None:
            self.seen.append((level, event, kw))
        return log

    def named(self, event: str) -> list[dict[str, Any]]:
        return [kw for _, e, kw in self.seen if e == event]


@pytest.fixture
def stub() -> Iterator[OpenAIStub]:
    with openai_stub() as s:
        yield s


def backend(stub: OpenAIStub, **llm: Any) -> tuple[OpenAIBackend, Events]:
    b = OpenAIBackend(LLMConfig(backend="openai", base_url=stub.base_url, model="stub-model",
                                options=FAST, **llm))
    b.log = events = Events()
    return b, events


async def collect(b: OpenAIBackend, priority: int = 3, resume: Resume | None = None,
                  **chat: Any) -> list[Chunk]:
    req = GenerationRequest(call=LLMChat(messages=USER, **chat), request_id="r",
                            priority=priority, resume=resume)
    return [c async for c in b.generate(req)]


def text(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


async def test_a_400_naming_priority_is_learnt_once_and_the_request_goes_again(
        stub: OpenAIStub) -> None:
    stub.reject_fields = {"priority"}
    b, events = backend(stub, priority_passthrough="lower_first")
    assert text(await collect(b)) == "Hello world"
    assert [body.get("priority") for body in stub.bodies] == [3, None]
    assert text(await collect(b)) == "Hello world"  # not sent again: one request
    assert len(stub.bodies) == 3
    (logged,) = events.named("llm.priority_unsupported")
    assert logged["status"] == 400 and "priority" in logged["error"]
    stats = b.stats()
    assert (stats["requests"], stats["retries"], stats["errors"]) == (2, 0, 0)
    await b.close()


async def test_any_422_while_priority_is_sent_turns_it_off(stub: OpenAIStub) -> None:
    # FastAPI servers name the field in a list the message may not quote.
    stub.reset(StubReply(422, {"detail": [{"loc": ["body"], "msg": "Extra inputs"}]}))
    b, events = backend(stub, priority_passthrough="higher_first")
    assert text(await collect(b)) == "Hello world"
    assert [body.get("priority") for body in stub.bodies] == [-3, None]
    assert len(events.named("llm.priority_unsupported")) == 1
    assert b.stats()["retries"] == 0
    await b.close()


async def test_another_400_is_an_error_and_priority_stays_on(stub: OpenAIStub) -> None:
    stub.reset(StubReply(400, {"error": {"message": "temperature must be <= 2"}}))
    b, events = backend(stub, priority_passthrough="lower_first")
    with pytest.raises(LLMError, match="temperature"):
        await collect(b)
    assert len(stub.bodies) == 1
    assert text(await collect(b)) == "Hello world"
    assert stub.bodies[-1]["priority"] == 3
    assert events.named("llm.priority_unsupported") == []
    await b.close()


async def test_a_422_without_priority_sent_is_not_taken_for_a_refusal(
        stub: OpenAIStub) -> None:
    stub.reset(StubReply(422, {"detail": "bad tools"}))
    b, events = backend(stub)
    with pytest.raises(LLMError, match="422"):
        await collect(b)
    assert len(stub.bodies) == 1 and events.seen == []
    await b.close()


async def test_refused_continuation_resumes_by_recompute(stub: OpenAIStub) -> None:
    stub.reject_fields = {"continue_final_message"}
    stub.reset(StubReply(), StubReply(events=HELLO))
    b, events = backend(stub, supports_continuation=True)
    assert b.capabilities.continuation
    chunks = await collect(b, resume=Resume(text="Hello", completion_tokens=1), max_tokens=10)
    refused, again = stub.bodies
    assert refused["continue_final_message"] is True and refused["max_tokens"] == 9
    # Sent as new: the original prompt and budget; what the kernel has is skipped.
    assert again["messages"] == USER and again["max_tokens"] == 10
    assert "continue_final_message" not in again and "add_generation_prompt" not in again
    assert text(chunks) == " world"
    final = chunks[-1]
    assert final.usage is not None
    assert (final.usage.prompt_tokens, final.usage.completion_tokens) == (6, 1)
    assert sum(c.n_tokens for c in chunks) == 1
    assert not b.capabilities.continuation
    assert len(events.named("llm.continuation_unsupported")) == 1
    # Learnt: the next resume goes out as new at once.
    stub.reset(StubReply(events=HELLO))
    assert text(await collect(b, resume=Resume(text="Hel", completion_tokens=1))) == "lo world"
    assert len(stub.bodies) == 1
    assert len(events.named("llm.continuation_unsupported")) == 1
    await b.close()


async def test_both_refused_by_bare_422s_are_dropped_one_at_a_time(stub: OpenAIStub) -> None:
    bare = StubReply(422, {"detail": "unprocessable"})
    stub.reset(bare, bare, StubReply(events=HELLO))
    b, events = backend(stub, supports_continuation=True, priority_passthrough="lower_first")
    chunks = await collect(b, resume=Resume(text="Hello", completion_tokens=1))
    assert [("priority" in x, "continue_final_message" in x) for x in stub.bodies] == [
        (True, True), (False, True), (False, False)]
    assert text(chunks) == " world"
    assert len(events.named("llm.priority_unsupported")) == 1
    assert len(events.named("llm.continuation_unsupported")) == 1
    await b.close()


async def test_a_kernel_agent_never_sees_the_refusal(stub: OpenAIStub) -> None:
    stub.reject_fields = {"priority"}
    cfg = aios.KernelConfig(llm=[aios.LLMConfig(
        backend="openai", base_url=stub.base_url, model="stub-model", options=FAST,
        priority_passthrough="lower_first")])

    async def agent(ctx: aios.Context) -> str:
        return (await ctx.llm.chat(USER)).text

    async with aios.Kernel(cfg) as k:
        assert [await k.spawn(agent).wait() for _ in range(2)] == ["Hello world"] * 2
    assert ["priority" in body for body in stub.bodies] == [True, False, False]
