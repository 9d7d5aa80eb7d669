"""The simulated serving engine behind the ``sim`` backend and ``aios sim-serve``.

:class:`SimEngine` behaves like a continuous-batching server (vLLM, SGLang) on one
machine's event loop: ``slots`` sequences decode together, one token per running
sequence per step; a step costs ``step_base_ms + step_per_seq_ms * batch`` plus
``prefill_ms_per_token`` for every prompt token the automatic prefix cache misses, all
scaled by ``time_scale``. Requests beyond the slots wait in the engine's own queue,
ordered by priority (lower first) then arrival, like vLLM's priority scheduling. The text
is a deterministic function of (prompt, position), so a generation resumed at token ``k``
can be checked against an uninterrupted one, and the engine's counters give the physical
limit of the workload (``ideal_s``: the same work at a full batch).

This module must never block the event loop, never do real inference, never use Python's
salted ``hash()`` on strings (text must be identical across processes), and never keep a
task alive when there is nothing to do: the step loop sleeps on an event while idle and is
cancelled and awaited by :meth:`SimEngine.close`.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import heapq
import itertools
import json
import zlib
from array import array
from collections import OrderedDict
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import anyio
import structlog
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from aios.config import LLMConfig, config_error
from aios.errors import (
    BackendUnavailable,
    ContextWindowExceeded,
    InvalidSyscall,
    LLMError,
    RateLimited,
)
from aios.llm.base import BackendCapabilities, Chunk, GenerationRequest, LLMBackend, Resume
from aios.llm.stops import StopMatcher
from aios.syscalls import ChatResult, LLMChat, ToolCallRequest, Usage

__all__ = [
    "ScriptedReply",
    "ScriptedToolCall",
    "SimBackend",
    "SimEngine",
    "SimEngineConfig",
    "SimStream",
    "content_text",
    "engine_config_from_llm",
    "engine_config_from_options",
    "render_messages",
    "tokenize",
]

log = structlog.get_logger("aios.llm.sim")


# --------------------------------------------------------------------------- config


class ScriptedToolCall(BaseModel):
    """A scripted tool call; ``arguments`` as an object, or as the raw string a model sent
    (which may be invalid JSON on purpose); ``id`` default: derived from the request."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str
    arguments: dict[str, Any] | str = Field(default_factory=dict)
    id: str | None = None


class ScriptedReply(BaseModel):
    """One canned reply: text, or tool calls. Used by the sim engine's ``script`` and by
    :class:`aios.testing.ScriptedLLM` alike (``tool_call = {...}`` is shorthand for one)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: str = ""
    tool_calls: tuple[ScriptedToolCall, ...] = ()

    @model_validator(mode="before")
    @classmethod
    def _one_tool_call(cls, data: Any) -> Any:
        if isinstance(data, dict) and "tool_call" in data:
            data = dict(data)
            one = data.pop("tool_call")
            data["tool_calls"] = (*data.get("tool_calls", ()), *((one,) if one else ()))
        return data

    def requests(self, key: int) -> list[ToolCallRequest]:
        """The tool calls as a model sends them (ids from ``key`` when not scripted)."""
        return [ToolCallRequest(
            id=tc.id or f"call_{key & 0xFFFFFFFF:08x}_{i}", name=tc.name,
            arguments=tc.arguments if isinstance(tc.arguments, str) else json.dumps(tc.arguments),
        ) for i, tc in enumerate(self.tool_calls)]


class SimEngineConfig(BaseModel):
    """Parameters of the simulated engine (``LLMConfig.options`` of a ``sim`` resource)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str = "sim"
    slots: int = Field(default=8, ge=1)
    """Sequences decoded together (the batch size limit)."""
    step_base_ms: float = Field(default=2.0, ge=0)
    step_per_seq_ms: float = Field(default=0.25, ge=0)
    """A step costs ``step_base_ms + step_per_seq_ms * batch`` and yields one token to
    every running sequence."""
    prefill_ms_per_token: float = Field(default=0.01, ge=0)
    """Paid in the admitting step for each prompt token the prefix cache misses."""
    prefix_cache_tokens: int = Field(default=1_000_000, ge=0)
    """Capacity of the automatic prefix cache (LRU over blocks of prompt+output tokens)."""
    prefix_block_tokens: int = Field(default=16, ge=1)
    """Granularity of the prefix cache (vLLM's block size)."""
    default_max_tokens: int = Field(default=64, ge=1)
    queue_cap: int | None = Field(default=None, ge=0)
    """Max requests waiting beyond the free slots; past it a request is rejected
    (``RateLimited`` in process, HTTP 429 from ``aios sim-serve``). None: unbounded."""
    time_scale: float = Field(default=1.0, ge=0)
    """Multiplies every cost; 0 runs as fast as the event loop allows."""
    max_context: int = Field(default=32768, ge=1)
    tool_calls: bool = True
    """Answer with a tool call when the request offers tools and the last message is the
    user's (not a tool result)."""
    tool_call_tokens: int = Field(default=8, ge=1)
    """Decode tokens a tool call takes."""
    script: list[str | ScriptedReply] | None = None
    """Canned replies returned in order (tests); when used up, replies are generated."""


