"""``aios sim-serve`` over real HTTP: httpx and the openai SDK against a server on
127.0.0.1 with a free port (in process via ``serve_sim``, and once as a subprocess)."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

import anyio
import httpx
import openai
import pytest

from aios.llm.base import GenerationRequest
from aios.llm.server import serve_sim
from aios.llm.sim import SimEngine
from aios.syscalls import LLMChat

USER = [{"role": "user", "content": "why is the sky blue"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "web_search",
            "description": "search the web",
            "parameters": {
                "type": "object",
                "properties": {"query": {"type": "string"}},
                "required": ["query"],
            },
        },
    }
]


@contextlib.asynccontextmanager
async def running_server(**options: Any) -> AsyncIterator[tuple[str, SimEngine]]:
    """Serve a fresh engine on 127.0.0.1:<free port>; yields (base_url, engine)."""
    engine = SimEngine(**options)
    urls: list[str] = []
    ready = anyio.Event()

    def started(url: str) -> None:
        urls.append(url)
        ready.set()

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(partial(serve_sim, "127.0.0.1", 0, engine=engine, started=started))
            with anyio.fail_after(10):
                await ready.wait()
            try:
                yield urls[0], engine
            finally:
                tg.cancel_scope.cancel()
    finally:
        await engine.close()


def oai(base_url: str) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=base_url, api_key="x", max_retries=0)


def hold_request() -> GenerationRequest:
    call = LLMChat(messages=[{"role": "user", "content": "hold the slot"}], max_tokens=30_000)
    return GenerationRequest(call=call, request_id="hold")


async def wait_until(cond: Any) -> None:
    # Polling is right here: the conditions are engine counters that fire no event.
    with anyio.fail_after(5):
        while not cond():  # noqa: ASYNC110
            await anyio.sleep(0.005)


async def test_non_stream_with_httpx_and_openai() -> None:
    async with running_server(time_scale=0.0) as (url, engine), httpx.AsyncClient() as http:
        r = await http.post(
            f"{url}/chat/completions", json={"model": "sim", "messages": USER, "max_tokens": 12}
        )
        assert r.status_code == 200
        body = r.json()
        assert body["object"] == "chat.completion"
        assert body["model"] == "sim"
        choice = body["choices"][0]
        assert choice["finish_reason"] == "length"
        text = choice["message"]["content"]
        assert len(text.split()) == 12
        usage = body["usage"]
        assert usage["completion_tokens"] == 12
        assert usage["total_tokens"] == usage["prompt_tokens"] + 12
        assert "cached_tokens" in usage["prompt_tokens_details"]

        async with oai(url) as client:
            resp = await client.chat.completions.create(
                model="sim", messages=USER, max_completion_tokens=12, temperature=0, seed=None
            )
        assert resp.choices[0].message.content == text  # deterministic
        assert resp.usage is not None
        assert resp.usage.completion_tokens == 12
        assert engine.stats()["requests"] == 2


async def test_stream_with_usage() -> None:
    async with running_server(time_scale=0.0) as (url, _), oai(url) as client:
        full = await client.chat.completions.create(model="sim", messages=USER, max_tokens=10)
        stream = await client.chat.completions.create(
            model="sim",
            messages=USER,
            max_tokens=10,
            stream=True,
            stream_options={"include_usage": True},
        )
        deltas: list[str] = []
        finish: list[str] = []
        usage = None
        async for chunk in stream:
            if chunk.choices:
                if chunk.choices[0].delta.content:
                    deltas.append(chunk.choices[0].delta.content)
                if chunk.choices[0].finish_reason:
                    finish.append(chunk.choices[0].finish_reason)
            if chunk.usage is not None:
                usage = chunk.usage
    assert "".join(deltas) == full.choices[0].message.content
    assert len(deltas) == 10  # one event per token
    assert finish == ["length"]
    assert usage is not None
    assert usage.completion_tokens == 10


async def test_raw_sse_format() -> None:
    async with (
        running_server(time_scale=0.0) as (url, _),
        httpx.AsyncClient() as http,
        http.stream(
            "POST",
            f"{url}/chat/completions",
            json={"messages": USER, "max_tokens": 3, "stream": True},
        ) as r,
    ):
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        lines = [line async for line in r.aiter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    events = [json.loads(line[6:]) for line in lines[:-1]]
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[-1]["choices"][0]["finish_reason"] == "length"


async def test_tool_calls_plain_and_streamed() -> None:
    async with running_server(time_scale=0.0) as (url, _), oai(url) as client:
        resp = await client.chat.completions.create(model="sim", messages=USER, tools=TOOLS)
        choice = resp.choices[0]
        assert choice.finish_reason == "tool_calls"
        assert choice.message.tool_calls is not None
        call = choice.message.tool_calls[0]
        assert call.type == "function"
        assert call.function.name == "web_search"
        assert set(json.loads(call.function.arguments)) == {"query"}

        stream = await client.chat.completions.create(
            model="sim", messages=USER, tools=TOOLS, stream=True
        )
        names: list[str] = []
        args: list[str] = []
        reasons: list[str] = []
        async for chunk in stream:
            delta = chunk.choices[0].delta
            for tc in delta.tool_calls or ():
                assert tc.function is not None
                names.append(tc.function.name or "")
                args.append(tc.function.arguments or "")
            if chunk.choices[0].finish_reason:
                reasons.append(chunk.choices[0].finish_reason)
        assert names == ["web_search"]
        assert "".join(args) == call.function.arguments
        assert reasons == ["tool_calls"]

        # After the tool result the model answers in text.
        followup = await client.chat.completions.create(
            model="sim",
            tools=TOOLS,
            max_tokens=5,
            messages=[
                *USER,
                {"role": "assistant", "content": None, "tool_calls": [call.model_dump()]},
                {"role": "tool", "tool_call_id": call.id, "content": "rayleigh scattering"},
            ],
        )
        assert followup.choices[0].finish_reason == "length"
        assert followup.choices[0].message.content


async def test_queue_cap_gives_429_with_retry_after() -> None:
    async with (
        running_server(slots=1, queue_cap=0, step_base_ms=1.0) as (url, engine),
        httpx.AsyncClient() as http,
    ):
        hold = engine.submit(hold_request())  # waits for the only slot: the queue is full
        try:
            r = await http.post(f"{url}/chat/completions", json={"messages": USER})
            assert r.status_code == 429
            assert int(r.headers["Retry-After"]) >= 1
            assert r.json()["error"]["type"] == "rate_limit_error"
            async with oai(url) as client:
                with pytest.raises(openai.RateLimitError):
                    await client.chat.completions.create(model="sim", messages=USER)
            assert engine.stats()["rejected"] == 2
        finally:
            hold.cancel()
        await wait_until(lambda: engine.stats()["running"] == 0)
        r = await http.post(f"{url}/chat/completions", json={"messages": USER, "max_tokens": 2})
        assert r.status_code == 200


@pytest.mark.parametrize("k", [0, 1, 7, 19])
async def test_continue_final_message_equals_uninterrupted(k: int) -> None:
    async with running_server(time_scale=0.0) as (url, engine), oai(url) as client:
        full = await client.chat.completions.create(model="sim", messages=USER, max_tokens=20)
        text = full.choices[0].message.content
        assert text is not None
        partial = " ".join(text.split()[:k])
        engine.reset_stats()
        rest = await client.chat.completions.create(
            model="sim",
            messages=[*USER, {"role": "assistant", "content": partial}],
            max_tokens=20 - k,  # new tokens only, as vLLM counts a continuation
            extra_body={"continue_final_message": True, "add_generation_prompt": False},
        )
        assert partial + (rest.choices[0].message.content or "") == text
        assert rest.usage is not None
        assert rest.usage.completion_tokens == 20 - k
        assert engine.stats()["completion_tokens"] == 20 - k


async def test_continue_needs_assistant_message_and_no_generation_prompt() -> None:
    async with running_server(time_scale=0.0) as (url, _), httpx.AsyncClient() as http:
        r = await http.post(
            f"{url}/chat/completions",
            json={"messages": USER, "continue_final_message": True, "add_generation_prompt": False},
        )
        assert r.status_code == 400
        r = await http.post(
            f"{url}/chat/completions",
            json={
                "messages": [*USER, {"role": "assistant", "content": "so"}],
                "continue_final_message": True,
            },
        )
        assert r.status_code == 400
        assert "add_generation_prompt" in r.json()["error"]["message"]


async def test_priority_lower_first() -> None:
    async with (
        running_server(slots=1, step_base_ms=1.0, step_per_seq_ms=0.0) as (url, engine),
        httpx.AsyncClient(timeout=10) as http,
    ):
        hold = engine.submit(hold_request())
        await wait_until(lambda: engine.stats()["running"] == 1)
        order: list[str] = []

        async def ask(name: str, priority: int) -> None:
            body = {"messages": USER, "max_tokens": 2, "priority": priority}
            r = await http.post(f"{url}/chat/completions", json=body)
            assert r.status_code == 200
            order.append(name)

        async with anyio.create_task_group() as tg:
            tg.start_soon(ask, "background", 10)
            await wait_until(lambda: engine.stats()["waiting"] == 1)
            tg.start_soon(ask, "urgent", -1)
            await wait_until(lambda: engine.stats()["waiting"] == 2)
            hold.cancel()
    assert order == ["urgent", "background"]


async def test_stop_string() -> None:
    async with running_server(time_scale=0.0) as (url, _), httpx.AsyncClient() as http:
        r = await http.post(f"{url}/chat/completions", json={"messages": USER, "max_tokens": 12})
        text = r.json()["choices"][0]["message"]["content"]
        stop = " " + text.split()[6]
        r = await http.post(
            f"{url}/chat/completions", json={"messages": USER, "max_tokens": 12, "stop": stop}
        )
        choice = r.json()["choices"][0]
        assert choice["finish_reason"] == "stop"
        assert choice["message"]["content"] == text[: text.index(stop)]


async def test_models_and_unknown_model() -> None:
    async with running_server(time_scale=0.0, model="sim-8b") as (url, _), oai(url) as client:
        models = await client.models.list()
        assert [m.id for m in models.data] == ["sim-8b"]
        with pytest.raises(openai.NotFoundError) as info:
            await client.chat.completions.create(model="gpt-5", messages=USER)
        assert info.value.status_code == 404
        body = info.value.body
        assert isinstance(body, dict)
        # The SDK unwraps {"error": {...}} into .body
        err = body.get("error", body)
        assert err["code"] == "model_not_found"
        assert err["type"] == "invalid_request_error"
        assert "available: sim-8b" in err["message"]


async def test_malformed_requests_are_400() -> None:
    async with running_server(time_scale=0.0) as (url, _), httpx.AsyncClient() as http:
        post = partial(http.post, f"{url}/chat/completions")
        r = await post(content=b"{not json", headers={"content-type": "application/json"})
        assert r.status_code == 400
        assert "JSON" in r.json()["error"]["message"]
        r = await post(json={"model": "sim"})
        assert r.status_code == 400
        assert "messages" in r.json()["error"]["message"]
        r = await post(json={"messages": []})
        assert r.status_code == 400
        r = await post(json={"messages": ["hi"]})
        assert r.status_code == 400
        r = await post(json={"messages": USER, "max_tokens": "many"})
        assert r.status_code == 400
        assert r.json()["error"]["param"] == "max_tokens"
        r = await post(json={"messages": USER, "temperature": -1})
        assert r.status_code == 400
        r = await post(json=[1, 2])
        assert r.status_code == 400
        r = await http.get(f"{url}/chat/completions")
        assert r.status_code == 405
        assert "error" in r.json()


def _json_error(r: httpx.Response, status: int = 400) -> dict[str, Any]:
    """An OpenAI-style JSON error with this status (never a plain-text 500)."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"].startswith("application/json")
    err: dict[str, Any] = r.json()["error"]
    assert err["type"] == "invalid_request_error" and err["message"]
    return err


