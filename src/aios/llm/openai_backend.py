"""The built-in ``openai`` backend: any OpenAI-compatible chat server over HTTP.

It serves vLLM, SGLang, Ollama, the llama.cpp server, OpenAI itself and ``aios sim-serve``
through the official ``openai`` SDK. It always streams, so the kernel can stop a generation
between two tokens; it passes every sampling parameter of :class:`aios.syscalls.LLMChat`
through unchanged, forwards the kernel's priority to engines that understand it, continues a
preempted assistant message on servers that support ``continue_final_message``, and retries
transient failures (5xx, connection errors, timeouts) itself with capped exponential
backoff and full jitter. A 429 is reported at once as ``RateLimited``: the kernel is the
only layer that retries rate limits, so its window narrows at the first one.

What it must never do: retry once a token has been handed to the kernel (that would
duplicate output silently), let an SDK or ``httpx`` exception escape (every failure leaves
as an :mod:`aios.errors` ``LLMError`` carrying the syscall), or rely on the engine's own
queue for scheduling (the kernel's admission window decides what runs).
"""

from __future__ import annotations

import email.utils
import math
import os
import random
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
import openai
from openai import AsyncOpenAI, AsyncStream
from openai.types.chat import ChatCompletionChunk

from aios.config import LLMConfig
from aios.errors import (
    BackendUnavailable,
    BadResponse,
    ContextWindowExceeded,
    LLMError,
    ModelNotFound,
    RateLimited,
)
from aios.llm.base import Capabilities, Chunk, GenerationRequest, LLMBackend
from aios.llm.wire import error_class_from_wire
from aios.syscalls import LLMChat, ToolCallRequest, Usage

__all__ = ["OpenAIBackend"]


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
    tool_calls: dict[int, _ToolCallParts] = field(default_factory=dict)

    def final_tool_calls(self) -> list[ToolCallRequest] | None:
        if not self.tool_calls:
            return None
        return [
            ToolCallRequest(
                id=parts.id or f"call_{index}",
                name=parts.name,
                arguments="".join(parts.arguments),
            )
            for index, parts in sorted(self.tool_calls.items())
        ]


