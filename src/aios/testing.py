"""Test doubles for aios users' own tests (and ours): LLM backends that need no model.

* :class:`ScriptedLLM` replies with scripted texts or tool calls, token by token, in
  order, and records every request it got.
* :class:`EchoLLM` answers every request at once with a fixed text: the cheapest backend,
  used to measure the kernel's own overhead.
* :func:`sim_server` runs ``aios sim-serve`` in a subprocess on 127.0.0.1 for tests that
  need a real OpenAI-compatible server over HTTP.
* :func:`openai_stub` runs a scriptable OpenAI-compatible server (standard library, in a
  thread) that plays back exactly the SSE streams, errors, stalls and keep-alives a test
  gives it, and records every request body: what real servers do on a bad day.

Use them as ``aios.Kernel(config, backends={"default": ScriptedLLM([...])})``.
"""

from __future__ import annotations

import contextlib
import json
import re
import select
import subprocess
import sys
import tempfile
import threading
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import anyio

from aios.llm.base import BackendCapabilities, Chunk, GenerationRequest, LLMBackend
from aios.llm.sim import ScriptedReply, ScriptedToolCall
from aios.syscalls import Usage

__all__ = [
    "EchoLLM",
    "OpenAIStub",
    "ScriptedLLM",
    "ScriptedReply",
    "ScriptedToolCall",
    "SimServer",
    "StubReply",
    "openai_stub",
    "sim_server",
    "stub_chunk",
]


class ScriptedLLM(LLMBackend):
    """Replies from a script, one word-token at a time.

    ``replies`` are used in order (a ``str`` or a :class:`ScriptedReply`); when the
    script runs out, ``default`` is used. ``token_delay`` seconds pass before each token
    (0 still yields to the event loop, so the kernel can preempt between tokens).
    Continuation is exact: a resumed request continues the same reply from where the
    resume point says, so preemption tests can compare texts.
    """

    capabilities: BackendCapabilities = BackendCapabilities(
        token_boundary=True, continuation=True, engine_queue=False
    )

    def __init__(
        self,
        replies: Sequence[str | ScriptedReply] = (),
        *,
        default: str = "ok",
        token_delay: float = 0.0,
    ) -> None:
        self._script = [r if isinstance(r, ScriptedReply) else ScriptedReply(text=r)
                        for r in replies]
        self._default = ScriptedReply(text=default)
        self.token_delay = token_delay
        self.requests: list[GenerationRequest] = []
        self._assigned: dict[str, ScriptedReply] = {}

    def _reply_for(self, request: GenerationRequest) -> ScriptedReply:
        reply = self._assigned.get(request.request_id)
        if reply is None:
            reply = self._script.pop(0) if self._script else self._default
            self._assigned[request.request_id] = reply
        return reply

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        self.requests.append(request)
        reply = self._reply_for(request)
        words = reply.text.split(" ") if reply.text else []
        limit = request.call.max_tokens or len(words)
        start = request.resume.completion_tokens if request.resume else 0
        end = min(len(words), limit)
        for i in range(start, end):
            await anyio.sleep(self.token_delay)
            yield Chunk(text=words[i] if i == 0 else " " + words[i], token_ids=(i,), n_tokens=1)
        self._assigned.pop(request.request_id, None)
        prompt = sum(len(str(m.get("content", "")).split()) for m in request.call.messages)
        prompt += start  # a continuation's prompt includes what it continues
        finish = "tool_calls" if reply.tool_calls else "length" if end < len(words) else "stop"
        yield Chunk(finish_reason=finish, tool_calls=reply.requests(len(self.requests)) or None,
                    usage=Usage(prompt_tokens=prompt, completion_tokens=end - start),
                    model="scripted")


class EchoLLM(LLMBackend):
    """Answers at once, with one chunk: measures the kernel, not a model.

    ``yield_first`` gives the event loop one turn before answering, so that concurrent
    callers overlap and contend for the admission window.
    """

    capabilities: BackendCapabilities = BackendCapabilities()

    def __init__(self, text: str = "ok", *, yield_first: bool = False) -> None:
        self.text = text
        self.yield_first = yield_first
        self.calls = 0

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        self.calls += 1
        if self.yield_first:  # let other tasks run, so concurrent calls really queue
            await anyio.lowlevel.checkpoint()
        yield Chunk(text=self.text, n_tokens=1, finish_reason="stop",
                    usage=Usage(prompt_tokens=1, completion_tokens=1), model="echo")

    def stats(self) -> dict[str, Any]:
        return {"calls": self.calls}


@dataclass(frozen=True, slots=True)
class SimServer:
    """A running ``aios sim-serve``: ``base_url`` ends in ``/v1``; ``root`` has /stats."""

    base_url: str
    root: str


@contextmanager
def sim_server(*args: str, timeout: float = 20.0) -> Iterator[SimServer]:
    """Run ``aios sim-serve --port 0 ARGS`` (on 127.0.0.1) for the ``with`` block.

    ``args`` are sim-serve's engine options, e.g. ``"--slots", "2", "--queue-cap", "4"``.
    Raises RuntimeError with the server's stderr if it does not start within ``timeout``.
    """
    with tempfile.TemporaryFile() as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-m", "aios.llm.server", "--host", "127.0.0.1", "--port", "0",
             *args],
            stdout=subprocess.PIPE, stderr=stderr, text=True,
        )
        assert proc.stdout is not None
        try:
            ready, _, _ = select.select([proc.stdout], [], [], timeout)
            line = proc.stdout.readline() if ready else ""
            found = re.search(r"listening on (http://127\.0\.0\.1:\d+/v1)", line)
            if found is None:
                proc.kill()
                proc.wait()
                stderr.seek(0)
                raise RuntimeError(
                    f"sim-serve did not start: {line!r} {stderr.read().decode()!r}")
            url = found.group(1)
            yield SimServer(base_url=url, root=url.removesuffix("/v1"))
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            proc.stdout.close()