async def test_lone_surrogate_and_deep_nesting_are_400() -> None:
    async with running_server(time_scale=0.0) as (url, engine), httpx.AsyncClient() as http:
        post = partial(http.post, f"{url}/chat/completions",
                       headers={"content-type": "application/json"})
        r = await post(content=b'{"messages": [{"role": "user", "content": "hi \\ud800"}]}')
        err = _json_error(r)
        assert "surrogate" in err["message"] and err["param"] == "messages"
        deep = b'{"messages": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
        err = _json_error(await post(content=deep))
        assert "nested deeper" in err["message"]
        assert engine.stats()["requests"] == 0  # nothing reached the engine


async def test_other_malformed_bodies_are_400() -> None:
    async with running_server(time_scale=0.0) as (url, engine), httpx.AsyncClient() as http:
        post = partial(http.post, f"{url}/chat/completions",
                       headers={"content-type": "application/json"})
        msgs = json.dumps(USER)
        cases = {
            # nesting under the interpreter's recursion limit but over the server's
            "nested 200": b'{"messages": ' + msgs.encode() + b', "x": '
            + b"[" * 200 + b"]" * 200 + b"}",
            "surrogate in a key": b'{"messages": ' + msgs.encode() + b', "\\udfff": 1}',
            "NaN": b'{"messages": ' + msgs.encode() + b', "temperature": NaN}',
            "Infinity": b'{"messages": ' + msgs.encode() + b', "top_p": -Infinity}',
            "1e999": b'{"messages": ' + msgs.encode() + b', "temperature": 1e999}',
            "not UTF-8": b'{"messages": [{"role": "user", "content": "\xff\xfe"}]}',
            "empty": b"",
            "model not a string": b'{"model": ["sim"], "messages": ' + msgs.encode() + b"}",
            "huge integer": b'{"messages": ' + msgs.encode() + b', "seed": ' + b"9" * 5000
            + b"}",
        }
        for name, body in cases.items():
            r = await post(content=body)
            assert r.status_code == 400, (name, r.text)
            _json_error(r)
        assert engine.stats()["requests"] == 0
        ok = await post(content=b'{"messages": ' + msgs.encode() + b', "max_tokens": 3}')
        assert ok.status_code == 200


