"""The built-in ``openai`` backend: any OpenAI-compatible chat server over HTTP.

It serves vLLM, SGLang, Ollama, the llama.cpp server, ``transformers serve``, OpenAI itself
and ``aios sim-serve``. It always streams, so the kernel can stop a generation between two
tokens; it passes every sampling parameter of :class:`aios.syscalls.LLMChat` through
unchanged (``n``/``logprobs`` are refused at the door: one choice, no logprobs come back),
forwards the kernel's priority to engines that understand it, continues a preempted
assistant message on servers that support ``continue_final_message``, and retries
transient failures (5xx, connection errors, timeouts) itself with capped exponential
backoff and full jitter. A 429 is reported at once as ``RateLimited``: the kernel is the
only layer that retries rate limits, so its window narrows at the first one.

Token counts: the server's ``usage`` when it sends one (per chunk with vLLM's
``stream_options={"include_usage": true, "continuous_usage_stats": true}``, else at the
end, which the kernel takes over its running count); otherwise an estimate of one token
per whitespace-separated word of each delta (at least one per non-empty delta: exact for
word-level engines such as ``aios sim-serve``, about 25% low for BPE English). Reasoning
(``reasoning_content``/``reasoning`` deltas) is kept apart from the answer and counted.
Options (``LLMConfig.options``) are validated: see :class:`OpenAIOptions`; a server that
rejects ``stream_options`` is reached with ``options={"stream_options": False}``.

The per-token path is cheap (issue 10; ``benchmarks/stream_cpu.py``): the stream is read
with aiohttp, whose C parser buffers what arrives between two reads, so one read takes
every event already received and they become one chunk; each event's JSON is parsed with
the standard library and only the fields the kernel needs are read (no pydantic object
per chunk, unlike the openai SDK's stream, which is used only to list models). The
events of one read share a token boundary: the kernel can stop between reads.

Servers that refuse a field: a 400/422 naming ``priority`` (or any 422 while it was sent)
turns priority passthrough off for this instance, logged once as
``llm.priority_unsupported``, and the request goes again at once, not counted as a retry.
The same for ``continue_final_message``/``add_generation_prompt``
(``llm.continuation_unsupported``): ``capabilities.continuation`` turns off and a resume
is recomputed by this backend (the request sent as new, the output the kernel already
has skipped; exact at temperature 0 on a deterministic engine), so the agent never sees
the refusal.

What it must never do: retry once a token has been handed to the kernel (that would
duplicate output silently), let an SDK or ``httpx`` exception escape (every failure leaves
as an :mod:`aios.errors` ``LLMError`` carrying the syscall), or rely on the engine's own
queue for scheduling (the kernel's admission window decides what runs).
"""

from __future__ import annotations

import email.utils
import json
import math
import os
import random
import re
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

import aiohttp
import anyio
from openai import AsyncOpenAI
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aios.config import LLMConfig, config_error
from aios.errors import (
    BackendUnavailable,
    BadResponse,
    ContextWindowExceeded,
    LLMError,
    LLMTimeout,
    ModelNotFound,
    RateLimited,
)
from aios.llm.base import BackendCapabilities, Chunk, GenerationRequest, LLMBackend, Resume
from aios.llm.wire import error_class_from_wire
from aios.syscalls import LLMChat, ToolCallRequest, Usage

__all__ = ["OpenAIBackend", "OpenAIOptions"]


_DEFAULT_BACKOFF_BASE_S = 0.25
_DEFAULT_BACKOFF_CAP_S = 8.0
_DEFAULT_RETRY_AFTER_CAP_S = 30.0
# Listing models only decorates a ModelNotFound message: it must not hold the caller long.
_MODELS_LIST_TIMEOUT_S = 5.0

# How servers word "prompt too long": OpenAI/vLLM "maximum context length", SGLang "longer
# than the model's context length", llama.cpp "exceeds the available context size", plus the
# OpenAI error code. Matched case-insensitively against the message and the error code.
_CONTEXT_RE = re.compile(
    r"context[ _-]?(length|window|size)|maximum context|prompt is too long|too many tokens",
    re.IGNORECASE,
)