# -- a scriptable OpenAI-compatible server --------------------------------------------


def stub_chunk(
    content: str | None = None,
    *,
    reasoning: str | None = None,
    tool_calls: list[dict[str, Any]] | None = None,
    finish: str | None = None,
    usage: Mapping[str, Any] | None = None,
    choices: bool = True,
    index: int = 0,
) -> dict[str, Any]:
    """One ``chat.completion.chunk`` (``usage`` given as ``{"prompt_tokens": ..,
    "completion_tokens": ..}``; ``choices=False`` for the usage-only chunk)."""
    delta: dict[str, Any] = {}
    if content is not None:
        delta["content"] = content
    if reasoning is not None:
        delta["reasoning_content"] = reasoning
    if tool_calls is not None:
        delta["tool_calls"] = tool_calls
    chunk: dict[str, Any] = {
        "id": "chatcmpl-stub", "object": "chat.completion.chunk", "created": 0,
        "model": "stub-model",
        "choices": [{"index": index, "delta": delta, "finish_reason": finish}] if choices
        else [],
    }
    if usage is not None:
        chunk["usage"] = {"total_tokens": sum(int(v) for v in usage.values()), **usage}
    return chunk


@dataclass
class StubReply:
    """One scripted answer to ``POST /v1/chat/completions``.

    ``events`` are SSE data payloads (dicts are sent as JSON; None: "Hello world" in two
    chunks with usage); ``done`` ends with ``data: [DONE]``. ``hang``: accept and never
    answer. ``keepalive``: after the events, send SSE comments every 20 ms until the
    client leaves. A ``status`` other than 200 answers ``body`` (JSON) with ``headers``.
    """

    status: int = 200
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)
    events: Sequence[str | Mapping[str, Any]] | None = None
    done: bool = True
    hang: bool = False
    keepalive: bool = False


_DEFAULT_EVENTS: tuple[dict[str, Any], ...] = (
    stub_chunk("Hello"), stub_chunk(" world"), stub_chunk(finish="stop"),
    stub_chunk(usage={"prompt_tokens": 5, "completion_tokens": 2}, choices=False),
)


class OpenAIStub:
    """The state of a running :func:`openai_stub`: ``base_url`` (ends in ``/v1``),
    ``bodies`` (every chat request body received, in order), ``models`` (listed by
    ``GET /v1/models``), ``reject_fields`` (a request carrying one of these top-level
    keys is answered 400, as servers and proxies rejecting ``stream_options`` do)."""

    def __init__(self) -> None:
        self.base_url = ""
        self.bodies: list[dict[str, Any]] = []
        self.models = ["stub-model"]
        self.reject_fields: set[str] = set()
        self._script: list[StubReply] = []
        self._lock = threading.Lock()
        self.closed = threading.Event()

    def reset(self, *script: StubReply) -> None:
        """Forget the bodies; answer the next requests with ``script`` (then defaults)."""
        with self._lock:
            self.bodies.clear()
            self._script = list(script)

    def _next(self, body: dict[str, Any]) -> StubReply:
        with self._lock:
            self.bodies.append(body)
            rejected = sorted(self.reject_fields & body.keys())
            if rejected:
                return StubReply(400, {"error": {
                    "message": f"unrecognized request argument: {rejected[0]}",
                    "type": "invalid_request_error"}})
            return self._script.pop(0) if self._script else StubReply()


class _StubHandler(BaseHTTPRequestHandler):
    stub: OpenAIStub  # set on the subclass made per server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _json(self, status: int, body: Any, headers: Mapping[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        if self.path.rstrip("/").endswith("/models"):
            self._json(200, {"object": "list", "data": [
                {"id": m, "object": "model", "created": 0, "owned_by": "stub"}
                for m in self.stub.models]})
        else:
            self._json(404, {"error": {"message": f"no route {self.path}"}})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        try:
            body = json.loads(self.rfile.read(length) or b"{}")
        except ValueError:
            body = {}
        reply = self.stub._next(body)
        # The client may leave mid-answer: what a test of cancellation wants.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            self._answer(reply)

    def _answer(self, reply: StubReply) -> None:
        if reply.hang:
            self.stub.closed.wait()
            return
        if reply.status != 200:
            self._json(reply.status, reply.body or {}, reply.headers)
            return
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Connection", "close")
        for k, v in reply.headers.items():
            self.send_header(k, v)
        self.end_headers()
        events = reply.events if reply.events is not None else _DEFAULT_EVENTS
        for data in events:
            payload = data if isinstance(data, str) else json.dumps(data)
            self.wfile.write(f"data: {payload}\n\n".encode())
            self.wfile.flush()
        while reply.keepalive and not self.stub.closed.wait(0.02):
            self.wfile.write(b": keep-alive\n\n")
            self.wfile.flush()
        if reply.done:
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()


@contextmanager
def openai_stub() -> Iterator[OpenAIStub]:
    """Run a scriptable OpenAI-compatible server on 127.0.0.1 for the ``with`` block::

        with openai_stub() as stub:
            stub.reset(StubReply(events=[stub_chunk("a b"), stub_chunk(finish="stop")]))
            backend = OpenAIBackend(LLMConfig(backend="openai", base_url=stub.base_url))
    """
    stub = OpenAIStub()
    handler = type("_Handler", (_StubHandler,), {"stub": stub})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, name="aios-openai-stub",
                              daemon=True)
    thread.start()
    stub.base_url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    try:
        yield stub
    finally:
        stub.closed.set()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
