"""Test doubles for aios users' own tests (and ours): LLM backends that need no model.

* :class:`ScriptedLLM` replies with scripted texts or tool calls, token by token, in
  order, and records every request it got.
* :class:`EchoLLM` answers every request at once with a fixed text: the cheapest backend,
  used to measure the kernel's own overhead.
* :func:`sim_server` runs ``aios sim-serve`` in a subprocess on 127.0.0.1 for tests that
  need a real OpenAI-compatible server over HTTP.

Use them as ``aios.Kernel(config, backends={"default": ScriptedLLM([...])})``.
"""

from __future__ import annotations

import re
import select
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import anyio

from aios.llm.base import Capabilities, Chunk, GenerationRequest, LLMBackend
from aios.syscalls import ToolCallRequest, Usage

__all__ = ["EchoLLM", "ScriptedLLM", "ScriptedReply", "SimServer", "sim_server"]


@dataclass(frozen=True, slots=True)
class ScriptedReply:
    text: str = ""
    tool_calls: tuple[ToolCallRequest, ...] = ()


class ScriptedLLM(LLMBackend):
    """Replies from a script, one word-token at a time.

    ``replies`` are used in order (a ``str`` or a :class:`ScriptedReply`); when the
    script runs out, ``default`` is used. ``token_delay`` seconds pass before each token
    (0 still yields to the event loop, so the kernel can preempt between tokens).
    Continuation is exact: a resumed request continues the same reply from where the
    resume point says, so preemption tests can compare texts.
    """

    capabilities: Capabilities = Capabilities(
        token_boundary=True, continuation=True, engine_queue=False
    )

    def __init__(
        self,
        replies: Sequence[str | ScriptedReply] = (),
        *,
        default: str = "ok",
        token_delay: float = 0.0,
    ) -> None:
        self._script = [r if isinstance(r, ScriptedReply) else ScriptedReply(r) for r in replies]
        self._default = ScriptedReply(default)
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
        yield Chunk(finish_reason=finish, tool_calls=list(reply.tool_calls) or None,
                    usage=Usage(prompt_tokens=prompt, completion_tokens=end), model="scripted")


class EchoLLM(LLMBackend):
    """Answers at once, with one chunk: measures the kernel, not a model.

    ``yield_first`` gives the event loop one turn before answering, so that concurrent
    callers overlap and contend for the admission window.
    """

    capabilities: Capabilities = Capabilities()

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