class OpenAIOptions(BaseModel):
    """``LLMConfig.options`` of an ``openai`` resource; an unknown key is a ConfigError
    naming it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backoff_base_s: float = Field(default=_DEFAULT_BACKOFF_BASE_S, ge=0)
    """First retry delay ceiling (seconds) for 5xx and connection errors (full jitter)."""
    backoff_cap_s: float = Field(default=_DEFAULT_BACKOFF_CAP_S, ge=0)
    retry_after_cap_s: float | None = Field(default=None, ge=0)
    """Longest ``Retry-After`` obeyed on a 5xx retry; default max(30, backoff_cap_s)."""
    seed: int | None = None
    """Seed of the retry jitter (reproducible benchmarks and tests)."""
    stream_options: bool | dict[str, Any] = True
    """True: ask for usage (``{"include_usage": true}``); a dict: sent as given (vLLM's
    ``continuous_usage_stats`` gives exact counts per chunk); False: not sent, for
    servers and proxies that reject the field (counts are then estimated)."""


def _options(config: LLMConfig) -> OpenAIOptions:
    try:
        return OpenAIOptions.model_validate(dict(config.options))
    except ValidationError as exc:
        raise config_error(exc, prefix="options", where=f"openai backend {config.name!r}",
                           unknown="unknown option") from None


def _estimate_tokens(text: str) -> int:
    """The documented estimate when the server reports no count: one token per
    whitespace-separated word, at least one for a non-empty delta."""
    return max(1, len(text.split())) if text else 0


@dataclass(slots=True)
class _Failure:
    """A failed attempt, classified: what to raise and whether another attempt may help."""

    error: LLMError
    retryable: bool = False
    retry_after: float | None = None
    status: int | None = None


@dataclass(slots=True)
class _ToolCallParts:
    id: str = ""
    name: str = ""
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class _StreamState:
    """What one attempt has accumulated besides the text it already yielded."""

    finish_reason: str | None = None
    usage: Usage | None = None
    model: str = ""
    deltas: int = 0
    counted: int = 0
    """Completion tokens so far: the server's running count, or the estimate."""
    calls: list[_ToolCallParts] = field(default_factory=list)
    by_index: dict[int, int] = field(default_factory=dict)

    def tool_call(self, index: int | None, call_id: str) -> _ToolCallParts:
        """The call a tool-call delta belongs to. By ``index`` when the server sends one;
        without (each delta a whole call, as some servers stream them) a new ``id``
        starts a new call and a delta without id continues the last one. A new id at an
        index already holding another id is a new call too."""
        calls = self.calls
        if index is None:
            last = calls[-1] if calls else None
            if last is not None and not (call_id and last.id and last.id != call_id):
                return last
        else:
            pos = self.by_index.get(index)
            if pos is not None and not (call_id and calls[pos].id and calls[pos].id != call_id):
                return calls[pos]
            self.by_index[index] = len(calls)
        calls.append(_ToolCallParts())
        return calls[-1]

    def final_tool_calls(self) -> list[ToolCallRequest] | None:
        if not self.calls:
            return None
        return [
            ToolCallRequest(id=parts.id or f"call_{i}", name=parts.name,
                            arguments="".join(parts.arguments))
            for i, parts in enumerate(self.calls)
        ]


class _Recompute:
    """Resume by recompute, for a server that refuses continuation: the request goes out
    as if new (the original prompt and ``max_tokens``) and the output the kernel already
    has (``resume.text``, ``resume.reasoning``: as many characters) is skipped, as the
    kernel's own recompute after a lost checkpoint does; exact at temperature 0 or a
    fixed seed on a deterministic engine. Skipped text counts no tokens; the final usage
    is the server's less the resumed tokens, with the prompt counting them (the
    :class:`aios.llm.base.Resume` contract)."""

    __slots__ = ("reasoning", "resumed", "text")

    def __init__(self, resume: Resume) -> None:
        self.text = len(resume.text)
        self.reasoning = len(resume.reasoning)
        self.resumed = resume.completion_tokens

    def fresh(self, chunk: Chunk) -> bool:
        """Cut what was already produced from ``chunk``; False when nothing is left."""
        if not (self.text or self.reasoning):
            return True
        text, thought = chunk.text, chunk.reasoning
        if self.text and text:
            cut = min(self.text, len(text))
            self.text -= cut
            text = text[cut:]
        if self.reasoning and thought:
            cut = min(self.reasoning, len(thought))
            self.reasoning -= cut
            thought = thought[cut:]
        if (text, thought) != (chunk.text, chunk.reasoning):
            chunk.text, chunk.reasoning = text, thought
            chunk.n_tokens = _estimate_tokens(text) + _estimate_tokens(thought)
        return bool(text or thought)

    def usage(self, usage: Usage) -> Usage:
        return Usage(prompt_tokens=usage.prompt_tokens + self.resumed,
                     completion_tokens=max(0, usage.completion_tokens - self.resumed),
                     cached_tokens=usage.cached_tokens)