def engine_config_from_options(options: Mapping[str, Any], prefix: str = "") -> SimEngineConfig:
    """Validate engine options; ConfigError names the bad key (under ``prefix``)."""
    try:
        return SimEngineConfig.model_validate(dict(options))
    except ValidationError as exc:
        raise config_error(exc, prefix=prefix, where="sim engine",
                           unknown="unknown option") from None


def engine_config_from_llm(config: LLMConfig) -> SimEngineConfig:
    """The engine config of a ``sim`` resource: its options, slots defaulting to
    ``max_concurrency`` and the model to ``config.model``. Raises ConfigError."""
    opts = dict(config.options)
    opts.setdefault("slots", config.max_concurrency)
    if config.model:
        opts.setdefault("model", config.model)
    return engine_config_from_options(opts, "options")


# ------------------------------------------------------------------ text and tokens

# The output vocabulary: plain lowercase words, so deltas join with single spaces and a
# text's word count is its token count (a continuation can be re-tokenized exactly).
_VOCAB_TEXT = """
    the of and to in is that for it as was with be by on not he this are or his from at
    which but have an they you were her she there been one all we their has would when
    what if will more no out so said up into than them can only other new some time could
    these two may first then do any like my now over such our man me even most made after
    also did many before must through back years where much your way well down should
    because each just those people how too little state good very make world still own see
    men work long get here between both life being under never day same another know while
    last might us great old year off come since against go came right used take three
    small large next early young important few public bad able river mountain forest ocean
    signal kernel process thread memory buffer queue packet socket engine token batch
    model agent tool plan search result answer question reason step value index table
    record cache block page frame stream event clock timer level light stone water fire
    cloud green blue red silver golden quiet rapid gentle bright dark simple complex
    ancient modern north south east west garden bridge tower market village harbor valley
    island desert winter summer autumn spring morning evening night window door road path
    letter story song voice number figure pattern system method theory data
"""
_VOCAB: tuple[str, ...] = tuple(_VOCAB_TEXT.split())
_V = len(_VOCAB)
_VOCAB_SPACED: tuple[str, ...] = tuple(" " + w for w in _VOCAB)
_VOCAB_IDS: tuple[int, ...] = tuple(zlib.crc32(w.encode()) for w in _VOCAB)

_M64 = (1 << 64) - 1
_GOLD = 0x9E3779B97F4A7C15


def _mix(x: int) -> int:
    """splitmix64 finalizer: a stable, well-spread 64-bit hash of an integer."""
    x &= _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def _token_index(key: int, pos: int) -> int:
    """Vocabulary index of output token ``pos`` of the prompt whose key is ``key``."""
    x = (key + (pos + 1) * _GOLD) & _M64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _M64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _M64
    return (x ^ (x >> 31)) % _V