async def test_oversized_body_is_413_before_it_is_held(monkeypatch: pytest.MonkeyPatch) -> None:
    import aios.llm.server as server

    monkeypatch.setattr(server, "_MAX_BODY", 1000)
    body = json.dumps({"messages": [{"role": "user", "content": "x" * 2000}]}).encode()

    async def chunks() -> AsyncIterator[bytes]:  # no Content-Length: counted as it arrives
        for i in range(0, len(body), 100):
            yield body[i: i + 100]

    async with running_server(time_scale=0.0) as (url, engine), httpx.AsyncClient() as http:
        for content in (body, chunks()):
            r = await http.post(f"{url}/chat/completions", content=content)
            assert r.status_code == 413
            assert "larger than 1000" in r.json()["error"]["message"]
        assert engine.stats()["requests"] == 0


async def test_continuation_needs_text_content() -> None:
    async with running_server(time_scale=0.0) as (url, _), httpx.AsyncClient() as http:
        for content in (5, None, {"text": "x"}):
            r = await http.post(f"{url}/chat/completions", json={
                "messages": [*USER, {"role": "assistant", "content": content}],
                "continue_final_message": True, "add_generation_prompt": False})
            assert _json_error(r)["param"] == "messages"


async def test_stats_and_reset() -> None:
    async with running_server(time_scale=0.0, slots=4) as (url, _), httpx.AsyncClient() as http:
        root = url.removesuffix("/v1")
        await http.post(f"{url}/chat/completions", json={"messages": USER, "max_tokens": 5})
        stats = (await http.get(f"{root}/stats")).json()
        for key in (
            "requests",
            "prompt_tokens",
            "prefill_tokens",
            "cached_tokens",
            "completion_tokens",
            "steps",
            "busy_s",
            "mean_batch",
            "rejected",
            "ideal_s",
        ):
            assert key in stats
        assert stats["requests"] == 1
        assert stats["completion_tokens"] == 5
        assert (await http.post(f"{root}/stats/reset")).status_code == 200
        assert (await http.get(f"{root}/stats")).json()["requests"] == 0