class OpenAIBackend(LLMBackend):
    """LLM backend for OpenAI-compatible servers (entry point ``openai``)."""

    # The class-level view (``aios plugins`` lists it without a config): continuation is
    # only known per server, so it is off here and set per instance in ``__init__``.
    capabilities = BackendCapabilities(
        token_boundary=True, continuation=False, kv_snapshot=False, engine_queue=True
    )

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        # Whether the server continues a final assistant message is a property of the
        # configured server, not of the class.
        self.capabilities = BackendCapabilities(
            token_boundary=True,
            continuation=config.supports_continuation,
            kv_snapshot=False,
            engine_queue=True,
        )
        options = self.options = _options(config)
        self._backoff_base_s = options.backoff_base_s
        self._backoff_cap_s = options.backoff_cap_s
        self._retry_after_cap_s = (options.retry_after_cap_s
                                   if options.retry_after_cap_s is not None
                                   else max(_DEFAULT_RETRY_AFTER_CAP_S, self._backoff_cap_s))
        # A seed makes the jitter reproducible (benchmarks, tests); otherwise unseeded so
        # many kernels retrying against one server do not retry in lockstep.
        seed = options.seed
        self._rng = random.Random(seed) if seed is not None else random.Random()
        self._client: AsyncOpenAI | None = None
        self._session: aiohttp.ClientSession | None = None
        self._api_key = config.api_key or os.environ.get("OPENAI_API_KEY") or "none"
        self._base_url = (config.base_url or os.environ.get("OPENAI_BASE_URL")
                          or "https://api.openai.com/v1").rstrip("/")
        self._chat_url = self._base_url + "/chat/completions"
        # What this server accepts, learnt at its first refusal (HTTP 400/422 naming the
        # field, or any 422 while we sent it): then never sent again by this instance.
        self._send_priority = config.priority_passthrough != "off"
        self._send_continuation = config.supports_continuation
        self._model: str = config.model
        self._requests = 0
        self._retries = 0
        self._errors = 0
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._cached_tokens = 0

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self._session is None:
            self._session = self._make_session()

    async def close(self) -> None:
        session, self._session = self._session, None
        client, self._client = self._client, None
        if session is not None:
            await session.close()
        if client is not None:
            await client.close()

    def _make_session(self) -> aiohttp.ClientSession:
        """The chat stream's HTTP client (aiohttp: its C HTTP parser buffers what arrives
        between two reads, so one read takes every event already there)."""
        timeout = self.config.timeout_s
        return aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, connect=timeout, sock_read=timeout),
            connector=aiohttp.TCPConnector(limit=0),  # the kernel's window is the limit
            trust_env=True,
            headers={"Authorization": f"Bearer {self._api_key}",
                     "User-Agent": "aios (openai-compatible)"})

    def _sdk(self) -> AsyncOpenAI:
        """The openai SDK client, made on first use: only for listing models."""
        if self._client is None:
            self._client = AsyncOpenAI(base_url=self._base_url, api_key=self._api_key,
                                       max_retries=0, timeout=self.config.timeout_s)
        return self._client

    @property
    def _where(self) -> str:
        return self.config.base_url or "the default OpenAI endpoint"

    # -- generation ----------------------------------------------------------------------

    async def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        call = request.call
        resume = request.resume
        if resume is not None and not self.config.supports_continuation:
            raise LLMError(
                f"llm {self.config.name!r}: cannot resume a generation, the server at "
                f"{self._where} is not configured with supports_continuation",
                syscall=call,
            )
        if self._session is None:
            # Tolerate a caller that skipped start(): creating the session does no I/O.
            self._session = self._make_session()
        session = self._session
        self._requests += 1

        if not self._model:
            self._model = await self._default_model()
        # A resume on a server found unable to continue: recompute (see _Recompute).
        redo = _Recompute(resume) if resume is not None and not self._send_continuation \
            else None
        max_tokens = call.max_tokens
        if resume is not None and max_tokens is not None and redo is None:
            max_tokens -= resume.completion_tokens
            if max_tokens <= 0:
                # The interrupted generation had already used its whole budget.
                yield Chunk(
                    finish_reason="length",
                    usage=Usage(),
                    model=self._model or self.config.model,
                )
                return
        body = self._request_body(request, max_tokens)

        attempt = 0
        delivered = 0  # content chunks already yielded: after the first, no retry
        while True:
            state = _StreamState()
            try:
                when, which = _deadline(request, delivered)
                with anyio.CancelScope(deadline=when) as scope:
                    response = await session.post(self._chat_url, data=json.dumps(body),
                                                  headers=_JSON_HEADERS)
                if scope.cancelled_caught:
                    raise self._timeout(call, which)
                try:
                    if response.status >= 300:
                        raise await _status_error(response)
                    # The per-token path: one read takes every event already received
                    # (one chunk for all of them), parsing only the fields needed.
                    read, sse, done = response.content.readany, _SSEDecoder(), False
                    while not done:
                        # Each wait is bounded by the call's deadlines, not only per read:
                        # keep-alive comments or a silent server cannot hold the call.
                        when, which = _deadline(request, delivered)
                        with anyio.CancelScope(deadline=when) as scope:
                            data = await read()
                        if scope.cancelled_caught:
                            raise self._timeout(call, which)
                        if not data:
                            break
                        chunk, done = self._absorb(sse.feed(data), state, call)
                        if chunk is None or (redo is not None and not redo.fresh(chunk)):
                            continue
                        delivered += 1
                        yield chunk
                finally:
                    # Unread: the connection closes, so the server drops the request.
                    response.release()
                if state.finish_reason is None:
                    raise BadResponse(
                        f"the server at {self._where} ended the stream without a "
                        f"finish_reason after {state.deltas} content chunks (truncated)",
                        syscall=call,
                    )
                break
            except LLMError:
                self._errors += 1
                raise
            except (_StatusError, _StreamError, aiohttp.ClientError, TimeoutError,
                    ValueError) as exc:
                if delivered == 0 and self._refused_field(exc, body):
                    # The server refuses a field it does not know: sent no more by this
                    # instance, and this request goes again at once (not a retry).
                    if resume is not None and not self._send_continuation and redo is None:
                        redo = _Recompute(resume)
                        max_tokens = call.max_tokens
                    body = self._request_body(request, max_tokens)
                    continue
                failure = await self._classify(exc, call)
                if failure.retryable and delivered == 0 and attempt < self.config.max_retries:
                    delay = self._delay(attempt, failure.retry_after)
                    when, which = _deadline(request, delivered)
                    if anyio.current_time() + delay > when:
                        raise self._timeout(call, which, f" (last error: {_describe(exc)})"
                                            ) from exc
                    attempt += 1
                    self._retries += 1
                    self.log.info(
                        "llm.retry",
                        llm=self.config.name,
                        base_url=self._where,
                        attempt=attempt,
                        max_retries=self.config.max_retries,
                        status=failure.status,
                        delay_s=round(delay, 4),
                        error=str(exc),
                    )
                    await anyio.sleep(delay)
                    continue
                self._errors += 1
                error = failure.error
                if delivered and failure.retryable:
                    # Tokens already reached the kernel: a retry would duplicate them.
                    error = BackendUnavailable(
                        f"the server at {self._where} failed mid-stream after {delivered} "
                        f"content chunks ({_describe(exc)}); not retried to avoid "
                        "duplicate output",
                        syscall=call,
                    )
                elif failure.retryable and attempt:
                    self.log.warning(
                        "llm.retries_exhausted",
                        llm=self.config.name,
                        base_url=self._where,
                        retries=attempt,
                        error=str(exc),
                    )
                raise error from exc

        usage = state.usage or Usage(completion_tokens=state.counted)
        if redo is not None:
            usage = redo.usage(usage)
        self._prompt_tokens += usage.prompt_tokens
        self._completion_tokens += usage.completion_tokens
        self._cached_tokens += usage.cached_tokens
        yield Chunk(
            finish_reason=state.finish_reason,
            tool_calls=state.final_tool_calls(),
            usage=usage,
            model=state.model or self._model,
        )

    def _request_body(self, request: GenerationRequest, max_tokens: int | None) -> dict[str, Any]:
        """The body of the chat completion request: every LLMChat field, none dropped
        (``extra`` last, as the SDK's ``extra_body``)."""
        call = request.call
        messages: list[dict[str, Any]] = list(call.messages)
        extra_body: dict[str, Any] = dict(call.extra)
        mode = self.config.priority_passthrough if self._send_priority else "off"
        if mode == "lower_first":
            extra_body["priority"] = request.priority
        elif mode == "higher_first":
            # Kernel priorities run lower values first; SGLang runs higher values first.
            extra_body["priority"] = -request.priority
        resume = request.resume
        if resume is not None and self._send_continuation:
            # vLLM's continuation: the last assistant message is extended, not answered.
            partial: dict[str, Any] = {"role": "assistant", "content": resume.text + resume.held}
            if resume.reasoning:
                partial["reasoning_content"] = resume.reasoning
            messages.append(partial)
            extra_body["continue_final_message"] = True
            extra_body["add_generation_prompt"] = False
        kwargs: dict[str, Any] = {"model": self._model or "default", "messages": messages,
                                  "stream": True}
        stream_options = self.options.stream_options
        if stream_options is True:
            kwargs["stream_options"] = {"include_usage": True}
        elif stream_options:
            kwargs["stream_options"] = stream_options
        optional: dict[str, Any] = {
            "max_tokens": max_tokens,
            "temperature": call.temperature,
            "top_p": call.top_p,
            "stop": call.stop,
            "seed": call.seed,
            "tools": call.tools,
            "tool_choice": call.tool_choice,
            "response_format": call.response_format,
        }
        kwargs.update({k: v for k, v in optional.items() if v is not None})
        kwargs.update(extra_body)
        return kwargs

    def _refused_field(self, exc: Exception, body: dict[str, Any]) -> bool:
        """Whether ``exc`` is the server refusing ``priority`` or the continuation fields
        (``continue_final_message``, ``add_generation_prompt``) that we sent: an HTTP 400
        or 422 naming one, or any 422 while we sent one (FastAPI/pydantic servers such as
        ``transformers serve`` answer an unknown field with 422). Then that field is
        turned off for this instance, once, with a log line; True means "send again"."""
        if not isinstance(exc, _StatusError) or exc.status_code not in (400, 422):
            return False
        # Only what this backend adds: a field the caller put in ``extra`` stays its own.
        priority = self._send_priority and "priority" in body
        continuation = self._send_continuation and "continue_final_message" in body
        if not (priority or continuation):
            return False
        said = f"{exc.message} {exc.body!r}".lower()
        named_c = "continue_final_message" in said or "add_generation_prompt" in said
        if priority and ("priority" in said or (exc.status_code == 422 and not named_c)):
            self._send_priority = False
            self.log.warning("llm.priority_unsupported", llm=self.config.name,
                             base_url=self._where, status=exc.status_code,
                             error=_server_message(exc))
            return True
        if continuation and (named_c or exc.status_code == 422):
            self._send_continuation = False
            # The kernel reads this to stop relying on continuation; resumes already
            # under way are recomputed by this backend (see _Recompute).
            self.capabilities = replace(self.capabilities, continuation=False)
            self.log.warning("llm.continuation_unsupported", llm=self.config.name,
                             base_url=self._where, status=exc.status_code,
                             error=_server_message(exc))
            return True
        return False

    def _absorb(self, events: list[bytes], state: _StreamState, call: LLMChat
                ) -> tuple[Chunk | None, bool]:
        """Fold the SSE data of one read into ``state``: its text and reasoning as one
        chunk (None if it had none), and whether ``[DONE]`` came.

        Only the fields the kernel needs are read from each event's JSON (no model
        objects). A server sending the wrong shape shows up as attribute, type or value
        errors: a BadResponse. An event carrying ``error`` is the server's failure.
        """
        texts: list[str] = []
        thoughts: list[str] = []
        n = 0
        try:
            for payload in events:
                if payload.startswith(b"[DONE]"):
                    return _chunk(texts, thoughts, n), True
                event = json.loads(payload)
                if not isinstance(event, dict):
                    raise TypeError(f"an event is a {type(event).__name__}, not an object")
                if event.get("error"):
                    raise _StreamError(event["error"])
                model = event.get("model")
                if model:
                    state.model = str(model)
                before = state.counted
                k = 0
                for choice in event.get("choices") or ():
                    if choice.get("index") not in (0, None):
                        continue  # n > 1 is refused at the door: ignore stray choices
                    delta = choice.get("delta")
                    if delta:
                        text = delta.get("content")
                        thought = delta.get("reasoning_content") or delta.get("reasoning")
                        if text:
                            text = str(text)
                            texts.append(text)
                            k += _estimate_tokens(text)
                        if thought:
                            thought = str(thought)
                            thoughts.append(thought)
                            k += _estimate_tokens(thought)
                        if k:
                            state.counted += k
                            state.deltas += 1
                        for tc in delta.get("tool_calls") or ():
                            self._absorb_tool_call(tc, state)
                    reason = choice.get("finish_reason")
                    if reason:
                        state.finish_reason = str(reason)
                usage = event.get("usage")
                if usage:
                    details = usage.get("prompt_tokens_details") or {}
                    state.usage = counts = Usage(
                        prompt_tokens=int(usage.get("prompt_tokens") or 0),
                        completion_tokens=int(usage.get("completion_tokens") or 0),
                        cached_tokens=int(details.get("cached_tokens") or 0),
                    )
                    if k and counts.completion_tokens:
                        # Usage on a content event: the server's running count (vLLM's
                        # continuous_usage_stats) replaces the estimate.
                        k = max(0, counts.completion_tokens - before)
                        state.counted = before + k
                n += k
        except (AttributeError, TypeError, ValueError) as exc:
            raise BadResponse(
                f"the server at {self._where} sent a malformed stream chunk: {exc}", syscall=call
            ) from exc
        return _chunk(texts, thoughts, n), False

    @staticmethod
    def _absorb_tool_call(tc: dict[str, Any], state: _StreamState) -> None:
        index = tc.get("index")
        call_id = tc.get("id")
        call_id = str(call_id) if call_id else ""
        parts = state.tool_call(index if isinstance(index, int) else None, call_id)
        if call_id:
            parts.id = call_id
        fn = tc.get("function")
        if fn:
            name, arguments = fn.get("name"), fn.get("arguments")
            # A name repeated whole on later deltas (some servers) is not appended.
            if name and name != parts.name:
                parts.name += str(name)
            if arguments:
                parts.arguments.append(str(arguments))
                state.counted += _estimate_tokens(str(arguments))

    def _timeout(self, call: LLMChat, which: str, detail: str = "") -> LLMTimeout:
        cfg = self.config
        limit = cfg.first_token_timeout_s if which == "first_token" else cfg.total_timeout_s
        what = "no token came" if which == "first_token" else "the generation did not end"
        return LLMTimeout(f"the server at {self._where}: {what} within {which}_timeout_s="
                          f"{limit:g} s{detail}", syscall=call, deadline=which)

    # -- failures ------------------------------------------------------------------------

    async def _classify(self, exc: Exception, call: LLMChat) -> _Failure:
        """Map an HTTP failure to the aios error it becomes, and say if a retry may help."""
        where = self._where
        if isinstance(exc, _StatusError):
            status = exc.status_code
            message = _server_message(exc)
            retry_after = _retry_after(exc.headers)
            # One table for both directions (aios.llm.wire), shared with sim-serve.
            cls = error_class_from_wire(status, exc.code)
            if cls is RateLimited:
                return _Failure(
                    RateLimited(
                        f"the server at {where} is rate limiting (429): {message}",
                        syscall=call,
                        retry_after=retry_after,
                    ),
                    # Not retried here: the kernel is the one retry layer for rate limits
                    # (it narrows the window at once and queues the syscall again).
                    retryable=False,
                    retry_after=retry_after,
                    status=status,
                )
            if issubclass(cls, BackendUnavailable):
                return _Failure(
                    cls(
                        f"the server at {where} failed ({status}): {message}", syscall=call
                    ),
                    retryable=True,
                    retry_after=retry_after,
                    status=status,
                )
            if cls is ModelNotFound:
                available = await self._available_models()
                return _Failure(
                    ModelNotFound(
                        f"model {self._model!r} not found at {where} (404): {message}"
                        + _base_url_hint(self.config.base_url),
                        syscall=call,
                        available=available,
                    ),
                    status=status,
                )
            if cls is ContextWindowExceeded or (status == 400
                                                and _is_context_error(exc, message)):
                return _Failure(
                    ContextWindowExceeded(
                        f"the prompt does not fit model {self._model!r} at {where}: {message}",
                        syscall=call,
                    ),
                    status=status,
                )
            return _Failure(
                LLMError(
                    f"the server at {where} rejected the request ({status}): {message}",
                    syscall=call,
                ),
                status=status,
            )
        if isinstance(exc, aiohttp.ClientError | TimeoutError):
            # Refused, reset, read timeouts (timeout_s); also what a connection cut
            # mid-stream (a broken chunked body) becomes.
            return _Failure(
                BackendUnavailable(
                    f"cannot reach the server at {where}: {_describe(exc)}", syscall=call
                ),
                retryable=True,
            )
        if isinstance(exc, _StreamError):
            # An error event inside the stream (vLLM reports engine failures this way).
            message = _server_message(exc)
            if _is_context_error(exc, message):
                return _Failure(
                    ContextWindowExceeded(
                        f"the prompt does not fit model {self._model!r} at {where}: {message}",
                        syscall=call,
                    )
                )
            return _Failure(
                BackendUnavailable(
                    f"the server at {where} reported an error in the stream: {message}",
                    syscall=call,
                ),
                retryable=True,
            )
        if isinstance(exc, ValueError):
            # json.JSONDecodeError from an SSE event that is not JSON.
            return _Failure(
                BadResponse(f"the server at {where} sent a malformed stream: {exc}", syscall=call)
            )
        return _Failure(LLMError(f"the server at {where} failed: {_describe(exc)}", syscall=call))

    def _delay(self, attempt: int, retry_after: float | None) -> float:
        """Seconds to wait before retry number ``attempt + 1``."""
        if retry_after is not None and retry_after >= 0:
            # The server said when: obey it, within reason (a slot is held meanwhile).
            return min(retry_after, self._retry_after_cap_s)
        # Full jitter (uniform in [0, capped exponential]) spreads retries of many clients.
        ceiling = min(self._backoff_cap_s, self._backoff_base_s * (2.0**attempt))
        return self._rng.uniform(0.0, ceiling)

    async def _available_models(self) -> list[str]:
        """Best effort: the model ids the server lists, or [] if it cannot tell."""
        try:
            with anyio.fail_after(_MODELS_LIST_TIMEOUT_S):
                listed = self._sdk().with_options(timeout=_MODELS_LIST_TIMEOUT_S).models.list()
                return sorted([str(m.id) async for m in listed])
        except Exception:  # a decoration of another error must never replace it
            return []

    async def _default_model(self) -> str:
        """No model configured: single-model servers (vLLM, llama.cpp, sim-serve) list one.

        Returns "" when the server cannot tell, so the next request asks again instead of
        remembering a guess; that request then goes out with the placeholder "default".
        """
        models = await self._available_models()
        return models[0] if models else ""

    # -- counters ------------------------------------------------------------------------

    def stats(self) -> dict[str, Any]:
        return {
            "requests": self._requests,
            "retries": self._retries,
            "errors": self._errors,
            "tokens": self._completion_tokens,
            "prompt_tokens": self._prompt_tokens,
            "cached_tokens": self._cached_tokens,
        }


