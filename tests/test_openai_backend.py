"""The ``openai`` backend against real HTTP on 127.0.0.1.

Two servers: ``aios sim-serve`` (the simulated engine behind an OpenAI-compatible API, run
as a subprocess) for the end-to-end behaviour, and a scripted stub (Starlette + uvicorn in a
thread) for what a well-behaved engine never does: failures, malformed streams, odd headers,
and checking every request body field by field.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import pytest
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

import aios
from aios.config import LLMConfig
from aios.errors import (
    BackendUnavailable,
    BadResponse,
    ContextWindowExceeded,
    LLMError,
    ModelNotFound,
    RateLimited,
)
from aios.llm.base import Chunk, GenerationRequest, Resume
from aios.llm.openai_backend import OpenAIBackend
from aios.syscalls import LLMChat, ToolCallRequest, Usage
from aios.testing import SimServer, sim_server

# Retries in these tests must cost microseconds, not the production quarter second.
FAST = {"backoff_base_s": 0.0001, "backoff_cap_s": 0.001, "seed": 7}
USER = [{"role": "user", "content": "Say hello."}]


# --------------------------------------------------------------------------------------
# The scripted stub server
# --------------------------------------------------------------------------------------


@dataclass
class Reply:
    """One scripted answer to POST /v1/chat/completions."""

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    events: list[str] | None = None  # SSE data payloads; None: a default good stream
    done: bool = True  # end with data: [DONE]
    crash: bool = False  # drop the connection after the events (no chunked terminator)


def sse(
    content: str | None = None,
    *,
    finish: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    usage: dict[str, Any] | None = None,
    choices: bool = True,
) -> str:
    """One OpenAI ``chat.completion.chunk`` as JSON."""
    delta: dict[str, Any] = {}
    if content is not None:
        delta["content"] = content
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    chunk: dict[str, Any] = {
        "id": "chatcmpl-stub",
        "object": "chat.completion.chunk",
        "created": 0,
        "model": "stub-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}] if choices else [],
    }
    if usage is not None:
        chunk["usage"] = usage
    return json.dumps(chunk)


def good_stream(words: list[str], *, prompt: int = 5, cached: int | None = None) -> list[str]:
    usage: dict[str, Any] = {
        "prompt_tokens": prompt,
        "completion_tokens": len(words),
        "total_tokens": prompt + len(words),
    }
    if cached is not None:
        usage["prompt_tokens_details"] = {"cached_tokens": cached}
    return [
        sse(content="", choices=True),  # the role chunk real servers send first
        *(sse(w) for w in words),
        sse(finish="stop"),
        sse(usage=usage, choices=False),
    ]


class Stub:
    """Records request bodies and plays back a script, one reply per chat request."""

    def __init__(self) -> None:
        self.bodies: list[dict[str, Any]] = []
        self.script: list[Reply] = []
        self.models = ["other-model", "stub-model"]
        self.base_url = ""
        self._lock = threading.Lock()

    def reset(self, *script: Reply) -> None:
        with self._lock:
            self.bodies.clear()
            self.script = list(script)

    def _next(self, body: dict[str, Any]) -> Reply:
        with self._lock:
            self.bodies.append(body)
            return self.script.pop(0) if self.script else Reply()

    async def chat(self, request: Request) -> Response:
        reply = self._next(await request.json())
        if reply.status != 200:
            return JSONResponse(reply.body or {}, status_code=reply.status, headers=reply.headers)
        events = reply.events if reply.events is not None else good_stream(["Hello", " world"])

        async def body() -> AsyncIterator[str]:
            for data in events:
                yield f"data: {data}\n\n"
            if reply.crash:
                # uvicorn aborts the connection mid-body: the client sees a broken chunked
                # transfer, which is what a crashed engine looks like on the wire.
                raise RuntimeError("stub engine crashed")
            if reply.done:
                yield "data: [DONE]\n\n"

        return StreamingResponse(body(), media_type="text/event-stream", headers=reply.headers)

    async def list_models(self, request: Request) -> Response:
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "stub"} for m in self.models]
        return JSONResponse({"object": "list", "data": data})


@pytest.fixture(scope="module")
def stub() -> Iterator[Stub]:
    state = Stub()
    app = Starlette(
        routes=[
            Route("/v1/chat/completions", state.chat, methods=["POST"]),
            Route("/v1/models", state.list_models, methods=["GET"]),
        ]
    )
    config = uvicorn.Config(
        app, host="127.0.0.1", port=0, log_level="critical", lifespan="off", ws="none"
    )
    server = uvicorn.Server(config)
    # A thread of its own: module scope without tying the server to one test's event loop.
    thread = threading.Thread(target=server.run, name="stub-openai", daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            pytest.fail("stub server did not start")
        time.sleep(0.005)
    port = server.servers[0].sockets[0].getsockname()[1]
    state.base_url = f"http://127.0.0.1:{port}/v1"
    yield state
    server.should_exit = True
    thread.join(timeout=10)


def make_backend(base_url: str, **overrides: Any) -> OpenAIBackend:
    options = dict(FAST)
    options.update(overrides.pop("options", {}))
    fields: dict[str, Any] = {
        "backend": "openai",
        "model": "stub-model",
        "base_url": base_url,
        "max_retries": 3,
        "timeout_s": 5.0,
        "options": options,
    }
    fields.update(overrides)
    return OpenAIBackend(LLMConfig(**fields))


def request(*, priority: int = 0, resume: Resume | None = None, **chat: Any) -> GenerationRequest:
    chat.setdefault("messages", USER)
    return GenerationRequest(
        call=LLMChat(**chat), request_id="r1", priority=priority, resume=resume
    )


async def collect(backend: OpenAIBackend, req: GenerationRequest) -> list[Chunk]:
    return [chunk async for chunk in backend.generate(req)]


async def drain_into(got: list[str], backend: OpenAIBackend, req: GenerationRequest) -> None:
    """Like collect, but keeps what arrived before a failure."""
    async for chunk in backend.generate(req):
        got.append(chunk.text)


@pytest.fixture
async def backend_for(stub: Stub) -> AsyncIterator[Callable[..., OpenAIBackend]]:
    """Build started backends against the stub; close them all at teardown."""
    made: list[OpenAIBackend] = []

    def build(**overrides: Any) -> OpenAIBackend:
        backend = make_backend(stub.base_url, **overrides)
        made.append(backend)
        return backend

    yield build
    for backend in made:
        await backend.close()


# --------------------------------------------------------------------------------------
# Request shape
# --------------------------------------------------------------------------------------


async def test_every_parameter_reaches_the_server(
    stub: Stub, backend_for: Callable[..., OpenAIBackend]
) -> None:
    stub.reset()
    backend = backend_for()
    await backend.start()
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "Look a word up.",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ]
    schema = {
        "type": "json_schema",
        "json_schema": {"name": "answer", "schema": {"type": "object"}, "strict": True},
    }
    req = request(
        max_tokens=17,
        temperature=0.3,
        top_p=0.9,
        stop=["\n\n", "END"],
        seed=1234,
        tools=tools,
        tool_choice={"type": "function", "function": {"name": "lookup"}},
        response_format=schema,
        extra={"repetition_penalty": 1.1, "top_k": 20},
    )
    await collect(backend, req)
    (body,) = stub.bodies
    assert body["model"] == "stub-model"
    assert body["messages"] == USER
    assert body["stream"] is True
    assert body["stream_options"] == {"include_usage": True}
    assert body["max_tokens"] == 17
    assert body["temperature"] == 0.3
    assert body["top_p"] == 0.9
    assert body["stop"] == ["\n\n", "END"]
    assert body["seed"] == 1234
    assert body["tools"] == tools
    assert body["tool_choice"] == {"type": "function", "function": {"name": "lookup"}}
    assert body["response_format"] == schema
    assert body["repetition_penalty"] == 1.1
    assert body["top_k"] == 20
    # Priority passthrough is off by default: nothing the server did not ask for.
    assert "priority" not in body


async def test_unset_parameters_are_not_sent(
    stub: Stub, backend_for: Callable[..., OpenAIBackend]
) -> None:
    stub.reset()
    await collect(backend_for(), request())
    (body,) = stub.bodies
    for key in ("max_tokens", "temperature", "top_p", "stop", "seed", "tools", "tool_choice"):
        assert key not in body


@pytest.mark.parametrize(
    ("mode", "priority", "sent"),
    [("lower_first", 3, 3), ("higher_first", 3, -3), ("lower_first", -2, -2), ("off", 3, None)],
)
async def test_priority_passthrough(
    stub: Stub,
    backend_for: Callable[..., OpenAIBackend],
    mode: str,
    priority: int,
    sent: int | None,
) -> None:
    stub.reset()
    await collect(backend_for(priority_passthrough=mode), request(priority=priority))
    (body,) = stub.bodies
    assert body.get("priority") == sent


async def test_continuation_request_shape(
    stub: Stub, backend_for: Callable[..., OpenAIBackend]
) -> None:
    stub.reset(Reply(events=good_stream([" there", "."])))
    backend = backend_for(supports_continuation=True)
    assert backend.capabilities.continuation is True
    resume = Resume(text="Hello", completion_tokens=4)
    chunks = await collect(backend, request(max_tokens=10, resume=resume))
    (body,) = stub.bodies
    assert body["messages"] == [*USER, {"role": "assistant", "content": "Hello"}]
    assert body["continue_final_message"] is True
    assert body["add_generation_prompt"] is False
    assert body["max_tokens"] == 6
    # Only the new text comes back, not the resumed prefix.
    assert "".join(c.text for c in chunks) == " there."


async def test_resume_without_continuation_support_is_refused(
    stub: Stub, backend_for: Callable[..., OpenAIBackend]
) -> None:
    stub.reset()
    backend = backend_for()
    assert backend.capabilities.continuation is False
    req = request(resume=Resume(text="Hel"))
    with pytest.raises(LLMError, match="supports_continuation") as info:
        await collect(backend, req)
    assert info.value.syscall is req.call
    assert stub.bodies == []


async def test_resume_with_no_budget_left_does_not_call_the_server(
    stub: Stub, backend_for: Callable[..., OpenAIBackend]
) -> None:
    stub.reset()
    backend = backend_for(supports_continuation=True)
    chunks = await collect(backend, request(max_tokens=4, resume=Resume("abcd", (), None, 4)))
    assert [c.finish_reason for c in chunks] == ["length"]
    assert stub.bodies == []


def test_capabilities() -> None:
    backend = make_backend("http://127.0.0.1:1/v1")
    caps = backend.capabilities
    assert (caps.token_boundary, caps.continuation, caps.kv_snapshot, caps.engine_queue) == (
        True,
        False,
        False,
        True,
    )
    other = make_backend("http://127.0.0.1:1/v1", supports_continuation=True)
    assert other.capabilities.continuation is True
    # The class-level view stays usable without a config (plugin listings read it).
    assert OpenAIBackend.capabilities.token_boundary is True


# --------------------------------------------------------------------------------------
# Response handling
# --------------------------------------------------------------------------------------


async def test_stream_token_by_token_with_usage(
    stub: Stub, backend_for: Callable[..., OpenAIBackend]
) -> None:
    stub.reset(Reply(events=good_stream(["One", " two", " three"], prompt=9, cached=4)))
    backend = backend_for()
    chunks = await collect(backend, request())
    *tokens, final = chunks
    # The events of one read come as one chunk (as many as the read held): the text and
    # the count are what matter, not how they were cut.
    assert "".join(c.text for c in tokens) == "One two three"
    assert sum(c.n_tokens for c in tokens) == 3
    assert all(c.finish_reason is None for c in tokens)
    assert final.text == ""
    assert final.finish_reason == "stop"
    assert final.usage == Usage(prompt_tokens=9, completion_tokens=3, cached_tokens=4)
    assert final.model == "stub-model"
    assert final.tool_calls is None
    stats = backend.stats()
    assert stats["requests"] == 1
    assert stats["tokens"] == 3
    assert stats["retries"] == stats["errors"] == 0


async def test_parallel_tool_calls_are_assembled_by_index(
    stub: Stub, backend_for: Callable[..., OpenAIBackend]
) -> None:
    def tc(index: int, **kw: Any) -> list[dict[str, Any]]:
        function = {k: v for k, v in kw.items() if k in ("name", "arguments")}
        call: dict[str, Any] = {"index": index, "function": function}
        if "id" in kw:
            call.update(id=kw["id"], type="function")
        return [call]

    events = [
        sse(tool_calls=tc(0, id="call_a", name="lookup", arguments="")),
        sse(tool_calls=tc(1, id="call_b", name="weather", arguments='{"ci')),
        sse(tool_calls=tc(0, arguments='{"q": ')),
        sse(tool_calls=tc(1, arguments='ty": "Oslo"}')),
        sse(tool_calls=tc(0, arguments='"kernel"}')),
        sse(finish="tool_calls"),
        sse(usage={"prompt_tokens": 3, "completion_tokens": 12, "total_tokens": 15}, choices=False),
    ]
    stub.reset(Reply(events=events))
    chunks = await collect(backend_for(), request())
    (final,) = chunks  # no content: the only chunk is the final one
    assert final.finish_reason == "tool_calls"
    assert final.tool_calls == [
        ToolCallRequest(id="call_a", name="lookup", arguments='{"q": "kernel"}'),
        ToolCallRequest(id="call_b", name="weather", arguments='{"city": "Oslo"}'),
    ]


async def test_missing_usage_falls_back_to_counted_deltas(
    stub: Stub, backend_for: Callable[..., OpenAIBackend]
) -> None:
    # Servers that ignore stream_options send no usage chunk at all.
    stub.reset(Reply(events=[sse("a"), sse("b"), sse(finish="length")]))
    *_, final = await collect(backend_for(), request())
    assert final.finish_reason == "length"
    assert final.usage == Usage(completion_tokens=2)


async def test_truncated_stream_is_bad_response(
    stub: Stub, backend_for: Callable[..., OpenAIBackend]
) -> None:
    stub.reset(Reply(events=[sse("Hel"), sse("lo")], done=False))
    backend = backend_for()
    req = request()
    got: list[str] = []
    with pytest.raises(BadResponse, match="finish_reason") as info:
        await drain_into(got, backend, req)
    assert "".join(got) == "Hello"
    assert info.value.syscall is req.call
    assert len(stub.bodies) == 1
    assert backend.stats()["errors"] == 1


async def test_invalid_json_chunk_is_bad_response(
    stub: Stub, backend_for: Callable[..., OpenAIBackend]
) -> None:
    stub.reset(Reply(events=[sse("ok"), "{not json", sse(finish="stop")]))
    with pytest.raises(BadResponse):
        await collect(backend_for(), request())
    assert len(stub.bodies) == 1  # malformed output is not retried


async def test_crash_after_tokens_is_not_retried(
    stub: Stub, backend_for: Callable[..., OpenAIBackend]
) -> None:
    stub.reset(Reply(events=[sse("Hel"), sse("lo")], crash=True))
    backend = backend_for()
    got: list[str] = []
    with pytest.raises(BackendUnavailable, match="mid-stream"):
        await drain_into(got, backend, request())
    assert "".join(got) == "Hello"
    assert len(stub.bodies) == 1  # a retry would have duplicated "Hello"
    assert backend.stats()["retries"] == 0


async def test_crash_before_the_first_token_is_retried(
    stub: Stub, backend_for: Callable[..., OpenAIBackend]
) -> None:
    stub.reset(Reply(events=[sse(content="")], crash=True))
    backend = backend_for()
    chunks = await collect(backend, request())
    assert "".join(c.text for c in chunks) == "Hello world"
    assert len(stub.bodies) == 2
    assert backend.stats()["retries"] == 1


# --------------------------------------------------------------------------------------
# Retries and error mapping
# --------------------------------------------------------------------------------------


async def test_503_twice_then_success(
    stub: Stub, backend_for: Callable[..., OpenAIBackend]
) -> None:
    busy = Reply(status=503, body={"error": {"message": "engine overloaded"}})
    stub.reset(busy, busy)
    backend = backend_for()
    chunks = await collect(backend, request())
    assert "".join(c.text for c in chunks) == "Hello world"
    assert sum(1 for c in chunks if c.finish_reason) == 1
    assert len(stub.bodies) == 3
    stats = backend.stats()
    assert (stats["requests"], stats["retries"], stats["errors"]) == (1, 2, 0)


async def test_5xx_past_max_retries_is_backend_unavailable(
    stub: Stub, backend_for: Callable[..., OpenAIBackend]
) -> None:
    stub.reset(*[Reply(status=500, body={"error": {"message": "boom"}})] * 5)
    backend = backend_for(max_retries=2)
    req = request()
    with pytest.raises(BackendUnavailable) as info:
        await collect(backend, req)
    assert stub.base_url in str(info.value)
    assert "boom" in str(info.value)
    assert info.value.syscall is req.call
    assert len(stub.bodies) == 3
    assert backend.stats()["retries"] == 2


async def test_a_429_is_reported_at_once_for_the_kernel_to_retry(
    stub: Stub, backend_for: Callable[..., OpenAIBackend]
) -> None:
    stub.reset(Reply(status=429, body={"error": {"message": "slow down"}},
                     headers={"retry-after-ms": "5"}))
    backend = backend_for(max_retries=3)
    req = request()
    with pytest.raises(RateLimited, match="slow down") as info:
        await collect(backend, req)
    assert info.value.retry_after == pytest.approx(0.005)
    assert info.value.syscall is req.call
    assert len(stub.bodies) == 1  # the kernel is the one retry layer for rate limits
    assert backend.stats()["retries"] == 0


def _kernel_on(backend: OpenAIBackend, **llm: Any) -> aios.Kernel:
    cfg = aios.KernelConfig(llm=[aios.LLMConfig(backend="openai", **llm)])
    return aios.Kernel(cfg, backends={"default": backend})


async def _ask(ctx: aios.Context) -> str:
    return (await ctx.llm.chat(USER, max_tokens=8)).text


async def test_kernel_retries_a_429_exactly_max_retries_times_narrowing_at_the_first(
    stub: Stub, backend_for: Callable[..., OpenAIBackend]
) -> None:
    limited = Reply(status=429, body={"error": {"message": "queue full"}},
                    headers={"retry-after-ms": "5"})
    stub.reset(*[limited] * 10)
    backend = backend_for(max_retries=3)
    async with _kernel_on(backend, max_concurrency=4, max_retries=3) as k:
        q = k.llm_resources()["default"].queue
        with pytest.raises(RateLimited, match="queue full") as info:
            await k.spawn(_ask).wait()
        assert len(stub.bodies) == 4      # one attempt and exactly 3 retries
        assert q.rejections == 4
        assert q.limit < q.window          # narrowed (AIMD)
    assert info.value.retry_after == pytest.approx(0.005)
    assert backend.stats()["retries"] == 0


async def test_kernel_honours_retry_after(
    stub: Stub, backend_for: Callable[..., OpenAIBackend]
) -> None:
    stub.reset(Reply(status=429, body={"error": {"message": "slow down"}},
                     headers={"Retry-After": "0.2"}))
    backend = backend_for()
    async with _kernel_on(backend) as k:
        start = time.monotonic()
        assert await k.spawn(_ask).wait() == "Hello world"
        assert time.monotonic() - start >= 0.2  # the wait came from the header
    assert len(stub.bodies) == 2


async def test_retry_after_beyond_the_maximum_fails_with_the_servers_value(
    stub: Stub, backend_for: Callable[..., OpenAIBackend]
) -> None:
    stub.reset(Reply(status=429, body={}, headers={"Retry-After": "3600"}))
    backend = backend_for()
    async with _kernel_on(backend, max_retry_after_s=5) as k:
        with pytest.raises(RateLimited, match="3600") as info:
            await k.spawn(_ask).wait()
    assert info.value.retry_after == 3600
    assert len(stub.bodies) == 1


async def test_unknown_model_lists_the_available_ones(
    stub: Stub, backend_for: Callable[..., OpenAIBackend]
) -> None:
    body = {"error": {"message": "The model `nope` does not exist.", "code": "model_not_found"}}
    stub.reset(Reply(status=404, body=body))
    backend = backend_for(model="nope")
    req = request()
    with pytest.raises(ModelNotFound, match="does not exist") as info:
        await collect(backend, req)
    assert info.value.available == ["other-model", "stub-model"]
    assert "stub-model" in str(info.value)
    assert info.value.syscall is req.call
    assert len(stub.bodies) == 1


@pytest.mark.parametrize(
    "message",
    [
        # vLLM / OpenAI
        "This model's maximum context length is 2048 tokens. However, you requested 4000 "
        "tokens (3000 in the messages, 1000 in the completion).",
        # llama.cpp server
        "the request exceeds the available context size, try increasing it",
        # SGLang
        "The input (5000 tokens) is longer than the model's context length (4096 tokens).",
    ],
)
async def test_context_length_400_is_context_window_exceeded(
    stub: Stub, backend_for: Callable[..., OpenAIBackend], message: str
) -> None:
    stub.reset(Reply(status=400, body={"error": {"message": message, "type": "invalid_request"}}))
    req = request()
    with pytest.raises(ContextWindowExceeded) as info:
        await collect(backend_for(), req)
    assert message[:30] in str(info.value)
    assert info.value.syscall is req.call
    assert len(stub.bodies) == 1


async def test_other_4xx_is_llm_error_with_the_server_message(
    stub: Stub, backend_for: Callable[..., OpenAIBackend]
) -> None:
    stub.reset(Reply(status=422, body={"error": {"message": "temperature must be <= 2"}}))
    with pytest.raises(LLMError, match="temperature must be <= 2") as info:
        await collect(backend_for(), request())
    assert type(info.value) is LLMError
    assert len(stub.bodies) == 1  # a client error is never retried


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.parametrize("model", ["stub-model", ""])
async def test_unreachable_server_is_backend_unavailable_quickly(model: str) -> None:
    url = f"http://127.0.0.1:{_free_port()}/v1"
    backend = make_backend(url, max_retries=2, model=model)
    await backend.start()
    req = request()
    start = time.monotonic()
    try:
        with pytest.raises(BackendUnavailable) as info:
            await collect(backend, req)
    finally:
        await backend.close()
    assert time.monotonic() - start < 3.0
    assert url in str(info.value)
    assert info.value.syscall is req.call
    assert backend.stats()["retries"] == 2


def test_backoff_is_full_jitter_capped_and_seeded() -> None:
    def delays(seed: int) -> list[float]:
        backend = make_backend(
            "http://127.0.0.1:1/v1",
            options={"backoff_base_s": 0.25, "backoff_cap_s": 8.0, "seed": seed},
        )
        return [backend._delay(attempt, None) for attempt in range(12)]

    first = delays(1)
    assert first == delays(1)
    assert first != delays(2)
    for attempt, delay in enumerate(first):
        assert 0.0 <= delay <= min(8.0, 0.25 * 2**attempt)


async def test_close_is_idempotent_and_generate_starts_lazily(stub: Stub) -> None:
    stub.reset()
    backend = make_backend(stub.base_url)
    chunks = await collect(backend, request())  # no start(): created on first use
    assert chunks[-1].finish_reason == "stop"
    await backend.close()
    await backend.close()


async def test_stopping_between_tokens_releases_the_stream(
    stub: Stub, backend_for: Callable[..., OpenAIBackend]
) -> None:
    # Preemption: the kernel closes the iterator at a token boundary; the connection must be
    # released (an unclosed response would surface as a ResourceWarning, an error here).
    stub.reset(Reply(events=good_stream(["a", "b", "c", "d"])), Reply())
    backend = backend_for()
    stream = backend.generate(request())
    first = await anext(stream)
    await stream.aclose()  # type: ignore[attr-defined]
    assert first.text.startswith("a")
    # The same backend keeps working afterwards.
    chunks = await collect(backend, request())
    assert chunks[-1].finish_reason == "stop"
    assert len(stub.bodies) == 2


async def test_empty_model_uses_the_first_one_the_server_lists(
    stub: Stub, backend_for: Callable[..., OpenAIBackend]
) -> None:
    stub.reset()
    await collect(backend_for(model=""), request())
    (body,) = stub.bodies
    assert body["model"] == "other-model"


# --------------------------------------------------------------------------------------
# End to end against `aios sim-serve`
# --------------------------------------------------------------------------------------

# One slot and a queue cap of two: enough to make the engine's queue order (priority) and
# its 429 observable; the time scale keeps a 64-token answer around 30 ms.
SIM_ARGS = ["--slots", "1", "--queue-cap", "2", "--time-scale", "0.2"]


Sim = SimServer


@pytest.fixture(scope="module")
def sim() -> Iterator[SimServer]:
    with sim_server(*SIM_ARGS) as server:
        yield server


@pytest.fixture
async def sim_backend_for(sim: Sim) -> AsyncIterator[Callable[..., OpenAIBackend]]:
    made: list[OpenAIBackend] = []

    def build(**overrides: Any) -> OpenAIBackend:
        overrides.setdefault("model", "sim")
        backend = make_backend(sim.base_url, **overrides)
        made.append(backend)
        return backend

    yield build
    for backend in made:
        await backend.close()


async def sim_stats(sim: Sim) -> dict[str, Any]:
    async with httpx.AsyncClient() as client:
        reply = await client.get(f"{sim.root}/stats")
        reply.raise_for_status()
        stats: dict[str, Any] = reply.json()
        return stats


async def wait_for_waiting(sim: Sim, n: int) -> None:
    """Until the engine's own queue holds ``n`` requests (they reached the server)."""
    with anyio.fail_after(5):
        while True:
            if (await sim_stats(sim))["waiting"] == n:
                return
            await anyio.sleep(0.005)