async def test_client_disconnect_frees_the_sequence() -> None:
    async with (
        running_server(slots=1, step_base_ms=1.0, step_per_seq_ms=0.0) as (url, engine),
        httpx.AsyncClient() as http,
    ):
        body = {"messages": USER, "max_tokens": 30_000, "stream": True}
        async with http.stream("POST", f"{url}/chat/completions", json=body) as r:
            seen = 0
            async for line in r.aiter_lines():
                if line.startswith("data: "):
                    seen += 1
                if seen == 4:
                    break
        assert engine.stats()["completion_tokens"] < 30_000
        await wait_until(lambda: engine.stats()["running"] == 0)

        # Same for a non-streaming request abandoned by its client.
        with anyio.move_on_after(0.05):
            await http.post(f"{url}/chat/completions", json={**body, "stream": False})
        await wait_until(lambda: engine.stats()["running"] == 0)
        assert engine.stats()["completion_tokens"] < 30_000


def test_cli_subprocess_prints_url_and_serves() -> None:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "aios.llm.server",
            "--port",
            "0",
            "--time-scale",
            "0",
            "--model",
            "cli-sim",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line.startswith("aios sim-serve listening on http://127.0.0.1:")
        url = line.rsplit(" ", 1)[1].strip()
        r = httpx.get(f"{url}/models", timeout=5)
        assert r.json()["data"][0]["id"] == "cli-sim"
        r = httpx.post(
            f"{url}/chat/completions", json={"messages": USER, "max_tokens": 3}, timeout=5
        )
        assert r.status_code == 200
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=10)
    assert proc.returncode == 0, err