def content_text(content: Any) -> str:
    """The text of a message's ``content`` (a string, or OpenAI content parts)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts: list[str] = []
        for part in content:
            if isinstance(part, dict):
                text = part.get("text")
                if isinstance(text, str):
                    parts.append(text)
            elif isinstance(part, str):
                parts.append(part)
        return " ".join(parts)
    return str(content)


def _tool_name(tool: Mapping[str, Any]) -> str:
    fn = tool.get("function")
    spec = fn if isinstance(fn, Mapping) else tool
    name = spec.get("name")
    return name if isinstance(name, str) and name else "tool"


def render_messages(
    messages: Sequence[Mapping[str, Any]], tools: Sequence[Mapping[str, Any]] | None = None
) -> str:
    """The chat rendered to one string, ending with the generation prompt."""
    parts: list[str] = []
    if tools:
        parts.append("<|tools|>")
        parts.extend(_tool_name(t) for t in tools)
    for m in messages:
        parts.append(f"<|{m.get('role', 'user')}|>")
        parts.append(content_text(m.get("content")))
        for tc in m.get("tool_calls") or ():
            fn = tc.get("function") if isinstance(tc, Mapping) else None
            if isinstance(fn, Mapping):
                parts.append(f"{fn.get('name', '')} {fn.get('arguments', '')}")
    parts.append("<|assistant|>")
    return " ".join(parts)


def tokenize(text: str) -> list[int]:
    """Whitespace words, each to a stable id (crc32: identical in every process)."""
    crc = zlib.crc32
    return [crc(w.encode()) for w in text.split()]


def _prompt_key(ids: Sequence[int], seed: int | None) -> int:
    digest = hashlib.blake2b(array("I", ids).tobytes(), digest_size=8).digest()
    key = int.from_bytes(digest, "little")
    if seed is not None:
        key = _mix(key ^ _mix(seed + 1))
    return key


def _chain_hashes(ids: Sequence[int], block: int, start: int, prev: int) -> list[int]:
    """Chained hashes of the full blocks of ``ids[start:]`` (hash of int tuples is not
    salted, and the cache lives in one process anyway)."""
    out: list[int] = []
    n = len(ids)
    j = start
    while j + block <= n:
        prev = hash((prev, *ids[j : j + block]))
        out.append(prev)
        j += block
    return out


def _tool_arguments(tool: Mapping[str, Any], key: int) -> str:
    """A small deterministic JSON object that fits the tool's parameter schema."""
    fn = tool.get("function")
    spec = fn if isinstance(fn, Mapping) else tool
    params = spec.get("parameters")
    props: Mapping[str, Any] = {}
    required: list[str] = []
    if isinstance(params, Mapping):
        p = params.get("properties")
        if isinstance(p, Mapping):
            props = p
        r = params.get("required")
        if isinstance(r, list):
            required = [x for x in r if isinstance(x, str)]
    names = required or list(props)[:1]
    args: dict[str, Any] = {}
    for i, name in enumerate(names[:4]):
        h = _mix(key ^ ((i + 1) * _GOLD))
        prop = props.get(name)
        prop = prop if isinstance(prop, Mapping) else {}
        enum = prop.get("enum")
        typ = prop.get("type", "string")
        if isinstance(enum, list) and enum:
            args[name] = enum[h % len(enum)]
        elif typ == "integer":
            args[name] = h % 100
        elif typ == "number":
            args[name] = (h % 1000) / 10
        elif typ == "boolean":
            args[name] = bool(h & 1)
        elif typ == "array":
            args[name] = []
        elif typ == "object":
            args[name] = {}
        else:
            args[name] = f"{_VOCAB[h % _V]} {_VOCAB[(h >> 20) % _V]}"
    if not names:
        h = _mix(key ^ _GOLD)
        args["input"] = f"{_VOCAB[h % _V]} {_VOCAB[(h >> 20) % _V]}"
    return json.dumps(args, sort_keys=True)


# ----------------------------------------------------------------------- the engine

_WAITING, _RUNNING, _DONE, _CANCELLED, _FAILED = 0, 1, 2, 3, 4

# After a late wake-up the step clock may lag real time by this much and catch up (so
# sleep overshoot does not drift the simulated rate); beyond it (idle, overload) it resets.
_MAX_LAG_S = 0.02


@dataclass(slots=True, eq=False)
class _Seq:
    """One sequence in the engine. ``produced`` is the absolute position of the next
    token (it starts at ``start``, the resume point); the consumer reads up to it."""

    prompt_ids: list[int]
    block_hashes: list[int]
    key: int
    start: int
    limit: int
    priority: int
    request_id: str
    words: list[str] | None
    tool_calls: list[ToolCallRequest] | None
    finish_reason: str
    produced: int = 0
    state: int = _WAITING
    cached: int = 0
    waiter: asyncio.Future[None] | None = None
    error: LLMError | None = None

    def token_id(self, pos: int) -> int:
        words = self.words
        if words is not None:
            return zlib.crc32(words[pos].encode())
        return _VOCAB_IDS[_token_index(self.key, pos)]


class _PrefixCache:
    """Automatic prefix cache: an LRU set of chained block hashes (vLLM's design)."""

    __slots__ = ("_blocks", "_cap")

    def __init__(self, capacity_tokens: int, block: int) -> None:
        self._blocks: OrderedDict[int, None] = OrderedDict()
        self._cap = capacity_tokens // block

    def match(self, hashes: Sequence[int]) -> int:
        """How many leading blocks are cached (touching them)."""
        blocks = self._blocks
        n = 0
        for h in hashes:
            if h not in blocks:
                break
            blocks.move_to_end(h)
            n += 1
        return n

    def insert(self, hashes: Sequence[int]) -> None:
        if self._cap <= 0:
            return
        blocks = self._blocks
        for h in hashes:
            blocks[h] = None
            blocks.move_to_end(h)
        while len(blocks) > self._cap:
            blocks.popitem(last=False)

    def clear(self) -> None:
        self._blocks.clear()

    def __len__(self) -> int:
        return len(self._blocks)