def chat_req(text: str = "Tell me about kernels.", **chat: Any) -> GenerationRequest:
    chat.setdefault("temperature", 0.0)
    chat.setdefault("seed", 11)
    return request(messages=[{"role": "user", "content": text}], **chat)


async def test_sim_chat_streams_token_by_token_with_usage(
    sim_backend_for: Callable[..., OpenAIBackend],
) -> None:
    backend = sim_backend_for()
    await backend.start()
    # Long enough to fill a few of the prefix cache's 16-token blocks.
    prompt = "Explain how an operating system schedules many agents. " * 6
    *tokens, final = await collect(backend, chat_req(prompt, max_tokens=12))
    assert sum(c.n_tokens for c in tokens) == 12 == len("".join(c.text for c in tokens).split())
    assert all(c.text.strip() and c.finish_reason is None for c in tokens)
    assert final.finish_reason == "length"
    assert final.model == "sim"
    assert final.usage is not None
    assert final.usage.completion_tokens == 12
    assert final.usage.prompt_tokens > 32
    # The same prompt again: the engine's prefix cache hits, and the count comes through
    # usage.prompt_tokens_details.cached_tokens.
    *again, final2 = await collect(backend, chat_req(prompt, max_tokens=12))
    assert "".join(c.text for c in again) == "".join(c.text for c in tokens)
    assert final2.usage is not None
    assert final2.usage.cached_tokens >= 16
    stats = backend.stats()
    assert (stats["requests"], stats["tokens"]) == (2, 24)