def _deadline(request: GenerationRequest, delivered: int) -> tuple[float, str]:
    """The deadline in force (anyio clock) and its name: the first token's until one came,
    then the whole call's (whichever passes first)."""
    total = request.deadline if request.deadline is not None else math.inf
    first = request.first_token_deadline
    if not delivered and first is not None and first < total:
        return first, "first_token"
    return total, "total"


def _base_url_hint(base_url: str | None) -> str:
    """A 404 from a base URL without ``/v1`` is most often the wrong path, not the model:
    OpenAI-compatible servers (vLLM, SGLang, llama.cpp, Ollama) serve under ``/v1``."""
    if not base_url:
        return ""
    path = base_url.split("://", 1)[-1].partition("/")[2].rstrip("/")
    if "/v1/" in f"/{path}/":
        return ""
    fixed = base_url.rstrip("/") + "/v1"
    return (f"; base_url {base_url} has no /v1 path: OpenAI-compatible servers usually "
            f"serve under {fixed}")


_JSON_HEADERS = {"Content-Type": "application/json", "Accept": "text/event-stream"}


class _StatusError(Exception):
    """An HTTP error answer: its status, the ``error`` object of its JSON body (or the
    whole body), the error code and the headers."""

    def __init__(self, status: int, text: str, headers: Mapping[str, str]) -> None:
        try:
            body: Any = json.loads(text) if text else None
        except ValueError:
            body = text
        if isinstance(body, dict):
            body = body.get("error", body)
        code = body.get("code") if isinstance(body, dict) else None
        self.status_code = status
        self.body = body
        self.code = code if isinstance(code, str) else None
        self.headers = headers
        self.message = f"Error code: {status} - {text.strip()}" if text else f"Error code: {status}"
        super().__init__(self.message)