@dataclass(slots=True)
class _Counters:
    requests: int = 0
    prompt_tokens: int = 0
    prefill_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    steps: int = 0
    batch_sum: int = 0
    busy_s: float = 0.0
    prefill_s: float = 0.0
    rejected: int = 0


@dataclass(frozen=True, slots=True)
class _Reply:
    words: list[str] | None
    tool_calls: list[ToolCallRequest] | None
    limit: int
    finish_reason: str


class SimEngine:
    """A continuous-batching engine simulated on the running event loop.

    Usable directly (``await engine.chat(messages, max_tokens=...)``, ``engine.submit(req)``
    for a token stream), concurrently from any number of tasks, and shared by any number
    of :class:`SimBackend` instances (``SimBackend.from_engine``) so a kernel path and a
    direct baseline hit the same slots. One engine serves one event loop at a time.
    """

    def __init__(self, config: SimEngineConfig | None = None, /, **options: Any) -> None:
        if options:
            base = config.model_dump(exclude_unset=True) if config is not None else {}
            base.update(options)
            config = engine_config_from_options(base, "")
        self._cfg = config if config is not None else SimEngineConfig()
        cfg = self._cfg
        self._cache = _PrefixCache(cfg.prefix_cache_tokens, cfg.prefix_block_tokens)
        self._heap: list[tuple[int, int, _Seq]] = []
        self._arrivals = itertools.count()
        self._n_waiting = 0
        self._dead_waiting = 0
        self._running: list[_Seq] = []
        self._n_running = 0  # sequences in a slot and not finished or cancelled
        self._c = _Counters()
        self._closed = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._task: asyncio.Task[None] | None = None
        self._work: asyncio.Event | None = None
        self._script: list[ScriptedReply] = [
            ScriptedReply(text=s) if isinstance(s, str) else s for s in cfg.script or ()
        ]
        self._script_next = 0
        self._script_of: dict[str, int] = {}

    # ------------------------------------------------------------------ public API

    @property
    def config(self) -> SimEngineConfig:
        return self._cfg

    @property
    def model(self) -> str:
        return self._cfg.model

    @property
    def closed(self) -> bool:
        return self._closed

    async def start(self) -> None:
        """Start the step loop now (it also starts on the first request)."""
        self._ensure_loop()

    async def close(self) -> None:
        """Stop the step loop and fail every unfinished sequence (BackendUnavailable).
        Final: a closed engine rejects new requests."""
        self._closed = True
        task, self._task = self._task, None
        if task is not None and not task.done():
            task.cancel()
            # Shielded: close() must leave no task behind even when its caller is
            # being cancelled.
            with anyio.CancelScope(shield=True):
                await asyncio.wait({task})
        self._fail_all(BackendUnavailable("sim engine is closed"))

    def stream(self, request: GenerationRequest) -> SimStream:
        """A lazy token stream: the request enters the engine on the first ``__anext__``
        (or :meth:`SimStream.open`)."""
        return SimStream(self, request)

    def submit(self, request: GenerationRequest) -> SimStream:
        """Enqueue now (raising RateLimited / ContextWindowExceeded / BackendUnavailable
        at once) and return the stream of its chunks. Needs a running event loop."""
        s = SimStream(self, request)
        s.open()
        return s

    async def complete(self, request: GenerationRequest) -> ChatResult:
        """Run one request to the end (the no-kernel baseline's direct call)."""
        parts: list[str] = []
        final: Chunk | None = None
        s = self.submit(request)
        try:
            async for ch in s:
                if ch.text:
                    parts.append(ch.text)
                if ch.finish_reason is not None:
                    final = ch
        finally:
            s.cancel()
        assert final is not None
        return ChatResult(
            text="".join(parts),
            tool_calls=final.tool_calls or [],
            usage=final.usage or Usage(),
            finish_reason=final.finish_reason or "stop",
            model=final.model,
        )

    async def chat(
        self,
        messages: list[dict[str, Any]],
        *,
        priority: int = 0,
        request_id: str = "",
        resume: Resume | None = None,
        **params: Any,
    ) -> ChatResult:
        """``complete`` for a chat given as messages plus LLMChat fields (max_tokens...)."""
        call = LLMChat(messages=messages, **params)
        req = GenerationRequest(call=call, request_id=request_id, priority=priority, resume=resume)
        return await self.complete(req)

    def stats(self) -> dict[str, Any]:
        """Counters since creation or :meth:`reset_stats`. Times are in (scaled) seconds,
        comparable to wall-clock time: ``ideal_s`` is how long the same work (completion
        tokens and uncached prefill) takes at a full batch, the engine's physical limit."""
        c = self._c
        cfg = self._cfg
        full_step_s = (cfg.step_base_ms + cfg.step_per_seq_ms * cfg.slots) * cfg.time_scale / 1e3
        ideal = c.completion_tokens / cfg.slots * full_step_s + c.prefill_s
        return {
            "model": cfg.model,
            "slots": cfg.slots,
            "time_scale": cfg.time_scale,
            "requests": c.requests,
            "prompt_tokens": c.prompt_tokens,
            "prefill_tokens": c.prefill_tokens,
            "cached_tokens": c.cached_tokens,
            "completion_tokens": c.completion_tokens,
            "steps": c.steps,
            "busy_s": c.busy_s,
            "prefill_s": c.prefill_s,
            "mean_batch": c.batch_sum / c.steps if c.steps else 0.0,
            "rejected": c.rejected,
            "ideal_s": ideal,
            "running": self._n_running,
            "waiting": self._n_waiting,
            "prefix_cache_blocks": len(self._cache),
        }

    def reset_stats(self) -> None:
        """Zero the counters (the prefix cache keeps its content)."""
        self._c = _Counters()

    def clear_prefix_cache(self) -> None:
        self._cache.clear()

    # ------------------------------------------------------------------- internals

    def _ensure_loop(self) -> None:
        if self._closed:
            raise BackendUnavailable("sim engine is closed")
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            if self._loop is not None:
                # The previous loop is gone (e.g. one engine reused across asyncio.run
                # calls): its sequences can never be served.
                self._fail_all(BackendUnavailable("sim engine moved to another event loop"))
            self._loop = loop
            self._work = asyncio.Event()
            self._task = None
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._run(), name="aios-sim-engine")

    def _pick_reply(self, request: GenerationRequest, max_tokens: int, key: int) -> _Reply:
        call = request.call
        item: ScriptedReply | None = None
        if self._script:
            idx = self._script_of.get(request.request_id) if request.request_id else None
            if idx is None and self._script_next < len(self._script):
                idx = self._script_next
                self._script_next += 1
                if request.request_id:
                    # A resumed request (same id) must get the same canned reply.
                    self._script_of[request.request_id] = idx
            if idx is not None:
                item = self._script[idx]
        if item is not None:
            if item.tool_calls:
                return _Reply(None, item.requests(key),
                              min(self._cfg.tool_call_tokens, max_tokens), "tool_calls")
            words = item.text.split() or [""]
            if len(words) <= max_tokens:
                return _Reply(words, None, len(words), "stop")
            return _Reply(words, None, max_tokens, "length")
        if self._cfg.tool_calls and call.tools and call.tool_choice != "none":
            last = call.messages[-1]
            forced = call.tool_choice == "required" or isinstance(call.tool_choice, Mapping)
            if forced or last.get("role") == "user":
                tool = call.tools[0]
                choice = call.tool_choice
                if isinstance(choice, Mapping):
                    fn = choice.get("function")
                    wanted = fn.get("name") if isinstance(fn, Mapping) else None
                    for t in call.tools:
                        if _tool_name(t) == wanted:
                            tool = t
                            break
                tc = ToolCallRequest(
                    id=f"call_{key & 0xFFFFFFFF:08x}",
                    name=_tool_name(tool),
                    arguments=_tool_arguments(tool, key),
                )
                return _Reply(None, [tc], min(self._cfg.tool_call_tokens, max_tokens),
                              "tool_calls")
        return _Reply(None, None, max_tokens, "length")

    def _enqueue(self, request: GenerationRequest) -> _Seq:
        self._ensure_loop()
        cfg = self._cfg
        call = request.call
        prompt_ids = tokenize(render_messages(call.messages, call.tools))
        base_len = len(prompt_ids)
        max_tokens = call.max_tokens or cfg.default_max_tokens
        if base_len + max_tokens > cfg.max_context:
            if base_len >= cfg.max_context or call.max_tokens is not None:
                raise ContextWindowExceeded(
                    f"prompt of {base_len} tokens + max_tokens {max_tokens} exceeds the "
                    f"context window of {cfg.max_context} tokens",
                    syscall=call,
                )
            max_tokens = cfg.max_context - base_len
        if cfg.queue_cap is not None:
            free = cfg.slots - self._n_running
            backlog = self._n_waiting - free
            if backlog >= cfg.queue_cap:
                self._c.rejected += 1
                full_step_s = (
                    (cfg.step_base_ms + cfg.step_per_seq_ms * cfg.slots) * cfg.time_scale / 1e3
                )
                # Roughly when one batch's worth of the backlog will have drained.
                drain = max(1.0, backlog / cfg.slots)
                retry = max(0.001, full_step_s * cfg.default_max_tokens * drain)
                raise RateLimited(
                    f"sim engine queue is full ({backlog} waiting, cap {cfg.queue_cap})",
                    syscall=call,
                    retry_after=retry,
                )
        key = _prompt_key(prompt_ids, call.seed)
        reply = self._pick_reply(request, max_tokens, key)
        seq = _Seq(
            prompt_ids=prompt_ids,
            block_hashes=[],
            key=key,
            start=0,
            limit=reply.limit,
            priority=request.priority,
            request_id=request.request_id,
            words=reply.words,
            tool_calls=reply.tool_calls,
            finish_reason=reply.finish_reason,
        )
        resume = request.resume
        if resume is not None:
            k = resume.completion_tokens or len((resume.text + resume.held).split())
            k = min(max(k, 0), reply.limit)
            # The continuation's prompt is prompt + partial output; its ids are the ids
            # the engine produced, so the blocks cached at preemption match.
            prompt_ids.extend(seq.token_id(i) for i in range(k))
            seq.start = seq.produced = k
        block = cfg.prefix_block_tokens
        seq.block_hashes = _chain_hashes(prompt_ids, block, 0, 0)
        self._c.requests += 1
        if seq.start >= seq.limit:
            seq.state = _DONE
            return seq
        heapq.heappush(self._heap, (request.priority, next(self._arrivals), seq))
        self._n_waiting += 1
        work = self._work
        assert work is not None
        work.set()
        return seq

    def _cancel(self, seq: _Seq) -> None:
        st = seq.state
        if st == _WAITING:
            seq.state = _CANCELLED
            self._n_waiting -= 1
            self._dead_waiting += 1
            if self._dead_waiting > 1024 and self._dead_waiting > self._n_waiting:
                # Drop cancelled entries so churn cannot grow the heap without bound
                # (amortized: at most once per as many cancellations as live entries).
                self._heap = [e for e in self._heap if e[2].state == _WAITING]
                heapq.heapify(self._heap)
                self._dead_waiting = 0
        elif st == _RUNNING:
            seq.state = _CANCELLED
            self._n_running -= 1
            self._cache_output(seq)

    def _cache_output(self, seq: _Seq) -> None:
        """Cache the blocks of prompt + generated tokens (a later continuation hits them)."""
        if self._cache._cap <= 0:
            return
        block = self._cfg.prefix_block_tokens
        hashes = seq.block_hashes
        n_prompt = len(seq.prompt_ids)
        total = n_prompt + seq.produced - seq.start
        have = len(hashes)
        if total // block <= have:
            return
        tail_from = have * block
        tail = seq.prompt_ids[tail_from:]
        tail.extend(seq.token_id(i) for i in range(seq.start, seq.produced))
        prev = hashes[-1] if hashes else 0
        more = _chain_hashes(tail, block, 0, prev)
        self._cache.insert(more)
        hashes.extend(more)

    def _finish(self, seq: _Seq) -> None:
        self._cache_output(seq)
        if seq.request_id and self._script_of:
            self._script_of.pop(seq.request_id, None)

    def _fail_all(self, error: LLMError) -> None:
        seqs = [e[2] for e in self._heap] + self._running
        self._heap = []
        self._running = []
        self._n_running = 0
        self._n_waiting = 0
        self._dead_waiting = 0
        for seq in seqs:
            if seq.state in (_WAITING, _RUNNING):
                seq.state = _FAILED
                seq.error = error
                w = seq.waiter
                if w is not None:
                    seq.waiter = None
                    if not w.done():
                        w.set_result(None)

    async def _run(self) -> None:
        try:
            await self._steps()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug in the engine: fail loudly, never hang consumers
            log.exception("sim engine step loop crashed")
            self._fail_all(BackendUnavailable(f"sim engine crashed: {exc!r}"))

    async def _steps(self) -> None:
        loop = asyncio.get_running_loop()
        work = self._work
        assert work is not None
        cfg = self._cfg
        slots = cfg.slots
        scale = cfg.time_scale / 1e3
        base_s = cfg.step_base_ms * scale
        per_seq_s = cfg.step_per_seq_ms * scale
        prefill_s = cfg.prefill_ms_per_token * scale
        cache = self._cache
        sleep = asyncio.sleep
        deadline = loop.time()
        while True:
            running = [s for s in self._running if s.state == _RUNNING]
            # Admit waiting requests into free slots: lowest (priority, arrival) first.
            heap = self._heap
            uncached = 0
            c = self._c
            while len(running) < slots and heap:
                seq = heapq.heappop(heap)[2]
                if seq.state != _WAITING:
                    self._dead_waiting -= 1
                    continue
                self._n_waiting -= 1
                seq.state = _RUNNING
                n_prompt = len(seq.prompt_ids)
                hit = cache.match(seq.block_hashes) * cfg.prefix_block_tokens
                # As in vLLM, at least the last prompt token is always computed.
                cached = min(hit, n_prompt - 1) if n_prompt else 0
                seq.cached = cached
                uncached += n_prompt - cached
                cache.insert(seq.block_hashes)
                c.prompt_tokens += n_prompt
                c.cached_tokens += cached
                running.append(seq)
                self._n_running += 1
            if self._dead_waiting < 0:
                self._dead_waiting = 0
            self._running = running
            if not running:
                # Idle: sleep until a request arrives; no task spins.
                work.clear()
                await work.wait()
                deadline = loop.time()
                continue
            batch = len(running)
            cost = base_s + per_seq_s * batch + prefill_s * uncached
            now = loop.time()
            # Deadline-based: the simulated clock advances by exactly the step cost, so
            # sleep overshoot does not drift the rate; after a long lag it resets.
            deadline = max(deadline, now - _MAX_LAG_S) + cost
            delay = deadline - now
            await sleep(delay if delay > 0 else 0)
            # Emit one token to every sequence still running.
            emitted = 0
            for seq in running:
                if seq.state != _RUNNING:
                    continue
                seq.produced += 1
                emitted += 1
                if seq.produced >= seq.limit:
                    seq.state = _DONE
                    self._n_running -= 1
                    self._finish(seq)
                w = seq.waiter
                if w is not None:
                    seq.waiter = None
                    if not w.done():
                        w.set_result(None)
            c = self._c  # reset_stats() may have swapped the counters during the sleep
            c.prefill_tokens += uncached
            c.completion_tokens += emitted
            c.steps += 1
            c.batch_sum += batch
            c.busy_s += cost
            c.prefill_s += prefill_s * uncached