async def test_sim_tool_call(sim_backend_for: Callable[..., OpenAIBackend]) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "search",
                "parameters": {
                    "type": "object",
                    "properties": {"query": {"type": "string"}},
                    "required": ["query"],
                },
            },
        }
    ]
    chunks = await collect(sim_backend_for(), chat_req(tools=tools, max_tokens=32))
    final = chunks[-1]
    assert final.finish_reason == "tool_calls"
    assert final.tool_calls is not None
    (call,) = final.tool_calls
    assert call.name == "search"
    assert call.id
    assert "query" in json.loads(call.arguments)


async def _preempt_and_resume(
    backend: OpenAIBackend, max_tokens: int | None, after: int
) -> tuple[str, str, str | None, str | None]:
    """(uninterrupted text, prefix + resumed text, both finish reasons)."""
    full = await collect(backend, chat_req(max_tokens=max_tokens))
    whole = "".join(c.text for c in full)
    # Preempt after `after` tokens: close the iterator at a token boundary, as the kernel does.
    partial: list[str] = []
    produced = 0
    stream = backend.generate(chat_req(max_tokens=max_tokens))
    async for chunk in stream:
        partial.append(chunk.text)
        produced += chunk.n_tokens
        if produced >= after:
            break
    await stream.aclose()  # type: ignore[attr-defined]
    done = "".join(partial)
    resume = Resume(text=done, completion_tokens=produced)
    rest = await collect(backend, chat_req(max_tokens=max_tokens, resume=resume))
    return (
        whole,
        done + "".join(c.text for c in rest),
        full[-1].finish_reason,
        rest[-1].finish_reason,
    )