class _StreamError(Exception):
    """An error event inside the stream (vLLM reports engine failures this way)."""

    def __init__(self, error: Any) -> None:
        self.body = error
        code = error.get("code") if isinstance(error, dict) else None
        self.code = code if isinstance(code, str) else None
        message = error.get("message") if isinstance(error, dict) else error
        self.message = (message if isinstance(message, str) and message
                        else "An error occurred during streaming")
        super().__init__(self.message)


async def _status_error(response: aiohttp.ClientResponse) -> _StatusError:
    try:
        text = await response.text(errors="replace")
    except (aiohttp.ClientError, TimeoutError):
        text = ""
    return _StatusError(response.status, text, response.headers)


class _SSEDecoder:
    """Server-sent events to their data payloads (bytes), across reads. The common event
    (one ``data:`` line) costs one slice; comments (keep-alives), ``event:``/``id:``
    fields and empty events are skipped; CR and CRLF line ends are accepted (WHATWG
    "event stream interpretation")."""

    __slots__ = ("tail",)

    def __init__(self) -> None:
        self.tail = b""

    def feed(self, data: bytes) -> list[bytes]:
        buf = self.tail + data if self.tail else data
        cr = b""
        if b"\r" in buf:
            if buf.endswith(b"\r"):  # maybe the first half of a CRLF: wait for the rest
                buf, cr = buf[:-1], b"\r"
            buf = buf.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        events = buf.split(b"\n\n")
        self.tail = events.pop() + cr
        out: list[bytes] = []
        for event in events:
            if event.startswith(b"data: ") and b"\n" not in event:
                out.append(event[6:])
            elif event:
                lines = [line[5:] for line in event.split(b"\n") if line.startswith(b"data:")]
                if lines:
                    out.append(b"\n".join(x[1:] if x.startswith(b" ") else x for x in lines))
        return out