# ----------------------------------------------------------------------- the stream


class SimStream:
    """The chunks of one sequence: one ``Chunk`` per token, then a final chunk with
    ``finish_reason`` and ``usage``. Closing it (``aclose``/``cancel``, or cancelling the
    task reading it) stops the sequence at the next step and frees its slot."""

    __slots__ = ("_engine", "_final", "_model", "_pos", "_reason", "_request", "_seq", "_stop")

    def __init__(self, engine: SimEngine, request: GenerationRequest) -> None:
        self._engine = engine
        self._request = request
        self._seq: _Seq | None = None
        self._pos = 0
        self._reason: str | None = None
        self._final = False
        stop = request.call.stop
        # A resumed stream starts with the text its predecessor held back (Resume.held).
        resume = request.resume
        self._stop = StopMatcher(stop, resume.held if resume else "") if stop else None
        self._model = engine.model

    def open(self) -> None:
        """Enter the engine now (idempotent); raises the engine's rejection errors."""
        if self._seq is None:
            seq = self._engine._enqueue(self._request)
            self._seq = seq
            self._pos = seq.start

    @property
    def request(self) -> GenerationRequest:
        return self._request

    def __aiter__(self) -> SimStream:
        return self

    async def __anext__(self) -> Chunk:
        if self._final:
            raise StopAsyncIteration
        seq = self._seq
        if seq is None:
            self.open()
            seq = self._seq
            assert seq is not None
        while True:
            if self._reason is not None:
                return self._final_chunk(seq)
            pos = self._pos
            if pos < seq.produced:
                self._pos = pos + 1
                if seq.words is not None:
                    word = seq.words[pos]
                    text = word if pos == 0 else " " + word
                    tid = zlib.crc32(word.encode())
                else:
                    idx = _token_index(seq.key, pos)
                    tid = _VOCAB_IDS[idx]
                    # (a tool call's tokens carry no text)
                    spaced = _VOCAB[idx] if pos == 0 else _VOCAB_SPACED[idx]
                    text = "" if seq.tool_calls else spaced
                if self._stop is not None and text:
                    text, hit = self._stop.feed(text)
                    if hit:
                        # The token that completes a stop string ends the generation in
                        # the same chunk: no token boundary (and no preemption) between.
                        self._reason = "stop"
                        self._engine._cancel(seq)
                        return self._final_chunk(seq, text, (tid,), 1)
                return Chunk(text=text, token_ids=(tid,), n_tokens=1)
            st = seq.state
            if st == _DONE:
                self._reason = seq.finish_reason
                continue
            if st == _FAILED:
                assert seq.error is not None
                raise seq.error
            if st == _CANCELLED:
                raise StopAsyncIteration
            loop = self._engine._loop
            assert loop is not None
            fut: asyncio.Future[None] = loop.create_future()
            seq.waiter = fut
            try:
                await fut
            except BaseException:
                # Cancelled while waiting: this stream is over (like an async generator
                # that an exception left); free the slot.
                self.cancel()
                raise

    def held_text(self) -> str:
        """Text generated but held back (it may begin a stop string): see
        :class:`aios.llm.base.SupportsHeldText`."""
        return self._stop.held if self._stop is not None else ""

    def _final_chunk(self, seq: _Seq, text: str = "", token_ids: tuple[int, ...] = (),
                     n_tokens: int = 0) -> Chunk:
        if self._final:
            raise StopAsyncIteration
        self._final = True
        reason = self._reason or "stop"
        # After a stop-string hit the matcher holds nothing; otherwise release its tail.
        if self._stop is not None:
            text += self._stop.flush()
        return Chunk(
            text=text,
            token_ids=token_ids,
            n_tokens=n_tokens,
            finish_reason=reason,
            tool_calls=seq.tool_calls if reason == "tool_calls" else None,
            usage=Usage(
                prompt_tokens=len(seq.prompt_ids),
                completion_tokens=self._pos - seq.start,
                cached_tokens=seq.cached,
            ),
            model=self._model,
        )

    def cancel(self) -> None:
        """Stop the sequence now (synchronous: safe in ``finally`` under cancellation)."""
        seq = self._seq
        if seq is not None and seq.state <= _RUNNING:
            self._engine._cancel(seq)
        self._final = True

    async def aclose(self) -> None:
        self.cancel()

    async def __aenter__(self) -> SimStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.cancel()

    def __del__(self) -> None:
        # A stream dropped without aclose() must not hold its slot until max_tokens.
        seq = self._seq
        if seq is not None and seq.state <= _RUNNING:
            # At interpreter shutdown there may be nothing left to free.
            with contextlib.suppress(Exception):
                self._engine._cancel(seq)