async def test_sim_continuation_equals_the_uninterrupted_remainder(
    sim_backend_for: Callable[..., OpenAIBackend],
) -> None:
    backend = sim_backend_for(supports_continuation=True)
    whole, resumed, reason, resumed_reason = await _preempt_and_resume(backend, None, after=6)
    assert len(whole.split()) > 6
    assert resumed == whole
    assert resumed_reason == reason


async def test_sim_continuation_with_max_tokens(
    sim_backend_for: Callable[..., OpenAIBackend],
) -> None:
    backend = sim_backend_for(supports_continuation=True)
    whole, resumed, reason, resumed_reason = await _preempt_and_resume(backend, 15, after=6)
    assert len(whole.split()) == 15
    assert resumed == whole
    assert resumed_reason == reason == "length"


async def test_sim_unknown_model(sim_backend_for: Callable[..., OpenAIBackend]) -> None:
    with pytest.raises(ModelNotFound) as info:
        await collect(sim_backend_for(model="gpt-nonexistent"), chat_req())
    assert info.value.available == ["sim"]


async def _occupy_the_slot(backend: OpenAIBackend) -> AsyncIterator[Chunk]:
    """Start a long generation and return its open iterator once it holds the one slot."""
    blocker = backend.generate(chat_req("Keep going.", max_tokens=20000))
    first = await anext(blocker)
    assert first.text
    return blocker