def _chunk(texts: list[str], thoughts: list[str], n: int) -> Chunk | None:
    """One chunk for the text and reasoning of one read (None when there is none)."""
    if not (texts or thoughts):
        return None
    return Chunk(text=texts[0] if len(texts) == 1 else "".join(texts),
                 reasoning="".join(thoughts), n_tokens=n)


def _server_message(exc: _StatusError | _StreamError) -> str:
    """The server's own words: ``error.message`` of the body when it has one."""
    body = exc.body
    if isinstance(body, dict):
        msg = body.get("message") or body.get("detail") or body.get("error")
        if isinstance(msg, str) and msg:
            return msg
    elif isinstance(body, str) and body:
        return body
    return exc.message


def _is_context_error(exc: _StatusError | _StreamError, message: str) -> bool:
    code = exc.code or ""
    return bool(_CONTEXT_RE.search(message) or _CONTEXT_RE.search(code))


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds from ``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date)."""
    for name, scale in (("retry-after-ms", 1000.0), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            seconds = float(value) / scale
        except ValueError:
            continue
        if math.isfinite(seconds) and seconds >= 0:
            return seconds
    value = headers.get("retry-after")
    if value:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())
    return None


def _describe(exc: BaseException) -> str:
    """An exception and its cause in one line (the SDK hides the socket error in the cause)."""
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    if cause is not None and str(cause) and str(cause) not in text:
        text += f" ({type(cause).__name__}: {cause})"
    return text