# ---------------------------------------------------------------------- the backend


class SimBackend(LLMBackend):
    """The ``sim`` LLM backend: a :class:`SimEngine` behind the backend interface.

    ``SimBackend(config)`` builds its own engine from ``config.options`` (slots default to
    ``config.max_concurrency``); ``SimBackend.from_engine(engine)`` shares an existing one
    (not closed by the backend), e.g. with a direct no-kernel baseline.
    """

    capabilities: BackendCapabilities = BackendCapabilities(
        token_boundary=True, continuation=True, kv_snapshot=False, engine_queue=True
    )

    def __init__(self, config: LLMConfig | None = None, *, engine: SimEngine | None = None) -> None:
        self.config = config if config is not None else LLMConfig()
        if engine is None:
            self.engine = SimEngine(engine_config_from_llm(self.config))
            self._owns_engine = True
        else:
            self.engine = engine
            self._owns_engine = False

    @classmethod
    def from_engine(cls, engine: SimEngine, config: LLMConfig | None = None) -> SimBackend:
        return cls(config, engine=engine)

    async def start(self) -> None:
        await self.engine.start()

    async def close(self) -> None:
        if self._owns_engine:
            await self.engine.close()

    def generate(self, request: GenerationRequest) -> AsyncIterator[Chunk]:
        # Lazy: the request enters the engine on the first __anext__, so errors surface
        # where the caller iterates.
        return self.engine.stream(request)

    def check(self, call: LLMChat) -> None:
        """The sim generates words: it cannot follow a JSON mode or schema, nor see an
        image or hear audio (refused, never answered with prose). Forced tool calls
        (``tool_choice`` required or named) it does follow."""
        for i, m in enumerate(call.messages):
            content = m.get("content")
            if isinstance(content, list):  # text-only parts were joined into a string
                kinds = sorted({str(p.get("type")) for p in content} - {"text"})
                raise InvalidSyscall(
                    f"messages.{i}.content: {', '.join(map(repr, kinds))} parts are not "
                    "supported by the sim backend (it reads text only)", syscall=call)
        fmt = call.response_format
        if fmt is not None and fmt.get("type", "text") != "text":
            raise InvalidSyscall(
                f"response_format: {fmt.get('type')!r} is not supported by the sim backend "
                "(it generates plain words; only 'text')", syscall=call)

    def stats(self) -> dict[str, Any]:
        return self.engine.stats()