async def _served_first(sim: Sim, backend: OpenAIBackend) -> list[str]:
    """Queue a priority-5 request, then a priority-1 one, behind the busy slot; free it and
    return the order in which the engine admitted them.

    Each request stops after its first token, and only then frees the one slot for the
    other: the order of first tokens is the engine's admission order, whatever the load.
    """
    blocker = await _occupy_the_slot(backend)
    admitted: list[str] = []

    async def run(name: str, priority: int) -> None:
        gen = backend.generate(chat_req(name, max_tokens=20000, priority=priority))
        try:
            await anext(gen)
            admitted.append(name)
        finally:
            await gen.aclose()  # type: ignore[attr-defined]

    async with anyio.create_task_group() as tg:
        tg.start_soon(run, "first-lazy", 5)
        await wait_for_waiting(sim, 1)
        tg.start_soon(run, "second-urgent", 1)
        await wait_for_waiting(sim, 2)
        await blocker.aclose()  # type: ignore[attr-defined]
    return admitted


@pytest.mark.parametrize(
    ("mode", "expected"),
    [
        # The engine runs lower values first: the later, more urgent request overtakes.
        ("lower_first", ["second-urgent", "first-lazy"]),
        # Negated for SGLang-style engines: seen by this (lower-first) engine, 5 wins.
        ("higher_first", ["first-lazy", "second-urgent"]),
        # Nothing sent: the engine's queue is plain FIFO.
        ("off", ["first-lazy", "second-urgent"]),
    ],
)
async def test_sim_priority_reaches_the_engine(
    sim: Sim, sim_backend_for: Callable[..., OpenAIBackend], mode: str, expected: list[str]
) -> None:
    backend = sim_backend_for(priority_passthrough=mode)
    assert await _served_first(sim, backend) == expected


async def test_sim_429_past_the_queue_cap_is_rate_limited_at_once(
    sim: Sim, sim_backend_for: Callable[..., OpenAIBackend]
) -> None:
    holder = sim_backend_for()
    blocker = await _occupy_the_slot(holder)
    try:
        async with anyio.create_task_group() as tg:
            # Fill the engine's queue to its cap of two; they finish once the slot frees.
            for i in range(2):
                tg.start_soon(collect, holder, chat_req(f"queued {i}", max_tokens=2))
                await wait_for_waiting(sim, i + 1)
            before = (await sim_stats(sim))["rejected"]
            backend = sim_backend_for(max_retries=2)
            req = chat_req("one too many")
            with pytest.raises(RateLimited) as info:
                await collect(backend, req)
            assert info.value.retry_after is not None
            assert info.value.retry_after > 0
            assert info.value.syscall is req.call
            assert backend.stats()["retries"] == 0  # the kernel retries, not the backend
            assert (await sim_stats(sim))["rejected"] - before == 1
            await blocker.aclose()  # type: ignore[attr-defined]
    finally:
        await blocker.aclose()  # type: ignore[attr-defined]