class OpenAIBackend(LLMBackend):
    """LLM backend for OpenAI-compatible servers (entry point ``openai``)."""

    # The class-level view (``aios plugins`` lists it without a config): continuation is
    # only known per server, so it is off here and set per instance in ``__init__``.
    capabilities = Capabilities(
        token_boundary=True, continuation=False, kv_snapshot=False, engine_queue=True
    )

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        # Whether the server continues a final assistant message is a property of the
        # configured server, not of the class.
        self.capabilities = Capabilities(
            token_boundary=True,
            continuation=config.supports_continuation,
            kv_snapshot=False,
            engine_queue=True,
        )
        options = config.options
        self._backoff_base_s = float(options.get("backoff_base_s", _DEFAULT_BACKOFF_BASE_S))
        self._backoff_cap_s = float(options.get("backoff_cap_s", _DEFAULT_BACKOFF_CAP_S))
        self._retry_after_cap_s = float(
            options.get("retry_after_cap_s", max(_DEFAULT_RETRY_AFTER_CAP_S, self._backoff_cap_s))
        )
        # A seed makes the jitter reproducible (benchmarks, tests); otherwise unseeded so
        # many kernels retrying against one server do not retry in lockstep.
        seed = options.get("seed")
        self._rng = random.Random(seed) if seed is not None else random.Random()
        self._client: AsyncOpenAI | None = None
        self._model: str = config.model
        self._requests = 0
        self._retries = 0
        self._errors = 0
        self._prompt_tokens = 0
        self._completion_tokens = 0
        self._cached_tokens = 0

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        if self._client is None:
            self._client = self._make_client()

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.close()

    def _make_client(self) -> AsyncOpenAI:
        return AsyncOpenAI(
            base_url=self.config.base_url,
            api_key=self.config.api_key or os.environ.get("OPENAI_API_KEY") or "none",
            # The SDK's own retries would retry invisibly and without our accounting.
            max_retries=0,
            timeout=self.config.timeout_s,
        )

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
        if self._client is None:
            # Tolerate a caller that skipped start(): creating the client does no I/O.
            self._client = self._make_client()
        client = self._client
        self._requests += 1

        max_tokens = call.max_tokens
        if resume is not None and max_tokens is not None:
            max_tokens -= resume.completion_tokens
            if max_tokens <= 0:
                # The interrupted generation had already used its whole budget.
                yield Chunk(
                    finish_reason="length",
                    usage=Usage(),
                    model=self._model or self.config.model,
                )
                return

        if not self._model:
            self._model = await self._default_model(client)
        kwargs = self._request_kwargs(request, max_tokens)

        attempt = 0
        delivered = 0  # content chunks already yielded: after the first, no retry
        while True:
            state = _StreamState()
            try:
                stream: AsyncStream[ChatCompletionChunk] = await client.chat.completions.create(
                    stream=True, **kwargs
                )
                async with stream:
                    async for raw in stream:
                        for text in self._absorb(raw, state, call):
                            delivered += 1
                            yield Chunk(text=text, n_tokens=1)
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
            except (openai.OpenAIError, ValueError) as exc:
                failure = await self._classify(exc, call, client)
                if failure.retryable and delivered == 0 and attempt < self.config.max_retries:
                    delay = self._delay(attempt, failure.retry_after)
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

        usage = state.usage or Usage(completion_tokens=state.deltas)
        self._prompt_tokens += usage.prompt_tokens
        self._completion_tokens += usage.completion_tokens
        self._cached_tokens += usage.cached_tokens
        yield Chunk(
            finish_reason=state.finish_reason,
            tool_calls=state.final_tool_calls(),
            usage=usage,
            model=state.model or self._model,
        )

    def _request_kwargs(self, request: GenerationRequest, max_tokens: int | None) -> dict[str, Any]:
        """The body of the chat completion request: every LLMChat field, none dropped."""
        call = request.call
        messages: list[dict[str, Any]] = list(call.messages)
        extra_body: dict[str, Any] = dict(call.extra)
        mode = self.config.priority_passthrough
        if mode == "lower_first":
            extra_body["priority"] = request.priority
        elif mode == "higher_first":
            # Kernel priorities run lower values first; SGLang runs higher values first.
            extra_body["priority"] = -request.priority
        if request.resume is not None:
            # vLLM's continuation: the last assistant message is extended, not answered.
            messages.append({"role": "assistant", "content": request.resume.text})
            extra_body["continue_final_message"] = True
            extra_body["add_generation_prompt"] = False
        kwargs: dict[str, Any] = {
            "model": self._model or "default",
            "messages": messages,
            "stream_options": {"include_usage": True},
        }
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
        if extra_body:
            kwargs["extra_body"] = extra_body
        return kwargs

    def _absorb(self, raw: ChatCompletionChunk, state: _StreamState, call: LLMChat) -> list[str]:
        """Fold one streamed chunk into ``state``; return its content deltas, in order.

        The SDK builds chunks without validation, so a server that sends the wrong shape
        shows up here as attribute or type errors: those are a BadResponse.
        """
        try:
            texts: list[str] = []
            if raw.model:
                state.model = str(raw.model)
            if raw.usage is not None:
                details = raw.usage.prompt_tokens_details
                cached = details.cached_tokens if details is not None else None
                state.usage = Usage(
                    prompt_tokens=int(raw.usage.prompt_tokens or 0),
                    completion_tokens=int(raw.usage.completion_tokens or 0),
                    cached_tokens=int(cached or 0),
                )
            for choice in raw.choices or ():
                if choice.index not in (0, None):
                    continue  # n > 1 is not part of LLMChat: ignore stray choices
                delta = choice.delta
                if delta is not None:
                    if delta.content:
                        texts.append(str(delta.content))
                        state.deltas += 1
                    for tc in delta.tool_calls or ():
                        parts = state.tool_calls.setdefault(int(tc.index or 0), _ToolCallParts())
                        if tc.id:
                            parts.id = str(tc.id)
                        if tc.function is not None:
                            if tc.function.name:
                                parts.name += str(tc.function.name)
                            if tc.function.arguments:
                                parts.arguments.append(str(tc.function.arguments))
                if choice.finish_reason:
                    state.finish_reason = str(choice.finish_reason)
            return texts
        except (AttributeError, TypeError, ValueError) as exc:
            raise BadResponse(
                f"the server at {self._where} sent a malformed stream chunk: {exc}", syscall=call
            ) from exc

    # -- failures ------------------------------------------------------------------------

    async def _classify(self, exc: Exception, call: LLMChat, client: AsyncOpenAI) -> _Failure:
        """Map an SDK failure to the aios error it becomes, and say if a retry may help."""
        where = self._where
        if isinstance(exc, openai.APIStatusError):
            status = exc.status_code
            message = _server_message(exc)
            retry_after = _retry_after(exc)
            # One table for both directions (aios.llm.wire), shared with sim-serve.
            cls = error_class_from_wire(status, exc.code if isinstance(exc.code, str) else None)
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
                available = await self._available_models(client)
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
        if isinstance(exc, openai.APIConnectionError):
            # Includes APITimeoutError; also what a connection cut mid-stream becomes.
            return _Failure(
                BackendUnavailable(
                    f"cannot reach the server at {where}: {_describe(exc)}", syscall=call
                ),
                retryable=True,
            )
        if isinstance(exc, openai.APIResponseValidationError):
            return _Failure(
                BadResponse(f"the server at {where} sent an invalid response: {exc}", syscall=call)
            )
        if isinstance(exc, openai.APIError):
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

    async def _available_models(self, client: AsyncOpenAI) -> list[str]:
        """Best effort: the model ids the server lists, or [] if it cannot tell."""
        try:
            with anyio.fail_after(_MODELS_LIST_TIMEOUT_S):
                listed = client.with_options(timeout=_MODELS_LIST_TIMEOUT_S).models.list()
                return sorted([str(m.id) async for m in listed])
        except Exception:  # a decoration of another error must never replace it
            return []

    async def _default_model(self, client: AsyncOpenAI) -> str:
        """No model configured: single-model servers (vLLM, llama.cpp, sim-serve) list one.

        Returns "" when the server cannot tell, so the next request asks again instead of
        remembering a guess; that request then goes out with the placeholder "default".
        """
        models = await self._available_models(client)
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


def _server_message(exc: openai.APIError) -> str:
    """The server's own words: ``error.message`` of the body when it has one."""
    body = exc.body
    if isinstance(body, dict):
        msg = body.get("message") or body.get("detail") or body.get("error")
        if isinstance(msg, str) and msg:
            return msg
    elif isinstance(body, str) and body:
        return body
    return exc.message


def _is_context_error(exc: openai.APIError, message: str) -> bool:
    code = exc.code or ""
    return bool(_CONTEXT_RE.search(message) or _CONTEXT_RE.search(code))


def _retry_after(exc: openai.APIStatusError) -> float | None:
    """Seconds from ``retry-after-ms`` / ``retry-after`` (seconds or an HTTP date)."""
    headers = exc.response.headers
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
